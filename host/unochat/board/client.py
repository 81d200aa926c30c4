"""Talk to the unochat firmware over serial: a real UNO (/dev/ttyACM0) or the virtual one (board/sim.py).

    with connect(port="/dev/ttyACM0") as uno:      # or connect(sim="build/firmware.elf")
        print(uno.info()["model"], uno.reply("hello"))

Protocol: firmware/src/main.cpp (doc comment at its top). What this client adds:

- Handshake: opening the port resets the board (DTR on a UNO, the bridge on the virtual one). The
  start-up line it prints is not relied on (pyserial flushes input on open, and a pty has no DTR):
  the client sends `!s<random token>` until the same token comes back, and drops everything before.
- Framing: every request is followed by its own `!s<token>` line, and the answer is the last line
  before that token's echo. Leftovers of an abandoned reply therefore never pass for an answer, and a
  request costs no extra round trip.
- Resynchronisation: a reset banner among the answer lines (the board reset mid-request), or an answer
  that does not parse, makes the client sync again and resend the request once; a timeout marks the
  stream as unsynced, so the next request syncs first.
- Queries are sent as `normalize_query(q)`: exactly the bytes the device's line editor would keep, so
  the host's reference sees the same query as the device.
- One request at a time: while it generates, the board keeps only 63 received bytes (a UNO has no flow
  control), so nothing is sent ahead. `send`, `receive` and `exchange` give raw access (tests, terminals).
"""
from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import serial
import serial.tools.list_ports

from ..boards import UNO, Board
from ..data.dataset import COMMAND_PREFIX, is_printable, normalize_query
from .sim import VirtualUno

BAUD = 115200
BANNER = b"unochat ready"  # the firmware's first line after a reset (firmware/src/main.cpp START_LINE)
SYNC_TIMEOUT = 8.0  # a real UNO needs ~1.5 s after reset (bootloader); leave room for a slow USB stack
REPLY_TIMEOUT = 20.0  # 50 characters of a 256-wide model take ~10 s on a real UNO
RESEND_START = 0.25  # first wait before resending the sync token; doubles up to RESEND_MAX
RESEND_MAX = 2.0
SHOWN_BYTES = 200  # how much of a bad answer goes into an error message

T = TypeVar("T")


class DeviceError(RuntimeError):
    """Something went wrong talking to the board; the message says what to check."""


class PortNotFoundError(DeviceError):
    """The serial port does not exist."""


class DeviceSilentError(DeviceError):
    """The board did not answer within the deadline."""


class GarbledReplyError(DeviceError):
    """The board answered something that is not a valid answer (kept in `received`)."""

    def __init__(self, message: str, received: bytes) -> None:
        super().__init__(message)
        self.received = received


class CommandError(DeviceError):
    """The firmware refused a command with `!e <reason>`."""


def available_ports() -> list[str]:
    return sorted(p.device for p in serial.tools.list_ports.comports())


def port_not_found(port: str) -> PortNotFoundError:
    ports = available_ports()
    listed = ", ".join(ports) if ports else "none found"
    return PortNotFoundError(
        f"serial port {port} does not exist (available ports: {listed}). "
        "Plug in the UNO, or run a virtual one with `unochat sim` (or `make sim`) and use the port it prints."
    )


def _shown(data: bytes) -> str:
    cut = f" (last {SHOWN_BYTES} of {len(data)} bytes)" if len(data) > SHOWN_BYTES else ""
    return repr(data[-SHOWN_BYTES:]) + cut


@dataclass(frozen=True)
class TimedReply:
    """A `!t` answer: Timer1 cycles of each step (the last one finds EOS or the length limit), of the
    query (features and per-reply work), in all, and summed over the steps: per layer, for the context
    features, for the argmax and, in a firmware exported to profile it, for requantization (parts of
    the steps; the layers' counts then leave it out)."""

    reply: str
    steps: list[int]
    query_cycles: int
    total_cycles: int
    layer_cycles: list[int]
    ctx_cycles: int = 0
    argmax_cycles: int = 0
    requant_cycles: int = 0

    @property
    def n(self) -> int:
        return len(self.reply)


_TIMED = re.compile(
    rb"!t step=(?P<steps>\d+(?:,\d+)*) query=(?P<query>\d+) total=(?P<total>\d+) "
    rb"layers=(?P<layers>\d+(?:,\d+)*) ctx=(?P<ctx>\d+) argmax=(?P<argmax>\d+) rq=(?P<rq>\d+) "
    rb"n=(?P<n>\d+) reply=(?P<reply>[ -~]*)"
)


