"""The device: unochat.device against the firmware on the virtual UNO, and against a scripted fake board.

On the virtual UNO (marks sim + pio): logits and replies of models of every weight format are compared
bit for bit with unochat.reference; SRAM and stack high-water mark; the UART under over-long lines,
binary bytes, line endings, bursts, a reset mid-reply and a fuzz; the chat demo. On a fake board behind
a pty (no simulator): the client's handshake, framing, resynchronisation and error messages.

Figures are printed (run with -s to see them).
"""
from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from unochat import cli
from unochat.board.client import (
    CommandError,
    DeviceError,
    DeviceSilentError,
    GarbledReplyError,
    PortNotFoundError,
    UnoClient,
    connect,
    parse_timed,
)
from unochat.board.flash import avrdude_command, flash
from unochat.boards import UNO
from unochat.data.dataset import MAX_QUERY, load_dataset, normalize_query
from unochat.data.features import FeatureSpec
from unochat.firmware.size import SizeReport
from unochat.model import reference
from unochat.model.intmodel import IntModel
from unochat.paths import DEFAULT_DATA

from conftest import TINYCHAT_DATA, chatty_model, need_shared, random_inputs, random_model

DEFAULT_PAIRS = load_dataset(DEFAULT_DATA).pairs
LONG_QUERIES = [
    "Tell me everything you know about the history of the Arduino UNO board and its chip",  # cut at 60
    "x" * MAX_QUERY,
    "  Padded   query, with CAPITALS and punctuation?!  ",
]

needs_firmware = [
    pytest.mark.sim,
    pytest.mark.pio,
    pytest.mark.skipif(shutil.which("avr-gcc") is None, reason="avr-gcc not installed"),
]


# ---- models ----------------------------------------------------------------------------------------
def largest_model() -> IntModel:
    """The most static SRAM a model can take: i16 activations in two 256-wide buffers. Its replies never
    end early: always max_reply characters."""
    return random_model(11, ["1bit", "1bit", "2bit"], [256, 128], act="i16")


# ---- building and running firmware -----------------------------------------------------------------
@dataclass
class Board:
    name: str
    model: IntModel
    client: UnoClient
    elf: Path
    sizes: SizeReport


@contextlib.contextmanager
def running(build: Callable[[IntModel], tuple[Path, SizeReport]], name: str, model: IntModel) -> Iterator[Board]:
    elf, sizes = build(model)
    with connect(sim=elf) as client:
        yield Board(name, model, client, elf, sizes)
        print(f"\n{name}: {client.round_trips} round trips")


FORMAT_CASES = {  # formats per layer, hidden sizes, activations, features: small enough to simulate fast
    "1bit": (["1bit"] * 3, [32, 16], "u8", FeatureSpec()),
    "2bit": (["2bit"] * 3, [64, 32], "u8", FeatureSpec(64, 64)),
    "int8": (["int8"] * 3, [32, 16], "u8", FeatureSpec(64, 64)),
    "mixed": (["int8", "2bit", "1bit"], [48, 24], "u8", FeatureSpec(64, 128, 6)),
    "i16": (["2bit", "1bit", "int8"], [32, 16], "i16", FeatureSpec(64, 64)),
}


@pytest.fixture(scope="module", params=list(FORMAT_CASES))
def board(request: pytest.FixtureRequest, build: Callable) -> Iterator[Board]:
    formats, hidden, act, features = FORMAT_CASES[request.param]
    model = chatty_model(7, formats, hidden, DEFAULT_PAIRS, act=act, features=features)
    with running(build, request.param, model) as b:
        yield b


@pytest.fixture(scope="module")
def tiny(build: Callable) -> Iterator[Board]:
    """A model so small (~60,000 cycles a character) that many lines are cheap: for the UART tests."""
    model = chatty_model(3, ["1bit", "int8"], [16], DEFAULT_PAIRS, features=FeatureSpec(16, 16, 4))
    with running(build, "tiny", model) as b:
        yield b


