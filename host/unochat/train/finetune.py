"""Changing a trained model and training it again: pruning and new weight formats, fine-tuned.

Every change starts from a training checkpoint (.pt, which keeps the latent float weights), changes the
model, fine-tunes it with the same training loop (train/fit.py: cosine decay, early stopping, the state
with the best integer score wins) and writes a checkpoint + integer model like `unochat train`:

    prune_checkpoint     remove a fraction of every hidden layer's neurons (train/prune.py), fine-tune
    quantize_checkpoint  give the layers new weight formats, keeping the latent weights, fine-tune

A derived model is fine-tuned on the pairs its parent was trained on: a parent trained without the
held-out split passes that on, so its held-out figures stay honest.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import recorded_dataset
from ..model import reference
from ..model.intmodel import IntModel
from .checkpoint import TrainResult, load_checkpoint, save_trained
from .config import FineTune, PairFocus
from .fit import NOT_ALLOWED, FitResult, fit
from .prune import neuron_scores, prune_model, recalibrate_batchnorm, requantize, select_neurons
from .qat import QuantMLP
from .trainset import Examples, load_training_data, training_examples, training_pairs, with_store

WEIGHT_BATCH = 4096  # examples per forward pass when weighing pairs


def whole_pairs_right(int_model: IntModel, examples: Examples) -> float:
    """Share of pairs whose every training step the integer model predicts right (among the allowed
    symbols where the store limits them). Generation follows the true reply as long as every step is
    right, so this is the exact match (EM) of model/metrics.py, except for a reply as long as the reply
    limit, which generation ends without predicting EOS."""
    step_logits = reference.logits(int_model, examples.x)
    if examples.allowed is not None:
        step_logits = np.where(examples.allowed, step_logits, np.iinfo(np.int64).min)
    wrong = np.argmax(step_logits, axis=1) != examples.y
    return float(np.mean(np.bincount(examples.pairs_of, weights=wrong, minlength=examples.pairs_of.max() + 1) == 0))


def focus_weights(focus: PairFocus, examples: Examples) -> Callable[[QuantMLP], torch.Tensor]:
    """fit()'s `weights` hook for PairFocus (train/config.py): before every epoch, each pair's examples
    weigh floor + (1 - floor) * P^beta / mean(P^beta), P the float model's probability of the whole reply
    (over the allowed symbols, where the store limits them)."""
    inputs, targets = torch.as_tensor(examples.x, dtype=torch.float32), torch.as_tensor(examples.y)
    masked = None if examples.allowed is None else ~torch.as_tensor(examples.allowed, dtype=torch.bool)
    index = torch.as_tensor(examples.pairs_of)
    n_pairs = int(examples.pairs_of.max()) + 1

    def logits(model: QuantMLP, rows: slice) -> torch.Tensor:
        out = model(inputs[rows])
        return out if masked is None else out.masked_fill(masked[rows], NOT_ALLOWED)

    @torch.no_grad()
    def weigh(model: QuantMLP) -> torch.Tensor:
        model.eval()
        batches = [slice(i, i + WEIGHT_BATCH) for i in range(0, len(targets), WEIGHT_BATCH)]
        log_p = torch.cat([F.log_softmax(logits(model, rows), dim=1) for rows in batches])
        step = log_p[torch.arange(len(targets)), targets].double()
        whole = torch.zeros(n_pairs, dtype=torch.float64).index_add_(0, index, step)
        w = torch.exp(focus.beta * (whole - whole.max()))  # P^beta, scaled to avoid underflow
        w = focus.floor + (1.0 - focus.floor) * w / w.mean()
        return w[index].float()

    return weigh


def derive(
    parent_path: str | Path,
    out_path: str | Path,
    change: Callable[[QuantMLP, np.ndarray], QuantMLP],
    tune: FineTune,
    *,
    data_path: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, float | None], None] | None = None,
) -> TrainResult:
    """Load a checkpoint, `change(model, x)` it (x: the training inputs), fine-tune it on the parent's
    training pairs, write out.pt + out.npz. `data_path` defaults to the dataset the parent was trained on.
    `on_epoch`: fit's, for every cycle."""
    start = time.perf_counter()
    if Path(parent_path).suffix != ".pt":
        raise ValueError(f"{parent_path}: fine-tuning needs a training checkpoint (.pt): an integer model has "
                         "no latent weights left")
    ck = load_checkpoint(parent_path)
    # the parent's data, found as bench finds a model's (else its recorded path, for the error to name)
    data_path = data_path or recorded_dataset(ck.info) or ck.info["dataset"]["path"]
    data = with_store(load_training_data(data_path, ck.config, charset=ck.charset), ck.config)
    examples = training_examples(training_pairs(data, ck.config), ck.charset, ck.config, data.store)
    xy = examples.x, examples.y
    model = change(ck.model, examples.x)
    config = replace(tune.config(ck.config, [block.linear.weight.shape[0] for block in model.hidden],
                                 [layer.fmt for layer in model.linears]), sparsity=model.sparsity)
    hooks = {"on_epoch": on_epoch}
    if tune.focus is not None:
        hooks.update(weights=focus_weights(tune.focus, examples),
                     score=lambda int_model: whole_pairs_right(int_model, examples))
    fitted = fit(model, xy, config, ck.charset, ck.features, progress=progress, allowed=examples.allowed, **hooks)
    for _ in range(tune.restarts):
        best_state = copy.deepcopy(model.state_dict())
        cycle = replace(config, epochs=tune.restart_epochs, lr=tune.restart_lr)
        again = fit(model, xy, cycle, ck.charset, ck.features, progress=progress, allowed=examples.allowed,
                    **hooks)
        improved = again.best_score > fitted.best_score
        fitted = merge_cycles(fitted, again)
        if not improved:
            # the cycle found nothing better: back to the earlier best, and stop, since the next cycle would
            # start from the same state with the same seed and repeat this one exactly
            model.load_state_dict(best_state)
            break
    parent_meta = ck.info.get("int_meta") or {}
    info = {"parent": str(parent_path), **(meta or {})}
    return save_trained(model, fitted, config, data, data_path, out_path, start, meta=info,
                        parent_seconds=parent_meta.get("total_seconds", ck.info.get("seconds", 0.0)))


