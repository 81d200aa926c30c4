"""QAT model, export to the integer model, and the training loop, on a small synthetic chat dataset."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from unochat.data.dataset import build_charset, load_dataset, split_heldout
from unochat.data.features import FeatureSpec, teacher_forced_examples
from unochat.model import reference
from unochat.model.formats import FormatError, parse_formats
from unochat.model.intmodel import INPUT_MAX, INT32_MAX, MULT_LIMIT, IntModel
from unochat.model.metrics import evaluate
from unochat.train import qat
from unochat.train.checkpoint import int_model_from_checkpoint, load_checkpoint
from unochat.train.config import TrainConfig
from unochat.train.fit import FitResult, fit, new_model, quant_mix
from unochat.train.scratch import train

SPEC = FeatureSpec()
WORDS = "hello hi hey how are you what is your name who made tell joke time weather good bad day night".split()
SMALL = dict(hidden=[48, 32], epochs=6, batch_size=64, eval_every=1)


def write_dataset(path, n_pairs: int = 120, seed: int = 0) -> None:
    """Queries of three random words; the reply is a function of them, so a model can learn it."""
    rng = random.Random(seed)
    lines = ["# synthetic chat for tests", ""]
    for _ in range(n_pairs):
        words = rng.sample(WORDS, 3)
        reply = words[0].upper() + ("!" if "you" in words else ".")
        lines.append(f"{' '.join(words)}|{reply}")
    lines.append("x|too short a query")  # one problem line, reported and skipped
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chat.txt"
    write_dataset(path)
    return path


@pytest.fixture(scope="module")
def examples(data_path):
    pairs = load_dataset(data_path).pairs
    charset = build_charset(pairs)
    x, y = teacher_forced_examples(pairs, charset, SPEC)
    return pairs, charset, x, y


def fitted_model(examples, **overrides) -> tuple[qat.QuantMLP, FitResult]:
    _, charset, x, y = examples
    config = TrainConfig(**{**SMALL, **overrides})
    model = new_model(config, len(charset))
    return model, fit(model, (x, y), config, charset, SPEC, progress=False)


@pytest.fixture(scope="module")
def trained(examples):
    model, _ = fitted_model(examples)
    return model


def float_logits(model: qat.QuantMLP, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def assert_integer_matches_float(model: qat.QuantMLP, charset: str, x: np.ndarray, min_agree: float = 0.99) -> None:
    """The exported model computes the float model's logits up to rounding: a folding error breaks this."""
    int_model = qat.export_int_model(model, charset, SPEC)
    expected = float_logits(model, x)
    got = reference.logits(int_model, x) * int_model.logit_scale
    agree = np.mean(expected.argmax(axis=1) == got.argmax(axis=1))
    assert agree >= min_agree, f"argmax agreement {agree:.4f}"
    spread = expected.max() - expected.min()
    assert np.abs(got - expected).max() <= 0.02 * spread, f"logits differ by {np.abs(got - expected).max():.4f}"


# --- quantizers -----------------------------------------------------------------------------------


def test_1bit_forward_is_sign_and_gradient_is_gated_to_unit_range():
    w = torch.tensor([[-1.5, -0.5, 0.0, 0.7, 1.2]], requires_grad=True)
    q = qat.quantize_weight(w, "1bit")
    scale = w.detach().abs().mean()
    assert torch.equal(q.detach(), torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0]]) * scale)
    q.sum().backward()
    assert torch.equal(w.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))


def test_2bit_uses_z80ai_levels_and_int8_keeps_127_levels():
    torch.manual_seed(0)
    w = torch.randn(16, 200)
    levels2, _ = qat.weight_levels(w, "2bit")
    assert set(levels2.unique().tolist()) == {-2.0, -1.0, 0.0, 1.0}
    levels8, scale8 = qat.weight_levels(w, "int8")
    assert levels8.abs().max() == 127 and len(levels8.unique()) > 100
    assert torch.allclose(levels8 * scale8, w, atol=float(scale8.max()) / 2 + 1e-7)


@pytest.mark.parametrize("sparsity", [0.5, 0.74])
def test_ternary_zeroes_each_rows_smallest_weights(sparsity):
    torch.manual_seed(0)
    w = torch.randn(16, 200)
    levels, scale = qat.weight_levels(w, "ternary", sparsity)
    assert set(levels.unique().tolist()) == {-1.0, 0.0, 1.0}
    zeros = (levels == 0).float().mean(dim=1)
    assert torch.allclose(zeros, torch.full((16,), round(sparsity * 200) / 200))
    kept = levels != 0
    assert all(w[r].abs()[kept[r]].min() >= w[r].abs()[~kept[r]].max() for r in range(16))  # per row
    assert torch.equal(torch.sign(w)[kept], levels[kept])
    assert torch.allclose(scale[:, 0], (w.abs() * kept).sum(dim=1) / kept.sum(dim=1))


