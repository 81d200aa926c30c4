"""The `unochat` command's own behaviour: which file `ask` takes for a model, recording a model's
density, and rendering that reads only the model."""
from __future__ import annotations

from pathlib import Path

import pytest

from unochat import cli
from unochat.data import corpus
from unochat.data.dataset import spread_queries
from unochat.model import reference
from unochat.model.density import measure_density
from unochat.model.intmodel import IntModel
from unochat.paths import DEFAULT_DATA

from conftest import chatty_model
from test_device import DEFAULT_PAIRS


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    model = chatty_model(1, ["1bit"] * 3, [32, 16], DEFAULT_PAIRS)
    path = tmp_path / "m.npz"
    model.save(path)
    return path


def test_ask_takes_an_existing_file_as_the_model(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = IntModel.load(model_file)
    assert cli.main(["ask", str(model_file), "hello", "there"]) == 0
    assert capsys.readouterr().out.strip() == reference.reply(model, "hello there")
    odd = model_file.with_suffix(".imported")
    odd.write_bytes(model_file.read_bytes())
    assert cli.main(["ask", str(odd), "hello"]) == 2
    err = capsys.readouterr().err
    assert f"{odd}: not a model file" in err and ".npz" in err and ".pt" in err


def test_ask_logits_follow_the_reply(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = IntModel.load(model_file)
    assert cli.main(["ask", str(model_file), "hi", "--logits"]) == 0
    lines = capsys.readouterr().out.splitlines()
    reply = reference.reply(model, "hi")
    assert lines[-1] == reply and len(lines) == len(reply) + 2 - (len(reply) == model.max_reply)
    assert all(len(line.split()) == 2 + len(model.charset) for line in lines[:-1])


def test_density_is_recorded_and_rendering_reads_only_the_model(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "measured.npz"
    assert cli.main(["density", str(model_file), "--data", str(DEFAULT_DATA), "--out", str(out)]) == 0
    measured = IntModel.load(out)
    assert measured.meta["density"] == measure_density(measured, spread_queries(DEFAULT_PAIRS))
    capsys.readouterr()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendering read a dataset or ran inference")

    monkeypatch.setattr(corpus, "file_bytes", forbidden)  # every corpus file is read through it
    monkeypatch.setattr(reference, "forward", forbidden)  # and all inference goes through this
    assert cli.main(["export", str(out), "--out-dir", str(tmp_path / "a")]) == 0
    assert "note:" not in capsys.readouterr().out
    assert cli.main(["export", str(model_file), "--out-dir", str(tmp_path / "b")]) == 0
    assert "records no input density: planned with the default" in capsys.readouterr().out
