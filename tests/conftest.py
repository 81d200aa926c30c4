"""Shared fixtures: random and extreme integer models, and the z80ai files from ../shared."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from unochat.features import FeatureSpec
from unochat.intmodel import ACT_MAX, FORMAT_RANGE, INPUT_MAX, INT32_MAX, MULT_LIMIT, IntLayer, IntModel

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "z80ai" / "tinychat"
TINYCHAT_DATA = SHARED / "training-data.txt.gz"
TINYCHAT_MODEL = SHARED / "model.npz"
CHARSET = " ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?.\x00"


@pytest.fixture
def pio_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reuse the repo's core dir (tool-scons is registered there), but register the temporary
    # project's symlinked platform in a temporary platforms dir, so the repo's registration
    # never points into a deleted temp dir.
    monkeypatch.setenv("PLATFORMIO_CORE_DIR", str(REPO / ".pio-core"))
    monkeypatch.setenv("PLATFORMIO_PLATFORMS_DIR", str(tmp_path / "platforms"))


@pytest.fixture
def firmware_project(tmp_path: Path, pio_env: None) -> Path:
    """A throw-away copy of the PlatformIO project (the real sketch, linked) to build any model in."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "firmware" / "src", project / "firmware" / "src")
    (project / "tools").symlink_to(REPO / "tools", target_is_directory=True)
    (project / "platformio.ini").write_text((REPO / "platformio.ini").read_text())
    return project


def need_shared() -> None:
    if not TINYCHAT_DATA.exists() or not TINYCHAT_MODEL.exists():
        pytest.skip(f"z80ai tinychat files not found at {SHARED} (../shared sits beside the repo in CI only)")


def _weights(rng: np.random.Generator, fmt: str, n_out: int, n_in: int, extreme: str | None) -> np.ndarray:
    lo, hi = FORMAT_RANGE[fmt]
    if extreme == "max":
        return np.full((n_out, n_in), hi, dtype=np.int8)
    if extreme == "min":
        return np.full((n_out, n_in), lo, dtype=np.int8)
    if fmt == "1bit":
        return rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_out, n_in))
    return rng.integers(lo, hi + 1, size=(n_out, n_in)).astype(np.int8)


def random_model(
    seed: int,
    formats: list[str],
    hidden: list[int],
    act: str = "u8",
    extreme: str | None = None,
    features: FeatureSpec = FeatureSpec(),
) -> IntModel:
    """A random model whose multipliers and biases go as far as the int32 bound allows.

    extreme='max'/'min' fills every weight with the format's largest/smallest value, so an all-255
    input drives every accumulator to exactly the proven bound."""
    rng = np.random.default_rng(seed)
    sizes = [features.n_inputs] + hidden + [len(CHARSET)]
    layers = []
    for i, fmt in enumerate(formats):
        last = i == len(formats) - 1
        w = _weights(rng, fmt, sizes[i + 1], sizes[i], extreme)
        in_max = INPUT_MAX if i == 0 else ACT_MAX[act]
        bound = np.abs(w.astype(np.int64)).sum(axis=1) * in_max
        bias = rng.integers(-(2**20), 2**20, size=sizes[i + 1])
        headroom = (INT32_MAX - np.abs(bias)) // np.maximum(bound, 1)
        top = np.minimum(headroom, MULT_LIMIT - 1)
        mult = (rng.integers(1, top + 1) * rng.choice([-1, 1], size=top.shape)).astype(np.int64)
        if extreme:
            mult = top.astype(np.int64)
        # a shift that keeps hidden activations in an interesting range rather than always saturated
        shift = 30 if extreme else int(rng.integers(12, 24))
        layers.append(IntLayer(fmt, w, mult, bias.astype(np.int64), shift, None if last else act))
    model = IntModel(layers, CHARSET, features, name=f"random{seed}")
    model.validate()
    return model


def random_inputs(seed: int, n: int, n_inputs: int) -> np.ndarray:
    """Sparse small counts like real features, dense random bytes, and the extremes 0 and 255."""
    rng = np.random.default_rng(seed)
    sparse = (rng.random((n, n_inputs)) < 0.1) * rng.integers(1, 5, size=(n, n_inputs))
    dense = rng.integers(0, 256, size=(n, n_inputs))
    edges = np.stack([np.zeros(n_inputs), np.full(n_inputs, 255), np.arange(n_inputs) % 256,
                      (np.arange(n_inputs) % 2) * 255])
    return np.concatenate([sparse, dense, edges]).astype(np.uint8)
