"""The boards unochat builds for, each defined once: budgets, MCU, upload, the virtual board.

A foundation module, like `paths`: every subpackage may import it (codegen plans for a board's budget,
firmware builds its PlatformIO environment and checks the real ELF against it, board flashes and simulates
it), and it imports nothing of unochat. The budgets and upload settings are the Arduino IDE's own
(arduino-core-avr's boards.txt; tests/test_boards.py checks them against it and against the PlatformIO
board files of tools/pio-platform).
"""
from __future__ import annotations

from dataclasses import dataclass

# LPM, which the generated C (pgm_read_*) and the kernels read tables with, reaches the first 64 KB of flash
# only; past it ELPM with RAMPZ would be needed (avr-libc's pgm_read_*_far). unochat keeps every table below
# this line, which only a board with more flash than that (the Mega 2560) can cross.
LPM_REACH = 65_536


@dataclass(frozen=True)
class Board:
    name: str  # what --board takes
    title: str  # what messages call it
    mcu: str  # avr-gcc's -mmcu, simavr's core and avrdude's -p
    flash_limit: int  # bytes of flash a sketch may use (boards.txt upload.maximum_size): the rest holds the bootloader
    flash_size: int  # all of it: the simulated MCU runs without a bootloader unless given one
    sram: int
    pio_board: str  # the PlatformIO board id (tools/pio-platform/boards/<id>.json; PlatformIO's own for `<env>`)
    fqbn: str  # the Arduino IDE's board id (arduino-builder -fqbn)
    upload_protocol: str = "arduino"  # avrdude -c: the bootloader's protocol
    upload_speed: int = 115_200
    f_cpu: int = 16_000_000
    # The bootloader the virtual board can start in (`unochat sim --bootloader`): built by tools/unosim's
    # Makefile from Debian's source, None where that is not done.
    bootloader: str | None = None
    # The stack the firmware needs. Measured on the virtual UNO (tests/test_device.py, stack high-water
    # mark after the longest query, a full reply, `!t` and `!x`): 113-115 B; the test also demands 64 B
    # to spare, so static SRAM (.data + .bss) must leave this much free.
    stack_reserve: int = 192

    @property
    def pio_env(self) -> str:
        """The offline PlatformIO environment that builds for this board (platformio.ini)."""
        return f"{self.name.replace('-', '_')}_offline"

    @property
    def model_flash(self) -> int:
        """The flash a model's firmware may plan for: the budget, and on a Mega no more than LPM reaches (the
        tables come first in flash, the code after them is a few KB)."""
        return self.flash_limit if self.flash_size <= LPM_REACH else min(self.flash_limit, LPM_REACH)


UNO = Board("uno", "UNO", "atmega328p", flash_limit=32_256, flash_size=32_768, sram=2_048, pio_board="uno",
            fqbn="arduino:avr:uno", bootloader="optiboot_atmega328.hex")
# The Nano since 2018 has the UNO's optiboot, but boards.txt still keeps 2 KB for the old bootloader.
NANO = Board("nano", "Nano", "atmega328p", flash_limit=30_720, flash_size=32_768, sram=2_048,
             pio_board="nanoatmega328new", fqbn="arduino:avr:nano:cpu=atmega328", bootloader="optiboot_atmega328.hex")
NANO_OLD = Board("nano-old", "Nano (old bootloader)", "atmega328p", flash_limit=30_720, flash_size=32_768,
                 sram=2_048, pio_board="nanoatmega328", fqbn="arduino:avr:nano:cpu=atmega328old", upload_speed=57_600)
MEGA2560 = Board("mega2560", "Mega 2560", "atmega2560", flash_limit=253_952, flash_size=262_144, sram=8_192,
                 pio_board="megaatmega2560", fqbn="arduino:avr:mega:cpu=atmega2560", upload_protocol="wiring")

BOARDS = {board.name: board for board in (UNO, NANO, NANO_OLD, MEGA2560)}


def get_board(name: str | Board) -> Board:
    """The board of a --board name; ValueError naming the known ones."""
    if isinstance(name, Board):
        return name
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; unochat knows {', '.join(BOARDS)}") from None
