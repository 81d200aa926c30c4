"""Build the UNO firmware with PlatformIO, offline, and check that it fits the board.

`build_firmware()` runs `pio run -e uno_offline` (tools/pio-platform: Debian's avr-gcc 5.4 and
Arduino core, no registry needed), copies firmware.elf/.hex to build/ and checks the size budget.
The offline platform lets an oversized image link (the AVR linker script allows 128 KB of .text),
so that this module can say by how much it is over instead of PlatformIO's bare size error.

`python -m unochat.build [PROJECT_DIR]` does the same from a shell (the Makefile's entry point).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .codegen import render
from .intmodel import IntModel
from .uno import FLASH_LIMIT, SRAM_LIMIT, STACK_RESERVE

REPO = Path(__file__).resolve().parents[2]
OFFLINE_ENV = "uno_offline"

# One place for the advice, so it follows the CLI if the commands change.
FLASH_HINTS = (
    "fewer bits per weight (`unochat quantize --bits 1`)",
    "pruning (`unochat prune --ratio 0.5`)",
    "a smaller hidden layer (`--hidden ...`)",
)
SRAM_HINTS = (
    "a smaller hidden layer (`--hidden ...`): activation buffers live in SRAM",
    "keeping tables and strings in PROGMEM (flash) rather than in SRAM",
    "fewer bits (`unochat quantize --bits 1`) or pruning (`unochat prune --ratio 0.5`) "
    "if weights are copied to SRAM",
)

# PlatformIO otherwise checks PyPI for upgrades after a build (~60 s offline) and sends telemetry.
PIO_QUIET_ENV = {
    "PLATFORMIO_DISABLE_UPGRADE_CHECK": "true",
    "PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL": "36500",
    "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "no",
}


class BuildError(RuntimeError):
    """The firmware could not be built; the message says what to do."""


class BudgetError(BuildError):
    """The firmware was built but does not fit the UNO; `report` holds the measured sizes."""

    def __init__(self, message: str, report: SizeReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class SizeReport:
    flash_bytes: int  # .text + .data: the initial values of .data are stored in flash
    sram_bytes: int  # .data + .bss + .noinit: static SRAM only, the stack comes on top
    flash_limit: int = FLASH_LIMIT
    sram_limit: int = SRAM_LIMIT

    @property
    def stack_room(self) -> int:
        """SRAM left for the stack (and nothing else: the firmware does not use malloc)."""
        return self.sram_limit - self.sram_bytes

    def summary(self) -> str:
        return (
            f"flash {self.flash_bytes:,} of {self.flash_limit:,} B, "
            f"static SRAM {self.sram_bytes:,} of {self.sram_limit:,} B "
            f"({self.stack_room:,} B left for the stack)"
        )


def parse_avr_size(text: str) -> SizeReport:
    """Sizes from `avr-size -A -d` output (the portable format; `-C --mcu` is a Debian patch)."""
    sections = {
        name: int(size)
        for name, size in re.findall(r"^(\.\S+)\s+(\d+)\s+\d+\s*$", text, re.MULTILINE)
    }
    if ".text" not in sections:
        raise ValueError(f"no .text section in avr-size output:\n{text}")

    def size(name: str) -> int:
        return sections.get(name, 0)

    return SizeReport(
        flash_bytes=size(".text") + size(".data"),
        sram_bytes=size(".data") + size(".bss") + size(".noinit"),
    )


def check_budget(report: SizeReport, stack_reserve: int | None = None) -> None:
    """Raise BudgetError unless the firmware fits in flash and leaves the stack its reserve."""
    reserve = STACK_RESERVE if stack_reserve is None else stack_reserve
    problems = []
    if report.flash_bytes > report.flash_limit:
        problems.append(
            f"firmware needs {report.flash_bytes:,} B of flash; the UNO has "
            f"{report.flash_limit:,} B (over by {report.flash_bytes - report.flash_limit:,} B). "
            f"Try: {'; '.join(FLASH_HINTS)}."
        )
    if report.stack_room < reserve:
        problems.append(
            f"firmware uses {report.sram_bytes:,} B of static SRAM, leaving "
            f"{report.stack_room:,} B of the UNO's {report.sram_limit:,} B for the stack, which "
            f"needs {reserve:,} B (over by {reserve - report.stack_room:,} B). "
            f"Try: {'; '.join(SRAM_HINTS)}."
        )
    if problems:
        raise BudgetError("\n".join(problems), report)


def pio_core_dir(project_dir: Path) -> Path:
    """PlatformIO's core dir: $PLATFORMIO_CORE_DIR if set (tests share the repo's), else <project>/.pio-core."""
    configured = os.environ.get("PLATFORMIO_CORE_DIR")
    return Path(configured).resolve() if configured else Path(project_dir).resolve() / ".pio-core"


def pio_environ(core_dir: Path) -> dict[str, str]:
    """The environment every pio call should get (tools/setup.sh sets the same)."""
    return {**os.environ, **PIO_QUIET_ENV, "PLATFORMIO_CORE_DIR": str(core_dir)}


def tool_scons_dir(core_dir: Path) -> Path | None:
    """Where PlatformIO will find tool-scons in core_dir, or None when it would try to download it.

    Reads PlatformIO 6.2's on-disk layout (a symlink install is a small JSON .pio-link file),
    which is why platformio is pinned.
    """
    packages = Path(core_dir) / "packages"
    if (packages / "tool-scons" / "scons.py").is_file():  # PlatformIO's own, on online machines
        return packages / "tool-scons"
    try:
        link = json.loads((packages / "tool-scons.pio-link").read_text(encoding="utf-8"))
        target = Path(link["cwd"]) / link["spec"]["uri"].removeprefix("symlink://")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return target.resolve() if (target / "scons.py").is_file() else None


def _pio_executable() -> Path:
    # The pio of the venv we run in: its platformio is the pinned 6.2.0 that our platform expects.
    pio = Path(sys.executable).parent / "pio"
    if not pio.is_file():
        raise BuildError(f"PlatformIO not found at {pio}; run tools/setup.sh (installs platformio==6.2.0)")
    return pio


def run_pio(project_dir: Path, env: str = OFFLINE_ENV, target: str | None = None, port: str | None = None) -> None:
    """Run `pio run` for one environment, streaming its output; raise BuildError on failure."""
    project_dir = Path(project_dir).resolve()
    core_dir = pio_core_dir(project_dir)
    if env == OFFLINE_ENV and tool_scons_dir(core_dir) is None:
        # Without it PlatformIO tries its registry and only fails after ~60 s of retries.
        raise BuildError(
            f"PlatformIO's tool-scons is not installed in {core_dir}; run tools/setup.sh"
        )
    cmd = [str(_pio_executable()), "run", "--project-dir", str(project_dir), "--environment", env]
    if target:
        cmd += ["--target", target]
    if port:
        cmd += ["--upload-port", port]

    # Through our own stdout rather than an inherited fd, so callers that redirect sys.stdout
    # (pytest, notebooks) see it; the tail goes into the error for logs that keep only exceptions.
    tail: deque[str] = deque(maxlen=25)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        env=pio_environ(core_dir),
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)
    if proc.returncode != 0:
        what = f"pio run -e {env}" + (f" -t {target}" if target else "")
        raise BuildError(
            f"`{what}` failed (exit code {proc.returncode}) in {project_dir}; "
            f"last lines:\n{''.join(tail)}"
        )


def avr_size(elf: Path) -> SizeReport:
    avr_size_exe = shutil.which("avr-size")
    if avr_size_exe is None:
        raise BuildError("avr-size not found; install binutils-avr (tools/setup.sh does)")
    result = subprocess.run(
        [avr_size_exe, "-A", "-d", str(elf)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError(f"avr-size failed on {elf}: {result.stderr.strip()}")
    return parse_avr_size(result.stdout)


def build_firmware(project_dir: Path) -> SizeReport:
    """Build env uno_offline, copy the ELF and HEX to <project>/build/, and check the budget.

    The copies are made before the budget check so that an oversized image can be inspected;
    BudgetError carries the SizeReport.
    """
    project_dir = Path(project_dir).resolve()
    run_pio(project_dir, OFFLINE_ENV)
    pio_out = project_dir / ".pio" / "build" / OFFLINE_ENV
    out_dir = project_dir / "build"
    out_dir.mkdir(exist_ok=True)
    for suffix in (".elf", ".hex"):
        produced = pio_out / f"firmware{suffix}"
        if not produced.is_file():
            raise BuildError(f"PlatformIO reported success but {produced} is missing")
        shutil.copy2(produced, out_dir / produced.name)
    report = avr_size(out_dir / "firmware.elf")
    check_budget(report)
    return report


AVR_OBJECT_LIMIT = 32_767  # avr-gcc refuses a single object larger than this


def build_model(model: IntModel, project_dir: Path = REPO, kernels: str = "fast") -> SizeReport:
    """Render the model's C (`kernels`: codegen.KERNEL_PATHS) into the project, build it and check the
    budget on the real ELF.

    A layer whose packed weights exceed avr-gcc's object limit cannot even compile (and could never
    fit); it is refused before compiling, with the budget message instead of a compiler error.
    """
    widest = max(model.layers, key=lambda layer: layer.packed_bytes())
    if widest.packed_bytes() > AVR_OBJECT_LIMIT:
        tables = sum(layer.packed_bytes() for layer in model.layers)
        raise BudgetError(
            f"the model's packed weights alone need {tables:,} B of flash; the UNO has {FLASH_LIMIT:,} B "
            f"(over by {tables - FLASH_LIMIT:,} B before any code; one {widest.n_in}x{widest.n_out} "
            f"{widest.fmt} layer is {widest.packed_bytes():,} B, more than avr-gcc can compile). "
            f"Try: {'; '.join(FLASH_HINTS)}.",
            SizeReport(flash_bytes=tables, sram_bytes=0),
        )
    render(model, Path(project_dir) / "firmware" / "generated", kernels=kernels)
    return build_firmware(project_dir)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    project_dir = Path(args[0]) if args else Path.cwd()
    try:
        report = build_firmware(project_dir)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"build/firmware.hex: {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