def compare_replies(b: Board, queries: list[str], n_timed: int) -> tuple[int, int]:
    """Every query through reply(), the first n_timed also through timed_reply(); returns the counts.
    Mismatches fail with all of them listed."""
    expected = reference.generate(b.model, [normalize_query(q) for q in queries])
    bad = []
    for q, want in zip(queries, expected):
        if (got := b.client.reply(q)) != want:
            bad.append(("reply", q, got, want))
    for q, want in zip(queries[:n_timed], expected):
        timed = b.client.timed_reply(q)
        assert len(timed.layer_cycles) == len(b.model.layers) and min(timed.steps) > 0
        if timed.reply != want:
            bad.append(("!t", q, timed.reply, want))
    assert not bad, f"{len(bad)} replies differ from the reference: {bad}"
    return len(queries), n_timed


def compare_logits(b: Board, inputs: np.ndarray) -> int:
    expected = reference.logits(b.model, inputs)
    bad = [i for i, x in enumerate(inputs) if not np.array_equal(b.client.logits(x), expected[i])]
    assert not bad, f"{b.name}: logits differ for inputs {bad}"
    return len(inputs)


def on_device(test: Callable) -> Callable:
    for mark in needs_firmware:
        test = mark(test)
    return test


# ---- bit-exactness on the virtual UNO --------------------------------------------------------------
@on_device
def test_logits_bit_exact(board: Board) -> None:
    n = compare_logits(board, random_inputs(5, 8, board.model.shape[0]))
    print(f"\n{board.name}: {n} logits vectors bit-exact; {board.model.describe()}")


@on_device
def test_replies_bit_exact(board: Board) -> None:
    # the long queries first, so that `!t` gets them too: its argument must be cut exactly like a chat line
    queries = LONG_QUERIES + [p.query for p in DEFAULT_PAIRS[5::330]]
    n_reply, n_timed = compare_replies(board, queries, n_timed=6)
    print(f"\n{board.name}: {n_reply} replies and {n_timed} timed replies bit-exact "
          f"({board.client.round_trips} round trips so far)")


@on_device
def test_uart_writes_are_timed(board: Board) -> None:
    """`!u` echoes its text, a character at a time, with the cycles of those writes: about a hundred
    a character (each into an empty transmit buffer), the same for every character."""
    one = min(board.client.uart_cycles("A") for _ in range(3))
    many = board.client.uart_cycles("HELLO THERE!")
    assert 0 < one < 400
    # Timer1's overflow interrupt (every 65,536 cycles) may land in a write and add its own cycles
    assert 12 * one <= many <= 12 * one + 100
    with pytest.raises(ValueError, match="printable ASCII"):
        board.client.uart_cycles(" edge ")


@on_device
@pytest.mark.parametrize(
    "extreme, formats, act",
    [("max", ["int8", "2bit", "1bit"], "u8"), ("min", ["1bit", "int8", "2bit"], "u8"),
     (None, ["2bit", "int8", "1bit"], "i16")],
)
def test_extreme_models_logits_bit_exact(build: Callable, extreme: str | None, formats: list[str], act: str) -> None:
    # accumulators driven to the proven int32 bound (extreme weights, all-255 inputs), multipliers at the limit
    model = random_model(2, formats, [32, 16], act=act, extreme=extreme)
    with running(build, f"extreme {extreme}", model) as b:
        n = compare_logits(b, random_inputs(9, 6, model.shape[0]))
    print(f"\nextreme={extreme} {formats} {act}: {n} logits vectors bit-exact")


@on_device
def test_tinychat_queries_bit_exact(build: Callable) -> None:
    need_shared()
    pairs = load_dataset(TINYCHAT_DATA).pairs
    model = chatty_model(5, ["1bit"] * 3, [32, 16], pairs)  # z80ai's features and charset
    with running(build, "tinychat", model) as b:
        n_reply, n_timed = compare_replies(b, [p.query for p in pairs[7::250]], n_timed=4)
    print(f"\ntinychat: {n_reply} replies and {n_timed} timed replies bit-exact")


# ---- memory ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big(build: Callable) -> Iterator[Board]:
    with running(build, "largest", largest_model()) as b:
        yield b


