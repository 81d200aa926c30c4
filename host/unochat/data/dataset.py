"""Datasets: the pairs of a corpus file (data/corpus.py reads each format), the rules every pair meets,
the charset, and the seeded held-out split.

Rules (documented in README "Dataset format"), the same for every format:
- text is cleaned first: typographic quotes, dashes, ellipses and non-breaking spaces become their ASCII
  forms (TYPOGRAPHY), runs of whitespace (newlines, tabs) one space, both sides stripped; other
  characters outside printable ASCII are refused, or with `transliterate` mapped to their ASCII letters
  (NFKD: é -> e) and dropped where they have none;
- responses keep the corpus's case (`case="keep"`, the output alphabet is the corpus's) or are
  upper-cased (`case="upper"`, z80ai's behaviour); queries are hashed lower-case either way;
- a query must not start with '!', which marks the device's machine commands;
- a query needs >= 2 characters (as z80ai), a response 1..MAX_REPLY (the device counts a reply in a byte);
- a query longer than the device's line buffer is cut exactly as the device cuts it.
Every other pair is refused: counted per kind (REFUSALS), named by file and line, and skipped; with
strict=True the first refusal raises DatasetError instead.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..paths import REPO
from .corpus import CorpusError, RawPair, read_corpus

EOS = "\x00"
MAX_QUERY = 60  # the device's line buffer; z80ai also truncates queries at 60
MAX_REPLY = 255  # the device counts a reply's characters in a byte
MIN_QUERY = 2  # z80ai drops shorter queries
HELDOUT_SEED = 0  # fixed: every model is judged on the same held-out pairs, whatever its training seed
SAMPLE_QUERIES = 20  # real queries that stand for a dataset where a model is timed or its density measured
COMMAND_PREFIX = "!"  # device lines starting with it are machine commands (README, "Serial protocol")
SHOWN_PER_KIND = 3  # refused lines shown of each kind where a corpus is read; `unochat data --refused` shows all


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Pair:
    query: str
    response: str
    line: int


# Why a pair is refused: its kind (a stable name, counted per corpus) and what the kind means.
REFUSALS = {
    "bad_utf8": "not valid UTF-8",
    "no_separator": "no pair on the line (no '|', a missing column or key, not JSON, a one-turn conversation)",
    "not_text": "a YAML turn that is a list or a mapping, or a JSON value that is not a string",
    "empty": "an empty query or response",
    "non_ascii": "a character outside printable ASCII (see --transliterate)",
    "command_prefix": f"a query starting with {COMMAND_PREFIX!r} (the device's machine commands)",
    "short_query": f"a query shorter than {MIN_QUERY} characters",
    "long_response": f"a response longer than {MAX_REPLY} characters (the device's reply limit)",
    "outside_charset": "a response character outside the model's charset",
}
CASES = ("keep", "upper")
# Typographic characters and their ASCII forms: applied before anything else, whatever the options.
TYPOGRAPHY = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'",  # quotes, prime
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-",  # en and em dash, minus
    "\u2026": "...",
    "\u00a0": " ",  # non-breaking space
}


@dataclass
class Problem:
    path: str
    line: int
    reason: str
    kind: str  # one of REFUSALS

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Dataset:
    path: str
    pairs: list[Pair]
    problems: list[Problem] = field(default_factory=list)
    digest: str = ""

    def __len__(self) -> int:
        return len(self.pairs)

    def refusals(self) -> Counter:
        """How many pairs were refused, per kind (REFUSALS)."""
        return Counter(problem.kind for problem in self.problems)

    def summary(self) -> str:
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in self.refusals().most_common())
        return f"{self.path}: {len(self.pairs):,} pairs, {len(self.problems):,} refused" + (f" ({kinds})" if kinds else "")


def refusal_lines(problems: list[Problem], per_kind: int = SHOWN_PER_KIND) -> list[str]:
    """The refused lines kind by kind, the commonest kind first: the first `per_kind` of each, and how many
    more of it there are."""
    lines = []
    for kind, n in Counter(problem.kind for problem in problems).most_common():
        shown = [problem for problem in problems if problem.kind == kind][:per_kind]
        lines += [f"  {problem}" for problem in shown]
        if n > len(shown):
            lines.append(f"  ... and {n - len(shown):,} more {kind}")
    return lines


def is_printable(text: str) -> bool:
    """Printable ASCII only (0x20-0x7E): what the device's line editor keeps, hashes and may reply with."""
    return all(" " <= c <= "~" for c in text)


