"""The compression pipeline: the original experiment (baseline -> pruned -> binary), done for real.

`make_variants` makes the variants of the benchmark, each named as the original experiment named it:
    baseline  QAT from scratch (default 256-192-128 at 2 bits, the original's baseline shape)
    pruned    baseline with half of every hidden layer's neurons removed, fine-tuned at its bits
    binary    pruned at 1 bit per weight, fine-tuned (its latent weights carried over), with warm restarts
    ternary   pruned at ternary weights ({-1, 0, +1}, half of each row 0), fine-tuned the same way
    best      the best model known to fit the UNO, trained from scratch (160-128-96 at 2 bits)
and writes OUT_DIR/<variant>.pt + .npz and OUT_DIR/pipeline.json (the variants in order, for
`unochat bench OUT_DIR`). With `heldout` > 0 every variant is made a second time, by the same recipe, on the
pairs outside the seeded held-out split, into OUT_DIR/heldout/: the benchmark takes the held-out figures
of a model from that twin, since the model itself was trained on the held-out pairs. Measuring and
exporting the variants is the benchmark's (measure/bench.py); `unochat pipeline` does both.

Resuming: a variant whose checkpoint exists and was made by the same recipe (its `key`: the variant's
settings, the key of the model it starts from, the dataset's digest and the split) is not made again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..data.dataset import load_dataset
from ..model import formats
from ..model.intmodel import IntModel, ModelError
from .checkpoint import TrainResult
from .config import Recipe, TrainConfig
from .finetune import prune_checkpoint, quantize_checkpoint
from .scratch import train

VARIANTS = ("baseline", "pruned", "binary", "ternary", "best")
PARENT = {"pruned": "baseline", "binary": "pruned", "ternary": "pruned"}
HELDOUT_DIR = "heldout"  # a model's held-out twin lives in this folder beside it
MANIFEST = "pipeline.json"  # a pipeline directory's list of variants, in order


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
    """One stage: train baseline/best from scratch, prune the baseline, or requantize the pruned model
    (binary, ternary)."""
    if variant in ("baseline", "best"):
        s = recipe.settings(variant)
        config = TrainConfig(hidden=s["hidden"], formats=formats.parse_formats(s["bits"], len(s["hidden"]) + 1),
                             epochs=s["epochs"], lr=recipe.lr, batch_size=recipe.batch_size, seed=recipe.seed,
                             heldout=heldout, case=recipe.case, transliterate=recipe.transliterate)
        return train(data, config, out, progress=progress, meta=meta)
    if variant == "pruned":
        return prune_checkpoint(parent, out, recipe.ratios, recipe.prune, criterion=recipe.criterion,
                                data_path=data, meta=meta, progress=progress)
    if variant == "ternary":
        return quantize_checkpoint(parent, out, ["ternary"], recipe.ternary, sparsity=recipe.ternary_sparsity,
                                   data_path=data, meta=meta, progress=progress)
    binary = formats.parse_formats(recipe.binary_bits, len(recipe.hidden) + 1)
    return quantize_checkpoint(parent, out, binary, recipe.binary, data_path=data, meta=meta, progress=progress)


def make_variants(
    data: str | Path,
    out_dir: Path,
    recipe: Recipe,
    variants: list[str],
    *,
    heldout: float = 0.0,
    progress: bool = True,
) -> list[StageRun]:
    """Make the variants (and what they start from) into out_dir, skip what is already made by the same
    recipe, write pipeline.json."""
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout is a fraction in [0, 1), got {heldout}")
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
    return runs


def stage_times(runs: list[StageRun]) -> str:
    lines = ["wall time per stage (s; skipped: as recorded when made):"]
    for r in runs:
        where = "heldout/" if r.heldout else ""
        lines.append(f"  {where}{r.variant:<10} {r.seconds:8.1f}" + ("  (skipped)" if r.skipped else ""))
    return "\n".join(lines)