@on_device
def test_stack_stays_clear_of_static_sram(big: Board) -> None:
    client, model = big.client, big.model
    start = client.memory()
    timed = client.timed_reply(LONG_QUERIES[0])
    assert timed.n == model.max_reply  # this model never ends early: the longest reply
    assert client.reply(LONG_QUERIES[0]) == timed.reply
    client.logits(np.full(model.shape[0], 255, dtype=np.uint8))
    client.info()
    end = client.memory()
    stack = UNO.sram - big.sizes.sram_bytes - end["least_free"]
    print(f"\n{model.describe()}: static SRAM {big.sizes.sram_bytes:,} B, flash {big.sizes.flash_bytes:,} B; "
          f"free {end['free']} B now, least free {start['least_free']} B after boot, {end['least_free']} B "
          f"after a {len(normalize_query(LONG_QUERIES[0]))}-char query, a {timed.n}-char reply and !x: "
          f"the stack reached {stack} B (UNO.stack_reserve {UNO.stack_reserve})")
    assert end["least_free"] <= start["least_free"] and end["free"] > end["least_free"]
    assert end["least_free"] >= 64
    assert stack + 64 <= UNO.stack_reserve  # the budget check's reserve covers what was measured, with room


@on_device
def test_reset_mid_reply_then_right_answer(big: Board) -> None:
    client, query = big.client, "tell me about the weather"
    client.send(normalize_query(query).encode() + b"\r")
    partial = b""
    deadline = time.monotonic() + 10
    while len(partial) < 3 and time.monotonic() < deadline:
        partial += client.receive(0.05)
    assert 3 <= len(partial) < big.model.max_reply and b"\n" not in partial  # stopped mid-reply
    client.reopen()  # the board resets, as when a terminal is closed and opened again
    assert client.reply(query) == reference.reply(big.model, normalize_query(query))


# ---- the UART under abuse ----------------------------------------------------------------------------
def device_queries(data: bytes) -> list[str]:
    """The chat lines the device makes of `data` (no '!' commands in it): split at CR and LF, edited."""
    return [q for part in re.split(rb"[\r\n]", data) if (q := normalize_query(part))]


EDITING_CASES = {
    "cr": b"hello there\r",
    "lf": b"hello there\n",
    "crlf": b"hello there\r\n",
    "empty lines and mixed endings": b"\r\n\r\nhi\r\rwhat is your name\n\nbye\r\n",
    "backspace and delete": b"helxo\x08\x08lo th\x7fhere\r",
    "backspace past the start": b"\x08\x08\x7fok then\r",
    "binary bytes": bytes(range(0, 10)) + b"hi \x1b[A" + bytes(range(0x80, 0x100)) + b"there\x00\r",
    "over-long line": b"tell me a story " * 20 + b"\r",
    "surrounding spaces": b"   spaced   out   \r",
}


@on_device
@pytest.mark.parametrize("case", list(EDITING_CASES))
def test_line_editing_matches_normalize_query(tiny: Board, case: str) -> None:
    data = EDITING_CASES[case]
    expected = reference.generate(tiny.model, device_queries(data))
    assert [line.decode() for line in tiny.client.exchange(data)] == expected


def receive_until_quiet(client: UnoClient, quiet: float = 0.5, limit: float = 30.0) -> bytes:
    """Everything the board prints until it has been silent for `quiet` seconds."""
    data, last, deadline = b"", time.monotonic(), time.monotonic() + limit
    while time.monotonic() - last < quiet and time.monotonic() < deadline:
        if chunk := client.receive(0.05):
            data, last = data + chunk, time.monotonic()
    return data


@on_device
def test_burst_of_one_line_is_cut_not_overflowed(tiny: Board) -> None:
    # an idle board keeps up with the line editor at full speed: the whole line arrives, 60 characters stay
    data = bytes(97 + i % 26 for i in range(5000)) + b"\r"
    assert tiny.client.exchange(data) == [reference.reply(tiny.model, normalize_query(data)).encode()]


