"""The model as an Arduino library, for the Arduino IDE, and its examples compiled with arduino-builder.

`export_library(model, lib_dir)` writes an Arduino library (library specification 1.5): library.properties,
src/ with the generated model (the same C and assembly as the firmware's, codegen/render.py) and a small
API (templates/arduino/unochat.h.j2: a query in, the reply's characters out through a callback or into a
buffer, no Serial assumed), and two examples: Chat (a line in the Serial Monitor, the reply back) and
Hello (one fixed question answered at start-up). `zip_library` packs it for Sketch > Include Library >
Add .ZIP Library. `compile_example` builds an example with Debian's arduino-builder, the Arduino IDE 1.8's
own builder, offline, and checks the board's budget on the real ELF.

The plan leaves room for the sketch: the model is planned for the board's budget less SKETCH_FLASH and
SKETCH_SRAM, what the Arduino core's Serial and a small sketch take beyond unochat's own firmware.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

from .. import __version__
from ..boards import UNO, Board
from ..codegen.layout import environment
from ..codegen.plan import plan_for
from ..codegen.render import render
from ..model.intmodel import IntModel
from .size import BuildError, SizeReport, avr_size, check_budget

LIBRARY = "unochat"  # the library's name, folder and header (unochat.h)
EXAMPLES = ("Chat", "Hello")
# Room for the sketch. Measured with the default model (tests/test_arduino.py checks and prints it): the
# Chat example, Arduino core and Serial included, takes 2,336 B less flash than unochat's own firmware with
# the same plan (which carries the timing instrumentation and the machine commands) and 138 B more static
# SRAM (Serial's two 64-byte rings and its object). So SRAM keeps that and a margin for the sketch's own
# variables; flash keeps 1 KB for a sketch bigger than the examples.
SKETCH_FLASH = 1_024
SKETCH_SRAM = 224
ARDUINO_HARDWARE = (Path("/usr/share/arduino/hardware"), Path("/usr/share/arduino-builder"))


def sketch_board(board: Board) -> Board:
    """The budget a library's model is planned for: the board's, less what a sketch around it takes."""
    return replace(board, flash_limit=board.flash_limit - SKETCH_FLASH, sram=board.sram - SKETCH_SRAM)


def export_library(model: IntModel, lib_dir: Path, board: Board = UNO, kernels: str = "fast",
                   question: str = "hello") -> list[Path]:
    """Write the Arduino library of `model` into lib_dir (created; its src/ and examples/ replaced); the
    Hello example asks `question`. Returns the files written."""
    lib_dir = Path(lib_dir)
    if not question.isascii() or not question.isprintable():
        raise ValueError(f"the Hello example's question must be printable ASCII, not {question!r}")
    for part in ("src", "examples"):
        shutil.rmtree(lib_dir / part, ignore_errors=True)
    plan = plan_for(model, kernels, board=sketch_board(board))
    written = render(model, lib_dir / "src", kernels=kernels, plan=plan)
    env = environment()
    context = {"version": __version__, "model": model, "model_id": model.fingerprint(), "board": board,
               "shape": "-".join(map(str, model.shape)), "question_c": json.dumps(question)}
    files = {"library.properties": "library.properties.j2", "src/unochat.h": "unochat.h.j2",
             "src/unochat_ask.c": "unochat_ask.c.j2"}
    files |= {f"examples/{name}/{name}.ino": f"{name}.ino.j2" for name in EXAMPLES}
    for target, template in files.items():
        path = lib_dir / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env.get_template(f"arduino/{template}").render(**context))
        written.append(path)
    return written


def zip_library(lib_dir: Path) -> Path:
    """lib_dir.zip, its files under one top folder named `unochat`, as the IDE's Add .ZIP Library wants."""
    lib_dir = Path(lib_dir)
    archive = lib_dir.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(p for p in lib_dir.rglob("*") if p.is_file()):
            z.write(path, Path(LIBRARY) / path.relative_to(lib_dir))
    return archive


def arduino_builder_command(sketch: Path, libraries: Path, build_dir: Path, tools_dir: Path,
                            board: Board = UNO) -> list[str]:
    """arduino-builder offline with Debian's core and compiler (README "Use it in your own sketch"); the
    DECIMAL_DIG define is the workaround Debian's core needs with gcc 5.4, as in the PlatformIO build."""
    exe = shutil.which("arduino-builder")
    if exe is None:
        raise BuildError("arduino-builder not found; install it (`apt-get install arduino-builder`; tools/setup.sh does)")
    command = [exe, "-compile"]
    for hardware in ARDUINO_HARDWARE:
        command += ["-hardware", str(hardware)]
    return command + [
        "-tools", str(tools_dir), "-libraries", str(libraries), "-fqbn", board.fqbn, "-build-path", str(build_dir),
        "-prefs=runtime.tools.avr-gcc.path=/usr", "-prefs=compiler.path=/usr/bin/",
        "-prefs=compiler.cpp.extra_flags=-DDECIMAL_DIG=__DECIMAL_DIG__", str(sketch),
    ]


def compile_example(lib_dir: Path, example: str, build_dir: Path, board: Board = UNO) -> tuple[Path, SizeReport]:
    """Compile one of the library's examples with arduino-builder, as the IDE would with the library
    installed: (its ELF, avr-size of it against the board). BuildError with the builder's output if it
    fails; BudgetError if the image does not fit."""
    lib_dir, build_dir = Path(lib_dir).resolve(), Path(build_dir).resolve()
    if lib_dir.name != LIBRARY:
        raise BuildError(f"the IDE finds the library by its folder's name: {lib_dir} should be named {LIBRARY}")
    build_dir.mkdir(parents=True, exist_ok=True)
    tools_dir = build_dir / "tools"  # arduino-builder insists on one; an empty folder will do
    tools_dir.mkdir(exist_ok=True)
    sketch = lib_dir / "examples" / example / f"{example}.ino"
    command = arduino_builder_command(sketch, lib_dir.parent, build_dir, tools_dir, board)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elf = build_dir / f"{example}.ino.elf"
    if result.returncode != 0 or not elf.is_file():
        raise BuildError(f"arduino-builder failed on {sketch} (exit code {result.returncode}):\n"
                         + (result.stdout + result.stderr)[-3000:])
    report = avr_size(elf, board)
    check_budget(report, board.stack_reserve)
    return elf, report
