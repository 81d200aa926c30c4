#!/usr/bin/env bash
# One-time, idempotent set-up of a unochat checkout (`make setup` runs it).
#   1. Debian packages: AVR toolchain, Arduino core and builder, avrdude, simavr (apt-get as root, else sudo)
#   2. .venv with torch==2.13.0 first, then this project (editable) with its pinned deps
#   3. tools/tool-scons registered in the project-local PlatformIO core dir (.pio-core), so that
#      `pio run -e uno_offline` never needs PlatformIO's registry
# Each step checks before it installs, so a second run takes about a second.
#
# Environment: PYTHON (default python3) creates the venv; UNOCHAT_TORCH_INDEX, if set, is passed
# to pip as --index-url for torch (e.g. https://download.pytorch.org/whl/cpu where plain PyPI
# would serve the multi-GB CUDA build).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
TORCH_PIN="torch==2.13.0"

# Every pio call: project-local core dir (nothing in ~/.platformio), no upgrade check (~60 s
# offline) and no telemetry.
export PLATFORMIO_CORE_DIR="${PLATFORMIO_CORE_DIR:-$REPO/.pio-core}"
export PLATFORMIO_DISABLE_UPGRADE_CHECK=true
export PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL=36500
export PLATFORMIO_SETTING_ENABLE_TELEMETRY=no

# libsimavr-dev drags in libsimavrparts1 (and libgl1); --no-install-recommends keeps the rest out.
DEB_PACKAGES=(gcc-avr avr-libc binutils-avr arduino-core-avr arduino-builder avrdude simavr libsimavr-dev
              pkg-config libelf-dev make gcc python3-venv)

say() { printf 'setup: %s\n' "$*"; }

install_debian_packages() {
    if ! command -v dpkg-query >/dev/null; then
        if command -v avr-gcc >/dev/null && command -v avr-size >/dev/null && command -v avrdude >/dev/null; then
            say "not Debian; found avr-gcc, avr-size and avrdude, assuming the rest is installed"
            return 0
        fi
        say "not a Debian-like system; install these (or their equivalents), then run again:"
        say "  ${DEB_PACKAGES[*]}"
        exit 1
    fi
    local missing=() pkg
    for pkg in "${DEB_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == *"ok installed" ]] || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && { say "Debian packages: present"; return 0; }

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            sudo=(sudo)
        else
            say "missing Debian packages: ${missing[*]}"
            say "install them as root, then run this script again:"
            say "  apt-get update && apt-get install --no-install-recommends ${missing[*]}"
            exit 1
        fi
    fi
    say "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}

python_ok() {  # python_ok CODE [ARGS...]: CODE exits non-zero when something is missing
    "$PY" -c "$1" "${@:2}" >/dev/null 2>&1
}

setup_venv() {
    if [ ! -x "$PY" ]; then
        say "creating $VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
    fi

    # torch first and pinned: left to the resolver, an unpinned torch is a multi-GB CUDA build.
    if python_ok "import importlib.metadata as m, sys; sys.exit(not m.version('torch').startswith('2.13.0'))"; then
        say "torch 2.13.0: present"
    else
        local index=()
        [ -n "${UNOCHAT_TORCH_INDEX:-}" ] && index=(--index-url "$UNOCHAT_TORCH_INDEX")
        say "installing $TORCH_PIN"
        "$PY" -m pip install "${index[@]}" "$TORCH_PIN"
    fi

    # The editable install must be of *this* checkout, and its pins (platformio, scons) matter
    # because tools/pio-platform and tools/tool-scons lean on their internals.
    if python_ok "
import importlib.metadata as m, sys, unochat, pytest, yaml, optuna
from pathlib import Path
ok = Path(unochat.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve())
ok = ok and m.version('platformio') == '6.2.0' and m.version('scons') == '4.11.1'
sys.exit(not ok)" "$REPO/host"; then
        say "unochat (editable) + platformio 6.2.0 + scons 4.11.1: present"
    else
        say "installing unochat (editable) and its dependencies"
        "$PY" -m pip install -e "$REPO[test]"
    fi
}

register_tool_scons() {
    if python_ok "
import sys
from pathlib import Path
from unochat.firmware.pio import tool_scons_dir
sys.exit(tool_scons_dir(Path(sys.argv[1])) != Path(sys.argv[2]).resolve())" \
        "$PLATFORMIO_CORE_DIR" "$REPO/tools/tool-scons"; then
        say "tool-scons in $PLATFORMIO_CORE_DIR: present"
        return 0
    fi
    say "registering tools/tool-scons in $PLATFORMIO_CORE_DIR"
    (cd "$REPO" && "$VENV/bin/pio" pkg install --global --tool "symlink://$REPO/tools/tool-scons")
}

install_debian_packages
setup_venv
register_tool_scons
say "done. Build the firmware with: make (or .venv/bin/unochat build MODEL)"
