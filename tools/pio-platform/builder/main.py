# SCons build script of the offline "unochat-avr" PlatformIO dev-platform.
#
# PlatformIO's own atmelavr platform and its avr-gcc 7.3 come from PlatformIO's
# registry, which is unreachable offline, so this script drives Debian's
# gcc-avr 5.4 (found on $PATH) with the flags atmelavr uses. The Arduino core
# is compiled by builder/frameworks/arduino.py.

import re
import subprocess
import sys
from os.path import join

from SCons.Script import (  # pylint: disable=import-error
    COMMAND_LINE_TARGETS,
    AlwaysBuild,
    Builder,
    Default,
    DefaultEnvironment,
)

env = DefaultEnvironment()

env.Replace(
    AR="avr-gcc-ar",  # the plugin-aware ar: archive members are LTO objects
    AS="avr-gcc",
    CC="avr-gcc",
    CXX="avr-g++",
    OBJCOPY="avr-objcopy",
    RANLIB="avr-gcc-ranlib",
    ARFLAGS=["rc"],
    PROGNAME="firmware",
    PROGSUFFIX=".elf",
    # Flash = .text + .data (the initial values of .data live in flash);
    # static RAM = .data + .bss + .noinit. PlatformIO's "checkprogsize" reads these.
    SIZECHECKCMD="avr-size -A -d $SOURCES",
    SIZEPROGREGEXP=r"^(?:\.text|\.data)\s+(\d+)",
    SIZEDATAREGEXP=r"^(?:\.data|\.bss|\.noinit)\s+(\d+)",
    UPLOADER="avrdude",
    UPLOADERFLAGS=[
        "-p", "$BOARD_MCU",
        "-c", "$UPLOAD_PROTOCOL",
        "-b", "$UPLOAD_SPEED",
        "-D",  # optiboot erases pages itself; a chip erase would hit the bootloader
        "-P", '"$UPLOAD_PORT"',
    ],
    UPLOADCMD="$UPLOADER $UPLOADERFLAGS -U flash:w:$SOURCES:i",
)

env.Append(
    ASFLAGS=["-x", "assembler-with-cpp", "-flto", "-mmcu=$BOARD_MCU"],
    CCFLAGS=[
        "-Os",
        "-Wall",
        "-ffunction-sections",
        "-fdata-sections",
        "-flto",
        "-mmcu=$BOARD_MCU",
    ],
    CFLAGS=["-std=gnu11"],
    CXXFLAGS=[
        "-fno-exceptions",
        "-fno-threadsafe-statics",
        "-fpermissive",
        "-std=gnu++11",
    ],
    CPPDEFINES=[("F_CPU", "$BOARD_F_CPU")],
    LINKFLAGS=[
        "-Os",
        "-mmcu=$BOARD_MCU",
        "-Wl,--gc-sections",
        "-flto",
        "-fuse-linker-plugin",
        # avr-libc's crtatmega328p.o caps the regions at the chip's 32 KiB / 2 KiB, so an
        # oversized image would stop at "region `text' overflowed". The generic avr5 limits
        # let it link and be measured; placement is unchanged. The budget is enforced by
        # unochat.firmware.size (incl. the 512 B bootloader and the stack) and "checkprogsize".
        "-Wl,--defsym=__TEXT_REGION_LENGTH__=128K",
        "-Wl,--defsym=__DATA_REGION_LENGTH__=0xffa0",
    ],
    LIBS=["m"],
    BUILDERS=dict(
        ElfToHex=Builder(
            action=env.VerboseAction(
                "$OBJCOPY -O ihex -R .eeprom $SOURCES $TARGET", "Building $TARGET"
            ),
            suffix=".hex",
        )
    ),
)


def _sum_sections(output, pattern):
    return sum(int(m) for m in re.findall(pattern, output, re.M))


def print_size(target, source, env):  # pylint: disable=unused-argument
    # Informative only: an oversized image must still link so that the host
    # tools (unochat.firmware.build) can say by how much it is over. Uploading is
    # guarded by PlatformIO's fatal "checkprogsize" below.
    elf = str(source[0])
    output = subprocess.run(
        ["avr-size", "-A", "-d", elf], check=True, capture_output=True, text=True
    ).stdout
    board = env.BoardConfig()
    flash = _sum_sections(output, env["SIZEPROGREGEXP"])
    ram = _sum_sections(output, env["SIZEDATAREGEXP"])
    max_flash = int(board.get("upload.maximum_size"))
    max_ram = int(board.get("upload.maximum_ram_size"))
    print(f"Flash: {flash:6d} of {max_flash} B ({100.0 * flash / max_flash:.1f}%)")
    print(f"RAM:   {ram:6d} of {max_ram} B ({100.0 * ram / max_ram:.1f}%, static only)")
    if flash > max_flash:
        sys.stderr.write(
            f"Warning! {elf} needs {flash} B of flash; the board has {max_flash} B "
            f"(over by {flash - max_flash} B). Upload will refuse it.\n"
        )


if "nobuild" in COMMAND_LINE_TARGETS:
    target_elf = join("$BUILD_DIR", "${PROGNAME}.elf")
    target_hex = join("$BUILD_DIR", "${PROGNAME}.hex")
else:
    target_elf = env.BuildProgram()
    target_hex = env.ElfToHex(join("$BUILD_DIR", "${PROGNAME}"), target_elf)

size = env.Alias("size", target_elf, env.VerboseAction(print_size, "Measuring size"))
AlwaysBuild(size)

upload = env.Alias(
    "upload",
    target_hex,
    [
        env.VerboseAction(env.AutodetectUploadPort, "Looking for upload port..."),
        env.VerboseAction("$UPLOADCMD", "Uploading $SOURCE"),
    ],
)
AlwaysBuild(upload)
env.Depends(upload, "checkprogsize")  # never flash an image that cannot fit

Default([target_hex, size])