def clean(text: str, transliterate: bool = False) -> str:
    """Typography to ASCII, whitespace runs to one space, stripped; with `transliterate`, the rest of
    what is not ASCII to its ASCII letters (NFKD), dropped where there are none."""
    text = "".join(TYPOGRAPHY.get(c, c) for c in text)
    if transliterate and not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"\s+", " ", text).strip()


def check_pair(raw: RawPair, case: str = "keep", transliterate: bool = False,
               charset: str | None = None) -> Pair | tuple[str, str, int]:
    """The pair a raw pair makes under the rules (module doc), or (kind, reason, line) why it is refused,
    `line` the line of the side at fault (a YAML response is the next turn, on a line of its own)."""
    sides = {"query": (raw.query, raw.line), "response": (raw.response, raw.response_line)}
    text = {side: clean(written, transliterate) for side, (written, _) in sides.items()}
    for side, (written, line) in sides.items():
        if not text[side]:
            dropped = f": nothing in {written.strip()!r} has an ASCII form" if written.strip() else ""
            return "empty", f"empty {side}{dropped}", line
        bad = next((c for c in text[side] if not is_printable(c)), None)
        if bad is not None:  # checked before upper-casing, which would turn some letters into ASCII (ß -> SS)
            why = f"{side} has character {bad!r} (U+{ord(bad):04X}); only printable ASCII is allowed"
            return "non_ascii", f"{why} (--transliterate maps letters to ASCII)", line
    query, response = text["query"], text["response"].upper() if case == "upper" else text["response"]
    if query.startswith(COMMAND_PREFIX):
        reserved = f"queries starting with {COMMAND_PREFIX!r} are reserved for the device's machine commands"
        return "command_prefix", reserved, raw.line
    if len(query) < MIN_QUERY:
        return "short_query", f"query shorter than {MIN_QUERY} characters", raw.line
    if len(response) > MAX_REPLY:
        too_long = f"response of {len(response)} characters, longer than {MAX_REPLY} (the device's reply limit)"
        return "long_response", too_long, raw.response_line
    outside = sorted(set(response) - set(charset)) if charset is not None else []
    if outside:
        return ("outside_charset", f"response has characters outside the model's charset: {''.join(outside)!r}",
                raw.response_line)
    return Pair(normalize_query(query), response, raw.line)


def normalize_query(raw: str | bytes) -> str:
    """The query exactly as the device sees it after its line editor.

    Bytes outside printable ASCII are dropped, backspace (0x08) and DEL (0x7F) remove the previous
    character, a space right after a space is dropped (a run of spaces is one), input beyond MAX_QUERY
    characters is ignored, surrounding spaces are stripped.
    The firmware's line reader (templates/unochat_model.c.j2) does the same, byte for byte.
    """
    data = raw.encode("latin-1", "replace") if isinstance(raw, str) else raw
    kept: list[str] = []
    for byte in data:
        if byte in (0x08, 0x7F):
            if kept:
                kept.pop()
        elif is_printable(chr(byte)) and len(kept) < MAX_QUERY and not (byte == 0x20 and kept and kept[-1] == " "):
            kept.append(chr(byte))
    return "".join(kept).strip(" ")


def load_dataset(path: str | Path, charset: str | None = None, strict: bool = False, case: str = "keep",
                 transliterate: bool = False) -> Dataset:
    """Every pair of a corpus file or directory (data/corpus.py: by extension) that meets the rules; the
    rest refused and counted. `charset` (without EOS) restricts responses to a model's alphabet."""
    if case not in CASES:
        raise ValueError(f"case is one of {', '.join(CASES)}, got {case!r}")
    pairs: list[Pair] = []
    problems: list[Problem] = []
    digest = hashlib.sha256()
    try:
        for file, data, items in read_corpus(Path(path)):
            # one file: its lines, as the digest always was; a directory: each file's name and lines
            digest.update(b"\n".join(data.splitlines()) if not Path(path).is_dir() else file.name.encode() + data)
            for item in items:
                checked = (check_pair(item, case, transliterate, charset) if isinstance(item, RawPair)
                           else (item.kind, item.reason, item.line))
                if isinstance(checked, Pair):
                    pairs.append(checked)
                    continue
                kind, reason, line = checked
                problem = Problem(str(file), line, reason, kind)
                if strict:
                    raise DatasetError(str(problem))
                problems.append(problem)
    except CorpusError as e:
        raise DatasetError(str(e)) from e
    if not pairs:
        raise DatasetError("\n".join([f"{path}: no usable query/response pairs ({len(problems)} refused)",
                                      *refusal_lines(problems)]))
    return Dataset(str(path), pairs, problems, digest.hexdigest()[:16])


