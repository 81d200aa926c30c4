"""The reply store: the replies a model may give, and the rule that keeps its generation inside them.

The rule (reply-constrained decoding, part of the integer spec; model/reference.py runs it, the C in
templates/unochat_model.c.j2 mirrors it on the compressed store below):
- after a prefix, the allowed symbols are the characters that continue some stored reply, and EOS if
  the prefix is itself a stored reply;
- one allowed symbol: it is taken without running the network (so once the prefix is unique, the rest
  of the reply is copied);
- several: the network runs and the allowed symbol with the largest logit is taken, ties to the lowest
  charset index (the free argmax's rule; EOS is the charset's last symbol).

The store on the device (`encode`), replies sorted bytewise, n of them:
- lcp[j]: the length of the prefix reply j shares with reply j-1 (0 for j = 0), one byte;
- head[j]: the charset index of reply j's first character after that prefix, one byte;
- text: per reply the rest after the head and then EOS, canonical-Huffman coded over the charset indices
  (codes of at most MAX_CODE_BITS bits, most significant bit first), replies back to back; every
  CHECKPOINT-th reply starts on a byte, whose offset `checkpoints` keeps.
Why this layout: replies that share a prefix p (the candidates after p) are a contiguous range of the
sorted list; within it, the next characters change exactly at the replies j with lcp[j] == p, whose next
character is head[j]. So a step reads one or two bytes per candidate reply and decodes text only for the
reply it follows. Measured sizes: README "Real corpora".
"""
from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..data.dataset import Pair, answerable

MAX_CODE_BITS = 15  # canonical codes fit 16-bit arithmetic in the decoder
CHECKPOINT = 16  # replies between byte-aligned text offsets: locating reply j decodes at most 15 others
_AFTER_ASCII = "\x7f"  # sorts after every printable character: the end of a prefix's range


class StoreError(ValueError):
    """Replies a store cannot hold."""


class ReplyStore:
    """A sorted set of distinct replies and the decoding rule's questions about it."""

    def __init__(self, replies: list[str] | tuple[str, ...]) -> None:
        self.replies = tuple(sorted(set(replies)))
        if not self.replies:
            raise StoreError("a reply store needs at least one reply")
        if any(not r for r in self.replies):
            raise StoreError("stored replies must not be empty")
        self._allowed = lru_cache(maxsize=65536)(self._allowed_uncached)

    def __len__(self) -> int:
        return len(self.replies)

    def __contains__(self, reply: str) -> bool:
        i = bisect_left(self.replies, reply)
        return i < len(self.replies) and self.replies[i] == reply

    @property
    def longest(self) -> int:
        return max(len(r) for r in self.replies)

    def candidates(self, prefix: str) -> range:
        """Indices of the replies that start with `prefix` (a contiguous range of the sorted list)."""
        return range(bisect_left(self.replies, prefix), bisect_left(self.replies, prefix + _AFTER_ASCII))

    def _allowed_uncached(self, prefix: str) -> tuple[str, ...]:
        p = len(prefix)
        found = dict.fromkeys(self.replies[j][p] if len(self.replies[j]) > p else "" for j in self.candidates(prefix))
        return tuple(found)  # "" stands for EOS (the prefix is a reply); characters in byte order

    def allowed(self, prefix: str) -> tuple[str, ...]:
        """The symbols that may follow `prefix`: characters, and "" for EOS where the prefix is a reply."""
        return self._allowed(prefix)


# ---- the device's encoding ---------------------------------------------------------------------------
def code_lengths(counts: dict[int, int], limit: int = MAX_CODE_BITS) -> dict[int, int]:
    """Huffman code lengths of symbols with these counts (all > 0), at most `limit` bits each."""
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    heap = [(n, s, [s]) for s, n in sorted(counts.items())]
    heapq.heapify(heap)
    length = Counter()
    while len(heap) > 1:
        n1, k1, a = heapq.heappop(heap)
        n2, k2, b = heapq.heappop(heap)
        for s in a + b:
            length[s] += 1
        heapq.heappush(heap, (n1 + n2, min(k1, k2), a + b))
    lengths = {s: min(length[s], limit) for s in counts}
    # clamping broke the Kraft inequality: lengthen the rarest codes still below the limit until it holds
    by_rarity = sorted(counts, key=lambda s: (counts[s], -s))
    while sum(2.0 ** -n for n in lengths.values()) > 1.0:
        s = next(s for s in by_rarity if lengths[s] < limit)
        lengths[s] += 1
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length), canonical: codes of each length consecutive, in symbol order."""
    codes, code, previous = {}, 0, 0
    for s in sorted(lengths, key=lambda s: (lengths[s], s)):
        code <<= lengths[s] - previous
        previous = lengths[s]
        codes[s] = (code, lengths[s])
        code += 1
    return codes


@dataclass(frozen=True)
class EncodedStore:
    """The arrays the generated C holds in PROGMEM (module doc)."""

    lcp: np.ndarray  # uint8 [n]
    head: np.ndarray  # uint8 [n]: charset indices
    text: np.ndarray  # uint8: the Huffman bit stream
    checkpoints: np.ndarray  # uint16 [ceil(n / CHECKPOINT)]: byte offsets into text
    code_counts: np.ndarray  # uint8 [MAX_CODE_BITS + 1]: codes of each length (index 0 unused)
    code_symbols: np.ndarray  # uint8: symbols in canonical order

    @property
    def nbytes(self) -> int:
        """Flash bytes of the store's tables."""
        return sum(a.nbytes for a in (self.lcp, self.head, self.text, self.checkpoints, self.code_counts,
                                      self.code_symbols))


