"""Shared fixtures: random and extreme integer models, and the z80ai files from ../shared."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from unochat.boards import UNO, Board
from unochat.data.dataset import Pair, build_charset
from unochat.data.features import FeatureSpec, input_vector
from unochat.firmware.build import build_firmware
from unochat.firmware.project import make_project, project_environ
from unochat.firmware.size import SizeReport
from unochat.model import formats, reference
from unochat.model.intmodel import ACT_MAX, INPUT_MAX, INT32_MAX, MULT_LIMIT, IntLayer, IntModel
from unochat.paths import REPO

SHARED = REPO.parent / "shared" / "z80ai" / "tinychat"
TINYCHAT_DATA = SHARED / "training-data.txt.gz"
TINYCHAT_MODEL = SHARED / "model.npz"
CHARSET = " ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?.\x00"


@pytest.fixture
def pio_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PlatformIO's environment for a throw-away project under tmp_path (unochat.firmware.project)."""
    for key, value in project_environ(tmp_path).items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., tuple[Path, SizeReport]]]:
    """Builds firmware for any model (and board, default the UNO) in one throw-away project shared by the
    whole module: (ELF, sizes), the HEX beside the ELF, once per model id and board."""
    root = tmp_path_factory.mktemp("firmware")
    project = make_project(root)
    built: dict[str, tuple[Path, SizeReport]] = {}

    def build_one(model: IntModel, board: Board = UNO) -> tuple[Path, SizeReport]:
        key = f"{model.fingerprint()}-{board.name}"
        if key not in built:
            sizes = build_firmware(model, project, quiet=True, board=board)
            elf = root / f"{key}.elf"
            shutil.copy(project / "build" / "firmware.elf", elf)
            shutil.copy(project / "build" / "firmware.hex", elf.with_suffix(".hex"))
            built[key] = (elf, sizes)
        return built[key]

    with pytest.MonkeyPatch.context() as mp:
        for key, value in project_environ(root).items():
            mp.setenv(key, value)
        yield build_one


@pytest.fixture
def firmware_project(tmp_path: Path, pio_env: None) -> Path:
    return make_project(tmp_path)


def need_shared() -> None:
    if not TINYCHAT_DATA.exists() or not TINYCHAT_MODEL.exists():
        pytest.skip(f"z80ai tinychat files not found at {SHARED} (../shared sits beside the repo in CI only)")


def _weights(rng: np.random.Generator, fmt: str, n_out: int, n_in: int, extreme: str | None) -> np.ndarray:
    f = formats.get(fmt)
    if extreme == "max":
        return np.full((n_out, n_in), f.hi, dtype=np.int8)
    if extreme == "min":
        return np.full((n_out, n_in), f.lo, dtype=np.int8)
    if f.binary:
        return rng.choice(f.levels.astype(np.int8), size=(n_out, n_in))
    return rng.integers(f.lo, f.hi + 1, size=(n_out, n_in)).astype(np.int8)


def random_model(
    seed: int,
    layer_formats: list[str],
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
    for i, fmt in enumerate(layer_formats):
        last = i == len(layer_formats) - 1
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


def chatty_model(
    seed: int,
    layer_formats: list[str],
    hidden: list[int],
    pairs: list[Pair],
    act: str = "u8",
    features: FeatureSpec = FeatureSpec(),
    eos_rate: float = 0.06,
) -> IntModel:
    """A random model over the charset of a dataset whose replies vary with the query and end with EOS.

    conftest.random_model's big biases make every reply one character repeated 50 times. Here each layer
    is scaled on real inputs (about 60 of the dataset's queries with random contexts) so that about half
    of the ReLUs open and the logits spread, and the EOS logit is raised until EOS wins about `eos_rate`
    of the steps."""
    rng = np.random.default_rng(seed)
    charset = build_charset(pairs)
    queries = [p.query for p in pairs[:: max(1, len(pairs) // 60)]]
    contexts = ["".join(rng.choice(list(charset[:-1]), size=rng.integers(0, 12))) for _ in queries]
    h = np.stack([input_vector(q, c, features) for q, c in zip(queries, contexts)]).astype(np.int64)
    sizes = [features.n_inputs, *hidden, len(charset)]
    layers = []
    for i, fmt in enumerate(layer_formats):
        weight = rng.choice(formats.get(fmt).levels, size=(sizes[i + 1], sizes[i])).astype(np.int8)
        mult = rng.integers(1, 8, size=sizes[i + 1])
        z = (h @ weight.T.astype(np.int64)) * mult
        bias = -np.median(z, axis=0).astype(np.int64)
        z += bias
        last = i == len(layer_formats) - 1
        top = 1000 if last else ACT_MAX[act]
        shift = max(0, int(np.ceil(np.log2(max(np.percentile(np.abs(z), 99), 1) / top))))
        layers.append(IntLayer(fmt, weight, mult, bias, shift, None if last else act))
        h = z >> shift if last else np.clip(z >> shift, 0, top)
    model = IntModel(layers, charset, features, name=f"chatty{seed}-{'-'.join(layer_formats)}-{act}")
    replies = reference.generate(model, queries)
    steps = np.stack([input_vector(q, r[:k], features) for q, r in zip(queries, replies) for k in range(len(r))])
    logits = reference.logits(model, steps)
    margin = logits[:, :-1].max(axis=1) - logits[:, -1]
    layers[-1].bias[-1] += (int(np.percentile(margin, 100 * eos_rate)) + 1) << layers[-1].shift
    model.validate()
    return model