def recorded_dataset(meta: dict) -> Path | None:
    """The dataset a model's (or checkpoint's) meta names, where it is found here: as recorded, or
    relative to the repo (a pipeline run elsewhere records its own paths). None if it is not here."""
    named = (meta.get("dataset") or {}).get("path")
    for candidate in ([Path(named), REPO / named] if named else []):
        if candidate.exists():  # a file, or a directory of YAML files
            return candidate
    return None


def spread_queries(pairs: list[Pair], n: int = SAMPLE_QUERIES) -> list[str]:
    """n distinct normalized queries spread evenly over the pairs, in their order."""
    queries = list(dict.fromkeys(normalize_query(p.query) for p in pairs))
    step = max(1, len(queries) // max(n, 1))
    return queries[::step][:n]


def build_charset(pairs: list[Pair]) -> str:
    """z80ai's order: space, letters, digits, punctuation, then EOS last."""
    chars = set("".join(p.response for p in pairs))
    space = [" "] if " " in chars else []
    letters = sorted(c for c in chars if c.isalpha())
    digits = sorted(c for c in chars if c.isdigit())
    punct = sorted(c for c in chars if not c.isalnum() and c != " ")
    return "".join(space + letters + digits + punct) + EOS


def split_heldout(pairs: list[Pair], fraction: float = 0.1, seed: int = HELDOUT_SEED) -> tuple[list[Pair], list[Pair]]:
    """Seeded split: numpy RandomState(seed).permutation, the first `fraction` of it held out (z80ai's own
    split, so figures compare with its published ones)."""
    order = np.random.RandomState(seed).permutation(len(pairs))
    n_held = int(len(pairs) * fraction)
    held = [pairs[i] for i in order[:n_held]]
    train = [pairs[i] for i in order[n_held:]]
    return train, held


def training_split(pairs: list[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(pairs a model trains on, pairs held out from it) for a held-out `fraction` (0: all, none)."""
    return split_heldout(pairs, fraction) if fraction > 0 else (pairs, [])


@dataclass(frozen=True)
class CorpusReport:
    """What a corpus holds (`unochat data`): its pairs and refusals, distinct queries (as the features
    see them, lower-case) and replies, the reply text, and the exact-match ceiling: for each distinct
    query the count of its most common reply, over every pair (refused ones too). No model that answers
    a query one way can do better."""

    path: str
    pairs: int
    refused: dict[str, int]
    queries: int
    replies: int
    reply_bytes: int  # characters of the distinct replies
    longest: int
    ceiling: float


def answerable(pairs: list[Pair]) -> Counter:
    """reply -> the pairs it can answer right: a query (as the features see it, lower-case) with several
    replies is answered one way, so only its most common reply (the first on ties) counts."""
    by_query: dict[str, Counter] = {}
    for p in pairs:
        by_query.setdefault(p.query.lower(), Counter())[p.response] += 1
    worth: Counter = Counter()
    for replies in by_query.values():
        reply, n = replies.most_common(1)[0]
        worth[reply] += n
    return worth


def corpus_report(dataset: Dataset) -> CorpusReport:
    replies = {p.response for p in dataset.pairs}
    return CorpusReport(
        path=dataset.path, pairs=len(dataset.pairs), refused=dict(dataset.refusals()),
        queries=len({p.query.lower() for p in dataset.pairs}), replies=len(replies),
        reply_bytes=sum(map(len, replies)), longest=max(map(len, replies)),
        ceiling=sum(answerable(dataset.pairs).values()) / (len(dataset.pairs) + len(dataset.problems)),
    )
