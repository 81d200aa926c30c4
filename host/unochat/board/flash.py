"""Flashing a board with avrdude through its bootloader (a real one, or the virtual one of `unochat sim
--bootloader`)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..boards import UNO, Board
from ..firmware.size import BudgetError, avr_size, check_budget
from .client import DeviceError, port_not_found


def avrdude_command(port: str, hex_path: str | os.PathLike[str], avrdude: str = "avrdude",
                    board: Board = UNO) -> list[str]:
    """The avrdude call that flashes `board` through its bootloader (-D: the bootloader erases pages itself)."""
    return [avrdude, "-p", board.mcu, "-c", board.upload_protocol, "-b", str(board.upload_speed), "-D",
            "-P", port, "-U", f"flash:w:{hex_path}:i"]


def flash(port: str, hex_path: str | os.PathLike[str], dry_run: bool = False, board: Board = UNO) -> list[str]:
    """Write a firmware image to `board` with avrdude (or with dry_run only check and return the command,
    whether or not the port exists yet).

    DeviceError with advice when the image, avrdude or the port is missing, or when the ELF beside the
    image (build/firmware.elf) does not fit the board: an oversized build is kept for inspection."""
    hex_file = Path(hex_path)
    if not hex_file.is_file():
        raise DeviceError(f"{hex_file} not found; build the firmware first (`make firmware` or `unochat build`)")
    elf = hex_file.with_suffix(".elf")
    if elf.is_file():
        try:
            check_budget(avr_size(elf, board), board.stack_reserve)
        except BudgetError as exc:
            raise DeviceError(f"{hex_file} does not fit the {board.title}, not flashing it:\n{exc}") from exc
    avrdude = shutil.which("avrdude")
    if avrdude is None:
        raise DeviceError("avrdude not found; install it (`apt-get install avrdude`; tools/setup.sh does)")
    command = avrdude_command(port, hex_file, avrdude, board)
    if dry_run:
        return command
    if not os.path.exists(port):
        raise port_not_found(port)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise DeviceError(
            f"avrdude failed (exit code {result.returncode}) flashing {hex_file} to {port}. Is it a "
            f"{board.title} with its bootloader (--board {board.name})? A virtual board takes a flash only "
            "when it runs its bootloader: `unochat sim --bootloader`."
        )
    return command