def test_ternary_trains_and_exports_at_its_sparsity(examples):
    model, _ = fitted_model(examples, formats=["ternary"] * 3, sparsity=0.6, epochs=2)
    charset = examples[1]
    int_model = qat.export_int_model(model, charset, SPEC)
    for layer in int_model.layers:
        assert layer.fmt == "ternary" and set(np.unique(layer.weight)) <= {-1, 0, 1}
        assert (layer.weight == 0).mean() == pytest.approx(round(0.6 * layer.n_in) / layer.n_in)


def test_activation_is_uint8_round_half_up_with_lsq_step_gradient():
    step = torch.tensor(0.5, requires_grad=True)
    y = torch.tensor([[-1.0, 0.2, 0.25, 0.74, 500.0]], requires_grad=True)
    out = qat.fake_quant_u8(y, step)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 0.0, 0.5, 0.5, 127.5]]))
    out.sum().backward()
    assert torch.equal(y.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))
    # LSQ: round(v/s) - v/s inside the range, 255 above it, 0 below; times 1/sqrt(n * 255)
    expected = ((0 - 0.4) + (1 - 0.5) + (1 - 1.48) + 255) / (5 * 255) ** 0.5
    assert step.grad.item() == pytest.approx(expected, rel=1e-5)


def test_mix_blends_float_into_quantized_weights():
    torch.manual_seed(0)
    layer = qat.QuantLinear(8, 4, "1bit")
    x = torch.randn(3, 8)
    levels, scale = qat.weight_levels(layer.weight, "1bit")
    layer.mix = 0.0
    assert torch.allclose(layer(x), x @ layer.weight.t())
    layer.mix = 1.0
    assert torch.allclose(layer(x), x @ (levels * scale).t())


# --- export ---------------------------------------------------------------------------------------


def test_exported_model_computes_the_float_model(trained, examples):
    _, charset, x, _ = examples
    assert_integer_matches_float(trained, charset, x)


@pytest.mark.parametrize(
    "formats", [["1bit"] * 3, ["2bit"] * 3, ["int8"] * 3, ["1bit", "2bit", "int8"], ["int8", "1bit", "2bit"]]
)
def test_every_format_exports_validates_and_matches(examples, formats):
    _, charset, x, _ = examples
    model, _ = fitted_model(examples, formats=formats, epochs=2)
    int_model = qat.export_int_model(model, charset, SPEC)  # validates, bounds included
    assert int_model.formats == formats
    for layer, linear in zip(int_model.layers, model.linears):
        assert np.array_equal(layer.weight, qat.weight_levels(linear.weight, linear.fmt)[0].numpy())
    assert [layer.act for layer in int_model.layers] == ["u8", "u8", None]
    assert_integer_matches_float(model, charset, x, min_agree=0.98)


def test_each_hidden_shift_is_the_largest_that_fits(trained, examples):
    _, charset, _, _ = examples
    int_model = qat.export_int_model(trained, charset, SPEC)
    for layer in int_model.layers[:-1]:
        reach = np.abs(layer.weight.astype(np.int64)).sum(axis=1) * INPUT_MAX * np.abs(layer.mult)
        # one more bit of shift would double every multiplier and bias
        assert layer.shift == 30 or 2 * np.abs(layer.mult).max() + 1 >= MULT_LIMIT or \
            (2 * (reach + np.abs(layer.bias))).max() > INT32_MAX


def test_always_off_neuron_does_not_cost_the_layer_precision(examples):
    _, charset, x, _ = examples
    model, _ = fitted_model(examples, epochs=1)
    before = qat.export_int_model(model, charset, SPEC)
    with torch.no_grad():
        model.hidden[0].norm.bias[0] = -1e6  # neuron 0 of layer 0 can never fire
    after = qat.export_int_model(model, charset, SPEC)
    assert after.layers[0].shift == before.layers[0].shift
    assert (reference.forward(after, x)[0][:, 0] == 0).all()
    assert_integer_matches_float(model, charset, x)