@on_device
def test_burst_of_lines_while_busy_loses_input_not_sanity(tiny: Board) -> None:
    # While the board generates, the Arduino core buffers 63 received bytes and drops the rest (a UNO has no
    # flow control; the simulator drops the same way). What survives may merge lines, but every answer is
    # still a sane reply line, the board does not reset, and it answers normally after a sync.
    client, queries = tiny.client, [p.query for p in DEFAULT_PAIRS[::50]]
    burst = b"".join(q.encode() + b"\r\n" for q in queries)
    client.sync()
    client.send(burst)
    lines = receive_until_quiet(client, quiet=1.0).split(b"\r\n")
    assert lines[-1] == b"" and lines[0].decode() == reference.reply(tiny.model, queries[0])
    answers = lines[:-1]
    assert 1 <= len(answers) <= len(queries)
    assert all(len(a) <= tiny.model.max_reply and not a.startswith(b"!") for a in answers)
    client.sync()
    assert client.reply(queries[1]) == reference.reply(tiny.model, queries[1])
    print(f"\nburst of {len(burst):,} bytes ({len(queries)} lines) to a busy board: {len(answers)} lines answered, "
          "the rest lost in its receive buffer; answers normally afterwards")


@on_device
def test_commands_with_bad_arguments(tiny: Board) -> None:
    n_hex = 2 * tiny.model.shape[0]
    bad_hex = [b"!e x needs exactly 2 hex digits per input"]
    cases = {
        b"!s" + b"T" * 100: [b"!s" + b"T" * MAX_QUERY],  # cut like a chat line
        b"!s with spaces  ": [b"!swith spaces"],  # one separator space, then stripped
        b"!q": [b"!e unknown command"],
        b"!": [b"!e unknown command"],
        b"!\x00s": [b"!e unknown command"],
        b"!x 12zz": bad_hex,
        b"!x": bad_hex,
        b"!x " + b"0" * (n_hex - 1): bad_hex,
        b"!x " + b"0" * (n_hex + 2): bad_hex,
        b"!x " + b"f" * 5000: bad_hex,
    }
    for data, expected in cases.items():
        assert tiny.client.exchange(data) == expected, data[:20]
    with pytest.raises(CommandError, match="hex digits"):
        tiny.client.logits(np.zeros(3, dtype=np.uint8))
    long_timed = tiny.client.exchange(b"!t " + b"q" * 100)
    assert len(long_timed) == 1 and long_timed[0].endswith(
        b"reply=" + reference.reply(tiny.model, "q" * MAX_QUERY).encode())


def fuzz_chunks(rng: np.random.Generator, total: int, max_chunk: int, n_inputs: int) -> Iterator[bytes]:
    """Random bytes, printable text, commands with garbage arguments, bogus and valid `!x` hex, line ends."""
    def piece() -> bytes:
        kind = rng.integers(0, 7)
        if kind == 0:
            return rng.integers(0, 256, size=rng.integers(1, 80), dtype=np.uint8).tobytes()
        if kind == 1:
            return rng.integers(32, 127, size=rng.integers(1, 90), dtype=np.uint8).tobytes()
        if kind == 2:
            letter = bytes([rng.choice(list(b"sitxm!?q \x00\xff"))])
            return b"!" + letter + rng.integers(0, 256, size=rng.integers(0, 40), dtype=np.uint8).tobytes()
        if kind == 3:
            digits = rng.choice(list(b"0123456789abcdefABCDEF g"), size=rng.integers(0, 2 * n_inputs + 4))
            return b"!x " + bytes(digits.tolist())
        if kind == 4:
            return b"!x" + bytes(rng.choice(list(b"0123456789abcdef"), size=2 * n_inputs).tolist())
        if kind == 5:
            return bytes([rng.choice(list(b"\x08\x7f"))]) * int(rng.integers(1, 5))
        return [b"\r", b"\n", b"\r\n"][rng.integers(0, 3)]

    sent = 0
    while sent < total:
        size = min(int(rng.integers(1, max_chunk + 1)), total - sent)
        chunk = b""
        while len(chunk) < size:
            chunk += piece()
        sent += size
        yield chunk[:size]