def encode(store: ReplyStore, charset: str) -> EncodedStore:
    """The store as the device holds it; every reply must be spelled in `charset` (EOS last)."""
    index = {c: i for i, c in enumerate(charset[:-1])}
    eos = len(charset) - 1
    outside = sorted({c for r in store.replies for c in r} - set(index))
    if outside:
        raise StoreError(f"stored replies use characters outside the charset: {''.join(outside)!r}")
    if store.longest > 255:
        raise StoreError(f"a stored reply has {store.longest} characters; the device's limit is 255")
    if len(store) > 65535:
        raise StoreError(f"{len(store)} replies; the device's limit is 65,535")
    lcp, head, rests = [], [], []
    previous = ""
    for reply in store.replies:
        shared = 0
        while shared < min(len(reply), len(previous)) and reply[shared] == previous[shared]:
            shared += 1
        lcp.append(shared)
        head.append(index[reply[shared]])  # sorted and distinct: a reply is never a prefix of the one before
        rests.append([index[c] for c in reply[shared + 1:]] + [eos])
        previous = reply
    counts = Counter(s for rest in rests for s in rest)
    codes = canonical_codes(code_lengths(counts))
    bits: list[int] = []
    checkpoints = []
    for j, rest in enumerate(rests):
        if j % CHECKPOINT == 0:
            bits += [0] * (-len(bits) % 8)
            checkpoints.append(len(bits) // 8)
        for s in rest:
            code, n = codes[s]
            bits += [(code >> (n - 1 - b)) & 1 for b in range(n)]
    bits += [0] * (-len(bits) % 8)
    text = np.packbits(np.array(bits, dtype=np.uint8)) if bits else np.zeros(0, np.uint8)
    if text.size > 65535:
        raise StoreError(f"the store's text needs {text.size:,} B; the device addresses 65,535")
    lengths = Counter(n for _, n in codes.values())
    return EncodedStore(
        lcp=np.array(lcp, dtype=np.uint8),
        head=np.array(head, dtype=np.uint8),
        text=text.astype(np.uint8),
        checkpoints=np.array(checkpoints, dtype=np.uint16),
        code_counts=np.array([lengths.get(n, 0) for n in range(MAX_CODE_BITS + 1)], dtype=np.uint8),
        code_symbols=np.array(sorted(codes, key=lambda s: (codes[s][1], s)), dtype=np.uint8),
    )


def select_replies(pairs: list[Pair], charset: str, budget: int | None = None) -> ReplyStore:
    """The store of the pairs' replies, or, within `budget` bytes (EncodedStore.nbytes), of the replies that
    serve the most pairs per byte: a reply's worth is the pairs it can answer right (`answerable`), its cost
    about its coded length (4.6 bits a character and 2 bytes a reply, as measured on ChatterBot; the budget
    is checked on the real encoding). Replies that answer no pair right go last."""
    worth = answerable(pairs)
    ranked = sorted({p.response for p in pairs}, key=lambda r: (-worth[r] / (2 + 0.575 * len(r)), r))
    if budget is None or encode(ReplyStore(ranked), charset).nbytes <= budget:
        return ReplyStore(ranked)
    fits, too_many = 0, len(ranked)  # the largest prefix of the ranking that fits: binary search
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        if encode(ReplyStore(ranked[:middle]), charset).nbytes <= budget:
            fits = middle
        else:
            too_many = middle
    if fits == 0:
        raise StoreError(f"not even one reply fits a store of {budget:,} B")
    return ReplyStore(ranked[:fits])
