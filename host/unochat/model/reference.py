"""The reference: integer inference as the UNO does it. This is the written spec that the C mirrors.

    acc = W x                              exact (|acc| < 2^31 is proven by IntModel.check_bounds)
    z   = floor((acc * mult + bias) / 2^shift)
    hidden: y = min(max(z, 0), ACT_MAX)    ReLU and saturation
    output: logits = z; next symbol = the first index of the maximum
Generation starts with an empty context, appends the predicted character, and stops at EOS or after
max_reply characters. A model with stored replies decodes under model/replies.py's rule: only symbols
that continue a stored reply are allowed, the network runs only where there are several, and the
allowed symbol with the largest logit wins (ties: the lowest index).
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


def predict(model: IntModel, x: np.ndarray, prefixes: list[str] | None = None) -> np.ndarray:
    """The symbol chosen for each input: the free argmax, or for a model with stored replies the
    constrained choice after each input's `prefix` (the reply so far, which the inputs' context encodes)."""
    return choices(model, logits(model, x), prefixes)


def choices(model: IntModel, step_logits: np.ndarray, prefixes: list[str] | None = None) -> np.ndarray:
    """`choose` for every row of logits (free: the argmax; constrained: after each row's prefix)."""
    if model.store is None:
        return np.argmax(step_logits, axis=1)  # np.argmax returns the first index of the maximum
    if prefixes is None or len(prefixes) != len(step_logits):
        raise ValueError("a model with stored replies predicts from the reply so far: pass one prefix per input")
    return np.array([choose(model, row, prefix) for row, prefix in zip(step_logits, prefixes)])


@lru_cache(maxsize=65536)
def _context(generated: str, spec: FeatureSpec) -> np.ndarray:
    return context_features(generated, spec)


def choose(model: IntModel, logits: np.ndarray, prefix: str) -> int:
    """The next symbol for one step's logits: the first index of the maximum (free decoding), or of the
    maximum over the symbols the store allows after `prefix`."""
    if model.store is None:
        return int(np.argmax(logits))  # np.argmax returns the first index of the maximum
    allowed = allowed_symbols(model, prefix)
    if not allowed:
        return -1  # a prefix no stored reply starts with (teacher forcing a reply the store lacks)
    return allowed[int(np.argmax(logits[allowed]))]  # allowed is in index order: ties go to the lowest


def allowed_symbols(model: IntModel, prefix: str) -> list[int]:
    """Charset indices the store allows after `prefix`, in index order (EOS, the last, for "")."""
    return sorted(model.symbol_index[c] for c in model.store.allowed(prefix))


def generate(model: IntModel, queries: list[str],
             on_step: Callable[[list[str], np.ndarray, list[int]], None] | None = None) -> list[str]:
    """Replies to many (normalized) queries at once, step by step as the device generates them.
    `on_step(prefixes, logits, chosen)`, if given, sees every step that runs the network: the replies so
    far of the queries it ran for, their logits and the symbols chosen."""
    spec = model.features
    q = [query_features(text, spec) for text in queries]
    replies = [""] * len(queries)
    active = list(range(len(queries)))
    for _ in range(model.max_reply):
        if not active:
            break
        chosen: dict[int, int] = {}
        network = []
        for i in active:
            if model.store is not None and len(only := allowed_symbols(model, replies[i])) == 1:
                chosen[i] = only[0]  # nothing to choose: the network does not run
            else:
                network.append(i)
        if network:
            x = np.stack([np.concatenate([q[i], _context(replies[i], spec)]) for i in network])
            step_logits = logits(model, x)
            picks = [choose(model, row, replies[i]) for i, row in zip(network, step_logits)]
            chosen.update(zip(network, picks))
            if on_step is not None:
                on_step([replies[i] for i in network], step_logits, picks)
        still = []
        for i in active:
            if chosen[i] != model.eos:
                replies[i] += model.charset[chosen[i]]
                still.append(i)
        active = still
    return replies


def network_steps(model: IntModel, reply: str) -> int:
    """How many steps of generating `reply` run the network: every step (each character and the one that
    finds EOS; none after max_reply characters), or under reply-constrained decoding only those where the
    store leaves a choice."""
    steps = range(len(reply) + (len(reply) < model.max_reply))
    if model.store is None:
        return len(steps)
    return sum(len(model.store.allowed(reply[:k])) > 1 for k in steps)


def reply(model: IntModel, query: str) -> str:
    return generate(model, [query])[0]
