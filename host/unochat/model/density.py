"""How many of each layer's inputs are nonzero while the model replies: what the fast path's planner
(codegen/plan.py) chooses kernels by.

A model records it in `meta["density"]` when it is made (`unochat train`, `prune`, `quantize`,
`pipeline`, `import-z80ai --data`) or later with `unochat density MODEL --data F`: rendering C never
loads data or runs inference. A model without it is planned with DEFAULT (and the planner says so).
"""
from __future__ import annotations

import numpy as np

from ..data.features import input_vector
from . import reference
from .intmodel import IntModel

# Hidden layers of trained and test models measured 14-50% nonzero: lists win below about 85%, and zero
# thresholds pay below 80%, so a layer of unknown density is planned as half nonzero.
DEFAULT_HIDDEN = 0.5


def default_density(model: IntModel) -> list[float]:
    """The stated default: the first layer's context half at its most (3 * context_len - 3 n-gram counts
    over the context buckets), DEFAULT_HIDDEN for every later layer."""
    spec = model.features
    first = min(1.0, (3 * spec.context_len - 3) / spec.context_buckets)
    return [first] + [DEFAULT_HIDDEN] * (len(model.layers) - 1)


def measure_density(model: IntModel, queries: list[str]) -> list[float]:
    """Mean fraction of nonzero inputs of each layer over the replies to `queries` (normalized), as the
    device generates them. For the first layer it is the context half's (the query half is cached per
    reply)."""
    if not queries:
        raise ValueError("measuring density needs at least one query")
    replies = reference.generate(model, queries)
    steps = [(q, r[:k]) for q, r in zip(queries, replies) for k in range(len(r) + 1)]
    x = np.stack([input_vector(q, g, model.features) for q, g in steps])
    outputs = reference.forward(model, x)
    density = [float((x[:, model.features.query_buckets:] != 0).mean())]
    return density + [float((h != 0).mean()) for h in outputs[:-1]]
