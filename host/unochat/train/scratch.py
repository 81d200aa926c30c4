"""Train a model from scratch: dataset -> charset -> examples -> QuantMLP -> fit -> `out.pt` + `out.npz`."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .checkpoint import TrainResult, check_checkpoint_path, save_trained
from .config import TrainConfig
from .fit import fit, new_model
from .trainset import load_training_data, training_examples, training_pairs, with_store


def train(
    data_path: str | Path, config: TrainConfig, out_path: str | Path, *, progress: bool = True, meta: dict | None = None,
    store_room: Callable[[int], int] | None = None, on_epoch: Callable[[int, float | None], None] | None = None,
) -> TrainResult:
    """Train from scratch; `meta` adds to the integer model's meta (save_trained). `store_room(symbols)`,
    for reply-constrained decoding without a store budget, gives the budget for a charset of that many
    symbols (codegen.plan.store_room: what the board leaves beside the model); the config records it.
    `on_epoch(epoch, score)`: fit's, to follow training epoch by epoch."""
    start = time.perf_counter()
    check_checkpoint_path(out_path)
    data = load_training_data(data_path, config)
    if config.decoding == "replies" and config.store_bytes is None and store_room is not None:
        config = replace(config, store_bytes=store_room(len(data.charset)))
    data = with_store(data, config)
    examples = training_examples(training_pairs(data, config), data.charset, config, data.store)
    where = " (only where the store leaves a choice)" if data.store is not None else ""
    print(f"{len(examples.y):,} training examples{where}")
    model = new_model(config, len(data.charset))
    fitted = fit(model, (examples.x, examples.y), config, data.charset, config.features, progress=progress,
                 allowed=examples.allowed, on_epoch=on_epoch)
    return save_trained(model, fitted, config, data, data_path, out_path, start, meta=meta)


