"""The Arduino UNO's budget: what the generated code may use (codegen plans for it, build checks it)."""

FLASH_LIMIT = 32_256  # 32 KiB minus the 512 B optiboot keeps at the top of flash
FLASH_SIZE = 32_768  # all of it: the simulator's ATmega328P has no bootloader
SRAM_LIMIT = 2_048
# The stack the firmware needs. Measured on the virtual UNO (tests/test_device.py, stack high-water
# mark after the longest query, a full reply, `!t` and `!x`): 113-115 B; the test also demands 64 B
# to spare, so static SRAM (.data + .bss) must leave this much free.
STACK_RESERVE = 192