@on_device
def test_fuzz_then_normal_answers(tiny: Board) -> None:
    client, rng, n_inputs = tiny.client, np.random.default_rng(1), tiny.model.shape[0]
    start = time.perf_counter()
    # Every byte reaches the input state machine: a chunk of at most 48 bytes plus the sync token behind it
    # fits the 63 bytes the board buffers while it generates, and the sync waits until it is idle again.
    careful = list(fuzz_chunks(rng, 5_000, 48, n_inputs))
    for chunk in careful:
        client.send(chunk)
        client.sync()
    # Floods: up to 400 bytes at once, so much of it arrives while the board is busy and is dropped there.
    floods = list(fuzz_chunks(rng, 15_000, 400, n_inputs))
    for i, chunk in enumerate(floods):
        client.send(chunk)
        client.receive(0.01)  # keep reading, as a terminal would
        if i % 25 == 24:
            client.sync()  # still alive
    client.sync()
    queries = [p.query for p in DEFAULT_PAIRS[::300]]
    assert [client.reply(q) for q in queries] == reference.generate(tiny.model, queries)
    assert client.info()["id"] == tiny.model.fingerprint()
    least_free = client.memory()["least_free"]
    total = sum(map(len, careful + floods))
    print(f"\nfuzz: {total:,} bytes: {len(careful)} chunks (5,000 B) each followed by a sync, {len(floods)} floods "
          f"(15,000 B); {time.perf_counter() - start:.1f} s; then {len(queries)} replies right; least free SRAM "
          f"{least_free} B, the stack reached {UNO.sram - tiny.sizes.sram_bytes - least_free} B")
    assert total == 20_000 and least_free >= 64


# ---- the commands: chat, sim, flash ----------------------------------------------------------------
def unochat(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unochat.cli", *args], text=True, **kwargs)


@on_device
def test_chat_demo_scripted(tiny: Board) -> None:
    queries = ["hello", "what is your name?", "", "!i", "  Good BYE  "]
    proc = unochat("chat", "--sim", str(tiny.elf), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    out, err = proc.communicate("\n".join(queries) + "\n", timeout=60)  # then end of input: Ctrl-D
    assert proc.returncode == 0, err
    assert f"id {tiny.model.fingerprint()}" in out and "lines starting with '!' are device commands" in out
    sent = [normalize_query(q) for q in queries if normalize_query(q) and not q.startswith("!")]
    replies = re.findall(r"^(?:you> )*uno> (.*)$", out, re.MULTILINE)
    assert replies == reference.generate(tiny.model, sent)
    assert len(re.findall(r"\(\d+ chars(?:, [\d.]+ ms/char)?, \d+ ms on the device\)", out)) == len(sent)


@on_device
def test_chat_demo_ctrl_c_exits_cleanly(tiny: Board) -> None:
    proc = unochat("chat", "--sim", str(tiny.elf), stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 30
    while "you> " not in seen and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            seen += os.read(proc.stdout.fileno(), 4096).decode()
    assert "you> " in seen
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in err


def test_chat_missing_port_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chat", "--port", "/dev/ttyNOPE0"]) == 1
    err = capsys.readouterr().err
    assert "/dev/ttyNOPE0 does not exist" in err and "unochat sim" in err and "available ports" in err


def read_until(port: "serial.Serial", end: bytes, timeout: float = 10.0) -> bytes:
    """Bytes from a raw port up to and including `end` (all that came, if it never did)."""
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(end) and time.monotonic() < deadline:
        data += port.read(1)
    return data


@on_device
def test_terminal_start_line_and_echo(tiny: Board) -> None:
    """What a person in picocom sees: a start-up line in words; after `!h` what they type comes back, backspace
    rubs a character out, "> " asks for the next line; `!h` again and answers are all that comes back."""
    import serial

    tiny.client.close()
    try:
        with serial.Serial(tiny.client.port, 115200, timeout=0.1) as term:  # opening it resets the board
            start = read_until(term, b"\r\n")
            assert start == b"unochat ready: ask, then Enter (!h: see what you type)\r\n"
            term.write(b"!h\r")  # picocom sends CR for Enter
            assert read_until(term, b"> ") == b"!h echo on\r\n> "  # typed unseen
            term.write(b"helx\x7flo  there\r")
            reply = reference.reply(tiny.model, "hello there").encode()
            assert read_until(term, b"> ") == b"helx\b \blo  there\r\n" + reply + b"\r\n> "
            term.write(b"\x7fhi\x7f\x7f\x7f\r")  # nothing to rub out at the start, nor past it: "> " stays
            assert read_until(term, b"> ") == b"hi\b \b\b \b\r\n> "
            term.write(b"!h\r")
            assert read_until(term, b"off\r\n") == b"!h\r\n!h echo off\r\n"
            term.write(b"hello there\r")
            assert read_until(term, b"\r\n") == reply + b"\r\n"
    finally:
        tiny.client.open()
    assert tiny.client.reply("hello there") == reply.decode()  # the host client, echo off after reset


@on_device
def test_sim_command_serves_a_link(tiny: Board, tmp_path: Path) -> None:
    link = tmp_path / "ttyUNO"
    proc = unochat("sim", "--link", str(link), str(tiny.elf), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.05)
        with connect(port=str(link)) as client:
            assert client.info()["id"] == tiny.model.fingerprint()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    assert proc.returncode == 0 and not link.is_symlink()


def test_avrdude_command() -> None:
    assert avrdude_command("/dev/ttyACM0", "build/firmware.hex") == [
        "avrdude", "-p", "atmega328p", "-c", "arduino", "-b", "115200", "-D", "-P", "/dev/ttyACM0",
        "-U", "flash:w:build/firmware.hex:i",
    ]


def test_flash_errors_and_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "firmware.hex"
    with pytest.raises(DeviceError, match="not found; build the firmware first"):
        flash("/dev/ttyACM0", image)
    image.write_text(":00000001FF\n")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DeviceError, match="avrdude not found"):
        flash("/dev/ttyACM0", image)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(PortNotFoundError, match="/dev/ttyNOPE0 does not exist"):
        flash("/dev/ttyNOPE0", image)
    assert cli.main(["flash", "--port", "/dev/ttyNOPE0", "--hex", str(image)]) == 1
    assert "/dev/ttyNOPE0 does not exist" in capsys.readouterr().err
    master, slave = os.openpty()  # an existing port: the dry run prints what it would run
    try:
        port = os.ttyname(slave)
        assert cli.main(["flash", "--port", port, "--hex", str(image), "--dry-run"]) == 0
        assert capsys.readouterr().out.split() == avrdude_command(port, image, "/usr/bin/avrdude")
    finally:
        os.close(master)
        os.close(slave)


# ---- the client's own logic, against a scripted fake board behind a pty ------------------------------
class FakeBoard:
    """Answers every line the client sends with `respond(line)` (bytes, maybe none); records the lines."""

    def __init__(self, respond: Callable[[bytes], bytes]) -> None:
        self.respond = respond
        self.lines: list[bytes] = []
        self.master, self.slave = os.openpty()  # keeping the slave open keeps the master readable
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        pending = b""
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            pending += os.read(self.master, 4096)
            *lines, pending = re.split(rb"\r\n|\r|\n", pending)
            for line in filter(None, lines):  # the firmware ignores empty lines too
                self.lines.append(line)
                os.write(self.master, self.respond(line))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[bytes], bytes]], FakeBoard]]:
    boards: list[FakeBoard] = []

    def make(respond: Callable[[bytes], bytes]) -> FakeBoard:
        boards.append(FakeBoard(respond))
        return boards[-1]

    yield make
    for board in boards:
        board.close()


