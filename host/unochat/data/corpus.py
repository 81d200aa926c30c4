"""Corpus files: the formats unochat reads, one reader each, chosen by the file's extension.

    .txt        `query|response` lines (z80ai's format): blank lines and `#` lines are comments
    .yml .yaml  ChatterBot's YAML (the PyPI package chatterbot-corpus): `conversations:`, a list of
                conversations, each a list of turns; every two consecutive turns are a pair. A directory
                stands for its .yml/.yaml files, in name order, as the package lays them out.
    .csv .tsv   a header row naming the `query` and `response` columns (any case), then one pair a row
    .jsonl      one JSON object a line with `query` and `response` strings
A `.gz` after any of them is read through gzip.

A reader only splits a file into raw pairs, each with the lines its query and response are on, or says
why a line is no pair (`Unreadable`); the rules every pair must then meet are data/dataset.py's, the same
for every format. A file that cannot be read at all (not YAML, a header without the columns) is a
CorpusError naming the file and, where it is known, the line.
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
    """A corpus file that cannot be read at all. A reader gives the line where it knows it; read_corpus
    puts the file's name in front."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.line = line


@dataclass(frozen=True)
class RawPair:
    line: int  # the query's line: where the pair is named
    query: str
    response: str
    response_line: int  # the response's own line (the next turn's, in YAML), where a refused response is named


@dataclass(frozen=True)
class Unreadable:
    line: int
    kind: str  # a refusal kind of data/dataset.py's REFUSALS
    reason: str


Item = RawPair | Unreadable


def _not_utf8(line: str) -> str | None:
    """Why a line decoded with errors="surrogateescape" is not UTF-8 (its first bad byte and the byte's
    column), or None if it is."""
    for i, c in enumerate(line):
        if "\udc80" <= c <= "\udcff":  # where surrogateescape kept an undecodable byte
            column = len(line[:i].encode("utf-8", "surrogateescape")) + 1
            return f"not valid UTF-8 (byte 0x{ord(c) - 0xDC00:02X} at column {column})"
    return None


def _text_lines(data: bytes) -> Iterator[tuple[int, str | Unreadable]]:
    """(line number, its text), or why the line is not UTF-8."""
    for number, raw in enumerate(data.splitlines(), start=1):
        text = raw.decode("utf-8", "surrogateescape")
        reason = _not_utf8(text)
        yield number, text if reason is None else Unreadable(number, "bad_utf8", reason)


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
        yield RawPair(number, query, response, number)


def _yaml_root(data: bytes) -> yaml.Node | None:
    """The file's YAML node tree (line numbers kept), or a CorpusError naming the line it fails on."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CorpusError(_not_utf8(data.split(b"\n")[line - 1].decode("utf-8", "surrogateescape")), line) from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = ", ".join(filter(None, [e.context, e.problem]))
        raise CorpusError(f"not ChatterBot YAML: {what}" + (f" (column {mark.column + 1})" if mark else ""),
                          mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:  # the reader's: a character YAML does not allow
        position = getattr(e, "position", None)
        raise CorpusError(f"not ChatterBot YAML: {e}".split("\n")[0],
                          text.count("\n", 0, position) + 1 if position is not None else None) from None


def read_yaml(data: bytes) -> Iterator[Item]:
    """Consecutive turns of each conversation; a turn is its scalar's text as written (`- 42` is "42").
    A refused turn is named by its own line."""
    root = _yaml_root(data)
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
        if len(turns) < 2:
            yield Unreadable(line, "no_separator", f"a conversation of {len(turns)} turn{'s' * (len(turns) != 1)}: no pair")
        for first, second in zip(turns, turns[1:]):
            not_text = next((t for t in (first, second) if not isinstance(t, yaml.ScalarNode)), None)
            if not_text is not None:
                yield Unreadable(not_text.start_mark.line + 1, "not_text", "a turn that is not text (a list or a mapping)")
            else:
                yield RawPair(first.start_mark.line + 1, first.value, second.value, second.start_mark.line + 1)


def _read_table(data: bytes, delimiter: str) -> Iterator[Item]:
    # a spreadsheet's byte-order mark is no part of the header; a bad byte refuses its row, not the file
    lines = io.StringIO(data.decode("utf-8-sig", "surrogateescape"), newline="").readlines()  # lines as csv sees them
    rows = csv.reader(lines, delimiter=delimiter)
    header = [name.strip().lower() for name in next(rows, [])]
    if "query" not in header or "response" not in header:
        raise CorpusError(f"the header row must name `query` and `response` columns, found {header}", 1)
    q, r = header.index("query"), header.index("response")
    start = rows.line_num + 1
    for row in rows:
        line, start = start, rows.line_num + 1
        bad = [Unreadable(n, "bad_utf8", why) for n, text in enumerate(lines[line - 1:start - 1], start=line)
               if (why := _not_utf8(text))]
        if bad:
            yield bad[0]
        elif not any(cell.strip() for cell in row):
            continue
        elif len(row) <= max(q, r):
            yield Unreadable(line, "no_separator", f"{len(row)} columns; the header has {len(header)}")
        else:
            yield RawPair(line, row[q], row[r], line)


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
            keys = ("query", "response")
            if not (isinstance(record, dict) and all(key in record for key in keys)):
                yield Unreadable(number, "no_separator", "needs an object with `query` and `response` keys")
            elif not all(isinstance(record[key], str) for key in keys):
                key = next(key for key in keys if not isinstance(record[key], str))
                yield Unreadable(number, "not_text", f"the {key} is {json.dumps(record[key])}, not a string")
            else:
                yield RawPair(number, record["query"], record["response"], number)


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


def _named(file: Path, items: Iterator[Item]) -> Iterator[Item]:
    """A reader's items; the error that stops a reader is named by its file (and line)."""
    try:
        yield from items
    except CorpusError as e:
        raise CorpusError(f"{file}:{e.line}: {e}" if e.line else f"{file}: {e}") from None


def read_corpus(path: Path) -> Iterator[tuple[Path, bytes, Iterator[Item]]]:
    """Per file of the corpus: its path, its bytes and its items."""
    for file in corpus_files(path):
        reader = READERS[corpus_format(file)]
        data = file_bytes(file)
        yield file, data, _named(file, reader(data))
