"""Training: build a QuantMLP, fit it, keep the state whose INTEGER model is best, write .pt and .npz.

    fit()    the reusable loop (also for fine-tuning a loaded or pruned model): Adam, cosine decay of the
             learning rate to 0 per step, cross-entropy, seeded shuffling; after every `eval_every` epochs
             the model is exported and its integer accuracy measured with reference.py; the best state wins.
    train()  dataset -> charset -> examples -> model -> fit -> `out.pt` (checkpoint) + `out.npz` (IntModel).

Determinism: the same seed gives bit-identical models on the same machine with the same thread count
(torch.manual_seed for the initial weights, a seeded generator for shuffling, deterministic algorithms).
Float sums depend on the thread count, so another machine may train a slightly different model.

Held-out split: `heldout` > 0 holds out that fraction of the pairs with data.split_heldout(seed=0). The
split's seed is fixed on purpose, independent of the training seed, so every model is judged on the same
pairs. The model is still selected by integer TF on its training examples, never by the held-out pairs.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .augment import AugmentConfig, augment_pairs
from .codegen import measure_density
from .data import Dataset, Pair, build_charset, load_dataset, split_heldout
from .features import FeatureSpec, teacher_forced_examples
from .intmodel import FORMAT_RANGE, MAX_WIDTH, IntModel
from .metrics import evaluate, example_accuracy
from .qat import QuantMLP, export_int_model

HELDOUT_SEED = 0  # fixed: every model is judged on the same held-out pairs
BITS_FORMATS = {"1": "1bit", "2": "2bit", "8": "int8"}
CHECKPOINT_VERSION = 1
SHOWN_PROBLEMS = 5


def parse_bits(text: str, n_layers: int) -> list[str]:
    """`1` -> every layer 1bit; `1,1,2,8` -> one format per layer (hidden layers first, output last)."""
    parts = [p.strip() for p in text.split(",")]
    formats = [BITS_FORMATS.get(p, p) for p in parts]
    unknown = [p for p, f in zip(parts, formats) if f not in FORMAT_RANGE]
    if unknown:
        raise ValueError(f"unknown weight format {unknown[0]!r}: use 1, 2 or 8 (1bit, 2bit, int8)")
    if len(formats) == 1:
        return formats * n_layers
    if len(formats) != n_layers:
        raise ValueError(f"--bits gives {len(formats)} formats for {n_layers} layers (hidden layers + output)")
    return formats


@dataclass
class TrainConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 192, 128])
    formats: list[str] = field(default_factory=list)  # one per layer incl. the output; empty: all 1bit
    epochs: int = 150  # measured on tinychat: 100 -> 96.9% TF / 84.9% EM, 150 -> 97.2% / 86.0% (256-192-128)
    warmup_epochs: int = 0  # epochs of blending float -> quantized weights; 0: quantized from the start
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0
    heldout: float = 0.0
    patience: int | None = None  # stop after this many epochs without a better integer TF
    # epochs between integer evaluations; the last epoch is always evaluated. One evaluation (export +
    # reference over 14,814 tinychat examples) costs ~0.37 s inside the loop, about as much as a training
    # epoch of a 256-256-128 model, so every epoch would double the time; fine-tuning can ask for 1.
    eval_every: int = 5
    features: FeatureSpec = field(default_factory=FeatureSpec)
    # seeded query variants per training pair (augment.py); the metrics stay on the real pairs.
    # Measured in README, "Held-out quality".
    augment: int = 0

    def __post_init__(self) -> None:
        self.hidden = [int(h) for h in self.hidden]
        if not self.formats:
            self.formats = ["1bit"] * (len(self.hidden) + 1)
        self.formats = list(self.formats)
        if any(not 1 <= h <= MAX_WIDTH for h in self.hidden):
            raise ValueError(f"hidden layer widths must be 1..{MAX_WIDTH}")
        if len(self.formats) != len(self.hidden) + 1:
            raise ValueError(f"{len(self.hidden) + 1} layers need {len(self.hidden) + 1} formats, got {len(self.formats)}")
        bad = [f for f in self.formats if f not in FORMAT_RANGE]
        if bad:
            raise ValueError(f"unknown weight format {bad[0]!r} (1bit, 2bit or int8)")
        if self.epochs < 1 or self.warmup_epochs < 0 or self.batch_size < 2 or self.eval_every < 1:
            raise ValueError("need epochs >= 1, warmup_epochs >= 0, batch_size >= 2, eval_every >= 1")
        if not 0.0 <= self.heldout < 1.0:
            raise ValueError(f"heldout is a fraction in [0, 1), got {self.heldout}")
        if self.augment < 0:
            raise ValueError(f"augment is a number of variants per pair, got {self.augment}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}")

    def to_dict(self) -> dict:
        return asdict(self)  # features becomes a plain dict too

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{**d, "features": FeatureSpec(**d["features"])})


@dataclass
class FitResult:
    best_epoch: int  # 1-based epoch whose state the model now holds
    best_tf: float  # its integer score on the training examples: TF, or fit(score=)'s figure (EM under PairFocus)
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


def build_model(config: TrainConfig, n_outputs: int) -> QuantMLP:
    torch.manual_seed(config.seed)
    return QuantMLP(config.features.n_inputs, config.hidden, n_outputs, config.formats)


def quant_mix(step: int, warmup_steps: int) -> float:
    """Progressive quantization: 0 (float weights) at step 0 rising linearly to 1 (quantized) after warm-up."""
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def _cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    # BatchNorm cannot normalize a batch of one sample in training mode, so a last batch of 1 is dropped
    return [b for b in order.split(batch_size) if len(b) >= 2]


def integer_accuracy(model: QuantMLP, charset: str, features: FeatureSpec, x: np.ndarray, y: np.ndarray) -> float:
    """Export the model as it stands (BatchNorm running statistics) and measure TF with reference.py."""
    return example_accuracy(export_int_model(model, charset, features), x, y)


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
) -> FitResult:
    """Train `model` in place; on return it holds the state with the best integer TF on `train_xy`.

    `after_step(model)` runs after every optimizer step (after the 1bit clip), e.g. to re-apply a pruning mask.
    `weights(model)`, if given, runs before every epoch and returns one loss weight per training example.
    `score(int_model)`, if given, replaces the integer TF as the figure that picks the best state (it is
    what the history's "tf" and best_tf then hold)."""
    use_available_threads()
    start = time.perf_counter()
    x_int, y_int = np.asarray(train_xy[0]), np.asarray(train_xy[1])
    x, y = torch.as_tensor(x_int, dtype=torch.float32), torch.as_tensor(y_int, dtype=torch.int64)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(_batches(torch.arange(len(y)), config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # fused: fewer kernel launches

    best_tf, best_epoch, best_state = -1.0, 0, None
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
                record["tf"] = integer_accuracy(model, charset, features, x_int, y_int)
            else:
                record["tf"] = score(export_int_model(model, charset, features))
            if record["tf"] > best_tf:
                best_tf, best_epoch, best_state = record["tf"], epoch, copy.deepcopy(model.state_dict())
            stopped_early = config.patience is not None and epoch - best_epoch >= config.patience
        history.append(record)
        best = f"{best_tf:.4f} (ep {best_epoch})" if best_state is not None else "-"
        bar.set_postfix_str(f"loss {record['loss']:.4f}, best int TF {best}")
        if stopped_early:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.set_quant_mix(1.0)
    model.eval()
    return FitResult(best_epoch, best_tf, len(history), stopped_early, time.perf_counter() - start, history)


# --- train from a dataset, checkpoints ------------------------------------------------------------


@dataclass
class TrainResult:
    model: QuantMLP
    int_model: IntModel
    fit: FitResult
    metrics: dict  # {"train": {tf, em, loss}, "heldout": {tf, em, loss} or None}
    checkpoint_path: Path
    int_path: Path
    seconds: float  # wall time of train(), loading and evaluation included

    def summary(self) -> str:
        lines = [self.int_model.describe(), f"best integer score at epoch {self.fit.best_epoch}; "
                 f"{self.fit.seconds:.0f} s of training, {self.seconds:.0f} s in all"]
        for split, m in self.metrics.items():
            if m:
                loss = "n/a" if m["loss"] is None else f"{m['loss']:.4f}"
                lines.append(f"{split}: TF {100 * m['tf']:.2f}%  EM {100 * m['em']:.2f}%  loss {loss}")
        lines.append(f"wrote {self.checkpoint_path} and {self.int_path}")
        return "\n".join(lines)


class Checkpoint(NamedTuple):
    model: QuantMLP
    config: TrainConfig
    charset: str
    features: FeatureSpec
    info: dict  # dataset, seed, metrics, best_epoch, seconds, history, int_meta


def _report_problems(dataset: Dataset) -> None:
    print(dataset.summary())
    for problem in dataset.problems[:SHOWN_PROBLEMS]:
        print(f"  {problem}")
    if len(dataset.problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(dataset.problems) - SHOWN_PROBLEMS} more")


def _split(pairs: list[Pair], heldout: float) -> tuple[list[Pair], list[Pair]]:
    if heldout == 0.0:
        return pairs, []
    return split_heldout(pairs, heldout, seed=HELDOUT_SEED)


def int_path_for(checkpoint_path: Path) -> Path:
    """The integer model lives next to its checkpoint: same stem, suffix .npz."""
    return Path(checkpoint_path).with_suffix(".npz")


class TrainingData(NamedTuple):
    dataset: Dataset
    charset: str
    train_pairs: list[Pair]
    held_pairs: list[Pair]


def load_training_data(data_path: str | Path, heldout: float, charset: str | None = None) -> TrainingData:
    """The dataset, its charset (or a model's: pairs it cannot spell are skipped) and the seeded split."""
    dataset = load_dataset(data_path, charset=charset[:-1] if charset else None)
    _report_problems(dataset)
    # the charset comes from every pair, held-out ones included, so held-out replies stay spellable
    charset = charset or build_charset(dataset.pairs)
    train_pairs, held_pairs = _split(dataset.pairs, heldout)
    return TrainingData(dataset, charset, train_pairs, held_pairs)


def train(
    data_path: str | Path, config: TrainConfig, out_path: str | Path, *, progress: bool = True, meta: dict | None = None
) -> TrainResult:
    """Train from scratch; `meta` adds to the integer model's meta (save_trained)."""
    start = time.perf_counter()
    _check_checkpoint_path(out_path)
    data = load_training_data(data_path, config.heldout)
    xy = teacher_forced_examples(training_pairs(data, config), data.charset, config.features)
    model = build_model(config, len(data.charset))
    fitted = fit(model, xy, config, data.charset, config.features, progress=progress)
    return save_trained(model, fitted, config, data, data_path, out_path, start, meta=meta)


def training_pairs(data: TrainingData, config: TrainConfig) -> list[Pair]:
    """The pairs a model learns from: the training pairs and `config.augment` seeded variants of each."""
    return data.train_pairs + augment_pairs(data.train_pairs, AugmentConfig(copies=config.augment, seed=config.seed))


def _check_checkpoint_path(out_path: str | Path) -> None:
    if Path(out_path).suffix != ".pt":
        raise ValueError(f"{out_path}: the checkpoint needs the suffix .pt (the integer model goes to .npz beside it)")


def save_trained(
    model: QuantMLP,
    fitted: FitResult,
    config: TrainConfig,
    data: TrainingData,
    data_path: str | Path,
    out_path: str | Path,
    start: float,
    meta: dict | None = None,
    parent_seconds: float = 0.0,
) -> TrainResult:
    """Measure the fitted model's integer model and write `out.pt` + `out.npz`.

    `start` is the perf_counter() the run began at; `meta` adds to (or overrides) the integer model's meta,
    e.g. the source and parent of a pruned model. Its "total_seconds" is this run's seconds plus
    `parent_seconds`: the wall time of the whole chain that made the model (training, then pruning...)."""
    _check_checkpoint_path(out_path)
    out_path = Path(out_path)
    features = config.features
    int_model = export_int_model(model, data.charset, features, name=out_path.stem)
    metrics = {
        "train": evaluate(int_model, data.train_pairs),
        "heldout": evaluate(int_model, data.held_pairs) if data.held_pairs else None,
    }
    seconds = time.perf_counter() - start
    int_model.meta = {
        "source": "unochat train",
        "config": config.to_dict(),
        "dataset": {"path": str(data_path), "digest": data.dataset.digest, "pairs": len(data.dataset.pairs)},
        "best_epoch": fitted.best_epoch,
        "metrics": metrics,
        "seconds": seconds,
        "total_seconds": seconds + parent_seconds,
        **(meta or {}),
    }
    # The fast kernels' plan follows how many of each layer's inputs are nonzero: measured here, on the
    # training data's queries, the model builds the same way where that file is not at hand.
    int_model.meta["density"] = measure_density(int_model)
    checkpoint = {
        "version": CHECKPOINT_VERSION,
        "state_dict": model.state_dict(),
        "config": config.to_dict(),
        "charset": data.charset,
        "features": features.to_dict(),
        "dataset": int_model.meta["dataset"],
        "seed": config.seed,
        "metrics": metrics,
        "best_epoch": fitted.best_epoch,
        "fit_seconds": fitted.seconds,
        "seconds": seconds,
        "history": fitted.history,
        "int_meta": int_model.meta,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out_path)
    int_model.save(int_path_for(out_path))
    return TrainResult(model, int_model, fitted, metrics, out_path, int_path_for(out_path), seconds)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint written by train(), with its model rebuilt (eval mode), ready to export or fine-tune."""
    data = torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no pickled code runs
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {data.get('version')}, this unochat reads {CHECKPOINT_VERSION}")
    config = TrainConfig.from_dict(data["config"])
    features = FeatureSpec(**data["features"])
    model = QuantMLP(features.n_inputs, config.hidden, len(data["charset"]), config.formats)
    model.load_state_dict(data["state_dict"])
    model.eval()
    info = {k: v for k, v in data.items() if k not in ("state_dict", "config", "charset", "features")}
    return Checkpoint(model, config, data["charset"], features, info)


def int_model_from_checkpoint(path: str | Path) -> IntModel:
    """The integer model of a .pt checkpoint (identical to the .npz train() wrote beside it)."""
    ck = load_checkpoint(path)
    return export_int_model(ck.model, ck.charset, ck.features, name=Path(path).stem, meta=ck.info.get("int_meta"))
