"""PlatformIO's entry point for SCons (`python scons.py ...`).

PlatformIO runs this file with the venv's Python, so the SCons engine comes from
PyPI scons==4.11.1 installed in that venv (pinned in pyproject.toml). The package
version 4.41101.0 in package.json and .piopm is PlatformIO's encoding of 4.11.1;
.piopm names owner "platformio" because PlatformIO only accepts a tool-scons from
that owner. Keep both pins in step when upgrading.
"""

import SCons.Script.Main

if __name__ == "__main__":
    SCons.Script.Main.main()