def merge_cycles(first: FitResult, then: FitResult) -> FitResult:
    """One FitResult for two fit() cycles run one after the other (epochs numbered on across them)."""
    offset = first.epochs_run
    history = first.history + [{**h, "epoch": h["epoch"] + offset} for h in then.history]
    better = then.best_score > first.best_score
    return FitResult(
        best_epoch=then.best_epoch + offset if better else first.best_epoch,
        best_score=max(first.best_score, then.best_score),
        epochs_run=offset + then.epochs_run,
        stopped_early=then.stopped_early,
        seconds=first.seconds + then.seconds,
        history=history,
    )


def prune_checkpoint(
    parent_path: str | Path,
    out_path: str | Path,
    ratios: list[float],
    tune: FineTune,
    *,
    criterion: str = "l1_std",
    data_path: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, float | None], None] | None = None,
) -> TrainResult:
    """`ratios[l]` of hidden layer l's neurons removed (the lowest `criterion` scores; one ratio: every
    layer), then fine-tuned (`on_epoch`: derive's)."""

    def change(model: QuantMLP, x: np.ndarray) -> QuantMLP:
        per_layer = ratios * len(model.hidden) if len(ratios) == 1 else ratios
        pruned = prune_model(model, select_neurons(neuron_scores(model, x, criterion), per_layer))
        recalibrate_batchnorm(pruned, x)
        return pruned

    info = {"source": "unochat prune", "prune": {"ratios": ratios, "criterion": criterion}, **(meta or {})}
    return derive(parent_path, out_path, change, tune, data_path=data_path, meta=info, progress=progress,
                  on_epoch=on_epoch)


def quantize_checkpoint(
    parent_path: str | Path,
    out_path: str | Path,
    formats: list[str],
    tune: FineTune,
    *,
    sparsity: float | None = None,
    data_path: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """The same model with new weight formats (one per layer, or one for all), its latent weights carried
    over, fine-tuned; `sparsity`: the ternary layers' share of zero weights (default: the parent's)."""

    def change(model: QuantMLP, x: np.ndarray) -> QuantMLP:
        requantize(model, formats * len(model.linears) if len(formats) == 1 else formats, sparsity)
        recalibrate_batchnorm(model, x)
        return model

    settings = {"formats": formats} | ({"sparsity": sparsity} if sparsity is not None else {})
    info = {"source": "unochat quantize", "quantize": settings, **(meta or {})}
    return derive(parent_path, out_path, change, tune, data_path=data_path, meta=info, progress=progress)


