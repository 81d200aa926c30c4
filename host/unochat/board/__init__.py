"""board: a UNO, real or virtual, over its serial port.

sim (the virtual UNO: simavr behind a pty) -> client (the serial protocol: UnoClient, connect) -> flash
(avrdude through the bootloader). May import: data, model, codegen, firmware.
"""