def test_step_neuron_is_exact_and_only_caps_the_shift(examples):
    _, charset, x, _ = examples
    model, _ = fitted_model(examples, epochs=1)
    before = qat.export_int_model(model, charset, SPEC)
    norm, linear = model.hidden[0].norm, model.hidden[0].linear
    acc = x @ before.layers[0].weight[0].astype(np.int64)
    scale = float(qat.weight_levels(linear.weight, linear.fmt)[1][0, 0])
    with torch.no_grad():  # neuron 0 looks nearly constant: BatchNorm multiplies it by ~3,000
        norm.running_var[0] = 1e-9
        norm.running_mean[0] = scale * float(np.median(acc))
        norm.weight[0] = 10.0
    after = qat.export_int_model(model, charset, SPEC)
    first = after.layers[0]
    assert before.layers[0].shift > 7 >= first.shift >= 6
    assert abs(first.mult[0]) == 255 << first.shift
    y = reference.forward(after, x)[0][:, 0]
    assert 0 < (y > 0).mean() < 1  # a live step, switching where the float one does:
    assert_integer_matches_float(model, charset, x)


def test_step_neurons_reproduce_the_real_formula_exactly():
    rng = np.random.default_rng(0)
    r = rng.choice([-1, 1], 200) * rng.uniform(255, 1e6, 200)
    c = rng.uniform(-1e7, 1e7, 200)
    acc = np.arange(-50_000, 50_000)
    for shift in (0, 3, 7):
        mult, bias = qat._step_neurons(r, c, shift)
        for k in range(200):
            want = np.clip(np.floor(acc * r[k] + c[k]), 0, 255)
            got = np.clip((acc * int(mult[k]) + int(bias[k])) >> shift, 0, 255)
            np.testing.assert_array_equal(got, want)


def test_saved_model_reloads_to_identical_logits(trained, examples, tmp_path):
    _, charset, x, _ = examples
    int_model = qat.export_int_model(trained, charset, SPEC, name="t", meta={"why": "test"})
    int_model.save(tmp_path / "t.npz")
    loaded = IntModel.load(tmp_path / "t.npz")
    assert np.array_equal(reference.logits(loaded, x), reference.logits(int_model, x))
    assert loaded.logit_scale == int_model.logit_scale and loaded.meta == {"why": "test"}


# --- training loop --------------------------------------------------------------------------------


def test_parse_bits_and_config_checks():
    assert parse_formats("1", 4) == ["1bit"] * 4
    assert parse_formats("1,1,2,8", 4) == ["1bit", "1bit", "2bit", "int8"]
    with pytest.raises(FormatError, match="3 weight formats for 4 layers"):
        parse_formats("1,2,8", 4)
    with pytest.raises(FormatError, match=re.escape("unknown weight format '4': use 1bit (1), 2bit (2), ternary (t), int8 (8)")):
        parse_formats("4", 2)
    with pytest.raises(ValueError, match="1..1024"):
        TrainConfig(hidden=[1100, 192])
    assert TrainConfig(hidden=[320, 192]).hidden == [320, 192]
    assert TrainConfig(hidden=[8, 8]).formats == ["1bit"] * 3


def test_warmup_blends_from_float_to_quantized(examples):
    mixes: list[float] = []
    _, charset, x, y = examples
    config = TrainConfig(**{**SMALL, "epochs": 4, "warmup_epochs": 2})
    model = new_model(config, len(charset))
    fit(model, (x, y), config, charset, SPEC, progress=False, after_step=lambda m: mixes.append(m.linears[0].mix))
    per_epoch = len(y) // config.batch_size + (len(y) % config.batch_size >= 2)
    assert len(mixes) == 4 * per_epoch  # after_step runs once per optimizer step
    assert mixes[0] == 0.0 and mixes == sorted(mixes)
    assert 0.0 < mixes[per_epoch] < 1.0
    assert all(m == 1.0 for m in mixes[2 * per_epoch:])
    assert all(layer.mix == 1.0 for layer in model.linears)  # the returned model is the quantized one


