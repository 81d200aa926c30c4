"""The boards (unochat.boards): each defined once and agreeing with the Arduino IDE's boards.txt, the
PlatformIO board files and platformio.ini; the Mega 2560 running a model on its virtual ATmega2560; flashing
through the real bootloader: avrdude and optiboot on the virtual UNO, over its pty."""
from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from unochat import cli
from unochat.board.client import connect
from unochat.board.flash import avrdude_command
from unochat.board.sim import VirtualUno
from unochat.boards import BOARDS, LPM_REACH, MEGA2560, NANO, NANO_OLD, UNO, get_board
from unochat.data.dataset import load_dataset, normalize_query
from unochat.data.features import FeatureSpec
from unochat.firmware.size import BudgetError, SizeReport, check_budget
from unochat.model import reference
from unochat.paths import DEFAULT_DATA, PLATFORMIO_INI, TOOLS

from conftest import chatty_model

BOARDS_TXT = Path("/usr/share/arduino/hardware/arduino/avr/boards.txt")
PAIRS = load_dataset(DEFAULT_DATA).pairs
QUERIES = [normalize_query(p.query) for p in PAIRS[::25]][:12]
on_device = [pytest.mark.sim, pytest.mark.pio,
             pytest.mark.skipif(shutil.which("avr-gcc") is None, reason="avr-gcc not installed")]


# ---- one definition, checked against the tools' own files --------------------------------------------
def arduino_board(fqbn: str) -> dict[str, str]:
    """boards.txt's settings of a board id (arduino:avr:<board>[:cpu=<menu>]), the cpu menu's winning."""
    board, _, menu = fqbn.split(":", 2)[2].partition(":cpu=")
    settings = {}
    for line in BOARDS_TXT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.startswith(f"{board}.") and ".menu." not in f".{key}":
            settings[key.removeprefix(f"{board}.")] = value
    for line in BOARDS_TXT.read_text().splitlines():
        key, _, value = line.partition("=")
        if menu and key.startswith(f"{board}.menu.cpu.{menu}."):
            settings[key.removeprefix(f"{board}.menu.cpu.{menu}.")] = value
    return settings


@pytest.mark.skipif(not BOARDS_TXT.is_file(), reason="arduino-core-avr not installed (no boards.txt)")
@pytest.mark.parametrize("name", list(BOARDS))
def test_budgets_and_upload_are_the_arduino_ides(name: str) -> None:
    board, ide = BOARDS[name], arduino_board(BOARDS[name].fqbn)
    assert int(ide["upload.maximum_size"]) == board.flash_limit
    assert int(ide["upload.maximum_data_size"]) == board.sram
    assert ide["build.mcu"] == board.mcu and int(ide["build.f_cpu"].rstrip("L")) == board.f_cpu
    assert ide["upload.protocol"] == board.upload_protocol and int(ide["upload.speed"]) == board.upload_speed


@pytest.mark.parametrize("name", list(BOARDS))
def test_platformio_knows_every_board(name: str) -> None:
    board = BOARDS[name]
    pio = json.loads((TOOLS / "pio-platform" / "boards" / f"{board.pio_board}.json").read_text())
    assert pio["build"]["mcu"] == board.mcu and int(pio["build"]["f_cpu"].rstrip("L")) == board.f_cpu
    assert pio["upload"]["maximum_size"] == board.flash_limit and pio["upload"]["maximum_ram_size"] == board.sram
    assert pio["upload"]["protocol"] == board.upload_protocol and pio["upload"]["speed"] == board.upload_speed
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(PLATFORMIO_INI)
    offline, online = ini[f"env:{board.pio_env}"], ini[f"env:{board.pio_env.removesuffix('_offline')}"]
    assert offline["board"] == online["board"] == board.pio_board
    assert int(offline.get("upload_speed", ini["env"]["upload_speed"])) == board.upload_speed


def test_unknown_board_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown board 'leonardo'; unochat knows uno, nano, nano-old, mega2560"):
        get_board("leonardo")
    with pytest.raises(SystemExit):
        cli.main(["build", "--board", "leonardo"])
    assert "invalid choice: 'leonardo'" in capsys.readouterr().err


