"""Flashing a real board with avrdude through its bootloader."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..firmware.size import BudgetError, avr_size, check_budget
from .client import BAUD, DeviceError, port_not_found


def avrdude_command(port: str, hex_path: str | os.PathLike[str], avrdude: str = "avrdude") -> list[str]:
    """The avrdude call that flashes a UNO through its bootloader (-D: the bootloader erases pages itself)."""
    return [avrdude, "-p", "atmega328p", "-c", "arduino", "-b", str(BAUD), "-D", "-P", port,
            "-U", f"flash:w:{hex_path}:i"]


def flash(port: str, hex_path: str | os.PathLike[str], dry_run: bool = False) -> list[str]:
    """Write a firmware image to a real UNO with avrdude (or with dry_run only check and return the command).

    DeviceError with advice when the image, avrdude or the port is missing, or when the ELF beside the
    image (build/firmware.elf) does not fit the board: an oversized build is kept for inspection."""
    hex_file = Path(hex_path)
    if not hex_file.is_file():
        raise DeviceError(f"{hex_file} not found; build the firmware first (`make firmware` or `unochat build`)")
    elf = hex_file.with_suffix(".elf")
    if elf.is_file():
        try:
            check_budget(avr_size(elf))
        except BudgetError as exc:
            raise DeviceError(f"{hex_file} does not fit the UNO, not flashing it:\n{exc}") from exc
    avrdude = shutil.which("avrdude")
    if avrdude is None:
        raise DeviceError("avrdude not found; install it (`apt-get install avrdude`; tools/setup.sh does)")
    if not os.path.exists(port):
        raise port_not_found(port)
    command = avrdude_command(port, hex_file, avrdude)
    if dry_run:
        return command
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise DeviceError(
            f"avrdude failed (exit code {result.returncode}) flashing {hex_file} to {port}. Is it an UNO with "
            "its bootloader? (A virtual UNO cannot be flashed: `unochat sim` runs the ELF directly.)"
        )
    return command
