"""The compression pipeline: the original experiment (baseline -> pruned -> binary), done for real.

Every step starts from a training checkpoint (.pt, which keeps the latent float weights), changes the
model, fine-tunes it with the same training loop (train.fit: cosine decay, early stopping, the state with
the best integer accuracy wins) and writes a checkpoint + integer model like `unochat train`:

    prune_checkpoint     remove a fraction of every hidden layer's neurons (prune.py), fine-tune
    quantize_checkpoint  give the layers new weight formats, keeping the latent weights, fine-tune

A derived model is fine-tuned on the pairs its parent was trained on: a parent trained without the
held-out split passes that on, so its held-out figures stay honest.

`run_pipeline` makes the variants of the benchmark, each named as the original experiment named it:
    baseline  QAT from scratch (default 256-192-128 at 2 bits, the original's baseline shape)
    pruned    baseline with half of every hidden layer's neurons removed, fine-tuned at its bits
    binary    pruned at 1 bit per weight, fine-tuned (its latent weights carried over), with warm restarts
    best      the best model known to fit the UNO, trained from scratch (160-128-96 at 2 bits)
and writes OUT_DIR/<variant>.pt + .npz and OUT_DIR/pipeline.json (the variants in order, for
`unochat bench OUT_DIR`). With `heldout` > 0 every variant is made a second time, by the same recipe, on the
pairs outside the seeded held-out split, into OUT_DIR/heldout/: the benchmark takes the held-out figures
of a model from that twin, since the model itself was trained on the held-out pairs.

Resuming: a variant whose checkpoint exists and was made by the same recipe (its `key`: the variant's
settings, the key of the model it starts from, the dataset's digest and the split) is not made again.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import bench, reference
from .bench import HELDOUT_DIR, MANIFEST, BenchRow
from .data import Pair, load_dataset
from .features import teacher_forced_examples
from .intmodel import IntModel, ModelError
from .modelfile import training_data
from .prune import CRITERIA, neuron_scores, prune_model, recalibrate_batchnorm, requantize, select_neurons
from .qat import QuantMLP
from .train import (FitResult, TrainConfig, TrainResult, fit, load_checkpoint, load_training_data, parse_bits,
                    save_trained, train, training_pairs)

VARIANTS = ("baseline", "pruned", "binary", "best")
PARENT = {"pruned": "baseline", "binary": "pruned"}
WEIGHT_BATCH = 4096  # examples per forward pass when weighing pairs


def pair_index(pairs: list[Pair]) -> np.ndarray:
    """The pair each teacher-forced example belongs to (features.teacher_forced_examples' order:
    pair by pair, one example per response character and one for EOS)."""
    return np.repeat(np.arange(len(pairs)), [len(p.response) + 1 for p in pairs])


def whole_pairs_right(int_model: IntModel, x: np.ndarray, y: np.ndarray, pairs_of: np.ndarray) -> float:
    """Share of pairs whose every teacher-forced step the integer model predicts right. Generation follows
    the true reply as long as every step is right, so this is the exact match (EM) of metrics.py, except
    for a 50-character reply, which generation ends without predicting EOS."""
    wrong = np.bincount(pairs_of, weights=reference.predict(int_model, x) != y, minlength=pairs_of.max() + 1)
    return float(np.mean(wrong == 0))


@dataclass(frozen=True)
class PairFocus:
    """Loss weights for exact match, where a reply counts only if every character is right.

    Plain cross-entropy spreads a small model's capacity over every character; its errors then fall on
    many pairs one at a time (binary 128-96-64 on tinychat: 958 of 1,327 failing pairs had exactly one
    wrong character). Here each pair's examples get the weight
        floor + (1 - floor) * P^beta / mean(P^beta),   P = the float model's probability of the whole reply,
    recomputed before every epoch: the pairs the model nearly has weigh most, hopeless ones little,
    so the errors gather on fewer pairs. beta = 0 is plain cross-entropy. The best state is then picked
    by whole_pairs_right (EM) instead of TF. Measured in README "The compression pipeline"."""

    beta: float = 0.25
    floor: float = 0.1

    def weights(self, x: np.ndarray, y: np.ndarray, pairs_of: np.ndarray) -> Callable[[QuantMLP], torch.Tensor]:
        inputs, targets = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        index = torch.as_tensor(pairs_of)
        n_pairs = int(pairs_of.max()) + 1

        @torch.no_grad()
        def weigh(model: QuantMLP) -> torch.Tensor:
            model.eval()
            log_p = torch.cat([F.log_softmax(model(b), dim=1) for b in inputs.split(WEIGHT_BATCH)])
            step = log_p[torch.arange(len(targets)), targets].double()
            whole = torch.zeros(n_pairs, dtype=torch.float64).index_add_(0, index, step)
            w = torch.exp(self.beta * (whole - whole.max()))  # P^beta, scaled to avoid underflow
            w = self.floor + (1.0 - self.floor) * w / w.mean()
            return w[index].float()

        return weigh


@dataclass
class FineTune:
    """How a changed model is trained again (train.fit with these settings; `focus`: PairFocus weights).

    `restarts` more cosine cycles of `restart_epochs` at `restart_lr` follow the first one (warm restarts,
    Loshchilov & Hutter 2017, "SGDR"), each from the best state so far; the best state of all cycles wins.
    A binary model's exact match jumps only at the end of a cosine decay, when the rate nears 0 and the
    signs stop flipping (tinychat, binary 128-96-64: 49.60% after 150 of 400 epochs, 69.97% after 400);
    another cycle gives it another such end (the first restart: 70.47%; README "Results")."""

    epochs: int = 30
    lr: float = 3e-3
    patience: int | None = None
    eval_every: int = 5
    batch_size: int = 256
    seed: int = 0
    focus: PairFocus | None = None
    restarts: int = 0
    restart_epochs: int = 150
    restart_lr: float = 1e-3

    def config(self, parent: TrainConfig, model: QuantMLP) -> TrainConfig:
        return replace(
            parent,
            hidden=[block.linear.weight.shape[0] for block in model.hidden],
            formats=[layer.fmt for layer in model.linears],
            epochs=self.epochs, warmup_epochs=0, lr=self.lr, patience=self.patience,
            eval_every=self.eval_every, batch_size=self.batch_size, seed=self.seed,
        )


def derive(
    parent_path: str | Path,
    out_path: str | Path,
    change: Callable[[QuantMLP, np.ndarray], QuantMLP],
    tune: FineTune,
    *,
    data_path: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Load a checkpoint, `change(model, x)` it (x: the training inputs), fine-tune it on the parent's
    training pairs, write out.pt + out.npz. `data_path` defaults to the dataset the parent was trained on."""
    start = time.perf_counter()
    if Path(parent_path).suffix != ".pt":
        raise ValueError(f"{parent_path}: fine-tuning needs a training checkpoint (.pt): an integer model has "
                         "no latent weights left")
    ck = load_checkpoint(parent_path)
    # the parent's data, found as bench finds a model's (else its recorded path, for the error to name)
    data_path = data_path or training_data(ck.info) or ck.info["dataset"]["path"]
    data = load_training_data(data_path, ck.config.heldout, charset=ck.charset)
    pairs = training_pairs(data, ck.config)
    xy = teacher_forced_examples(pairs, ck.charset, ck.features)
    model = change(ck.model, xy[0])
    config = tune.config(ck.config, model)
    hooks = {}
    if tune.focus is not None:
        pairs_of = pair_index(pairs)
        hooks = {"weights": tune.focus.weights(*xy, pairs_of),
                 "score": lambda int_model: whole_pairs_right(int_model, *xy, pairs_of)}
    fitted = fit(model, xy, config, ck.charset, ck.features, progress=progress, **hooks)
    for _ in range(tune.restarts):
        best_state = copy.deepcopy(model.state_dict())
        cycle = replace(config, epochs=tune.restart_epochs, lr=tune.restart_lr)
        again = fit(model, xy, cycle, ck.charset, ck.features, progress=progress, **hooks)
        improved = again.best_tf > fitted.best_tf
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
    better = then.best_tf > first.best_tf
    return FitResult(
        best_epoch=then.best_epoch + offset if better else first.best_epoch,
        best_tf=max(first.best_tf, then.best_tf),
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
) -> TrainResult:
    """`ratios[l]` of hidden layer l's neurons removed (the lowest `criterion` scores; one ratio: every
    layer), then fine-tuned."""

    def change(model: QuantMLP, x: np.ndarray) -> QuantMLP:
        per_layer = ratios * len(model.hidden) if len(ratios) == 1 else ratios
        pruned = prune_model(model, select_neurons(neuron_scores(model, x, criterion), per_layer))
        recalibrate_batchnorm(pruned, x)
        return pruned

    info = {"source": "unochat prune", "prune": {"ratios": ratios, "criterion": criterion}, **(meta or {})}
    return derive(parent_path, out_path, change, tune, data_path=data_path, meta=info, progress=progress)


