"""Quality of an integer model, always measured through reference.py (the integer spec), never a float model.

TF   teacher-forced accuracy: the share of next-character predictions (every response character and the
     final EOS) that are right when the context is the true response so far; a model with stored replies
     predicts as it decodes (the allowed symbol with the largest logit; a step forced by the store is right).
EM   exact match: the share of pairs whose generated reply (reference.generate, free or reply-constrained)
     equals the response, character for character; nothing is stripped or case-folded.
loss mean cross-entropy of the teacher-forced targets under softmax(int logits * logit_scale), in nats
     (a model with stored replies: where the store leaves a choice, among the allowed symbols); None for a
     model without logit_scale (an imported z80ai model).
"""
from __future__ import annotations

import numpy as np

from ..data.dataset import Pair
from ..data.features import teacher_forced_examples, teacher_forced_prefixes
from . import reference
from .intmodel import IntModel


def _require(pairs: list[Pair]) -> None:
    if not pairs:
        raise ValueError("no pairs to evaluate")


def example_accuracy(model: IntModel, x: np.ndarray, y: np.ndarray, allowed: np.ndarray | None = None) -> float:
    """Share of examples (inputs x, target indices y) the integer model predicts right; with `allowed`
    (bool [N, symbols]) the choice is the largest logit among each example's allowed symbols (ties: the
    lowest index), as reply-constrained decoding makes it."""
    step_logits = reference.logits(model, x)
    if allowed is not None:
        step_logits = np.where(allowed, step_logits, np.iinfo(np.int64).min)
    return float(np.mean(np.argmax(step_logits, axis=1) == y))


def _cross_entropy(logits: np.ndarray, y: np.ndarray, logit_scale: float) -> float:
    z = logits.astype(np.float64) * logit_scale
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def teacher_forced_accuracy(model: IntModel, pairs: list[Pair]) -> float:
    _require(pairs)
    x, y = teacher_forced_examples(pairs, model.charset, model.features)
    return float(np.mean(reference.choices(model, reference.logits(model, x), teacher_forced_prefixes(pairs)) == y))


def exact_match(model: IntModel, pairs: list[Pair]) -> float:
    _require(pairs)
    replies = reference.generate(model, [p.query for p in pairs])
    return float(np.mean([r == p.response for r, p in zip(replies, pairs)]))


def _loss(model: IntModel, logits: np.ndarray, y: np.ndarray, prefixes: list[str]) -> float | None:
    """Cross-entropy of the targets; for a model with stored replies only where the store leaves a choice
    that includes the target, among the allowed symbols (the only ones it ever chooses from)."""
    if model.logit_scale is None:
        return None
    if model.store is None:
        return _cross_entropy(logits, y, model.logit_scale)
    rows, masks = [], []
    for row, (prefix, target) in enumerate(zip(prefixes, y)):
        allowed = reference.allowed_symbols(model, prefix)
        if len(allowed) > 1 and target in allowed:
            rows.append(row)
            masks.append(np.isin(np.arange(logits.shape[1]), allowed))
    if not rows:
        return None
    masked = np.where(np.stack(masks), logits[rows].astype(np.float64), -np.inf)
    return _cross_entropy(masked, y[rows], model.logit_scale)


def cross_entropy(model: IntModel, pairs: list[Pair]) -> float | None:
    _require(pairs)
    x, y = teacher_forced_examples(pairs, model.charset, model.features)
    return _loss(model, reference.logits(model, x), y, teacher_forced_prefixes(pairs))


def evaluate(model: IntModel, pairs: list[Pair]) -> dict:
    """{'tf', 'em', 'loss'} on these pairs; the teacher-forced logits are computed once for tf and loss."""
    _require(pairs)
    x, y = teacher_forced_examples(pairs, model.charset, model.features)
    logits = reference.logits(model, x)
    prefixes = teacher_forced_prefixes(pairs)
    return {
        "tf": float(np.mean(reference.choices(model, logits, prefixes) == y)),
        "em": exact_match(model, pairs),
        "loss": _loss(model, logits, y, prefixes),
    }
