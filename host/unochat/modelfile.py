"""Open any model file a command accepts: a unochat integer model (.npz), a training checkpoint (.pt),
or a z80ai model (.npz, imported on the fly)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .intmodel import IntModel, ModelError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "default.npz"
DEFAULT_DATA = REPO / "data" / "default.txt"


def training_data(meta: dict) -> Path | None:
    """The dataset a model's (or checkpoint's) meta names, where it is found here: as recorded, or
    relative to the repo (a pipeline run elsewhere records its own paths). None if it is not here."""
    named = (meta.get("dataset") or {}).get("path")
    for candidate in ([Path(named), REPO / named] if named else []):
        if candidate.is_file():
            return candidate
    return None


def load_model(path: str | Path | None = None) -> IntModel:
    p = Path(path) if path else DEFAULT_MODEL
    if not p.exists():
        hint = " (the default model ships with the repo; `make model` retrains it)" if path is None else ""
        raise ModelError(f"{p}: no such model file{hint}")
    if p.suffix == ".pt":
        from .train import int_model_from_checkpoint  # torch is only needed for checkpoints

        return int_model_from_checkpoint(p)
    try:
        with np.load(p, allow_pickle=False) as data:
            is_z80ai = "_architecture" in data.files
    except (OSError, ValueError) as e:
        raise ModelError(f"{p}: not a model file ({e})") from e
    if is_z80ai:
        from .z80ai import load_z80ai

        return load_z80ai(p)
    return IntModel.load(p)
