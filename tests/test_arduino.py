"""The Arduino library (unochat.firmware.arduino): exported, compiled with Debian's arduino-builder (the
Arduino IDE 1.8's builder) offline, the Chat example answering bit-exactly on the virtual UNO and the Hello
example answering its question at start-up."""
from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path

import pytest

from unochat import cli
from unochat.board.sim import VirtualUno
from unochat.boards import UNO
from unochat.data.dataset import load_dataset, normalize_query, spread_queries
from unochat.firmware.arduino import (
    LIBRARY,
    SKETCH_FLASH,
    SKETCH_SRAM,
    compile_example,
    export_library,
    sketch_board,
    zip_library,
)
from unochat.firmware.build import build_firmware
from unochat.firmware.project import make_project
from unochat.model import reference
from unochat.model.files import load_int_model
from unochat.paths import DEFAULT_DATA

pytestmark = [
    pytest.mark.pio,
    pytest.mark.skipif(shutil.which("arduino-builder") is None, reason="arduino-builder not installed"),
]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("libraries") / LIBRARY
    export_library(load_int_model(None), lib, UNO, question="what is your name")
    return lib


@pytest.fixture(scope="module")
def compiled(library: Path) -> dict:
    return {name: compile_example(library, name, library.parent.parent / f"build-{name}") for name in ("Chat", "Hello")}


def read_line(port, timeout: float = 20.0) -> bytes:  # noqa: ANN001 (serial.Serial)
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\r\n") and time.monotonic() < deadline:
        data += port.read(1)
    return data


def test_library_layout_and_zip(library: Path) -> None:
    props = dict(line.split("=", 1) for line in (library / "library.properties").read_text().splitlines())
    assert props["name"] == LIBRARY and props["architectures"] == "avr" and props["includes"] == "unochat.h"
    src = {p.name for p in (library / "src").iterdir()}
    assert {"unochat.h", "unochat_ask.c", "unochat_model.h", "unochat_model.c", "unochat_kernels.S"} <= src
    assert 'static const char QUESTION[] = "what is your name";' in (library / "examples/Hello/Hello.ino").read_text()
    names = zipfile.ZipFile(zip_library(library)).namelist()
    assert "unochat/library.properties" in names and "unochat/examples/Chat/Chat.ino" in names
    assert all(n.startswith("unochat/") for n in names)


def test_examples_compile_within_the_budget_and_the_sketch_allowance(compiled: dict, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Both examples fit the UNO; against unochat's own firmware with the same plan, the Chat sketch stays
    within the room the library's plan leaves it (SKETCH_FLASH, SKETCH_SRAM)."""
    from unochat.codegen.plan import plan_for
    from unochat.firmware.project import project_environ

    for key, value in project_environ(tmp_path).items():
        monkeypatch.setenv(key, value)
    model = load_int_model(None)
    own = build_firmware(model, make_project(tmp_path), plan=plan_for(model, board=sketch_board(UNO)), quiet=True)
    chat = compiled["Chat"][1]
    print(f"\nChat: {chat.summary()}\nHello: {compiled['Hello'][1].summary()}\nunochat firmware, same plan: "
          f"{own.summary()}\nChat - firmware: {chat.flash_bytes - own.flash_bytes:+,} B flash, "
          f"{chat.sram_bytes - own.sram_bytes:+,} B SRAM (room left: {SKETCH_FLASH:,} B, {SKETCH_SRAM} B)")
    assert chat.flash_bytes <= own.flash_bytes + SKETCH_FLASH and chat.sram_bytes <= own.sram_bytes + SKETCH_SRAM


@pytest.mark.sim
def test_chat_example_answers_bit_exactly_on_the_virtual_uno(compiled: dict) -> None:
    import serial

    model = load_int_model(None)
    queries = spread_queries(load_dataset(DEFAULT_DATA).pairs, 12) + ["  What   is your NAME?  "]
    with VirtualUno(compiled["Chat"][0]) as uno, serial.Serial(uno.port, 115200, timeout=0.1) as port:
        assert read_line(port) == b"unochat ready: ask, then Enter\r\n"
        for q in queries:
            port.write(q.encode() + b"\n")
            assert read_line(port).decode() == reference.reply(model, normalize_query(q)) + "\r\n", q


@pytest.mark.sim
def test_hello_example_answers_at_start_up(compiled: dict) -> None:
    import serial

    reply = reference.reply(load_int_model(None), "what is your name")
    with VirtualUno(compiled["Hello"][0]) as uno, serial.Serial(uno.port, 115200, timeout=0.1) as port:
        assert read_line(port) == b"Q: what is your name\r\n"
        assert read_line(port).decode() == f"A: {reply[:63]}{'...' if len(reply) > 63 else ''}\r\n"


def test_export_command_writes_the_library_and_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", "--arduino-library", str(tmp_path)]) == 0
    assert (tmp_path / "unochat" / "src" / "unochat.h").is_file() and (tmp_path / "unochat.zip").is_file()
    assert "Add .ZIP Library" in capsys.readouterr().out
