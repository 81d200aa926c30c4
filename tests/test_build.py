"""unochat.firmware (size, pio, build): avr-size parsing, the size budget, and real offline PlatformIO builds.

The `pio` tests build small sketches in a temporary project (the repo's platformio.ini plus a
link to its tools/), so they test the offline platform independently of the model code. They
reuse the repo's PlatformIO core dir, where tools/setup.sh registered tool-scons.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unochat import cli
from unochat.boards import UNO
from unochat.firmware.build import build_project
from unochat.firmware.size import BudgetError, SizeReport, check_budget, parse_avr_size
from unochat.paths import REPO

from conftest import random_model

# `avr-size -A -d firmware.elf` of the Serial echo sketch below (avr-gcc 5.4, Debian core 1.8.7).
AVR_SIZE_OUTPUT = """\
build/firmware.elf  :
section                    size      addr
.data                        18   8388864
.text                      1456         0
.bss                        166   8388882
.comment                     17         0
.note.gnu.avr.deviceinfo     64         0
.debug_info                1524         0
.debug_abbrev              1470         0
.debug_line                  26         0
.debug_str                  544         0
Total                      5285


"""

# ECHO_BAUD comes from build_flags in platformio.ini: a missing flag fails the compile.
ECHO_SKETCH = """\
#include <Arduino.h>

void setup() { Serial.begin(ECHO_BAUD); }

void loop() {
  if (Serial.available() > 0) {
    Serial.write(Serial.read());
  }
}
"""

# 40,000 B of PROGMEM in two arrays: avr-gcc refuses a single object over 32,767 B.
OVERSIZED_SKETCH = """\
#include <Arduino.h>
#include <avr/pgmspace.h>

#define HALF 20000
const uint8_t table_a[HALF] PROGMEM = {1};
const uint8_t table_b[HALF] PROGMEM = {2};

void setup() { Serial.begin(115200); }

void loop() {
  if (Serial.available() > 0) {
    // Index from the input so that neither table can be optimised away.
    uint16_t i = (uint16_t)Serial.read() * 78u;
    Serial.write(pgm_read_byte(&table_a[i % HALF]) ^ pgm_read_byte(&table_b[i % HALF]));
  }
}
"""


def test_parse_avr_size() -> None:
    report = parse_avr_size(AVR_SIZE_OUTPUT)
    assert report.flash_bytes == 1456 + 18  # .text + .data
    assert report.sram_bytes == 18 + 166  # .data + .bss (no .noinit here)
    assert (report.flash_limit, report.sram_limit) == (32_256, 2_048)
    assert report.stack_room == 2_048 - 184


def test_parse_avr_size_counts_noinit() -> None:
    text = AVR_SIZE_OUTPUT.replace(".comment ", ".noinit  ", 1)
    assert parse_avr_size(text).sram_bytes == 18 + 166 + 17


def test_parse_avr_size_rejects_other_output() -> None:
    with pytest.raises(ValueError):
        parse_avr_size("   text    data     bss     dec     hex filename\n  1456   18  166  1640  668 x.elf\n")


def test_budget_fits() -> None:
    check_budget(SizeReport(flash_bytes=UNO.flash_limit, sram_bytes=UNO.sram - 320), stack_reserve=320)


def test_budget_flash_over() -> None:
    report = SizeReport(flash_bytes=38_144, sram_bytes=500)
    with pytest.raises(BudgetError) as excinfo:
        check_budget(report)
    message = str(excinfo.value)
    assert "firmware needs 38,144 B of flash; the UNO has 32,256 B (over by 5,888 B)" in message
    assert "unochat quantize --bits 1" in message
    assert "unochat prune --ratio 0.5" in message
    assert "--hidden" in message
    assert "SRAM" not in message
    assert excinfo.value.report is report


def test_budget_sram_over() -> None:
    report = SizeReport(flash_bytes=10_000, sram_bytes=1_900)
    with pytest.raises(BudgetError) as excinfo:
        check_budget(report, stack_reserve=320)
    message = str(excinfo.value)
    assert "1,900 B of static SRAM" in message
    assert "leaving 148 B of the UNO's 2,048 B for the stack, which needs 320 B (over by 172 B)" in message
    assert "--hidden" in message
    assert "flash" not in message.split("Try:")[0]


def test_budget_both_over_reports_both() -> None:
    with pytest.raises(BudgetError) as excinfo:
        check_budget(SizeReport(flash_bytes=40_000, sram_bytes=2_000))
    assert "of flash" in str(excinfo.value) and "static SRAM" in str(excinfo.value)


def test_platformio_ini_lints_clean() -> None:
    # `pio project config --lint` always exits 0; ProjectConfig.lint() is the real gate.
    code = (
        "import sys; from platformio.project.config import ProjectConfig;"
        "r = ProjectConfig.lint(); print(r); sys.exit(1 if r['errors'] else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _project(tmp_path: Path, sketch: str, build_flags: str = "") -> Path:
    project = tmp_path / "project"
    (project / "firmware" / "src").mkdir(parents=True)
    (project / "firmware" / "generated").mkdir()
    (project / "firmware" / "src" / "main.cpp").write_text(sketch)
    ini = (REPO / "platformio.ini").read_text()
    if build_flags:
        ini = ini.replace("[env:uno_offline]\n", f"[env:uno_offline]\nbuild_flags = {build_flags}\n", 1)
    (project / "platformio.ini").write_text(ini)
    (project / "tools").symlink_to(REPO / "tools", target_is_directory=True)
    return project


@pytest.mark.pio
def test_build_echo_sketch_offline(tmp_path: Path, pio_env: None) -> None:
    project = _project(tmp_path, ECHO_SKETCH, build_flags="-DECHO_BAUD=115200")
    report = build_project(project)

    elf, hex_file = project / "build" / "firmware.elf", project / "build" / "firmware.hex"
    assert elf.is_file() and hex_file.is_file()
    assert hex_file.read_text().rstrip().endswith(":00000001FF")  # Intel HEX end record
    # Serial alone costs ~1.5 KB of flash and ~180 B of SRAM (its two 64-byte ring buffers).
    assert 1_000 < report.flash_bytes < 4_000
    assert 128 < report.sram_bytes < 400


@pytest.mark.pio
def test_oversized_sketch_links_and_fails_budget(tmp_path: Path, pio_env: None) -> None:
    project = _project(tmp_path, OVERSIZED_SKETCH)
    with pytest.raises(BudgetError) as excinfo:
        build_project(project)

    report = excinfo.value.report
    assert report.flash_bytes > 40_000
    assert (project / "build" / "firmware.elf").is_file()  # linked, copied for inspection
    message = str(excinfo.value)
    assert f"firmware needs {report.flash_bytes:,} B of flash; the UNO has 32,256 B" in message
    assert f"(over by {report.flash_bytes - UNO.flash_limit:,} B)" in message
    assert "unochat quantize --bits 1" in message


@pytest.mark.parametrize("kernels", ["fast", "c"])
def test_build_refuses_an_uncompilable_layer_on_both_kernel_paths(
    kernels: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = random_model(0, ["int8", "int8"], [160])  # 256 x 160 int8: 40,960 B in one array
    model.save(tmp_path / "big.npz")
    assert cli.main(["build", str(tmp_path / "big.npz"), "--kernel-path", kernels]) == 1
    assert "more than avr-gcc can compile" in capsys.readouterr().err
