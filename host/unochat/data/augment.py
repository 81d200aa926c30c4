"""Query augmentation for training: new `query|response` pairs made from the training pairs themselves.

The device only ever sees the query through hashed features, so a model generalises to an unseen phrasing
only as far as the training queries cover the ways people write the same thing. Augmentation adds, for
each training pair, a few seeded variants of its query with the SAME response:

    drop   remove one word (queries of 2+ words; never the only word)
    swap   exchange two adjacent words (2+ words)
    typo   one character edit inside a word of 3+ letters: delete a letter, double a letter, transpose
           two adjacent letters, or replace a letter by a neighbour on a QWERTY keyboard
    sub    replace one word by a word it is interchangeable with in the training data (below)
    punct  add, remove or change a trailing '?' / '!' / '.'

Substitutions are learned from the training pairs only (`learn_substitutions`): two queries with the same
response that have the same number of words and differ in exactly one word make those two words a
candidate pair; pairs seen at least `min_count` times become substitutions (both directions). On z80ai's
tinychat data this finds it/that/this, bye/later/goodbye, ok/alright/fine, bot/machine/program, ...

Rules that keep the labels honest:
- echo pairs (the response is the query upper-cased, maybe with a trailing '?' or '!', e.g. `dope|DOPE`)
  are never augmented: a changed query would teach the model to echo something it was not given;
- a variant is normalised exactly as the device normalises a line (data.normalize_query), must keep
  >= MIN_QUERY characters and must differ from the original query;
- everything is seeded (numpy Generator) and depends only on the pairs, the ops and the seed, so the same
  call gives the same variants on every machine.
The held-out pairs are never passed in: callers augment the training pairs after the split.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from .dataset import MIN_QUERY, Pair, normalize_query

OPS = ("drop", "swap", "typo", "sub", "punct")
TRAILING = "?!."
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Letters next to each letter on a QWERTY keyboard: left and right in its row, and, the rows being
    staggered, keys i and i+1 of the row above and keys i-1 and i of the row below (h: y u g j b n)."""
    near: dict[str, str] = {}
    for r, row in enumerate(_KEYBOARD_ROWS):
        for i, c in enumerate(row):
            found = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            if r > 0:
                found += [_KEYBOARD_ROWS[r - 1][j] for j in (i, i + 1) if 0 <= j < len(_KEYBOARD_ROWS[r - 1])]
            if r < len(_KEYBOARD_ROWS) - 1:
                found += [_KEYBOARD_ROWS[r + 1][j] for j in (i - 1, i) if 0 <= j < len(_KEYBOARD_ROWS[r + 1])]
            near[c] = "".join(sorted(found))
    return near


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()


def is_echo(pair: Pair) -> bool:
    """The response is the query itself upper-cased, maybe with trailing '?'/'!' (dope|DOPE, kinda|KINDA?)."""
    return pair.response.rstrip("?!").lower() == pair.query.lower().rstrip("?!")


def learn_substitutions(pairs: list[Pair], min_count: int = 3) -> dict[str, list[str]]:
    """word -> interchangeable words, from same-response queries that differ in exactly one word."""
    by_response: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for p in pairs:
        words = tuple(p.query.lower().split())
        if words:
            by_response[p.response].append(words)
    counts: Counter = Counter()
    for queries in by_response.values():
        # group by (length, words except one position) so the search is linear, not quadratic
        buckets: dict[tuple, set[str]] = defaultdict(set)
        for words in set(queries):
            for i in range(len(words)):
                buckets[(len(words), i, words[:i] + words[i + 1:])].add(words[i])
        for alternatives in buckets.values():
            alts = sorted(alternatives)
            for a in range(len(alts)):
                for b in range(a + 1, len(alts)):
                    counts[(alts[a], alts[b])] += 1
    subs: dict[str, set[str]] = defaultdict(set)
    for (a, b), n in counts.items():
        if n >= min_count:
            subs[a].add(b)
            subs[b].add(a)
    return {w: sorted(v) for w, v in sorted(subs.items())}


def _typo(word: str, rng: np.random.Generator) -> str:
    letters = [i for i, c in enumerate(word) if c.isalpha()]
    if len(letters) < 3:
        return word
    kind = int(rng.integers(4))
    i = letters[int(rng.integers(len(letters)))]
    if kind == 0:  # delete
        return word[:i] + word[i + 1:]
    if kind == 1:  # double
        return word[:i + 1] + word[i:]
    if kind == 2:  # transpose with the next character
        if i + 1 >= len(word):
            i -= 1
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    near = KEYBOARD_NEIGHBOURS.get(word[i].lower(), "")
    if not near:
        return word
    return word[:i] + near[int(rng.integers(len(near)))] + word[i + 1:]


