"""On-device latency (unochat.latency, `unochat bench`): the arithmetic on known cycle counts, the choice of
queries, and a real run of `unochat bench --sim` whose timed replies must all match the reference."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unochat import cli
from unochat.board.client import DeviceError, TimedReply
from unochat.boards import UNO
from unochat.data.dataset import load_dataset, normalize_query
from unochat.data.features import FeatureSpec
from unochat.firmware.build import build_firmware
from unochat.measure.latency import bench_queries, check_model, measure_latency
from unochat.model import reference
from unochat.model.files import load_int_model
from unochat.paths import DEFAULT_DATA, DEFAULT_MODEL, REPO

from conftest import TINYCHAT_DATA, chatty_model, need_shared, random_model
from test_device import DEFAULT_PAIRS, on_device


class ScriptedBoard:
    """Stands in for UnoClient: answers `!t` from a table, so the statistics can be checked by hand."""

    port = "/dev/fake"

    def __init__(self, model, replies: dict[str, TimedReply], board_id: str | None = None) -> None:
        self.model, self.replies, self.round_trips = model, replies, 0
        self.board_id = board_id or model.fingerprint()

    def info(self) -> dict[str, str]:
        self.round_trips += 1
        return {"id": self.board_id, "model": "on the board", "f_cpu": "16000000"}

    def timed_reply(self, query: str) -> TimedReply:
        self.round_trips += 1
        return self.replies[query]

    def memory(self) -> dict[str, int]:
        self.round_trips += 1
        return {"free": 500, "least_free": 400}

    def uart_cycles(self, text: str) -> int:
        self.round_trips += 1
        return 40 * len(text)


def timed(reply: str, steps: list[int], query: int, layers: list[int]) -> TimedReply:
    return TimedReply(reply, steps, query, query + sum(steps), layers)


def test_measure_latency_arithmetic() -> None:
    model = random_model(0, ["1bit", "1bit"], [8], features=FeatureSpec(16, 16))
    model.max_reply = 3
    a, b, c = "first query", "second", "third one"
    want = {q: reference.reply(model, q) for q in (a, b, c)}  # a random model always says max_reply chars
    assert all(len(r) == 3 for r in want.values())
    board = ScriptedBoard(model, {
        a: timed(want[a], [100, 110, 120, 5], 40, [300, 30]),  # stopped at max_reply: last step skips the net
        b: timed("XY", [200, 210, 90], 60, [450, 60]),  # stopped at EOS (and differs from the reference)
        c: timed(want[c], [130, 140, 150, 5], 50, [390, 30]),
    })
    report = measure_latency(board, model, [a, b, c])
    assert report.queries == 3 and report.chars == 8 and report.round_trips == 8  # + `!u` per reply
    assert report.step_cycles_median == 135  # of 100, 110, 120, 200, 210, 130, 140, 150
    assert (report.step_cycles_min, report.step_cycles_max) == (100, 210)
    assert report.final_step_cycles_median == 90  # only the EOS step; the length-limit ones are not steps
    assert report.query_cycles_median == 50
    assert report.uart_cycles == 40
    assert report.char_cycles == (375 + 560 + 475) / 8 + 40  # the UART writes count too
    assert report.layer_cycles == [(300 + 450 + 390) / 9, (30 + 60 + 30) / 9]  # 3 + 3 + 3 network runs
    assert [(m.query, m.device) for m in report.mismatches] == [(b, "XY")]
    assert report.least_free == 400 and report.stack_bytes is None
    assert report.ms(16_000) == 1.0
    d = report.to_dict()
    assert d["char_ms"] == report.char_cycles / 16_000 and d["mismatches"][0]["reference"] == want[b]
    assert "MISMATCH 'second'" in report.table()


def test_check_model_refuses_another_model() -> None:
    model = random_model(0, ["1bit", "1bit"], [8], features=FeatureSpec(16, 16))
    with pytest.raises(DeviceError, match=f"runs model 'on the board' \\(id 0badc0de\\), not .*id {model.fingerprint()}"):
        check_model(ScriptedBoard(model, {}, board_id="0badc0de"), model)


def test_bench_queries_come_from_the_models_training_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(0, ["1bit", "1bit"], [8], features=FeatureSpec(16, 16))
    path, queries = bench_queries(model, 10)
    assert path == str(DEFAULT_DATA) and len(queries) == 10 == len(set(queries))
    assert all(q == normalize_query(q) for q in queries)
    model.meta = {"dataset": {"path": "no/such/file.txt"}}
    assert bench_queries(model, 5)[0] == str(DEFAULT_DATA)
    monkeypatch.chdir(tmp_path)  # a path recorded relative to the repo is found from anywhere
    model.meta = {"dataset": {"path": str(DEFAULT_DATA.relative_to(REPO))}}
    assert bench_queries(model, 5)[0] == str(REPO / DEFAULT_DATA.relative_to(REPO))


def test_bench_queries_of_another_dataset() -> None:
    need_shared()
    model = random_model(0, ["1bit", "1bit"], [8], features=FeatureSpec(16, 16))
    model.meta = {"dataset": {"path": str(TINYCHAT_DATA)}}
    path, queries = bench_queries(model, 5)
    tinychat = {p.query for p in load_dataset(TINYCHAT_DATA).pairs}
    assert path == str(TINYCHAT_DATA) and len(queries) == 5 and set(queries) <= tinychat


@on_device
def test_bench_on_the_virtual_uno(firmware_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = chatty_model(4, ["1bit", "2bit", "int8"], [64, 32], DEFAULT_PAIRS)
    model.name = "bench"
    model.meta = {"dataset": {"path": str(DEFAULT_DATA)}}
    model_file = tmp_path / "bench.npz"
    model.save(model_file)
    sizes = build_firmware(model, firmware_project)
    capsys.readouterr()
    out = tmp_path / "bench.json"
    elf = firmware_project / "build" / "firmware.elf"
    assert cli.main(["bench", str(model_file), "--sim", str(elf), "--queries", "12", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    [row] = json.loads(out.read_text())
    assert row["name"] == "bench" and row["dataset"] == str(DEFAULT_DATA) and row["mismatches"] == 0
    assert row["flash_bytes"] == sizes.flash_bytes and row["sram_bytes"] == sizes.sram_bytes and row["fits"]
    report = row["latency"]
    assert report["mismatches"] == [] and report["queries"] == 12 and report["chars"] > 0
    assert report["model_id"] == model.fingerprint()
    assert report["stack_bytes"] == UNO.sram - sizes.sram_bytes - report["least_free"] > 0
    assert report["step_ms_median"] == pytest.approx(report["step_cycles_median"] / 16_000)
    assert row["cycles_per_char"] == report["char_cycles"] and row["ms_per_char"] == pytest.approx(report["char_ms"])
    # the layers are a part of a step, each of them a real share of it
    layers = report["layer_cycles"]
    assert sum(layers) < report["step_cycles_median"] and min(layers) > 0
    assert "0 mismatches with the reference" in table and "per character, all in" in table
    print(f"\n{table}")


@on_device
def test_bench_default_model(firmware_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"{DEFAULT_MODEL} not trained yet (`make model`)")
    build_firmware(load_int_model(DEFAULT_MODEL), firmware_project)
    capsys.readouterr()
    elf = firmware_project / "build" / "firmware.elf"
    assert cli.main(["bench", str(DEFAULT_MODEL), "--sim", str(elf), "--queries", "3"]) == 0  # 0: no mismatch
    print(f"\n{capsys.readouterr().out}")