def parse_timed(line: bytes) -> TimedReply:
    """Parse and check a `!t` line (step count, sum and length must agree), else GarbledReplyError."""
    m = _TIMED.fullmatch(line)
    if m is None:
        raise GarbledReplyError(f"not a valid !t answer: {_shown(line)}", line)
    timed = TimedReply(
        reply=m["reply"].decode("ascii"),
        steps=[int(v) for v in m["steps"].split(b",")],
        query_cycles=int(m["query"]),
        total_cycles=int(m["total"]),
        layer_cycles=[int(v) for v in m["layers"].split(b",")],
        ctx_cycles=int(m["ctx"]),
        argmax_cycles=int(m["argmax"]),
        requant_cycles=int(m["rq"]),
    )
    # the firmware's total is a 32-bit sum of the same numbers
    consistent = (
        int(m["n"]) == timed.n
        and len(timed.steps) == timed.n + 1
        and (timed.query_cycles + sum(timed.steps)) % 2**32 == timed.total_cycles
    )
    if not consistent:
        raise GarbledReplyError(f"inconsistent !t answer: {_shown(line)}", line)
    return timed


def parse_fields(text: str) -> dict[str, str]:
    """`key=value key=value ...`; a value may contain spaces (a model name), keys may not."""
    fields = {}
    for item in re.split(r" (?=[A-Za-z_]\w*=)", text.strip()):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not key=value")
        fields[key] = value
    return fields


