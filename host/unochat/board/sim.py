"""The virtual UNO: firmware ELF running in simavr, its UART on a pseudo-terminal.

The heavy lifting is done by the C bridge tools/bin/unosim (source in tools/unosim). This module
builds it when needed, starts it, and hands out the pty path, which pyserial opens like
/dev/ttyACM0. Opening the port resets the simulated MCU, as the DTR line resets a real UNO. Any board of
boards.py can be simulated (the Mega 2560 as simavr's ATmega2560), and with its bootloader (optiboot, for
the UNO and the Nano) flashed through the port by avrdude as a real one is.

    with VirtualUno("build/firmware.elf") as uno:
        with serial.Serial(uno.port, 115200, timeout=2) as ser:
            print(ser.readline())
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..boards import BOARDS, UNO, Board
from ..paths import TOOLS

BRIDGE_SRC_DIR = TOOLS / "unosim"
BRIDGE = TOOLS / "bin" / "unosim"

__all__ = ["SimError", "VirtualUno", "build_bridge", "main_sim"]


class SimError(RuntimeError):
    """The bridge could not be built, could not start, or died."""


def build_bridge(force: bool = False) -> Path:
    """Build tools/bin/unosim with make if it is missing or older than its source."""
    src = BRIDGE_SRC_DIR / "unosim.c"
    if not force and BRIDGE.exists() and (
        not src.exists() or BRIDGE.stat().st_mtime >= src.stat().st_mtime
    ):
        return BRIDGE
    try:
        res = subprocess.run(
            ["make", "-C", str(BRIDGE_SRC_DIR)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise SimError("`make` not found; install build-essential") from exc
    if res.returncode != 0 or not BRIDGE.exists():
        raise SimError(
            "building the simulator bridge failed (needs gcc, make, pkg-config and "
            "libsimavr-dev: apt-get install gcc make pkg-config libsimavr-dev):\n"
            + res.stdout
            + res.stderr
        )
    return BRIDGE


def build_bootloader(board: Board) -> Path:
    """The bootloader image the virtual `board` can start in (tools/unosim/Makefile builds it from Debian's
    source: see there why not Debian's .hex)."""
    if board.bootloader is None:
        raise SimError(f"the virtual {board.title} has no bootloader; unochat builds one for "
                       + ", ".join(b.name for b in BOARDS.values() if b.bootloader))
    image = TOOLS / "bin" / board.bootloader
    res = subprocess.run(["make", "-C", str(BRIDGE_SRC_DIR), f"../bin/{board.bootloader}"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0 or not image.is_file():
        raise SimError("building the virtual board's bootloader failed (needs avr-gcc and arduino-core-avr: "
                       "apt-get install gcc-avr avr-libc arduino-core-avr):\n" + res.stdout + res.stderr)
    return image


class VirtualUno:
    """Runs one firmware ELF in the simulator bridge; use as a context manager.

    `board` gives the simulated MCU (UNO, Nano: ATmega328P; Mega 2560: ATmega2560). `link` additionally
    creates a stable symlink to the pty; `realtime` paces the simulation to the wall clock (default: as
    fast as the host allows, 3-5x a real UNO). With `bootloader` every reset starts the board's bootloader,
    as on a real board, so that avrdude (`unochat flash`) can write a new firmware through the port; `elf`
    may then be None: flash starts erased.
    """

    def __init__(
        self,
        elf: str | os.PathLike[str] | None,
        link: str | os.PathLike[str] | None = None,
        realtime: bool = False,
        start_timeout: float = 10.0,
        inherit_stderr: bool = False,
        board: Board = UNO,
        bootloader: bool = False,
    ) -> None:
        self.elf = Path(elf) if elf is not None else None
        self.board = board
        self.bootloader = bootloader
        self.link = str(link) if link is not None else None
        self.realtime = realtime
        self.start_timeout = start_timeout
        # inherit_stderr shows the bridge's messages live (foreground use); otherwise they are
        # kept in a temp file (never a pipe: an unread pipe could fill and stall the simulation)
        self.inherit_stderr = inherit_stderr
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._port: str | None = None

    @property
    def port(self) -> str:
        """Path of the pty slave (e.g. /dev/pts/3) to open with pyserial."""
        if self._port is None:
            raise SimError("virtual UNO not started")
        return self._port

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise SimError("virtual UNO not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> VirtualUno:
        if self._proc is not None:
            raise SimError("virtual UNO already started")
        if self.elf is None and not self.bootloader:
            raise ValueError("a virtual board needs a firmware ELF, a bootloader, or both")
        if self.elf is not None and not self.elf.is_file():
            raise FileNotFoundError(
                f"firmware ELF {self.elf} not found; run `make firmware` first"
            )
        bridge = build_bridge()
        cmd = [str(bridge), "--mcu", self.board.mcu, "--freq", str(self.board.f_cpu)]
        if self.bootloader:
            cmd += ["--bootloader", str(build_bootloader(self.board))]
        if self.link:
            cmd += ["--link", self.link]
        if self.realtime:
            cmd.append("--realtime")
        if self.elf is not None:
            cmd.append(str(self.elf))
        if not self.inherit_stderr:
            self._stderr = tempfile.TemporaryFile()
        # own session: a terminal's Ctrl-C reaches only us, and we stop the bridge with SIGTERM.
        # stdin is a pipe we never write to: the bridge exits when it closes, so even if this
        # process is killed outright no orphaned simulator is left behind
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        try:
            self._port = self._read_port_line()
        except BaseException:
            self._kill()
            raise
        return self

    def _read_port_line(self) -> str:
        # the bridge prints exactly one line, the pty path; it sends everything later to stderr,
        # so closing our end of the pipe afterwards is safe
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        fd = out.fileno()
        buf = b""
        deadline = time.monotonic() + self.start_timeout
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SimError(
                        f"simulator bridge printed no port within {self.start_timeout:.0f} s"
                        + self._stderr_note()
                    )
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    rc = self._proc.wait(timeout=5)
                    raise SimError(
                        f"simulator bridge failed to start (exit code {rc}) on {self.elf}"
                        + self._stderr_note()
                    )
                buf += chunk
        finally:
            out.close()
        port = buf.split(b"\n", 1)[0].decode().strip()
        if not port.startswith("/dev/"):
            raise SimError(f"unexpected output from simulator bridge: {port!r}")
        return port

    def stderr_text(self) -> str:
        """Everything the bridge wrote to stderr so far (empty if inherited)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _stderr_note(self) -> str:
        text = self.stderr_text().strip()
        return f":\n{text}" if text else ""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the bridge to exit by itself (it only does on a firmware crash)."""
        if self._proc is None:
            raise SimError("virtual UNO not started")
        return self._proc.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM the bridge and wait; returns its exit code (0 = clean)."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise SimError(
                    f"simulator bridge ignored SIGTERM for {timeout} s; killed"
                    + self._stderr_note()
                ) from None
        return self._proc.returncode

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdin is not None:
                self._proc.stdin.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._proc is not None and self._proc.stdin is not None:
                self._proc.stdin.close()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    def __enter__(self) -> VirtualUno:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main_sim(elf: Path | None, link: str | None = None, realtime: bool = False, board: Board = UNO,
             bootloader: bool = False) -> int:
    """`unochat sim`: run the firmware on a virtual board in the foreground until Ctrl-C."""
    uno = VirtualUno(elf, link=link, realtime=realtime, inherit_stderr=True, board=board, bootloader=bootloader)
    try:
        uno.start()
    except (OSError, SimError) as exc:
        print(f"unochat sim: {exc}", file=sys.stderr)
        return 1
    print(uno.port, flush=True)
    if link:
        print(f"{link} -> {uno.port}", flush=True)
    print(
        f"virtual {board.title} running"
        + (" in real time" if realtime else "")
        + "; opening the port resets it"
        + (f" into its bootloader (flash it: `unochat flash --board {board.name} --port {link or uno.port}`)"
           if bootloader else "")
        + ". Ctrl-C to stop.",
        file=sys.stderr,
        flush=True,
    )
    # `kill` or a closed terminal should stop the simulator as cleanly as Ctrl-C does
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, signal.default_int_handler)
    try:
        rc = uno.wait()  # returns only if the bridge stopped by itself (e.g. firmware crash)
        if rc:
            print(f"unochat sim: simulator exited with code {rc}", file=sys.stderr)
        return rc
    except KeyboardInterrupt:
        return uno.stop()
    finally:
        uno.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
