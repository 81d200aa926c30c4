"""Pruning and re-quantization (unochat.prune, `unochat prune`, `unochat quantize`) on tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unochat import cli
from unochat.data.dataset import load_dataset, split_heldout, spread_queries
from unochat.data.features import FeatureSpec, teacher_forced_examples
from unochat.model.density import measure_density
from unochat.model.intmodel import IntModel
from unochat.model.metrics import evaluate
from unochat.train import prune
from unochat.train.checkpoint import load_checkpoint
from unochat.train.config import TrainConfig
from unochat.train.scratch import train

from test_qat import write_dataset

SPEC = FeatureSpec()
TINY = dict(hidden=[24, 16], epochs=2, batch_size=64, eval_every=1)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chat.txt"
    write_dataset(path, n_pairs=60)
    return path


@pytest.fixture(scope="module")
def checkpoint(data_path, tmp_path_factory):
    """A tiny 2-bit model trained without 20% of the pairs."""
    out = tmp_path_factory.mktemp("ck") / "parent.pt"
    train(data_path, TrainConfig(**TINY, formats=["2bit"] * 3, heldout=0.2), out, progress=False)
    return out


@pytest.fixture(scope="module")
def inputs(checkpoint):
    ck = load_checkpoint(checkpoint)
    pairs = load_dataset(ck.info["dataset"]["path"]).pairs
    return teacher_forced_examples(pairs, ck.charset, SPEC)[0]


def test_select_neurons_keeps_the_highest_scores_per_layer():
    scores = [np.array([5.0, 1.0, 3.0, 3.0, 0.0, 9.0]), np.arange(10.0)]
    keep = prune.select_neurons(scores, [0.5, 0.3])
    assert keep[0].tolist() == [0, 2, 5]  # 3 of 6 kept; of the tied 3.0s the lower index wins
    assert keep[1].tolist() == [3, 4, 5, 6, 7, 8, 9]  # round(10 * 0.3) = 3 removed
    assert prune.kept_count(256, 0.5) == 128 and prune.kept_count(192, 0.5) == 96 and prune.kept_count(3, 0.9) == 1
    with pytest.raises(ValueError, match="2 hidden layers need 2 pruning ratios"):
        prune.select_neurons(scores, [0.5])
    with pytest.raises(ValueError, match="fractions in"):
        prune.select_neurons(scores, [0.5, 1.0])


def test_pruned_model_holds_exactly_the_kept_neurons(checkpoint):
    model = load_checkpoint(checkpoint).model
    keep = [np.array([0, 3, 4, 10, 23]), np.array([1, 2, 15])]
    small = prune.prune_model(model, keep)
    assert [b.linear.weight.shape for b in small.hidden] == [(5, 256), (3, 5)]
    assert small.out_linear.weight.shape == (model.out_linear.weight.shape[0], 3)
    big = model.hidden
    assert torch.equal(small.hidden[0].linear.weight, big[0].linear.weight[keep[0]])
    assert torch.equal(small.hidden[1].linear.weight, big[1].linear.weight[keep[1]][:, keep[0]])
    assert torch.equal(small.out_linear.weight, model.out_linear.weight[:, keep[1]])
    for layer in range(2):
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(small.hidden[layer].norm, name), getattr(big[layer].norm, name)[keep[layer]])
        assert small.hidden[layer].act.step_value() == big[layer].act.step_value()
    assert torch.equal(small.out_norm.running_mean, model.out_norm.running_mean)
    assert [layer.fmt for layer in small.linears] == [layer.fmt for layer in model.linears]


@pytest.mark.parametrize("criterion", prune.CRITERIA)
def test_a_dead_neuron_is_pruned_first(checkpoint, inputs, criterion):
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():  # neuron 7 of layer 0 never fires, and BatchNorm scales it by 0
        model.hidden[0].norm.bias[7] = -1e3
        model.hidden[0].norm.weight[7] = 0.0
    scores = prune.neuron_scores(model, inputs, criterion)
    assert [len(s) for s in scores] == [24, 16]
    assert scores[0][7] == 0.0 and np.argmin(scores[0]) == 7
    assert 7 not in prune.select_neurons(scores, [0.1, 0.1])[0]


def test_l1_scores_weigh_the_next_layers_effective_weights(checkpoint, inputs):
    model = load_checkpoint(checkpoint).model
    before = prune.neuron_scores(model, inputs, "l1_std")[0]
    with torch.no_grad():  # doubling the next layer's BatchNorm gain doubles every outgoing weight
        model.hidden[1].norm.weight.mul_(2)
    np.testing.assert_allclose(prune.neuron_scores(model, inputs, "l1_std")[0], 2 * before, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown pruning criterion"):
        prune.neuron_scores(model, inputs, "magic")


def test_recalibration_measures_the_batchnorm_statistics_again(checkpoint, inputs):
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():
        model.hidden[0].norm.running_mean.fill_(123.0)
    prune.recalibrate_batchnorm(model, inputs)
    with torch.no_grad():
        pre = model.hidden[0].linear(torch.as_tensor(inputs, dtype=torch.float32))
    torch.testing.assert_close(model.hidden[0].norm.running_mean, pre.mean(dim=0), rtol=1e-4, atol=1e-5)
    assert not model.training and model.hidden[0].norm.momentum == 0.1


def test_requantize_keeps_latent_weights(checkpoint):
    model = load_checkpoint(checkpoint).model
    latent = [layer.weight.detach().clone() for layer in model.linears]
    prune.requantize(model, ["1bit", "int8", "1bit"])
    assert [layer.fmt for layer in model.linears] == ["1bit", "int8", "1bit"]
    assert torch.equal(model.linears[0].weight, latent[0].clamp(-1, 1))  # 1bit latents live in [-1, 1]
    assert torch.equal(model.linears[1].weight, latent[1])
    with pytest.raises(ValueError, match="unknown weight format '3bit'"):
        prune.requantize(model, ["3bit"] * 3)


def test_prune_command_fine_tunes_on_the_parents_split(checkpoint, data_path, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    argv = ["prune", str(checkpoint), "--ratios", "0.5,0.25", "--fine-tune-epochs", "2", "--eval-every", "1",
            "--out", str(out)]
    assert cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    model = IntModel.load(out.with_suffix(".npz"))
    assert model.shape == [256, 12, 12, model.shape[-1]] and model.formats == ["2bit"] * 3
    assert model.meta["source"] == "unochat prune" and model.meta["parent"] == str(checkpoint)
    assert model.meta["prune"] == {"ratios": [0.5, 0.25], "criterion": "l1_std"}
    assert model.meta["total_seconds"] > model.meta["seconds"] > 0  # the parent's training counts too
    # measured on its data, so that its kernel plan does not depend on which files are at hand
    assert model.meta["density"] == measure_density(model, spread_queries(load_dataset(data_path).pairs))
    assert len(model.meta["density"]) == 3 and all(0 < d < 1 for d in model.meta["density"])
    ck = load_checkpoint(out)
    assert ck.config.heldout == 0.2 and ck.config.hidden == [12, 12] and ck.config.epochs == 2
    train_pairs, held = split_heldout(load_dataset(data_path).pairs, 0.2, seed=0)
    assert model.meta["metrics"]["heldout"] == evaluate(model, held)
    assert model.meta["metrics"]["train"] == evaluate(model, train_pairs)


def test_quantize_command_binarizes_with_the_latent_signs(checkpoint, tmp_path):
    out = tmp_path / "binary.pt"
    argv = ["quantize", str(checkpoint), "--bits", "1", "--fine-tune-epochs", "1", "--lr", "1e-5", "--out", str(out)]
    assert cli.main(argv) == 0
    parent, child = load_checkpoint(checkpoint).model, load_checkpoint(out).model
    assert [layer.fmt for layer in child.linears] == ["1bit"] * 3
    for before, after in zip(parent.linears, child.linears):  # a tiny learning rate flips almost no sign
        assert (torch.sign(before.weight) == torch.sign(after.weight)).float().mean() > 0.99
    assert IntModel.load(out.with_suffix(".npz")).meta["quantize"] == {"formats": ["1bit"]}


def test_fine_tuning_refuses_an_integer_model(checkpoint, tmp_path, capsys):
    argv = ["prune", str(checkpoint.with_suffix(".npz")), "--out", str(tmp_path / "x.pt")]
    assert cli.main(argv) == 2
    assert "needs a training checkpoint (.pt)" in capsys.readouterr().err
    assert cli.main(["quantize", str(checkpoint), "--bits", "1", "--out", str(tmp_path / "x.npz")]) == 2
    assert "suffix .pt" in capsys.readouterr().err
