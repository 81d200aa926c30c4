"""PlatformIO, offline: the project-local core dir, the tool-scons registration and `pio run`.

`pio run -e uno_offline` (one `<board>_offline` environment per board of boards.py) builds with tools/pio-platform (Debian's avr-gcc 5.4 and Arduino core, no
registry needed); tools/setup.sh registers tools/tool-scons in the core dir, which PlatformIO needs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from .size import BuildError

OFFLINE_SUFFIX = "_offline"  # the environments of tools/pio-platform (boards.Board.pio_env)
# PlatformIO otherwise checks PyPI for upgrades after a build (~60 s offline) and sends telemetry.
PIO_QUIET_ENV = {
    "PLATFORMIO_DISABLE_UPGRADE_CHECK": "true",
    "PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL": "36500",
    "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "no",
}


def pio_core_dir(project_dir: Path) -> Path:
    """PlatformIO's core dir: $PLATFORMIO_CORE_DIR if set (tests share the repo's), else <project>/.pio-core."""
    configured = os.environ.get("PLATFORMIO_CORE_DIR")
    return Path(configured).resolve() if configured else Path(project_dir).resolve() / ".pio-core"


def pio_environ(core_dir: Path) -> dict[str, str]:
    """The environment every pio call should get (tools/setup.sh sets the same)."""
    return {**os.environ, **PIO_QUIET_ENV, "PLATFORMIO_CORE_DIR": str(core_dir)}


def tool_scons_dir(core_dir: Path) -> Path | None:
    """Where PlatformIO will find tool-scons in core_dir, or None when it would try to download it.

    Reads PlatformIO 6.2's on-disk layout (a symlink install is a small JSON .pio-link file),
    which is why platformio is pinned.
    """
    packages = Path(core_dir) / "packages"
    if (packages / "tool-scons" / "scons.py").is_file():  # PlatformIO's own, on online machines
        return packages / "tool-scons"
    try:
        link = json.loads((packages / "tool-scons.pio-link").read_text(encoding="utf-8"))
        target = Path(link["cwd"]) / link["spec"]["uri"].removeprefix("symlink://")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return target.resolve() if (target / "scons.py").is_file() else None


def _pio_executable() -> Path:
    # The pio of the venv we run in: its platformio is the pinned 6.2.0 that our platform expects.
    pio = Path(sys.executable).parent / "pio"
    if not pio.is_file():
        raise BuildError(f"PlatformIO not found at {pio}; run tools/setup.sh (installs platformio==6.2.0)")
    return pio


def run_pio(project_dir: Path, env: str, target: str | None = None, port: str | None = None) -> None:
    """Run `pio run` for one environment, streaming its output; raise BuildError on failure."""
    project_dir = Path(project_dir).resolve()
    core_dir = pio_core_dir(project_dir)
    if env.endswith(OFFLINE_SUFFIX) and tool_scons_dir(core_dir) is None:
        # Without it PlatformIO tries its registry and only fails after ~60 s of retries.
        raise BuildError(
            f"PlatformIO's tool-scons is not installed in {core_dir}; run tools/setup.sh"
        )
    cmd = [str(_pio_executable()), "run", "--project-dir", str(project_dir), "--environment", env]
    if target:
        cmd += ["--target", target]
    if port:
        cmd += ["--upload-port", port]

    # Through our own stdout rather than an inherited fd, so callers that redirect sys.stdout
    # (pytest, notebooks) see it; the tail goes into the error for logs that keep only exceptions.
    tail: deque[str] = deque(maxlen=25)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        env=pio_environ(core_dir),
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)
    if proc.returncode != 0:
        what = f"pio run -e {env}" + (f" -t {target}" if target else "")
        raise BuildError(
            f"`{what}` failed (exit code {proc.returncode}) in {project_dir}; "
            f"last lines:\n{''.join(tail)}"
        )