def augment_query(query: str, op: str, rng: np.random.Generator, subs: dict[str, list[str]] | None = None) -> str:
    """One variant of `query` by `op` (see the module doc); may return the query unchanged."""
    words = query.split()
    if op == "drop":
        if len(words) < 2:
            return query
        del words[int(rng.integers(len(words)))]
    elif op == "swap":
        if len(words) < 2:
            return query
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    elif op == "typo":
        candidates = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 3]
        if not candidates:
            return query
        i = candidates[int(rng.integers(len(candidates)))]
        words[i] = _typo(words[i], rng)
    elif op == "sub":
        candidates = [i for i, w in enumerate(words) if subs and w.lower() in subs]
        if not candidates:
            return query
        i = candidates[int(rng.integers(len(candidates)))]
        choices = subs[words[i].lower()]
        words[i] = choices[int(rng.integers(len(choices)))]
    elif op == "punct":
        text = query.rstrip(TRAILING)
        choice = int(rng.integers(len(TRAILING) + 1))
        return text if choice == len(TRAILING) else text + TRAILING[choice]
    else:
        raise ValueError(f"unknown augmentation {op!r}: use {', '.join(OPS)}")
    return " ".join(words)


@dataclass(frozen=True)
class AugmentConfig:
    copies: int = 0  # variants per training pair (0: no augmentation)
    ops: tuple[str, ...] = OPS  # each variant applies one op drawn uniformly from these
    min_count: int = 3  # substitutions seen fewer times are not used
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.copies < 0:
            raise ValueError(f"augmentation copies must be >= 0, got {self.copies}")
        if not self.ops:
            raise ValueError("augmentation needs at least one op")
        bad = [op for op in self.ops if op not in OPS]
        if bad:
            raise ValueError(f"unknown augmentation {bad[0]!r}: use {', '.join(OPS)}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")


def augment_pairs(pairs: list[Pair], config: AugmentConfig) -> list[Pair]:
    """`config.copies` variants per pair (fewer when an op leaves a query unchanged), originals NOT included.

    Each variant keeps the pair's response and line number. A variant equal to any training query (`ok`
    from `ok then`, while `ok` has a reply of its own) or to another variant of the same pair is dropped:
    it would contradict a real pair or only re-weight one."""
    if config.copies == 0:
        return []
    subs = learn_substitutions(pairs, config.min_count) if "sub" in config.ops else {}
    rng = np.random.default_rng(config.seed)
    queries = {p.query.lower() for p in pairs}
    out: list[Pair] = []
    for pair in pairs:
        if is_echo(pair):
            continue
        seen: set[str] = set()
        for _ in range(config.copies):
            op = config.ops[int(rng.integers(len(config.ops)))]
            variant = normalize_query(augment_query(pair.query, op, rng, subs))
            if len(variant) < MIN_QUERY or variant.lower() in queries or variant.lower() in seen:
                continue
            seen.add(variant.lower())
            out.append(Pair(variant, pair.response, pair.line))
    return out


# The ways a person types the same query differently (the benchmark's robustness figure): its case, its
# end punctuation, its spacing, one typo.
TYPED_DIFFERENTLY = ("case", "punct", "spacing", "typo")


def typed_differently(query: str, kind: str, rng: np.random.Generator) -> str:
    """`query` typed differently in one way (TYPED_DIFFERENTLY), normalized as the device normalizes a
    line; may return the query unchanged (a typo needs a word of 3+ letters)."""
    if kind == "case":
        shapes = (str.upper, str.lower, str.capitalize, str.swapcase)
        variant = shapes[int(rng.integers(len(shapes)))](query)
    elif kind == "spacing":
        gaps = [i for i, c in enumerate(query) if c == " "]
        if gaps:  # one space doubled
            i = gaps[int(rng.integers(len(gaps)))]
            variant = query[:i] + " " + query[i:]
        else:  # a space before the end punctuation, or after the query (stripped: no change)
            variant = query[:-1] + " " + query[-1] if query[-1] in TRAILING else query
    elif kind in ("punct", "typo"):
        variant = augment_query(query, kind, rng)
    else:
        raise ValueError(f"unknown way to type a query {kind!r}: use {', '.join(TYPED_DIFFERENTLY)}")
    return normalize_query(variant)
