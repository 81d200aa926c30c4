"""firmware: the sketch built with PlatformIO, offline, and measured with avr-size and avr-nm.

size (budgets, avr-size, avr-nm) -> pio (PlatformIO offline) -> project (a throw-away copy of the
PlatformIO project) -> build (a model's firmware). May import: data, model, codegen.
"""