class UnoClient:
    """The unochat firmware behind one serial port. Every method takes a `timeout` in seconds."""

    def __init__(self, port: str, timeout: float = REPLY_TIMEOUT, sync_timeout: float = SYNC_TIMEOUT) -> None:
        self.port = port
        self.timeout = timeout
        self.sync_timeout = sync_timeout
        self.round_trips = 0  # requests answered, for reports
        self._serial: serial.Serial | None = None
        self._buffer = bytearray()
        self._synced = False
        self._sync_tokens: list[bytes] = []  # echoes of resent sync tokens may still arrive: skipped
        self._info: dict[str, str] | None = None
        self.open()

    # --- connection ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open the port (which resets the board) and handshake."""
        if not os.path.exists(self.port):
            raise port_not_found(self.port)
        try:
            # timeout per read(); the deadlines of requests are kept by this class
            self._serial = serial.Serial(self.port, BAUD, timeout=0.05, write_timeout=self.timeout)
        except serial.SerialException as exc:
            raise DeviceError(
                f"cannot open {self.port}: {exc}. Is another program (a serial monitor, `unochat chat`) "
                "using it? On Linux your user needs to be in the `dialout` group."
            ) from exc
        self._buffer.clear()
        self._synced = False
        self._info = None  # the board may have been flashed with another model meanwhile
        try:
            self.sync()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def reopen(self) -> None:
        """Close and open the port again: resets the board, like pressing its reset button."""
        self.close()
        self.open()

    def __enter__(self) -> UnoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _port_or_raise(self) -> serial.Serial:
        if self._serial is None:
            raise DeviceError(f"{self.port} is closed")
        return self._serial

    # --- bytes and lines ----------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self._port_or_raise().write(data)
        except serial.SerialTimeoutException as exc:
            self._synced = False
            raise DeviceSilentError(
                f"{self.port} accepted no data for {self.timeout:.0f} s while sending {data[:40]!r}"
            ) from exc
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"writing to {self.port} failed: {exc} (was the board unplugged?)") from exc

    def _fill(self) -> None:
        """Wait up to one short port timeout for data, then take everything that is there at once."""
        ser = self._port_or_raise()
        try:
            chunk = ser.read(1)
            if chunk and ser.in_waiting:
                chunk += ser.read(ser.in_waiting)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"reading from {self.port} failed: {exc} (was the board unplugged?)") from exc
        self._buffer += chunk

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line without its CR LF, or None at the deadline."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end]).rstrip(b"\r")
                del self._buffer[: end + 1]
                return line
            if time.monotonic() >= deadline:
                return None
            self._fill()

    # --- synchronisation ----------------------------------------------------------------------
    def sync(self, timeout: float | None = None) -> None:
        """Send `!s<token>` until it comes back; everything that arrives before it is dropped."""
        limit = self.sync_timeout if timeout is None else timeout
        token = secrets.token_hex(4).encode()
        # resent copies may be echoed after the first one: later requests skip those echoes
        self._sync_tokens = (self._sync_tokens + [b"!s" + token])[-4:]
        # the leading line end ends whatever partial line the board holds, which would swallow the token
        request = b"\n!s" + token + b"\n"
        deadline = time.monotonic() + limit
        dropped = bytearray()
        sent, wait = 0, RESEND_START
        while time.monotonic() < deadline:
            # resend with back-off: the first copies may be lost in a reset or in the bootloader,
            # and a busy board must not have its small receive buffer flooded
            self._write(request)
            sent += 1
            resend_at = min(deadline, time.monotonic() + wait)
            wait = min(2 * wait, RESEND_MAX)
            while (line := self._read_line(resend_at)) is not None:
                if line == b"!s" + token:
                    self._synced = True
                    return
                dropped += line + b"\n"
        self._synced = False
        pending = bytes(dropped + self._buffer)
        raise DeviceSilentError(
            f"no answer from {self.port} within {limit:.1f} s: sent {request!r} {sent} times and got back "
            f"{_shown(pending) if pending else 'nothing'}. Check that the unochat firmware is flashed "
            f"(`unochat flash --port {self.port}`), that the baud rate is {BAUD}, and that nothing else "
            "holds the port."
        )

    def _request(self, payload: bytes, timeout: float | None, what: str, detect_reset: bool = True) -> list[bytes]:
        """Send one request line framed by a fresh sync token; return the lines before the token's echo.

        With detect_reset, a reset banner among them means the board restarted while it had the request
        (which it may have seen only in part): sync and send it once more."""
        limit = self.timeout if timeout is None else timeout
        for _ in range(2):
            if not self._synced:
                self.sync()
            end = b"!s" + secrets.token_hex(4).encode()
            self._write(payload + b"\n" + end + b"\n")
            deadline = time.monotonic() + limit
            lines: list[bytes] = []
            while (line := self._read_line(deadline)) != end:
                if line is None:
                    self._synced = False
                    got = b"\n".join(lines) + bytes(self._buffer)
                    raise DeviceSilentError(
                        f"{self.port} did not finish answering {what} within {limit:.1f} s (sent "
                        f"{payload[:60]!r}; got {_shown(got) if got else 'nothing'}). A bigger model "
                        "needs a longer timeout; otherwise check the board."
                    )
                if line not in self._sync_tokens:
                    lines.append(line)
            if not detect_reset or payload.startswith(b"!i") or not any(line.startswith(BANNER) for line in lines):
                self.round_trips += 1
                return lines
            self._synced = False
        raise GarbledReplyError(f"{self.port} reset twice while answering {what}", b"\n".join(lines))

    def _answer(self, payload: bytes, parse: Callable[[bytes], T], timeout: float | None, what: str) -> T:
        """The parsed last line of a request's answer. An answer that does not parse is not trusted:
        sync and ask once more, then raise GarbledReplyError with what arrived."""
        for _ in range(2):
            lines = self._request(payload, timeout, what)
            if payload.startswith(b"!") and lines and lines[-1].startswith(b"!e "):
                raise CommandError(f"{self.port} refused {what}: {lines[-1][3:].decode('ascii', 'replace')}")
            try:
                if lines:
                    return parse(lines[-1])
            except (GarbledReplyError, ValueError, UnicodeDecodeError):
                pass
            self._synced = False
        got = b"\n".join(lines)
        shown = _shown(got) if got else "nothing"
        raise GarbledReplyError(f"{self.port} sent a garbled answer to {what}: {shown}", got)

    # --- raw access: terminals, robustness tests -------------------------------------------------
    def exchange(self, data: bytes, timeout: float | None = None) -> list[bytes]:
        """Send `data` exactly as given, then a sync token; the lines the device printed in between.

        While the board generates it keeps only 63 received bytes: `data` with a chat line followed by
        more than ~50 bytes loses the rest, maybe the token too (then DeviceSilentError)."""
        return self._request(data, timeout, f"{data[:40]!r}", detect_reset=False)

    def send(self, data: bytes) -> None:
        """Write `data` without waiting for anything; the next request syncs first."""
        self._synced = False
        self._write(data)

    def receive(self, timeout: float) -> bytes:
        """Whatever arrives within `timeout` seconds; the next request syncs first."""
        self._synced = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._fill()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # --- commands -----------------------------------------------------------------------------
    def info(self, timeout: float | None = None) -> dict[str, str]:
        """The `!i` fields: unochat, model, id, shape, formats, inputs, outputs, max_query, max_reply, f_cpu."""
        self._info = self._answer(b"!i", _parse_info, timeout, "!i")
        return dict(self._info)

    def reply(self, query: str, timeout: float | None = None) -> str:
        """The device's reply to `normalize_query(query)`, sent as a plain chat line."""
        if self._info is None:
            self.info()
        assert self._info is not None
        max_reply = int(self._info["max_reply"])

        def parse(line: bytes) -> str:
            text = line.decode("ascii")
            if len(text) > max_reply or not is_printable(text):
                raise ValueError("not a reply")
            return text

        return self._answer(_query_bytes(query), parse, timeout, f"query {query!r}")

    def timed_reply(self, query: str, timeout: float | None = None) -> TimedReply:
        """`!t`: the reply to `normalize_query(query)` with its Timer1 cycle counts."""
        return self._answer(b"!t " + _query_bytes(query), parse_timed, timeout, f"!t {query!r}")

    def logits(self, x: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """`!x`: the logits (int64) of one raw input vector (uint8)."""
        values = np.asarray(x)
        if values.ndim != 1 or values.dtype != np.uint8:
            raise ValueError(f"logits() takes one uint8 vector, got {values.dtype} of shape {values.shape}")
        return self._answer(b"!x " + values.tobytes().hex().encode(), _parse_logits, timeout, "!x")

    def uart_cycles(self, text: str, timeout: float | None = None) -> int:
        """`!u`: Timer1 cycles the firmware spends writing `text` (printable ASCII) to the UART a character
        at a time, each into an empty transmit buffer, as a chat's reply goes out."""
        if not text or not is_printable(text) or text != " ".join(text.split()):
            raise ValueError(f"uart_cycles() takes printable ASCII without edge spaces or runs of them, got {text!r}")

        def parse(line: bytes) -> int:
            echoed, sep, fields = _after_prefix(line, b"!u ").rpartition(" cycles=")
            cycles, n = fields.split(" n=")
            if not sep or echoed != text or int(n) != len(text):
                raise ValueError("not the echo of the text")
            return int(cycles)

        return self._answer(b"!u " + text.encode("ascii"), parse, timeout, "!u")

    def profile(self, timeout: float | None = None) -> list[int]:
        """`!p`: the Timer1 cycles of each layer of the last `!x` evaluation."""
        return self._answer(b"!p", _parse_profile, timeout, "!p")

    def memory(self, timeout: float | None = None) -> dict[str, int]:
        """`!m`: free SRAM now (`free`) and the least since reset (`least_free`: the stack's high-water mark)."""
        return self._answer(b"!m", _parse_memory, timeout, "!m")


def _query_bytes(query: str) -> bytes:
    text = normalize_query(query)
    if not text:
        raise ValueError(f"query {query!r} is empty once normalized; the device ignores empty lines")
    if text.startswith(COMMAND_PREFIX):
        raise ValueError(f"query {query!r} starts with {COMMAND_PREFIX!r}, which marks a device command")
    return text.encode("ascii")


def _after_prefix(line: bytes, prefix: bytes) -> str:
    if not line.startswith(prefix):
        raise ValueError(f"expected {prefix!r}")
    return line[len(prefix):].decode("ascii")


def _parse_info(line: bytes) -> dict[str, str]:
    fields = parse_fields(_after_prefix(line, b"!i "))
    if "max_reply" not in fields or "id" not in fields:
        raise ValueError("incomplete !i answer")
    return fields


def _parse_logits(line: bytes) -> np.ndarray:
    return np.array([int(v) for v in _after_prefix(line, b"!x ").split(",")], dtype=np.int64)


def _parse_profile(line: bytes) -> list[int]:
    fields = parse_fields(_after_prefix(line, b"!p "))
    return [int(v) for v in fields["layers"].split(",")]


def _parse_memory(line: bytes) -> dict[str, int]:
    return {key: int(value) for key, value in parse_fields(_after_prefix(line, b"!m ")).items()}


@contextmanager
def connect(
    port: str | None = None, sim: str | os.PathLike[str] | None = None, timeout: float = REPLY_TIMEOUT,
    board: Board = UNO,
) -> Iterator[UnoClient]:
    """A client for a real board (`port=`) or for a virtual `board` running `sim=` (an ELF), closed on exit."""
    if (port is None) == (sim is None):
        raise ValueError("connect() needs either port= or sim=")
    if port is not None:
        with UnoClient(port, timeout=timeout) as client:
            yield client
        return
    with VirtualUno(sim, board=board) as uno, UnoClient(uno.port, timeout=timeout) as client:
        yield client
