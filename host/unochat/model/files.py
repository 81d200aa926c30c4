"""Open an integer model file: a unochat model (.npz) or a z80ai model (.npz, imported on the fly).

Training checkpoints (.pt) need torch: unochat.train.checkpoint.load_model opens those too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..paths import DEFAULT_MODEL
from .intmodel import IntModel, ModelError
from .z80ai import load_z80ai

INT_MODEL_SUFFIX = ".npz"
CHECKPOINT_SUFFIX = ".pt"
MODEL_SUFFIXES = (INT_MODEL_SUFFIX, CHECKPOINT_SUFFIX)


def model_path(path: str | Path | None) -> Path:
    """The model file `path` names (default: the repo's default model); ModelError if it is missing or
    its suffix is not a model's."""
    p = Path(path) if path else DEFAULT_MODEL
    if not p.exists():
        hint = " (the default model ships with the repo; `make model` retrains it)" if path is None else ""
        raise ModelError(f"{p}: no such model file{hint}")
    if p.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{p}: not a model file: unochat opens integer models and z80ai models ({INT_MODEL_SUFFIX}) "
                         f"and training checkpoints ({CHECKPOINT_SUFFIX})")
    return p


def load_int_model(path: str | Path | None = None) -> IntModel:
    """A unochat integer model or a z80ai model (.npz)."""
    p = model_path(path)
    if p.suffix == CHECKPOINT_SUFFIX:
        raise ModelError(f"{p}: a training checkpoint; open it with unochat.train.checkpoint.load_model")
    try:
        with np.load(p, allow_pickle=False) as data:
            is_z80ai = "_architecture" in data.files
    except (OSError, ValueError) as e:
        raise ModelError(f"{p}: not a model file ({e})") from e
    return load_z80ai(p) if is_z80ai else IntModel.load(p)
