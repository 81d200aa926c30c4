"""The boards unochat builds for: each one's flash, SRAM and stack budget, defined once.

A foundation module, like `paths`: every subpackage may import it (codegen plans for a board's budget,
firmware checks it on the real ELF), and it imports nothing of unochat.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    name: str
    flash_limit: int  # bytes of flash a sketch may use: the rest holds the bootloader
    flash_size: int  # all of it: the simulator's MCU runs without a bootloader
    sram: int
    # The stack the firmware needs. Measured on the virtual UNO (tests/test_device.py, stack high-water
    # mark after the longest query, a full reply, `!t` and `!x`): 113-115 B; the test also demands 64 B
    # to spare, so static SRAM (.data + .bss) must leave this much free.
    stack_reserve: int = 192


UNO = Board("uno", flash_limit=32_256, flash_size=32_768, sram=2_048)  # optiboot keeps the top 512 B
