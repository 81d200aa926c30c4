"""Corpus files: the formats unochat reads, one reader each, chosen by the file's extension.

    .txt        `query|response` lines (z80ai's format): blank lines and `#` lines are comments
    .yml .yaml  ChatterBot's YAML (the PyPI package chatterbot-corpus): `conversations:`, a list of
                conversations, each a list of turns; every two consecutive turns are a pair. A directory
                stands for its .yml/.yaml files, in name order, as the package lays them out.
    .csv .tsv   a header row naming the `query` and `response` columns (any case), then one pair a row
    .jsonl      one JSON object a line with `query` and `response` strings
A `.gz` after any of them is read through gzip.

A reader only splits a file into raw pairs, each with the line it starts on, or says why a line is no
pair (`Unreadable`); the rules every pair must then meet are data/dataset.py's, the same for every format.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml


class CorpusError(ValueError):
    """A corpus file that cannot be read at all; the message names the file."""


@dataclass(frozen=True)
class RawPair:
    line: int
    query: str
    response: str


@dataclass(frozen=True)
class Unreadable:
    line: int
    kind: str  # a refusal kind of data/dataset.py's REFUSALS
    reason: str


Item = RawPair | Unreadable


def _text_lines(data: bytes) -> Iterator[tuple[int, str | Unreadable]]:
    """(line number, its text), or why the line is not UTF-8."""
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield number, Unreadable(number, "bad_utf8", f"not valid UTF-8 (byte 0x{raw[e.start]:02X} at column {e.start + 1})")


def read_txt(data: bytes) -> Iterator[Item]:
    for number, text in _text_lines(data):
        if isinstance(text, Unreadable):
            yield text
            continue
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "|" not in stripped:
            yield Unreadable(number, "no_separator", "no '|' between query and response")
            continue
        query, response = stripped.split("|", 1)
        yield RawPair(number, query, response)


def read_yaml(data: bytes) -> Iterator[Item]:
    """Consecutive turns of each conversation; a turn is its scalar's text as written (`- 42` is "42")."""
    try:
        root = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise CorpusError(f"not ChatterBot YAML: {e}") from e
    conversations = None
    if isinstance(root, yaml.MappingNode):
        conversations = next((v for k, v in root.value if k.value == "conversations"), None)
    if not isinstance(conversations, yaml.SequenceNode):
        raise CorpusError("not ChatterBot YAML: no `conversations:` list")
    for conversation in conversations.value:
        line = conversation.start_mark.line + 1
        if not isinstance(conversation, yaml.SequenceNode):
            yield Unreadable(line, "not_text", "a conversation that is not a list of turns")
            continue
        turns = conversation.value
        for first, second in zip(turns, turns[1:]):
            at = first.start_mark.line + 1
            if not (isinstance(first, yaml.ScalarNode) and isinstance(second, yaml.ScalarNode)):
                yield Unreadable(at, "not_text", "a turn that is not text (a list or a mapping)")
            else:
                yield RawPair(at, first.value, second.value)


def _read_table(data: bytes, delimiter: str) -> Iterator[Item]:
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is no part of the header
    except UnicodeDecodeError as e:
        raise CorpusError(f"not valid UTF-8 (byte at {e.start})") from e
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [name.strip().lower() for name in next(rows, [])]
    if "query" not in header or "response" not in header:
        raise CorpusError(f"the header row must name `query` and `response` columns, found {header}")
    q, r = header.index("query"), header.index("response")
    start = 2
    for row in rows:
        line, start = start, rows.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(q, r):
            yield Unreadable(line, "no_separator", f"{len(row)} columns; the header has {len(header)}")
        else:
            yield RawPair(line, row[q], row[r])


def read_csv(data: bytes) -> Iterator[Item]:
    return _read_table(data, ",")


def read_tsv(data: bytes) -> Iterator[Item]:
    return _read_table(data, "\t")


def read_jsonl(data: bytes) -> Iterator[Item]:
    for number, text in _text_lines(data):
        if isinstance(text, Unreadable):
            yield text
        elif text.strip():
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield Unreadable(number, "no_separator", f"not JSON: {e.msg}")
                continue
            values = [record.get(key) if isinstance(record, dict) else None for key in ("query", "response")]
            if not all(isinstance(v, str) for v in values):
                yield Unreadable(number, "no_separator", "needs `query` and `response` strings")
            else:
                yield RawPair(number, *values)


READERS: dict[str, Callable[[bytes], Iterator[Item]]] = {
    ".txt": read_txt, ".yml": read_yaml, ".yaml": read_yaml, ".csv": read_csv, ".tsv": read_tsv, ".jsonl": read_jsonl,
}


def corpus_format(path: Path) -> str:
    """The format suffix of a corpus file (`.txt` for `x.txt.gz`); CorpusError for an unknown one."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in READERS:
        raise CorpusError(f"{path}: unknown corpus format {suffix or '(no extension)'!r}: unochat reads "
                          f"{', '.join(sorted(READERS))} (and each of them .gz), or a directory of .yml files")
    return suffix


def corpus_files(path: Path) -> list[Path]:
    """The files a corpus path stands for: itself, or a directory's YAML files in name order."""
    if not path.exists():
        raise CorpusError(f"{path}: no such corpus file or directory")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".yml", ".yaml") and p.is_file())
    if not files:
        raise CorpusError(f"{path}: a directory with no .yml or .yaml files")
    return files


def file_bytes(path: Path) -> bytes:
    try:
        with (gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")) as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise CorpusError(f"{path}: cannot read: {e}") from e


def read_corpus(path: Path) -> Iterator[tuple[Path, bytes, Iterator[Item]]]:
    """Per file of the corpus: its path, its bytes and its items."""
    for file in corpus_files(path):
        reader = READERS[corpus_format(file)]
        data = file_bytes(file)
        yield file, data, reader(data)
