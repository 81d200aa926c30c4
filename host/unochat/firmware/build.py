"""Build the firmware of a model with PlatformIO, offline, and check that it fits the board.

`build_firmware(model, project_dir, board=UNO)` renders the model's C into the project's firmware/generated/,
runs `pio run -e <board>_offline` (firmware/pio.py), copies firmware.elf/.hex to the project's build/ and
checks the board's budget on the real ELF (firmware/size.py). The offline platform lets an oversized image link
(the AVR linker script allows 128 KB of .text), so the check can say by how much it is over instead of
PlatformIO's bare size error.
"""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from ..boards import UNO, Board
from ..codegen.layout import Plan
from ..codegen.plan import plan_for
from ..codegen.render import render
from ..model.intmodel import IntModel
from ..paths import REPO
from .pio import run_pio
from .size import FLASH_HINTS, BudgetError, BuildError, SizeReport, avr_size, check_budget

AVR_OBJECT_LIMIT = 32_767  # avr-gcc refuses a single object larger than this


def build_project(project_dir: Path, quiet: bool = False, board: Board = UNO) -> SizeReport:
    """Build the board's offline environment, copy the ELF and HEX to <project>/build/, and check the budget.

    The copies are made before the budget check so that an oversized image can be inspected;
    BudgetError carries the SizeReport. `quiet` keeps PlatformIO's output off stdout."""
    project_dir = Path(project_dir).resolve()
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        run_pio(project_dir, board.pio_env)
    pio_out = project_dir / ".pio" / "build" / board.pio_env
    out_dir = project_dir / "build"
    out_dir.mkdir(exist_ok=True)
    for suffix in (".elf", ".hex"):
        produced = pio_out / f"firmware{suffix}"
        if not produced.is_file():
            raise BuildError(f"PlatformIO reported success but {produced} is missing")
        shutil.copy2(produced, out_dir / produced.name)
    report = avr_size(out_dir / "firmware.elf", board)
    check_budget(report, board.stack_reserve)
    return report


def check_compilable(model: IntModel, board: Board = UNO) -> None:
    """A layer whose packed weights exceed avr-gcc's object limit cannot even compile (and could never
    fit): BudgetError with the budget message, before any compiler error."""
    widest = max(model.layers, key=lambda layer: layer.packed_bytes())
    if widest.packed_bytes() > AVR_OBJECT_LIMIT:
        tables = sum(layer.packed_bytes() for layer in model.layers)
        raise BudgetError(
            f"the model's packed weights alone need {tables:,} B of flash; the {board.title} has {board.model_flash:,} B "
            f"for a model (over by {tables - board.model_flash:,} B before any code; one {widest.n_in}x{widest.n_out} "
            f"{widest.fmt} layer is {widest.packed_bytes():,} B, more than avr-gcc can compile). "
            f"Try: {'; '.join(FLASH_HINTS)}.",
            SizeReport(flash_bytes=tables, sram_bytes=0, flash_limit=board.flash_limit, sram_limit=board.sram,
                       board=board.title),
        )


def build_firmware(model: IntModel, project_dir: Path = REPO, kernels: str = "fast", plan: Plan | None = None,
                   profile_requant: bool = False, quiet: bool = False, board: Board = UNO) -> SizeReport:
    """Render the model's C (`kernels`: codegen.layout.KERNEL_PATHS, or a whole `plan`) into the project,
    build it for `board` and check its budget on the real ELF (<project>/build/firmware.elf)."""
    check_compilable(model, board)
    plan = plan or plan_for(model, kernels, board=board)
    if plan.density_note and not quiet:
        print(f"note: {plan.density_note}")
    render(model, Path(project_dir) / "firmware" / "generated", kernels=kernels, plan=plan,
           profile_requant=profile_requant)
    return build_project(project_dir, quiet=quiet, board=board)


def build_for_simulator(model: IntModel, project_dir: Path, kernels: str = "fast", plan: Plan | None = None,
                        profile_requant: bool = False, board: Board = UNO) -> tuple[Path, int]:
    """build_firmware, quietly, for the virtual UNO: (the ELF, its flash bytes). The build that times
    requantization apart (profile_requant) runs only in the simulator, whose ATmega328P has no bootloader:
    its extra profile calls may take the bootloader's 512 B of flash."""
    try:
        sizes = build_firmware(model, project_dir, kernels, plan, profile_requant, quiet=True, board=board)
    except BudgetError as e:
        room = e.report.stack_room >= board.stack_reserve
        if not (profile_requant and room and e.report.flash_bytes <= board.flash_size):
            raise
        sizes = e.report
    return Path(project_dir) / "build" / "firmware.elf", sizes.flash_bytes