def test_no_warmup_is_quantized_from_the_first_step():
    assert quant_mix(0, 0) == 1.0
    assert [quant_mix(s, 4) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def scripted_accuracy(monkeypatch, scores: list[float]) -> list[IntModel]:
    """Replace the integer evaluation by a script of scores; returns the exported model of every call."""
    exported: list[IntModel] = []

    def fake(model, charset, features, x, y, allowed=None):
        exported.append(qat.export_int_model(model, charset, features))
        return scores[len(exported) - 1]

    monkeypatch.setattr("unochat.train.fit.integer_accuracy", fake)
    return exported


def same_arrays(a: IntModel, b: IntModel) -> bool:
    return len(a.layers) == len(b.layers) and a.logit_scale == b.logit_scale and all(
        np.array_equal(la.weight, lb.weight) and np.array_equal(la.mult, lb.mult)
        and np.array_equal(la.bias, lb.bias) and la.shift == lb.shift
        for la, lb in zip(a.layers, b.layers)
    )


def test_early_stopping_keeps_the_best_state(monkeypatch, examples):
    exported = scripted_accuracy(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    model, result = fitted_model(examples, epochs=6, patience=2)
    assert (result.stopped_early, result.epochs_run, result.best_epoch, result.best_score) == (True, 4, 2, 0.7)
    final = qat.export_int_model(model, examples[1], SPEC)
    assert same_arrays(final, exported[1]) and not same_arrays(final, exported[3])


def test_patience_counts_epochs_between_sparse_evaluations(monkeypatch, examples):
    scripted_accuracy(monkeypatch, [0.5, 0.4, 0.3])
    _, result = fitted_model(examples, epochs=6, eval_every=2, patience=1)
    assert (result.stopped_early, result.epochs_run, result.best_epoch) == (True, 4, 2)
    assert [r["tf"] is not None for r in result.history] == [False, True, False, True]


def test_train_saves_the_best_state_not_the_last(monkeypatch, data_path, tmp_path):
    exported = scripted_accuracy(monkeypatch, [0.5, 0.8, 0.6])
    result = train(data_path, TrainConfig(**{**SMALL, "epochs": 3}), tmp_path / "m.pt", progress=False)
    saved = IntModel.load(tmp_path / "m.npz")
    assert result.fit.best_epoch == 2 and load_checkpoint(tmp_path / "m.pt").info["best_epoch"] == 2
    assert same_arrays(saved, exported[1]) and not same_arrays(saved, exported[2])


def test_same_seed_same_model_other_seed_other_model(data_path, tmp_path):
    def run(seed: int, name: str) -> dict:
        train(data_path, TrainConfig(**{**SMALL, "epochs": 2, "seed": seed}), tmp_path / f"{name}.pt", progress=False)
        with np.load(tmp_path / f"{name}.npz") as f:
            return {k: f[k].tobytes() for k in f.files if k != "header"}

    first, again, other = run(0, "a"), run(0, "b"), run(1, "c")
    assert first == again
    assert first != other


def test_train_writes_checkpoint_and_integer_model(data_path, tmp_path, capsys):
    config = TrainConfig(**{**SMALL, "epochs": 2, "heldout": 0.2, "seed": 3})
    result = train(data_path, config, tmp_path / "run" / "m.pt", progress=False)
    printed = capsys.readouterr().out
    assert "120 pairs, 1 refused (1 short_query)" in printed and "chat.txt:123: query shorter than 2" in printed
    # the held-out pairs are split_heldout's with seed 0, whatever the training seed
    train_pairs, held = split_heldout(load_dataset(data_path).pairs, 0.2, seed=0)
    assert result.metrics["heldout"] == evaluate(result.int_model, held)
    assert result.metrics["train"] == evaluate(result.int_model, train_pairs)
    ck = load_checkpoint(tmp_path / "run" / "m.pt")
    assert ck.config == config and ck.charset == result.int_model.charset
    for key in ("dataset", "seed", "metrics", "best_epoch", "seconds"):
        assert key in ck.info
    assert ck.info["dataset"]["digest"] == load_dataset(data_path).digest
    from_pt = int_model_from_checkpoint(tmp_path / "run" / "m.pt")
    from_npz = IntModel.load(tmp_path / "run" / "m.npz")
    assert same_arrays(from_pt, from_npz) and from_pt.meta == from_npz.meta and from_pt.name == "m"


def test_checkpoint_path_must_end_in_pt(data_path, tmp_path):
    with pytest.raises(ValueError, match="suffix .pt"):
        train(data_path, TrainConfig(**SMALL), tmp_path / "m.npz", progress=False)


def test_a_loaded_checkpoint_fine_tunes(data_path, examples, tmp_path):
    train(data_path, TrainConfig(**{**SMALL, "epochs": 2}), tmp_path / "m.pt", progress=False)
    ck = load_checkpoint(tmp_path / "m.pt")
    start = [qat.weight_levels(layer.weight, layer.fmt)[0] for layer in ck.model.linears]
    _, _, x, y = examples
    config = TrainConfig(**{**SMALL, "epochs": 1, "lr": 1e-4})
    result = fit(ck.model, (x, y), config, ck.charset, ck.features, progress=False)
    assert result.epochs_run == 1
    # a gentle fine-tune moves few signs: it started from the checkpoint, not from a fresh model (~50% equal)
    for before, layer in zip(start, ck.model.linears):
        assert (qat.weight_levels(layer.weight, layer.fmt)[0] == before).float().mean() > 0.9
