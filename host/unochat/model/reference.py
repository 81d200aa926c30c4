"""The reference: integer inference as the UNO does it. This is the written spec that the C mirrors.

    acc = W x                              exact (|acc| < 2^31 is proven by IntModel.check_bounds)
    z   = floor((acc * mult + bias) / 2^shift)
    hidden: y = min(max(z, 0), ACT_MAX)    ReLU and saturation
    output: logits = z; next symbol = the first index of the maximum
Generation starts with an empty context, appends the predicted character, and stops at EOS or after
max_reply characters.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from ..data.features import FeatureSpec, context_features, query_features
from .intmodel import ACT_MAX, IntLayer, IntModel


def layer_forward(layer: IntLayer, x: np.ndarray) -> np.ndarray:
    """x: int64 [N, n_in] -> int64 [N, n_out]."""
    # float64 holds every integer below 2^53 exactly and the bound check keeps |acc| < 2^31,
    # so this BLAS product is the exact integer dot product, only fast.
    acc = np.rint(x.astype(np.float64) @ layer.weight.T.astype(np.float64)).astype(np.int64)
    z = (acc * layer.mult + layer.bias) >> layer.shift  # numpy's >> on int64 is a floor shift
    if layer.act is None:
        return z
    return np.clip(z, 0, ACT_MAX[layer.act])


def forward(model: IntModel, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's output for inputs x (uint8 [N, n_inputs] or [n_inputs]); the last one is the logits."""
    h = np.atleast_2d(np.asarray(x)).astype(np.int64)
    outputs = []
    for layer in model.layers:
        h = layer_forward(layer, h)
        outputs.append(h)
    return outputs


def logits(model: IntModel, x: np.ndarray) -> np.ndarray:
    return forward(model, x)[-1]


def predict(model: IntModel, x: np.ndarray) -> np.ndarray:
    return np.argmax(logits(model, x), axis=1)  # np.argmax returns the first index of the maximum


@lru_cache(maxsize=65536)
def _context(generated: str, spec: FeatureSpec) -> np.ndarray:
    return context_features(generated, spec)


def generate(model: IntModel, queries: list[str],
             on_step: Callable[[list[int], np.ndarray, np.ndarray], None] | None = None) -> list[str]:
    """Replies to many (normalized) queries at once, step by step as the device generates them.
    `on_step(active, logits, next)`, if given, sees every step: the indices of the queries still
    generating, their logits and the symbols chosen."""
    spec = model.features
    q = [query_features(text, spec) for text in queries]
    replies = [""] * len(queries)
    active = list(range(len(queries)))
    for _ in range(model.max_reply):
        if not active:
            break
        x = np.stack([np.concatenate([q[i], _context(replies[i], spec)]) for i in active])
        step_logits = logits(model, x)
        nxt = np.argmax(step_logits, axis=1)  # the first index of the maximum
        if on_step is not None:
            on_step(active, step_logits, nxt)
        still = []
        for i, k in zip(active, nxt):
            if k != model.eos:
                replies[i] += model.charset[k]
                still.append(i)
        active = still
    return replies


def reply(model: IntModel, query: str) -> str:
    return generate(model, [query])[0]