def quantize_checkpoint(
    parent_path: str | Path,
    out_path: str | Path,
    formats: list[str],
    tune: FineTune,
    *,
    data_path: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """The same model with new weight formats (one per layer, or one for all), its latent weights carried
    over, fine-tuned."""

    def change(model: QuantMLP, x: np.ndarray) -> QuantMLP:
        requantize(model, formats * len(model.linears) if len(formats) == 1 else formats)
        recalibrate_batchnorm(model, x)
        return model

    info = {"source": "unochat quantize", "quantize": {"formats": formats}, **(meta or {})}
    return derive(parent_path, out_path, change, tune, data_path=data_path, meta=info, progress=progress)


# ---- the pipeline --------------------------------------------------------------------------------
@dataclass
class Recipe:
    """What each variant is. The defaults were measured on tinychat (README, "The compression pipeline")."""

    hidden: list[int] = field(default_factory=lambda: [256, 192, 128])
    bits: str = "2"
    epochs: int = 100
    ratios: list[float] = field(default_factory=lambda: [0.5])
    criterion: str = "l1_std"
    prune: FineTune = field(default_factory=lambda: FineTune(epochs=30, focus=PairFocus()))
    binary_bits: str = "1"
    binary: FineTune = field(default_factory=lambda: FineTune(epochs=400, focus=PairFocus(), restarts=3))
    best_hidden: list[int] = field(default_factory=lambda: [160, 128, 96])
    best_bits: str = "2"
    best_epochs: int = 100
    lr: float = 3e-3
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        """Check every setting before anything trains: a bad binary format should not wait for the baseline."""
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown pruning criterion {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if not self.ratios or any(not 0.0 <= r < 1.0 for r in self.ratios):
            raise ValueError(f"pruning ratios are fractions in [0, 1), got {self.ratios}")
        if len(self.ratios) not in (1, len(self.hidden)):
            raise ValueError(f"{len(self.ratios)} pruning ratios for {len(self.hidden)} hidden layers")
        parse_bits(self.bits, len(self.hidden) + 1)
        parse_bits(self.binary_bits, len(self.hidden) + 1)
        parse_bits(self.best_bits, len(self.best_hidden) + 1)

    def settings(self, variant: str) -> dict:
        """Everything that decides `variant` besides its parent and the data: its part of the resume key."""
        common = {"lr": self.lr, "batch_size": self.batch_size, "seed": self.seed}
        return {
            "baseline": lambda: {"hidden": self.hidden, "bits": self.bits, "epochs": self.epochs, **common},
            "best": lambda: {"hidden": self.best_hidden, "bits": self.best_bits, "epochs": self.best_epochs, **common},
            "pruned": lambda: {"ratios": self.ratios, "criterion": self.criterion, "tune": asdict(self.prune)},
            "binary": lambda: {"bits": self.binary_bits, "tune": asdict(self.binary)},
        }[variant]()


@dataclass
class StageRun:
    variant: str
    path: Path  # the checkpoint (.pt); the integer model is beside it
    heldout: bool  # made without the held-out pairs
    seconds: float  # wall time of the stage (as recorded when it was made, if it was skipped now)
    skipped: bool  # found, made by the same recipe: not made again


def stage_order(variants: list[str]) -> list[str]:
    """The requested variants and the ones they start from, in VARIANTS order (parents first)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}: use {', '.join(VARIANTS)}")
    needed = set(variants)
    for v in variants:
        while v in PARENT:
            v = PARENT[v]
            needed.add(v)
    return [v for v in VARIANTS if v in needed]


def stage_key(settings: dict, parent_key: str | None, digest: str, heldout: float) -> str:
    blob = json.dumps({"settings": settings, "parent": parent_key, "data": digest, "heldout": heldout}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def made_by(path: Path, key: str) -> dict | None:
    """The integer model's meta if `path` (.pt) and its .npz exist and were made with `key`, else None."""
    npz = path.with_suffix(".npz")
    if not (path.is_file() and npz.is_file()):
        return None
    try:
        meta = IntModel.load(npz).meta
    except ModelError:
        return None
    return meta if (meta.get("pipeline") or {}).get("key") == key else None


def make_variant(variant: str, recipe: Recipe, data: str | Path, out: Path, parent: Path | None, heldout: float,
                 meta: dict, progress: bool = True) -> TrainResult:
    """One stage: train baseline/best from scratch, prune the baseline, or binarize the pruned model."""
    if variant in ("baseline", "best"):
        s = recipe.settings(variant)
        config = TrainConfig(hidden=s["hidden"], formats=parse_bits(s["bits"], len(s["hidden"]) + 1),
                             epochs=s["epochs"], lr=recipe.lr, batch_size=recipe.batch_size, seed=recipe.seed,
                             heldout=heldout)
        return train(data, config, out, progress=progress, meta=meta)
    if variant == "pruned":
        return prune_checkpoint(parent, out, recipe.ratios, recipe.prune, criterion=recipe.criterion,
                                data_path=data, meta=meta, progress=progress)
    formats = parse_bits(recipe.binary_bits, len(recipe.hidden) + 1)
    return quantize_checkpoint(parent, out, formats, recipe.binary, data_path=data, meta=meta, progress=progress)


def run_pipeline(
    data: str | Path,
    out_dir: Path,
    recipe: Recipe,
    variants: list[str],
    *,
    heldout: float = 0.0,
    build: bool = True,
    export_best: str | Path | None = None,
    progress: bool = True,
) -> list[StageRun]:
    """Make the variants (and what they start from) into out_dir, skip what is already made by the same
    recipe, write pipeline.json, print the benchmark of the results (without latency)."""
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout is a fraction in [0, 1), got {heldout}")
    if export_best and not build:
        raise ValueError("--export-best picks the best model that fits the UNO: it needs the firmware builds")
    digest = load_dataset(data).digest
    order = stage_order(variants)
    passes = [(out_dir, 0.0)] + ([(out_dir / HELDOUT_DIR, heldout)] if heldout > 0 else [])
    runs: list[StageRun] = []
    bar = tqdm(total=len(order) * len(passes), desc="pipeline", unit="stage", disable=not progress)
    for folder, fraction in passes:
        keys: dict[str, str] = {}
        for variant in order:
            parent = PARENT.get(variant)
            keys[variant] = key = stage_key(recipe.settings(variant), keys.get(parent), digest, fraction)
            out = folder / f"{variant}.pt"
            where = f"{variant}" + (f" (without the {fraction:g} held out)" if fraction else "")
            bar.set_description(f"pipeline: {where}")
            made = made_by(out, key)
            if made is not None:
                tqdm.write(f"{where}: {out} is up to date, skipped")
                runs.append(StageRun(variant, out, fraction > 0, made.get("seconds", 0.0), True))
            else:
                meta = {"pipeline": {"variant": variant, "key": key}}
                result = make_variant(variant, recipe, data, out, folder / f"{parent}.pt" if parent else None,
                                      fraction, meta, progress)
                tqdm.write(f"{where}: {result.summary()}")
                runs.append(StageRun(variant, out, fraction > 0, result.seconds, False))
            bar.update()
    bar.close()
    manifest = {"data": str(data), "digest": digest, "heldout": heldout, "recipe": asdict(recipe),
                "variants": [{"name": v, "model": f"{v}.npz"} for v in order]}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    rows = bench.bench([out_dir], build=build, latency=False, log=tqdm.write)
    print(bench.table(rows))
    print(stage_times(runs))
    if export_best:
        print(export_fitting(rows, Path(export_best)))
    return runs


def stage_times(runs: list[StageRun]) -> str:
    lines = ["wall time per stage (s; skipped: as recorded when made):"]
    for r in runs:
        where = "heldout/" if r.heldout else ""
        lines.append(f"  {where}{r.variant:<10} {r.seconds:8.1f}" + ("  (skipped)" if r.skipped else ""))
    return "\n".join(lines)


def export_fitting(rows: list[BenchRow], out: Path) -> str:
    """Copy the variant that fits the UNO with the highest EM (then TF) to out.pt + out.npz, and its
    held-out twin, if any, to heldout/ beside it (where the benchmark looks for it)."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        raise ValueError("no variant fits the UNO: nothing to export")
    best = max(fitting, key=lambda r: (r.em, r.tf))
    source = Path(best.model)
    copies = [(source, out)]
    twin = source.parent / HELDOUT_DIR / source.name
    if twin.is_file():
        copies.append((twin, out.parent / HELDOUT_DIR / out.name))
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.with_suffix(".pt"), dst.with_suffix(".pt"))
        model = IntModel.load(src.with_suffix(".npz"))
        model.name = dst.stem  # the firmware reports this name
        model.save(dst.with_suffix(".npz"))
    return f"exported {best.name} (EM {100 * best.em:.2f}%, fits the UNO) to {out.with_suffix('.pt')} and .npz"
