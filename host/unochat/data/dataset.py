"""Datasets of `query|response` lines (z80ai's format), the charset, and the seeded held-out split.

Rules (documented in README "Dataset format"):
- blank lines and lines starting with '#' are comments;
- a pair is `query|response`, split at the first '|', both sides stripped;
- responses are upper-cased (the model's output alphabet), queries are hashed lower-case;
- both sides must be printable ASCII, because the UNO sees bytes and hashes them;
- a query must not start with '!', which marks the device's machine commands;
- a query needs >= 2 characters (as z80ai), a response >= 1 and <= the reply limit;
- a query longer than the device's line buffer is cut exactly as the device cuts it.
Every other line is a problem: it is counted, named by file and line number, and skipped;
with strict=True the first problem raises DatasetError instead.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..paths import REPO

EOS = "\x00"
MAX_QUERY = 60  # the device's line buffer; z80ai also truncates queries at 60
MAX_REPLY = 50  # z80ai's generation limit
MIN_QUERY = 2  # z80ai drops shorter queries
HELDOUT_SEED = 0  # fixed: every model is judged on the same held-out pairs, whatever its training seed
SAMPLE_QUERIES = 20  # real queries that stand for a dataset where a model is timed or its density measured
COMMAND_PREFIX = "!"  # device lines starting with it are machine commands (README, "Serial protocol")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Pair:
    query: str
    response: str
    line: int


@dataclass
class Problem:
    path: str
    line: int
    reason: str

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

    def summary(self) -> str:
        return f"{self.path}: {len(self.pairs)} pairs, {len(self.problems)} lines skipped"


def is_printable(text: str) -> bool:
    """Printable ASCII only (0x20-0x7E): what the device's line editor keeps, hashes and may reply with."""
    return all(" " <= c <= "~" for c in text)


def _parse_line(text: str, charset: str | None) -> tuple[Pair | None, str | None]:
    """Returns (pair, None), (None, reason) for a bad line, or (None, None) for a comment."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None, None
    if "|" not in stripped:
        return None, "no '|' between query and response"
    query, response = (side.strip() for side in stripped.split("|", 1))
    response = response.upper()
    if not query or not response:
        return None, "empty " + ("query" if not query else "response")
    for side, value in (("query", query), ("response", response)):
        if not is_printable(value):
            bad = next(c for c in value if not is_printable(c))
            return None, f"{side} has character {bad!r} (U+{ord(bad):04X}); only printable ASCII is allowed"
    if query.startswith(COMMAND_PREFIX):
        return None, f"queries starting with {COMMAND_PREFIX!r} are reserved for the device's machine commands"
    if len(query) < MIN_QUERY:
        return None, f"query shorter than {MIN_QUERY} characters"
    if len(response) > MAX_REPLY:
        return None, f"response longer than {MAX_REPLY} characters (the device's reply limit)"
    if charset is not None:
        outside = sorted(set(response) - set(charset))
        if outside:
            return None, f"response has characters outside the model's charset: {''.join(outside)!r}"
    return Pair(normalize_query(query), response, 0), None


def normalize_query(raw: str | bytes) -> str:
    """The query exactly as the device sees it after its line editor.

    Bytes outside printable ASCII are dropped, backspace (0x08) and DEL (0x7F) remove the previous
    character, input beyond MAX_QUERY characters is ignored, surrounding spaces are stripped.
    The firmware's line reader (templates/unochat_model.c.j2) does the same, byte for byte.
    """
    data = raw.encode("latin-1", "replace") if isinstance(raw, str) else raw
    kept: list[str] = []
    for byte in data:
        if byte in (0x08, 0x7F):
            if kept:
                kept.pop()
        elif is_printable(chr(byte)) and len(kept) < MAX_QUERY:
            kept.append(chr(byte))
    return "".join(kept).strip(" ")


def read_lines(path: str | Path) -> list[bytes]:
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such dataset file")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            return f.read().splitlines()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{p}: cannot read: {e}") from e


def load_dataset(path: str | Path, charset: str | None = None, strict: bool = False) -> Dataset:
    """Load a `.txt` or `.txt.gz` dataset. `charset` (without EOS) restricts responses to a model's alphabet."""
    raw_lines = read_lines(path)
    pairs: list[Pair] = []
    problems: list[Problem] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            pair, reason = None, f"not valid UTF-8 (byte 0x{raw[e.start]:02X} at column {e.start + 1})"
        else:
            pair, reason = _parse_line(text, charset)
        if reason is not None:
            problem = Problem(str(path), number, reason)
            if strict:
                raise DatasetError(str(problem))
            problems.append(problem)
        elif pair is not None:
            pairs.append(Pair(pair.query, pair.response, number))
    if not pairs:
        raise DatasetError(f"{path}: no usable `query|response` pairs ({len(problems)} bad lines)")
    digest = hashlib.sha256(b"\n".join(raw_lines)).hexdigest()[:16]
    return Dataset(str(path), pairs, problems, digest)


def recorded_dataset(meta: dict) -> Path | None:
    """The dataset a model's (or checkpoint's) meta names, where it is found here: as recorded, or
    relative to the repo (a pipeline run elsewhere records its own paths). None if it is not here."""
    named = (meta.get("dataset") or {}).get("path")
    for candidate in ([Path(named), REPO / named] if named else []):
        if candidate.is_file():
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
