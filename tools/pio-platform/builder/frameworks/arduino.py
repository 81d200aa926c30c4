# Arduino framework for the offline "unochat-avr" platform: compiles Debian's
# Arduino AVR core (package arduino-core-avr, the same core 1.8.7 as
# PlatformIO's framework-arduino-avr 5.3.0) into a static library, as the
# Arduino IDE does with core.a.

import os
import sys

from SCons.Script import DefaultEnvironment  # pylint: disable=import-error

env = DefaultEnvironment()
board = env.BoardConfig()

# board_build.arduino_dir in platformio.ini overrides the Debian location.
arduino_dir = board.get("build.arduino_dir")
core_dir = os.path.join(arduino_dir, "cores", board.get("build.core"))
variant_dir = os.path.join(arduino_dir, "variants", board.get("build.variant"))
if not os.path.isfile(os.path.join(core_dir, "Arduino.h")):
    sys.stderr.write(
        f"Error: no Arduino AVR core in {core_dir}. "
        "Install it with `apt-get install arduino-core-avr` (or run tools/setup.sh)\n"
    )
    env.Exit(1)

env.Append(
    CPPDEFINES=[
        "ARDUINO_ARCH_AVR",
        ("ARDUINO", 10808),
        # WString.cpp uses DECIMAL_DIG, which gcc 5.4's <float.h> hides from C++.
        ("DECIMAL_DIG", "__DECIMAL_DIG__"),
    ],
    CPPPATH=[core_dir, variant_dir],
    # lets the library finder resolve <EEPROM.h>, <SPI.h>, <Wire.h>, ...
    LIBSOURCE_DIRS=[os.path.join(arduino_dir, "libraries")],
)

env.Prepend(
    LIBS=[env.BuildLibrary(os.path.join("$BUILD_DIR", "FrameworkArduino"), core_dir)]
)
