"""Checkpoints: a trained model written as `out.pt` (the QuantMLP with its latent weights, to fine-tune)
and `out.npz` (its integer model, with what made it in meta), and opened again.

`load_model` opens any model file a command accepts: an integer model or a z80ai model (.npz), or a
checkpoint (.pt, exported to its integer model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..data.dataset import spread_queries
from ..data.features import FeatureSpec
from ..model.density import measure_density
from ..model.files import CHECKPOINT_SUFFIX, load_int_model, model_path
from ..model.intmodel import IntModel
from ..model.metrics import evaluate
from .config import TrainConfig
from .fit import FitResult
from .qat import QuantMLP, export_int_model
from .trainset import TrainingData

CHECKPOINT_VERSION = 1


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


def int_path_for(checkpoint_path: Path) -> Path:
    """The integer model lives next to its checkpoint: same stem, suffix .npz."""
    return Path(checkpoint_path).with_suffix(".npz")


def check_checkpoint_path(out_path: str | Path) -> None:
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
    check_checkpoint_path(out_path)
    out_path = Path(out_path)
    features = config.features
    replies = list(data.store.replies) if data.store is not None else None
    int_model = export_int_model(model, data.charset, features, name=out_path.stem, max_reply=data.reply_limit,
                                 replies=replies)
    metrics = {
        "train": evaluate(int_model, data.train_pairs),
        "heldout": evaluate(int_model, data.held_pairs) if data.held_pairs else None,
    }
    seconds = time.perf_counter() - start
    int_model.meta = {
        "source": "unochat train",
        "config": config.to_dict(),
        "dataset": {"path": str(data_path), "digest": data.dataset.digest, "pairs": len(data.dataset.pairs),
                    "given_up": data.given_up},
        "best_epoch": fitted.best_epoch,
        "metrics": metrics,
        "seconds": seconds,
        "total_seconds": seconds + parent_seconds,
        **(meta or {}),
    }
    # The fast kernels' plan follows how many of each layer's inputs are nonzero: measured here, on the
    # dataset's queries, so that rendering never needs the data (model/density.py).
    int_model.meta["density"] = measure_density(int_model, spread_queries(data.dataset.pairs))
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
        "max_reply": int_model.max_reply,
        "replies": replies,
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
    model = QuantMLP(features.n_inputs, config.hidden, len(data["charset"]), config.formats, config.sparsity)
    model.load_state_dict(data["state_dict"])
    model.eval()
    info = {k: v for k, v in data.items() if k not in ("state_dict", "config", "charset", "features")}
    return Checkpoint(model, config, data["charset"], features, info)


def int_model_from_checkpoint(path: str | Path) -> IntModel:
    """The integer model of a .pt checkpoint (identical to the .npz train() wrote beside it)."""
    ck = load_checkpoint(path)
    limit = {"max_reply": ck.info["max_reply"]} if "max_reply" in ck.info else {}  # older checkpoints: the default
    return export_int_model(ck.model, ck.charset, ck.features, name=Path(path).stem, meta=ck.info.get("int_meta"),
                            replies=ck.info.get("replies"), **limit)


def load_model(path: str | Path | None = None) -> IntModel:
    """Any model file: an integer or z80ai model (.npz), or a checkpoint (.pt); default: the default model."""
    p = model_path(path)
    return int_model_from_checkpoint(p) if p.suffix == CHECKPOINT_SUFFIX else load_int_model(p)
