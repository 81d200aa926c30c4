"""What a firmware image takes: avr-size of the real ELF against a board's budget, avr-nm per symbol.

Flash = .text + .data (the initial values of .data are stored in flash); static SRAM = .data + .bss +
.noinit, and the stack comes on top: it needs the board's stack reserve (boards.py) to spare. On a board
with more than 64 KB of flash the tables must also end where LPM reaches (boards.LPM_REACH).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from ..boards import LPM_REACH, UNO, Board

# One place for the advice, so it follows the CLI if the commands change.
FLASH_HINTS = (
    "fewer bits per weight (`unochat quantize --bits 1`)",
    "pruning (`unochat prune --ratio 0.5`)",
    "a smaller hidden layer (`--hidden ...`)",
)
SRAM_HINTS = (
    "smaller hidden layers (`--hidden ...`): each layer's activations live in SRAM (the weights are in flash)",
    "the C kernels (`--kernels c`): no sum, list or query-cache buffers",
)


class BuildError(RuntimeError):
    """The firmware could not be built; the message says what to do."""


class BudgetError(BuildError):
    """The firmware was built but does not fit its board; `report` holds the measured sizes."""

    def __init__(self, message: str, report: SizeReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class SizeReport:
    flash_bytes: int  # .text + .data: the initial values of .data are stored in flash
    sram_bytes: int  # .data + .bss + .noinit: static SRAM only, the stack comes on top
    flash_limit: int = UNO.flash_limit
    sram_limit: int = UNO.sram
    board: str = UNO.title
    # where the PROGMEM tables end (the linker's __trampolines_start, right after them): LPM reaches 64 KB
    tables_end: int = 0

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


def parse_avr_size(text: str, board: Board = UNO) -> SizeReport:
    """Sizes from `avr-size -A -d` output (the portable format; `-C --mcu` is a Debian patch), against the
    board's budget."""
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
        flash_limit=board.flash_limit, sram_limit=board.sram, board=board.title,
    )


def check_budget(report: SizeReport, stack_reserve: int | None = None) -> None:
    """Raise BudgetError unless the firmware fits in flash, its tables lie where LPM reaches, and it leaves
    the stack its reserve."""
    reserve = UNO.stack_reserve if stack_reserve is None else stack_reserve
    problems = []
    if report.flash_bytes > report.flash_limit:
        problems.append(
            f"firmware needs {report.flash_bytes:,} B of flash; the {report.board} has "
            f"{report.flash_limit:,} B (over by {report.flash_bytes - report.flash_limit:,} B). "
            f"Try: {'; '.join(FLASH_HINTS)}."
        )
    if report.stack_room < reserve:
        problems.append(
            f"firmware uses {report.sram_bytes:,} B of static SRAM, leaving "
            f"{report.stack_room:,} B of the {report.board}'s {report.sram_limit:,} B for the stack, which "
            f"needs {reserve:,} B (over by {reserve - report.stack_room:,} B). "
            f"Try: {'; '.join(SRAM_HINTS)}."
        )
    if report.tables_end > LPM_REACH:
        problems.append(
            f"the model's tables end at {report.tables_end:,} B of flash, {report.tables_end - LPM_REACH:,} B past "
            f"the {LPM_REACH:,} B that LPM reaches; unochat does not read tables with ELPM. "
            f"Try: {'; '.join(FLASH_HINTS)}."
        )
    if problems:
        raise BudgetError("\n".join(problems), report)


def avr_size(elf: Path, board: Board = UNO) -> SizeReport:
    avr_size_exe = shutil.which("avr-size")
    if avr_size_exe is None:
        raise BuildError("avr-size not found; install binutils-avr (tools/setup.sh does)")
    result = subprocess.run(
        [avr_size_exe, "-A", "-d", str(elf)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError(f"avr-size failed on {elf}: {result.stderr.strip()}")
    report = parse_avr_size(result.stdout, board)
    if board.flash_size > LPM_REACH:
        report = replace(report, tables_end=symbol_address(elf, "__trampolines_start"))
    return report


def symbol_address(elf: Path, name: str) -> int:
    """The address of a symbol of the ELF (avr-nm); 0 if it has none."""
    out = subprocess.run(["avr-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    return 0

def symbol_sizes(elf: Path) -> dict[str, int]:
    """Bytes of each symbol of the ELF (avr-nm -S)."""
    out = subprocess.run(["avr-nm", "-S", "--size-sort", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            sizes[parts[3]] = int(parts[1], 16)
    return sizes
