"""The compression pipeline (unochat.pipeline, `unochat pipeline`) on a tiny dataset, without firmware builds."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from unochat import cli
from unochat.data.dataset import Pair, load_dataset
from unochat.data.features import FeatureSpec, teacher_forced_examples
from unochat.measure import bench
from unochat.measure.bench import BenchRow
from unochat.model import reference
from unochat.model.intmodel import IntModel
from unochat.model.metrics import exact_match
from unochat.train import finetune, pipeline
from unochat.train.checkpoint import load_checkpoint
from unochat.train.config import FineTune, PairFocus, Recipe, TrainConfig
from unochat.train.fit import FitResult, integer_accuracy
from unochat.train.scratch import train
from unochat.train.trainset import Examples, training_examples

from conftest import chatty_model, random_model
from test_device import DEFAULT_PAIRS
from test_qat import write_dataset

SPEC = FeatureSpec()
TINY_RECIPE = ["--hidden", "24,16", "--epochs", "2", "--prune-epochs", "1", "--binary-epochs", "1",
               "--binary-restarts", "0", "--ternary-epochs", "1", "--ternary-restarts", "0", "--best-hidden", "16,8", "--best-epochs", "1", "--batch-size", "64",
               "--no-build"]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chat.txt"
    write_dataset(path, n_pairs=60)
    return path


def test_stage_order_adds_what_a_variant_starts_from():
    assert pipeline.stage_order(["binary"]) == ["baseline", "pruned", "binary"]
    assert pipeline.stage_order(["best", "pruned"]) == ["baseline", "pruned", "best"]
    assert pipeline.stage_order(["best"]) == ["best"]
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        pipeline.stage_order(["huge"])


def test_stage_key_follows_settings_parent_data_and_split():
    recipe = Recipe()
    key = pipeline.stage_key(recipe.settings("pruned"), "p", "d", 0.0)
    assert key == pipeline.stage_key(Recipe().settings("pruned"), "p", "d", 0.0)
    assert key != pipeline.stage_key(Recipe(ratios=[0.4]).settings("pruned"), "p", "d", 0.0)
    assert key != pipeline.stage_key(recipe.settings("pruned"), "q", "d", 0.0)
    assert key != pipeline.stage_key(recipe.settings("pruned"), "p", "e", 0.0)
    assert key != pipeline.stage_key(recipe.settings("pruned"), "p", "d", 0.1)


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are its input's first columns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3]


def test_pair_focus_weighs_pairs_by_their_whole_reply_probability():
    # 3 pairs of 2, 1 and 2 examples; the right symbol's log-probability per example is known
    log_p = np.log([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [1 / 3] * 3, [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    x, y = log_p.astype(np.float32), np.array([0, 1, 2, 0, 0])
    pairs_of = np.array([0, 0, 1, 2, 2])
    p_whole = np.array([0.5 * 0.5, 1 / 3, 0.5 * 0.1])  # softmax of log-probabilities: the probabilities
    focus = PairFocus(beta=0.5, floor=0.2)
    got = finetune.focus_weights(focus, Examples(x, y, pairs_of))(FixedLogits()).numpy()
    want = 0.2 + 0.8 * p_whole**0.5 / np.mean(p_whole**0.5)
    np.testing.assert_allclose(got, want[pairs_of], rtol=1e-5)
    ones = finetune.focus_weights(PairFocus(beta=0.0), Examples(x, y, pairs_of))(FixedLogits()).numpy()
    assert np.allclose(ones, 1.0)
    # where the store allows only symbols 0 and 1, the last example's 0.1 becomes 0.1 / (0.1 + 0.1)
    allowed = np.ones((5, 3), dtype=bool)
    allowed[4, 2] = False
    p_whole[2] = 0.5 * 0.5
    got = finetune.focus_weights(focus, Examples(x, y, pairs_of, allowed))(FixedLogits()).numpy()
    np.testing.assert_allclose(got, (0.2 + 0.8 * p_whole**0.5 / np.mean(p_whole**0.5))[pairs_of], rtol=1e-5)


def test_whole_pairs_right_is_the_exact_match():
    model = chatty_model(2, ["1bit", "2bit"], [32], DEFAULT_PAIRS[:200])
    queries = [p.query for p in DEFAULT_PAIRS[:200]]
    replies = reference.generate(model, queries)
    usable = [(q, r) for q, r in zip(queries, replies) if 0 < len(r) < model.max_reply][:40]
    assert len(usable) == 40
    # half the pairs are the model's own replies, a quarter differ in the last character, a quarter go on
    letters = model.charset[:-1]

    def response(i: int, reply: str) -> str:
        if i % 2:
            return reply
        if i % 4:
            return reply[:-1] + next(c for c in letters if c != reply[-1])
        return reply + letters[1]

    pairs = [Pair(q, response(i, r), 0) for i, (q, r) in enumerate(usable)]
    examples = training_examples(pairs, model.charset, TrainConfig(features=SPEC), None)
    assert finetune.whole_pairs_right(model, examples) == exact_match(model, pairs) == 0.5
    # with a store of the pairs' replies, only the steps where it branches are examples, and still EM
    model = dataclasses.replace(model, replies=sorted({p.response for p in pairs}))
    model.validate()
    examples = training_examples(pairs, model.charset, TrainConfig(features=SPEC), model.store)
    assert len(examples.y) < sum(len(p.response) + 1 for p in pairs)
    assert finetune.whole_pairs_right(model, examples) == exact_match(model, pairs)


def fit_result(best_epoch: int, best_score: float, epochs: int) -> FitResult:
    history = [{"epoch": e, "loss": 1.0, "tf": best_score if e == best_epoch else 0.0} for e in range(1, epochs + 1)]
    return FitResult(best_epoch, best_score, epochs, False, 1.0, history)


def test_merged_cycles_number_epochs_on_and_keep_the_best():
    first = fit_result(3, 0.8, 4)
    better = finetune.merge_cycles(first, fit_result(2, 0.9, 5))
    assert (better.best_epoch, better.best_score, better.epochs_run, better.seconds) == (6, 0.9, 9, 2.0)
    assert [h["epoch"] for h in better.history] == list(range(1, 10))
    worse = finetune.merge_cycles(first, fit_result(1, 0.7, 5))
    assert (worse.best_epoch, worse.best_score) == (3, 0.8)


def test_warm_restarts_leave_the_best_state_of_all_cycles(data_path, tmp_path):
    config = TrainConfig(hidden=[24, 16], formats=["2bit"] * 3, epochs=2, batch_size=64, eval_every=1)
    train(data_path, config, tmp_path / "base.pt", progress=False)
    tune = FineTune(epochs=2, eval_every=1, batch_size=64, restarts=2, restart_epochs=2, restart_lr=1e-2)
    result = finetune.quantize_checkpoint(tmp_path / "base.pt", tmp_path / "bin.pt", ["1bit"], tune, progress=False)
    scores = [h["tf"] for h in result.fit.history]
    # 2 epochs, then 2 per restart; a restart that finds nothing better ends them (the next would repeat it)
    epochs = [h["epoch"] for h in result.fit.history]
    assert epochs in ([1, 2, 3, 4], [1, 2, 3, 4, 5, 6])
    first_restart_improved = max(scores[2:4]) > max(scores[:2])
    assert first_restart_improved == (len(epochs) == 6)
    assert result.fit.best_score == max(scores) and scores[result.fit.best_epoch - 1] == max(scores)
    ck = load_checkpoint(tmp_path / "bin.pt")
    pairs = load_dataset(data_path, charset=ck.charset[:-1]).pairs
    x, y = teacher_forced_examples(pairs, ck.charset, ck.features)
    assert integer_accuracy(ck.model, ck.charset, ck.features, x, y) == pytest.approx(max(scores))


def test_fine_tuning_with_focus_reports_every_epoch(data_path, tmp_path):
    """`on_epoch` (a search's per-trial time limit) hears every epoch of a focused fine-tuning, restarts too."""
    config = TrainConfig(hidden=[24, 16], formats=["2bit"] * 3, epochs=2, batch_size=64, eval_every=1)
    train(data_path, config, tmp_path / "base.pt", progress=False)
    tune = FineTune(epochs=2, eval_every=1, batch_size=64, focus=PairFocus(), restarts=1, restart_epochs=2)
    heard = []
    result = finetune.prune_checkpoint(tmp_path / "base.pt", tmp_path / "p.pt", [0.5], tune, progress=False,
                                       on_epoch=lambda epoch, score: heard.append(epoch))
    assert len(heard) == result.fit.epochs_run >= 2


def test_pipeline_makes_every_variant_and_its_heldout_twin(data_path, tmp_path, capsys):
    out = tmp_path / "pipe"
    argv = ["pipeline", "--data", str(data_path), "--out-dir", str(out), "--variants", "binary,ternary,best",
            "--heldout", "0.2", *TINY_RECIPE]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    variants = ["baseline", "pruned", "binary", "ternary", "best"]
    manifest = json.loads((out / "pipeline.json").read_text())
    assert [v["name"] for v in manifest["variants"]] == variants
    for folder, heldout in ((out, 0.0), (out / "heldout", 0.2)):
        models = {v: IntModel.load(folder / f"{v}.npz") for v in variants}
        assert all((folder / f"{v}.pt").is_file() for v in variants)
        assert models["baseline"].shape[1:3] == [24, 16] and models["baseline"].formats == ["2bit"] * 3
        assert models["pruned"].shape[1:3] == [12, 8] and models["pruned"].formats == ["2bit"] * 3
        assert models["binary"].shape[1:3] == [12, 8] and models["binary"].formats == ["1bit"] * 3
        assert models["ternary"].shape[1:3] == [12, 8] and models["ternary"].formats == ["ternary"] * 3
        zeros = [float((layer.weight == 0).mean()) for layer in models["ternary"].layers]
        assert all(z == pytest.approx(Recipe().ternary_sparsity, abs=0.1) for z in zeros), zeros  # the recipe's, per row
        assert models["best"].shape[1:3] == [16, 8]
        assert models["binary"].meta["parent"] == models["ternary"].meta["parent"] == str(folder / "pruned.pt")
        assert all(m.meta["config"]["heldout"] == heldout for m in models.values())
    for v in variants:
        assert v in printed
    assert "wall time per stage" in printed


def test_pipeline_resumes_and_redoes_only_what_changed(data_path, tmp_path, capsys):
    out = tmp_path / "pipe"
    base = ["pipeline", "--data", str(data_path), "--out-dir", str(out), *TINY_RECIPE]
    assert cli.main(base) == 0
    stamps = {v: (out / f"{v}.npz").stat().st_mtime_ns for v in ("baseline", "pruned", "binary")}
    capsys.readouterr()
    assert cli.main(base) == 0
    assert capsys.readouterr().out.count("is up to date, skipped") == 3
    assert cli.main([*base, "--binary-epochs", "2"]) == 0
    after = {v: (out / f"{v}.npz").stat().st_mtime_ns for v in stamps}
    assert after["baseline"] == stamps["baseline"] and after["pruned"] == stamps["pruned"]
    assert after["binary"] != stamps["binary"]
    assert IntModel.load(out / "binary.npz").meta["config"]["epochs"] == 2


def test_export_takes_the_best_fitting_variant_and_its_twin(tmp_path):
    models = tmp_path / "pipe"
    for folder in (models, models / "heldout"):
        folder.mkdir(parents=True)
        for name in ("big", "small", "tiny"):
            model = random_model(0, ["2bit", "2bit"], [8])
            model.save(folder / f"{name}.npz")
            torch.save({"any": 1}, folder / f"{name}.pt")

    def row(name: str, em: float, fits: bool) -> BenchRow:
        return BenchRow(name, "d", str(models / f"{name}.npz"), [256, 8, 41], "2", 1, 10, 0.9, em, 0.1, fits=fits)

    rows = [row("big", 0.9, False), row("small", 0.7, True), row("tiny", 0.6, True)]
    message = bench.export_fitting(rows, tmp_path / "out" / "default.pt")
    assert "exported small" in message
    for path in (tmp_path / "out" / "default", tmp_path / "out" / "heldout" / "default"):
        assert IntModel.load(path.with_suffix(".npz")).name == "default"
        assert path.with_suffix(".pt").is_file()
    with pytest.raises(ValueError, match="no variant fits"):
        bench.export_fitting(rows[:1], tmp_path / "x.pt")


@pytest.mark.parametrize("bad", [{"criterion": "bogus"}, {"ratios": [1.5]}, {"ratios": [0.5, 0.5]},
                                 {"binary_bits": "3"}, {"best_bits": "1,1"}, {"bits": "2,2,2,2,2"},
                                 {"ternary_sparsity": 1.0}])
def test_recipe_settings_are_checked_before_anything_trains(bad):
    with pytest.raises(ValueError):
        Recipe(hidden=[16, 8, 4], **bad)


def test_pipeline_refuses_a_bad_heldout_before_training(data_path, tmp_path, capsys):
    assert cli.main(["pipeline", "--data", str(data_path), "--out-dir", str(tmp_path), "--heldout", "1.5"]) == 2
    assert "heldout" in capsys.readouterr().err and not list(tmp_path.iterdir())