INFO = b"!i unochat=0.1.0 model=fake board id=0123abcd shape=4-2 formats=1bit inputs=4 outputs=2 " \
       b"max_query=60 max_reply=50 f_cpu=16000000\r\n"
START = b"unochat ready: ask, then Enter (!h: see what you type)\r\n"


def firmware_like(answers: dict[bytes, bytes]) -> Callable[[bytes], bytes]:
    """Echo `!s` lines, answer `!i`; other lines from `answers` (default "HI")."""
    def respond(line: bytes) -> bytes:
        if line.startswith(b"!s"):
            return line + b"\r\n"
        if line == b"!i":
            return INFO
        return answers.get(line, b"HI\r\n")

    return respond


def test_client_handshake_drops_banner_and_garbage(fake: Callable) -> None:
    board = fake(firmware_like({}))
    os.write(board.master, b"\x00\xffnoise\r\n" + START)  # what a board prints while the port opens
    with UnoClient(board.port) as client:
        assert client.info()["model"] == "fake board"  # a value with a space
        assert client.reply("hello") == "HI"
        assert client.round_trips == 2


def test_client_takes_the_last_line_before_its_token(fake: Callable) -> None:
    # leftovers of an abandoned reply arrive first: they must not pass for the answer
    board = fake(firmware_like({b"hello": b"OLD REPLY\r\n\x13garbage\r\nHELLO YOU\r\n"}))
    with UnoClient(board.port) as client:
        assert client.reply("  hello  ") == "HELLO YOU"
    assert board.lines.count(b"hello") == 1  # sent as normalize_query() keeps it


