"""The benchmark (unochat.measure.bench, `unochat bench`): which model is measured on which pairs, the output
formats, and (on the virtual UNO) sizes from the real firmware and latency only where it fits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unochat import cli
from unochat.boards import UNO
from unochat.data.dataset import load_dataset, split_heldout
from unochat.measure import bench
from unochat.model import reference
from unochat.model.intmodel import IntModel
from unochat.model.metrics import evaluate
from unochat.paths import DEFAULT_DATA, REPO
from unochat.train.config import TrainConfig
from unochat.train.scratch import train

from conftest import chatty_model
from test_device import DEFAULT_PAIRS, on_device
from test_qat import write_dataset

TINY = dict(hidden=[24, 16], epochs=2, batch_size=64, eval_every=1)
REQUIRED = {"name", "dataset", "bits", "params", "tf", "em", "loss", "tf_heldout", "em_heldout", "flash_bytes",
            "sram_bytes", "fits", "cycles_per_char", "ms_per_char"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """dir/full.npz trained on every pair, its twin dir/heldout/full.npz without 20% of them, and
    dir/split.npz trained without them too; a pipeline.json naming split then full."""
    root = tmp_path_factory.mktemp("bench")
    data = root / "chat.txt"
    write_dataset(data, n_pairs=60)
    train(data, TrainConfig(**TINY), root / "full.pt", progress=False)
    train(data, TrainConfig(**TINY, heldout=0.2), root / "heldout" / "full.pt", progress=False)
    train(data, TrainConfig(**TINY, heldout=0.2, seed=1), root / "split.pt", progress=False)
    (root / "pipeline.json").write_text(json.dumps({"variants": [{"model": "split.npz"}, {"model": "full.npz"}]}))
    return root


def test_quality_comes_from_the_right_model_and_pairs(models):
    split_row, full_row = bench.bench([models], build=False, log=lambda _: None)
    pairs = load_dataset(models / "chat.txt").pairs
    train_pairs, held = split_heldout(pairs, 0.2, seed=0)
    full, twin, split = (IntModel.load(models / p) for p in ("full.npz", "heldout/full.npz", "split.npz"))

    # trained on every pair: quality on all of them, held-out figures from the twin that never saw them
    assert (full_row.name, full_row.pairs, full_row.heldout_pairs) == ("full", 60, 12)
    m, h = evaluate(full, pairs), evaluate(twin, held)
    assert (full_row.tf, full_row.em, full_row.loss) == (m["tf"], m["em"], m["loss"])
    assert (full_row.tf_heldout, full_row.em_heldout) == (h["tf"], h["em"])
    assert full_row.heldout_model == str(models / "heldout" / "full.npz")
    # trained without the split: quality on its training pairs, held-out figures from itself
    m, h = evaluate(split, train_pairs), evaluate(split, held)
    assert (split_row.pairs, split_row.tf, split_row.em, split_row.tf_heldout) == (48, m["tf"], m["em"], h["tf"])
    assert split_row.heldout_model == str(models / "split.npz")
    assert split_row.params == split.params() and split_row.bits == "1" and split_row.shape == split.shape
    assert split_row.latency_note == "not measured (no firmware built)" and split_row.fits is None
    assert len(full_row.examples) == 3
    assert all(ex["reply"] == reference.reply(full, ex["query"]) for ex in full_row.examples)


def test_a_twin_of_other_data_is_not_used(models, tmp_path):
    other = tmp_path / "other.txt"
    write_dataset(other, n_pairs=60, seed=5)
    train(other, TrainConfig(**TINY, heldout=0.2), tmp_path / "heldout" / "full.pt", progress=False)
    (tmp_path / "full.npz").write_bytes((models / "full.npz").read_bytes())
    (row,) = bench.bench([tmp_path / "full.npz"], build=False, log=lambda _: None)
    assert row.tf_heldout is None and row.heldout_model is None


def test_one_dataset_is_one_label_however_its_path_is_given(monkeypatch):
    monkeypatch.chdir(REPO / "host")
    given = [Path("../data/default.txt"), REPO / "data" / "default.txt", DEFAULT_DATA]
    assert {bench.dataset_label(p) for p in given} == {str(DEFAULT_DATA.resolve())}


def test_bench_command_writes_table_json_and_plot(models, tmp_path, capsys):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["bench", str(models), "--no-build", "--json", str(out_json), "--plot", str(out_png)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "split " in table and "full " in table and "TF ho" in table
    rows = json.loads(out_json.read_text())
    assert [r["name"] for r in rows] == ["split", "full"] and all(REQUIRED <= set(r) for r in rows)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_a_given_firmware_for_several_models(models, capsys):
    assert cli.main(["bench", str(models), "--sim", "some.elf"]) == 2
    assert "one at a time" in capsys.readouterr().err


def test_bench_refuses_to_flash_without_a_build(models, capsys):
    assert cli.main(["bench", str(models), "--port", "/dev/ttyNOPE0", "--flash", "--no-build"]) == 2
    assert "--no-build" in capsys.readouterr().err


def test_a_model_refused_before_linking_does_not_fit():
    row = bench.BenchRow(name="x", dataset="d", model="x.npz", shape=[256, 40], bits="8", params=1, pairs=1,
                         tf=1.0, em=1.0, loss=0.0)
    bench._add_sizes(row, None, "layer 0 has 40,000 B of weights")
    assert row.fits is False and row.flash_bytes is None


@on_device
def test_sizes_come_from_the_firmware_and_latency_only_where_it_fits(tmp_path, pio_env):
    small = chatty_model(4, ["1bit", "2bit", "1bit"], [32, 16], DEFAULT_PAIRS)
    big = chatty_model(5, ["int8", "int8"], [120], DEFAULT_PAIRS)  # 30,720 B + 4,920 B of weights
    for name, model in (("small", small), ("big", big)):
        model.meta = {"dataset": {"path": str(DEFAULT_DATA)}}
        model.save(tmp_path / f"{name}.npz")
    small_row, big_row = bench.bench([tmp_path / "small.npz", tmp_path / "big.npz"], queries=4, examples=1)
    assert small_row.fits and small_row.mismatches == 0 and small_row.latency["queries"] == 4
    assert small_row.ms_per_char == pytest.approx(small_row.cycles_per_char / 16_000)
    assert small_row.flash_bytes == small_row.latency["flash_bytes"] < UNO.flash_limit
    assert big_row.fits is False and big_row.flash_bytes > UNO.flash_limit and big_row.sram_bytes > 0
    assert "over by" in big_row.budget and big_row.latency is None and big_row.latency_note == bench.not_run(UNO)
    assert big_row.cycles_per_char is None and big_row.ms_per_char is None
