"""Import a z80ai (HarryR/z80ai) `.npz` model as an integer model.

z80ai's integer inference (its feedme.py and Z80 code, HarryR/z80ai): input = count*32 in int16; per layer acc = W x + bias
(bias already scaled by 32 in the file), then an arithmetic shift right by 2, ReLU on hidden layers.
In unochat's form that is mult = 32 on the first layer (the *32 of the counts), mult = 1 after it,
bias as stored, shift = 2 everywhere, int16 activations. z80ai's 16-bit accumulator wraps on overflow;
unochat's accumulators are exact and its activations saturate, which agree wherever z80ai does not wrap
(the largest accumulator on tinychat is 4,702).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.dataset import EOS
from ..data.features import FeatureSpec
from .intmodel import IntLayer, IntModel, ModelError

INPUT_SCALE = 32
SHIFT = 2


def load_z80ai(path: str | Path) -> IntModel:
    try:
        with np.load(path, allow_pickle=False) as data:
            arch = json.loads(bytes(data["_architecture"]).decode("utf-8"))
            # numpy's fixed-width bytes drop the trailing NUL, so z80ai's EOS comes back here
            charset = bytes(data["_charset"]).decode("utf-8").rstrip(EOS) + EOS
            n_layers = len(arch["hidden_sizes"]) + 1
            params = [(data[f"fc{i + 1}_weight"], data[f"fc{i + 1}_bias"]) for i in range(n_layers)]
    except (OSError, KeyError, ValueError) as e:
        raise ModelError(f"{path}: not a z80ai model ({e})") from e
    if arch.get("num_classes", len(charset)) != len(charset):
        raise ModelError(f"{path}: {arch['num_classes']} output classes but a charset of {len(charset)}")
    layers = []
    for i, (w, b) in enumerate(params):
        last = i == n_layers - 1
        layers.append(
            IntLayer(
                fmt="2bit",
                weight=w.astype(np.int8),
                mult=np.full(w.shape[0], INPUT_SCALE if i == 0 else 1, dtype=np.int64),
                bias=b.astype(np.int64),
                shift=SHIFT,
                act=None if last else "i16",
            )
        )
    model = IntModel(
        layers=layers,
        charset=charset,
        features=FeatureSpec(128, 128, 8),
        max_reply=50,
        name=Path(path).stem,
        meta={"source": "z80ai", "file": str(path), "architecture": arch},
    )
    model.validate()
    return model
