"""Input features: z80ai's hashed query trigrams and hashed context n-grams (z80ai's feedme.py, HarryR/z80ai).

This module is the spec for the C in templates/unochat_model.c.j2 (unochat_query_features,
unochat_context_features); tests/test_c_bitexact.py checks the two agree byte for byte.

Query: lower-case, pad one space each side, for every trigram h = 0, h = (h*31 + byte) & 0xFFFF per byte,
count[h % query_buckets] += 1.
Context: the last `context_len` generated characters, lower-case, right-justified with spaces; for
n in 1, 2, 3 and every n-gram starting at position i: h = i*7, then the same update per byte;
count[h % context_buckets] += 1.
Counts saturate at 255 (uint8), the input type of the first layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .dataset import EOS, Pair


@dataclass(frozen=True)
class FeatureSpec:
    query_buckets: int = 128
    context_buckets: int = 128
    context_len: int = 8

    def __post_init__(self) -> None:
        for name in ("query_buckets", "context_buckets"):
            value = getattr(self, name)
            if value not in (16, 32, 64, 128, 256):
                raise ValueError(f"{name} must be a power of two from 16 to 256, got {value}")
        if not 3 <= self.context_len <= 16:
            raise ValueError(f"context_len must be 3..16, got {self.context_len}")

    @property
    def n_inputs(self) -> int:
        return self.query_buckets + self.context_buckets

    def to_dict(self) -> dict:
        return asdict(self)


def _hash(text: str, start: int) -> int:
    h = start
    for c in text:
        h = (h * 31 + ord(c)) & 0xFFFF
    return h


def query_features(query: str, spec: FeatureSpec) -> np.ndarray:
    counts = np.zeros(spec.query_buckets, dtype=np.int64)
    padded = " " + query.lower() + " "
    for i in range(len(padded) - 2):
        counts[_hash(padded[i:i + 3], 0) % spec.query_buckets] += 1
    return np.minimum(counts, 255).astype(np.uint8)


def context_features(generated: str, spec: FeatureSpec) -> np.ndarray:
    counts = np.zeros(spec.context_buckets, dtype=np.int64)
    recent = generated[-spec.context_len:].lower().rjust(spec.context_len)
    for n in (1, 2, 3):
        for i in range(spec.context_len - n + 1):
            counts[_hash(recent[i:i + n], i * 7) % spec.context_buckets] += 1
    return np.minimum(counts, 255).astype(np.uint8)


def input_vector(query: str, generated: str, spec: FeatureSpec) -> np.ndarray:
    return np.concatenate([query_features(query, spec), context_features(generated, spec)])


def teacher_forced_prefixes(pairs: list[Pair]) -> list[str]:
    """The reply so far of each example of teacher_forced_examples, in its order."""
    return [pair.response[:k] for pair in pairs for k in range(len(pair.response) + 1)]


def teacher_forced_examples(pairs: list[Pair], charset: str, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """One example per response character plus EOS: (inputs uint8 [N, n_inputs], targets int64 [N])."""
    index = {c: i for i, c in enumerate(charset)}
    unknown = sorted({c for p in pairs for c in p.response} - set(charset))
    if unknown:
        raise ValueError(f"responses use characters outside the charset: {''.join(unknown)!r}")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for pair in pairs:
        q = query_features(pair.query, spec)
        for k, target in enumerate(pair.response + EOS):
            xs.append(np.concatenate([q, context_features(pair.response[:k], spec)]))
            ys.append(index[target])
    return np.stack(xs), np.asarray(ys, dtype=np.int64)
