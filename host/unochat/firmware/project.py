"""A throw-away copy of the PlatformIO project (the real sketch), to build any model without touching the
repo's firmware/generated/ or build/: the benchmark, the kernel benchmark and the tests build in one."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..paths import FIRMWARE_SRC, PIO_CORE, PLATFORMIO_INI, TOOLS


def make_project(root: Path) -> Path:
    """root/project: the sketch's sources and platformio.ini copied, tools/ linked (the offline platform)."""
    project = Path(root) / "project"
    shutil.copytree(FIRMWARE_SRC, project / "firmware" / "src")
    (project / "tools").symlink_to(TOOLS, target_is_directory=True)
    shutil.copy(PLATFORMIO_INI, project / "platformio.ini")
    return project


def project_environ(root: Path) -> dict[str, str]:
    """What PlatformIO needs to build in a project under `root`: the repo's core dir (tool-scons is
    registered there), but the project's symlinked platform registered in a platforms dir of its own, so
    the repo's registration never points into a deleted directory."""
    return {"PLATFORMIO_CORE_DIR": os.environ.get("PLATFORMIO_CORE_DIR", str(PIO_CORE)),
            "PLATFORMIO_PLATFORMS_DIR": str(Path(root) / "platforms")}


@contextmanager
def firmware_project() -> Iterator[Path]:
    """A throw-away project (make_project) with PlatformIO's environment set for it (project_environ)."""
    with tempfile.TemporaryDirectory(prefix="unochat-build-") as tmp:
        project = make_project(Path(tmp))
        saved = {k: os.environ.get(k) for k in ("PLATFORMIO_CORE_DIR", "PLATFORMIO_PLATFORMS_DIR")}
        os.environ.update(project_environ(Path(tmp)))
        try:
            yield project
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