def test_client_resends_after_a_reset_mid_request(fake: Callable) -> None:
    resets = []

    def respond(line: bytes) -> bytes:
        if line == b"hello" and not resets:
            resets.append(line)
            return b"HAL" + b"\r\n" + START  # the board restarted while it answered
        return firmware_like({b"hello": b"HELLO\r\n"})(line)

    board = fake(respond)
    with UnoClient(board.port) as client:
        assert client.reply("hello") == "HELLO"
    assert board.lines.count(b"hello") == 2


def test_client_silent_device_says_what_to_check(fake: Callable) -> None:
    board = fake(lambda line: b"")
    start = time.monotonic()
    with pytest.raises(DeviceSilentError) as excinfo:
        UnoClient(board.port, sync_timeout=0.6)
    message = str(excinfo.value)
    assert time.monotonic() - start < 3
    assert re.search(rf"no answer from {board.port} within 0.6 s: sent b'\\n!s[0-9a-f]{{8}}\\n' \d times "
                     "and got back nothing", message), message
    assert "115200" in message and "unochat flash" in message


def test_client_reply_timeout_then_recovers(fake: Callable) -> None:
    hung = []

    def respond(line: bytes) -> bytes:
        if line == b"slow":
            hung.append(line)
        if hung and len(hung) < 2 and line.startswith(b"!s"):
            hung.append(line)  # swallows the token after "slow": the reply never completes
            return b""
        return firmware_like({})(line)

    board = fake(respond)
    with UnoClient(board.port) as client:
        with pytest.raises(DeviceSilentError, match="did not finish answering query 'slow' within 0.3 s"):
            client.reply("slow", timeout=0.3)
        assert client.reply("fine") == "HI"  # synced again first


def test_client_garbled_answer_is_retried_then_reported(fake: Callable) -> None:
    board = fake(firmware_like({
        b"!x 0102": b"!x 1,2,zz\r\n",
        b"!t hi": b"!t step=1 query=2 total=99 layers=1 n=0 reply=\r\n",
    }))
    with UnoClient(board.port) as client:
        with pytest.raises(GarbledReplyError, match="zz") as excinfo:
            client.logits(np.array([1, 2], dtype=np.uint8))
        assert excinfo.value.received == b"!x 1,2,zz"
        with pytest.raises(GarbledReplyError, match="total=99"):  # 1 + 2 != 99
            client.timed_reply("hi")
    assert board.lines.count(b"!x 0102") == 2 and board.lines.count(b"!t hi") == 2


def test_parse_timed_fields() -> None:
    timed = parse_timed(b"!t step=100,120,7 query=40 total=267 layers=150,60 ctx=30 argmax=9 rq=0 n=2 reply=OK")
    assert (timed.reply, timed.steps, timed.query_cycles, timed.total_cycles) == ("OK", [100, 120, 7], 40, 267)
    assert (timed.layer_cycles, timed.ctx_cycles, timed.argmax_cycles, timed.requant_cycles) == ([150, 60], 30, 9, 0)
    with pytest.raises(GarbledReplyError, match="not a valid"):  # the fields before ctx= and rq= existed
        parse_timed(b"!t step=100,120,7 query=40 total=267 layers=150,60 n=2 reply=OK")


def test_client_refuses_queries_the_device_would_not_chat_with(fake: Callable) -> None:
    board = fake(firmware_like({}))
    with UnoClient(board.port) as client:
        for query in ("   ", "\x08", "!i"):
            with pytest.raises(ValueError):
                client.reply(query)


def test_client_missing_port_lists_ports() -> None:
    with pytest.raises(PortNotFoundError) as excinfo:
        UnoClient("/dev/ttyNOPE0")
    message = str(excinfo.value)
    assert "/dev/ttyNOPE0 does not exist" in message and "available ports" in message and "unochat sim" in message
