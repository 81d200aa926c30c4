"""The training loop: fit a QuantMLP, keeping the state whose INTEGER model scores best.

    fit()   the reusable loop (training from scratch, and fine-tuning a loaded or pruned model): Adam,
            cosine decay of the learning rate to 0 per step, cross-entropy, seeded shuffling; after every
            `eval_every` epochs the model is exported and its integer accuracy measured with the reference
            (model/reference.py); the best state wins.

Determinism: the same seed gives bit-identical models on the same machine with the same thread count
(torch.manual_seed for the initial weights, a seeded generator for shuffling, deterministic algorithms).
Float sums depend on the thread count, so another machine may train a slightly different model.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.features import FeatureSpec
from ..model.intmodel import IntModel
from ..model.metrics import example_accuracy
from .config import TrainConfig
from .qat import QuantMLP, export_int_model


@dataclass
class FitResult:
    best_epoch: int  # 1-based epoch whose state the model now holds
    best_score: float  # its integer score on the training examples: TF, or fit(score=)'s figure (EM under PairFocus)
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: list[dict]  # per epoch: epoch, loss (mean training loss), tf (None when not evaluated)


def use_available_threads() -> int:
    """torch threads = the CPUs this process may run on; also asks for deterministic kernels."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return threads


def new_model(config: TrainConfig, n_outputs: int) -> QuantMLP:
    """A freshly initialised QuantMLP of the config's shape and formats (seeded)."""
    torch.manual_seed(config.seed)
    return QuantMLP(config.features.n_inputs, config.hidden, n_outputs, config.formats, config.sparsity)


def quant_mix(step: int, warmup_steps: int) -> float:
    """Progressive quantization: 0 (float weights) at step 0 rising linearly to 1 (quantized) after warm-up."""
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def _cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    # BatchNorm cannot normalize a batch of one sample in training mode, so a last batch of 1 is dropped
    return [b for b in order.split(batch_size) if len(b) >= 2]


def integer_accuracy(model: QuantMLP, charset: str, features: FeatureSpec, x: np.ndarray, y: np.ndarray,
                     allowed: np.ndarray | None = None) -> float:
    """Export the model as it stands (BatchNorm running statistics) and measure its accuracy on the
    examples with the reference (model/reference.py): among each example's `allowed` symbols, if given."""
    return example_accuracy(export_int_model(model, charset, features), x, y, allowed)


NOT_ALLOWED = -1e9  # a logit no softmax gives weight to: what reply-constrained decoding can never choose


def fit(
    model: QuantMLP,
    train_xy: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    charset: str,
    features: FeatureSpec,
    *,
    progress: bool = True,
    after_step: Callable[[QuantMLP], None] | None = None,
    weights: Callable[[QuantMLP], torch.Tensor] | None = None,
    score: Callable[[IntModel], float] | None = None,
    allowed: np.ndarray | None = None,
    on_epoch: Callable[[int, float | None], None] | None = None,
) -> FitResult:
    """Train `model` in place; on return it holds the state with the best integer score on `train_xy`.

    `after_step(model)` runs after every optimizer step (after the 1bit clip), e.g. to re-apply a pruning mask.
    `weights(model)`, if given, runs before every epoch and returns one loss weight per training example.
    `score(int_model)`, if given, replaces the integer TF as the figure that picks the best state (it is
    what the history's "tf" and best_score then hold).
    `allowed` (bool [N, symbols]), if given, limits each example to the symbols reply-constrained decoding
    may choose there: the loss is the cross-entropy among them, and the integer accuracy too.
    `on_epoch(epoch, score)`, if given, hears the end of every epoch, with its integer score where it was
    evaluated (else None); an exception it raises (a search pruning a hopeless or overdue trial) ends the
    fit."""
    use_available_threads()
    start = time.perf_counter()
    x_int, y_int = np.asarray(train_xy[0]), np.asarray(train_xy[1])
    x, y = torch.as_tensor(x_int, dtype=torch.float32), torch.as_tensor(y_int, dtype=torch.int64)
    masked = None if allowed is None else ~torch.as_tensor(allowed, dtype=torch.bool)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(_batches(torch.arange(len(y)), config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # fused: fewer kernel launches

    best_score, best_epoch, best_state = -1.0, 0, None
    history: list[dict] = []
    step = 0
    stopped_early = False
    bar = tqdm(range(1, config.epochs + 1), desc="train", unit="ep", disable=not progress, leave=False)
    for epoch in bar:
        example_weights = weights(model) if weights is not None else None
        model.train()
        loss_sum, seen = 0.0, 0
        for batch in _batches(torch.randperm(len(y), generator=generator), config.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(config.lr, step, total_steps)
            model.set_quant_mix(quant_mix(step, warmup_steps))
            logits = model(x[batch])
            if masked is not None:
                logits = logits.masked_fill(masked[batch], NOT_ALLOWED)
            if example_weights is None:
                loss = F.cross_entropy(logits, y[batch])
            else:
                loss = (F.cross_entropy(logits, y[batch], reduction="none") * example_weights[batch]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.clip_weights_()
            if after_step is not None:
                after_step(model)
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
            step += 1
        record = {"epoch": epoch, "loss": loss_sum / seen, "tf": None}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            # the exported model is always fully quantized, whatever the blend during warm-up
            if score is None:
                record["tf"] = integer_accuracy(model, charset, features, x_int, y_int, allowed)
            else:
                record["tf"] = score(export_int_model(model, charset, features))
            if record["tf"] > best_score:
                best_score, best_epoch, best_state = record["tf"], epoch, copy.deepcopy(model.state_dict())
            stopped_early = config.patience is not None and epoch - best_epoch >= config.patience
        if on_epoch is not None:
            on_epoch(epoch, record["tf"])
        history.append(record)
        best = f"{best_score:.4f} (ep {best_epoch})" if best_state is not None else "-"
        bar.set_postfix_str(f"loss {record['loss']:.4f}, best int TF {best}")
        if stopped_early:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.set_quant_mix(1.0)
    model.eval()
    return FitResult(best_epoch, best_score, len(history), stopped_early, time.perf_counter() - start, history)


