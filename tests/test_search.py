"""The search for the best model that fits (unochat.measure.search): a few tiny trials on a small corpus end
with a measured front and an exported model; two workers on one storage finish one study; a shape that
cannot fit is never trained."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unochat import cli
from unochat.boards import NANO
from unochat.measure import search as s
from unochat.model.intmodel import IntModel
from unochat.paths import DEFAULT_DATA

optuna = pytest.importorskip("optuna")
TINY = ["--widths", "16,24", "--depths", "1", "--epochs", "3,6", "--formats", "1bit,2bit", "--context-buckets", "32,64"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    lines = [line for line in DEFAULT_DATA.read_text().splitlines() if line and not line.startswith("#")]
    path.write_text("\n".join(lines[:120]) + "\n")
    return path


@pytest.mark.sim
@pytest.mark.pio
@pytest.mark.skipif(shutil.which("avr-gcc") is None, reason="avr-gcc not installed")
def test_a_small_search_ends_with_a_measured_front_and_the_best_model(corpus: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    stale = tmp_path / "heldout" / "best.npz"  # a pipeline export's twin: not this model's
    stale.parent.mkdir()
    stale.write_bytes(b"the model replaced")
    assert cli.main(["search", "--data", str(corpus), "--trials", "3", *TINY, "--out-dir", str(out),
                     "--front-max", "2", "--export-best", str(tmp_path / "best")]) == 0
    printed = capsys.readouterr().out
    assert "trial 0 " in printed and "3/3 trials" in printed and "front of small-uno" in printed
    report = json.loads((out / "front.json").read_text())
    assert len([t for t in report["trials"] if t["state"] in s.FINISHED]) == 3
    assert report["front"] and all(f["fits"] and f["flash_bytes"] and f["ms_per_char"] and f["mismatches"] == 0
                                   for f in report["front"])
    best = max(report["front"], key=lambda f: f["em"])
    exported = IntModel.load(tmp_path / "best.npz")
    assert exported.fingerprint() == IntModel.load(best["model"]).fingerprint() and exported.name == "best"
    assert not stale.exists() and f"removed {stale}" in printed
    assert (tmp_path / "best.pt").is_file() and (out / "front.png").stat().st_size > 1000
    assert exported.features.context_buckets == best["settings"]["context_buckets"] in (32, 64)
    # resumed: the study already has its 3 trials, so nothing more is trained
    assert cli.main(["search", "--data", str(corpus), "--trials", "3", *TINY, "--out-dir", str(out), "--no-build"]) == 0
    assert "3 trials already in" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="small-uno", storage=f"sqlite:///{out / 'search.db'}").trials) == 3


def test_two_workers_share_one_study(corpus: Path, tmp_path: Path) -> None:
    """Two processes on one SQLite storage: one study, its trials numbered once, no setting trained twice
    (a worker that draws settings another has trained takes that trial's result)."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [sys.executable, "-m", "unochat.cli", "search", "--data", str(corpus), "--trials", "6", *TINY,
               "--storage", storage, "--study", "shared", "--out-dir", str(tmp_path / "models"), "--no-build"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    done = [t for t in trials if t.state.name in s.FINISHED]
    # each worker stops once the study has 6; the other may be finishing one more
    assert 6 <= len(done) <= 7 and len({t.number for t in trials}) == len(trials)
    trained = [t for t in done if "same_as" not in t.user_attrs]
    assert len({json.dumps(t.params, sort_keys=True) for t in trained}) == len(trained)
    assert all(any(f"trial {t.number} " in out for out in outputs) for t in done)


def test_a_shape_that_cannot_fit_is_not_trained(corpus: Path, tmp_path: Path) -> None:
    search = s.Search(data=corpus, board=NANO, out_dir=tmp_path,
                      space=s.SearchSpace(widths=(1024,), depths=(2,), formats=("int8",), epochs=(3, 3)))
    study = s.optimize(search, trials=1, log=lambda _: None)
    trial = study.trials[0]
    assert trial.value == 0.0 and trial.user_attrs["flash_over"] > 0 and "model" not in trial.user_attrs
    assert not list(tmp_path.glob("trial-*.pt")) and s.front_candidates(study, 5) == []


def test_pareto_and_times() -> None:
    points = [(0.9, 30_000, 100.0), (0.8, 20_000, 90.0), (0.8, 25_000, 95.0), (0.9, 30_000, 120.0)]
    assert s.pareto(points) == [0, 1]
    assert [s.parse_time(t) for t in ("90", "90s", "30m", "2h", "1h30m")] == [90, 90, 1800, 7200, 5400]
    with pytest.raises(ValueError, match="not a time"):
        s.parse_time("soon")
    with pytest.raises(ValueError, match="held-out split"):
        s.Search(data=DEFAULT_DATA, objective="em_heldout", heldout=0.0)


def test_a_trial_over_its_time_is_stopped(corpus: Path, tmp_path: Path) -> None:
    """A slow draw must not eat a timed search: training stops once the trial's time is up."""
    search = s.Search(data=corpus, out_dir=tmp_path, trial_seconds=1e-3,
                      space=s.SearchSpace(widths=(16,), depths=(1,), formats=("1bit",), ratios=(0.0,), epochs=(3, 3)))
    lines: list[str] = []
    trial = s.optimize(search, trials=1, log=lines.append).trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["stopped"].startswith("out of time at epoch ")
    assert "stopped: out of time at epoch" in lines[-1]
