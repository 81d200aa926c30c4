"""Where the repository's files are: the one place that knows the checkout's layout.

A foundation module, like `boards`: every subpackage may import it, and it imports nothing of unochat.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "data"
MODELS_DIR = REPO / "models"
DEFAULT_DATA = DATA_DIR / "default.txt"
DEFAULT_MODEL = MODELS_DIR / "default.npz"
TEMPLATES = REPO / "templates"
FIRMWARE_SRC = REPO / "firmware" / "src"
GENERATED = REPO / "firmware" / "generated"  # what `unochat export` writes, the sketch includes
PLATFORMIO_INI = REPO / "platformio.ini"
TOOLS = REPO / "tools"
BUILD = REPO / "build"  # the firmware `make` builds, and the benchmark's outputs
DEFAULT_ELF = BUILD / "firmware.elf"
DEFAULT_HEX = BUILD / "firmware.hex"
PIO_CORE = REPO / ".pio-core"  # PlatformIO's project-local core dir (tools/setup.sh registers tool-scons there)