def test_avrdude_command_per_board() -> None:
    assert avrdude_command("/dev/ttyUSB0", "f.hex", board=NANO_OLD)[1:7] == [
        "-p", "atmega328p", "-c", "arduino", "-b", "57600"]
    assert avrdude_command("/dev/ttyACM0", "f.hex", board=MEGA2560)[1:7] == [
        "-p", "atmega2560", "-c", "wiring", "-b", "115200"]


def test_budget_messages_name_the_board_and_lpm_reach() -> None:
    with pytest.raises(BudgetError, match=r"the Nano has 30,720 B \(over by 1,000 B\)"):
        check_budget(SizeReport(31_720, 500, NANO.flash_limit, NANO.sram, NANO.title))
    over = SizeReport(70_000, 500, MEGA2560.flash_limit, MEGA2560.sram, MEGA2560.title, tables_end=LPM_REACH + 100)
    with pytest.raises(BudgetError, match="tables end at 65,636 B of flash, 100 B past the 65,536 B that LPM reaches"):
        check_budget(over)
    assert MEGA2560.model_flash == LPM_REACH and UNO.model_flash == UNO.flash_limit


# ---- other boards, built and run -------------------------------------------------------------------------
@pytest.mark.parametrize("board", [NANO, MEGA2560], ids=lambda b: b.name)
@pytest.mark.usefixtures("sim_marks")
def test_other_boards_build_and_answer_bit_exactly(build: Callable, board) -> None:  # noqa: ANN001
    """A model on the Nano's budget and on the Mega 2560 (simavr's ATmega2560: other vectors, 3-byte return
    addresses, 8 KB of SRAM): replies and timed replies identical to the reference."""
    model = chatty_model(5, ["2bit", "1bit", "1bit"], [64, 32], PAIRS, features=FeatureSpec(128, 128))
    elf, sizes = build(model, board)
    assert sizes.flash_limit == board.flash_limit and sizes.sram_limit == board.sram
    expected = reference.generate(model, QUERIES)
    with connect(sim=elf, board=board) as client:
        assert client.info()["id"] == model.fingerprint()
        assert [client.reply(q) for q in QUERIES] == expected
        assert client.timed_reply(QUERIES[0]).reply == expected[0]


@pytest.fixture
def sim_marks() -> None:
    if shutil.which("avr-gcc") is None:
        pytest.skip("avr-gcc not installed")


# ---- flashing through the bootloader --------------------------------------------------------------------
@pytest.mark.sim
@pytest.mark.pio
@pytest.mark.usefixtures("sim_marks")
def test_flash_through_optiboot_on_the_virtual_uno(build: Callable) -> None:
    """The virtual UNO starts in optiboot at every reset, as a real one does; `unochat flash` runs the real
    avrdude (-c arduino -b 115200) through it over the pty; after the upload the board answers with the
    new firmware: another model than the one it ran."""
    if shutil.which("avrdude") is None:
        pytest.skip("avrdude not installed")
    before = chatty_model(1, ["1bit", "1bit"], [32], PAIRS, features=FeatureSpec(64, 64))
    after = chatty_model(2, ["2bit", "1bit"], [48], PAIRS, features=FeatureSpec(64, 64))
    old_elf, _ = build(before)
    new_elf, _ = build(after)
    with VirtualUno(old_elf, bootloader=True) as uno:
        with connect(port=uno.port) as client:  # through the bootloader's second, into the firmware
            assert client.info()["id"] == before.fingerprint()
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "unochat.cli", "flash", "--port", uno.port,
                                 "--hex", str(new_elf.with_suffix(".hex"))],
                                capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - start
        assert result.returncode == 0, result.stdout + result.stderr
        written = re.search(r"(\d+) bytes of flash verified", result.stderr)
        assert written and int(written.group(1)) > 1000, result.stderr
        print(f"\nflashed {written.group(1)} B through optiboot in {seconds:.1f} s")
        with connect(port=uno.port) as client:
            assert client.info()["id"] == after.fingerprint()
            assert [client.reply(q) for q in QUERIES[:4]] == reference.generate(after, QUERIES[:4])


@pytest.mark.sim
@pytest.mark.usefixtures("sim_marks")
def test_boards_without_a_virtual_bootloader_say_so() -> None:
    with pytest.raises(Exception, match="the virtual Mega 2560 has no bootloader; unochat builds one for uno, nano"):
        VirtualUno(None, bootloader=True, board=MEGA2560).start()
