"""The virtual UNO (tools/unosim + unochat.sim) against tiny bare-metal fixtures.

Each fixture in tests/fixtures/sim is compiled with avr-gcc and run behind a pty; the tests talk
to it with pyserial exactly as the host tools talk to a real UNO.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

serial = pytest.importorskip("serial")

from unochat.board.sim import SimError, VirtualUno, build_bridge  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "sim"
CPU_HZ = 16_000_000

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(shutil.which("avr-gcc") is None, reason="avr-gcc not installed"),
]


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Compile a fixture (name without .c, optional -D defines) once per module."""
    out = tmp_path_factory.mktemp("simfw")
    cache: dict[tuple[str, ...], Path] = {}

    def build(name: str, *defines: str, ldflags: tuple[str, ...] = ()) -> Path:
        key = (name, *defines, *ldflags)
        if key not in cache:
            elf = out / f"{name}_{len(cache)}.elf"
            cmd = ["avr-gcc", "-mmcu=atmega328p", "-DF_CPU=16000000UL", "-Os", "-Wall"]
            cmd += [f"-D{d}" for d in defines]
            cmd += ["-o", str(elf), str(FIXTURES / f"{name}.c"), *ldflags]
            subprocess.run(cmd, check=True)
            cache[key] = elf
        return cache[key]

    build_bridge()
    return build


def gap_linker_script(directory: Path) -> Path:
    """avr-gcc's own linker script, changed to leave 64 bytes of flash between .text and the
    load image of .data (simavr 1.6's ELF loader assumes they touch)."""
    verbose = subprocess.run(
        ["avr-gcc", "-mmcu=atmega328p", "-Wl,--verbose"], capture_output=True, text=True
    ).stdout
    script = verbose.split("=" * 50)[1].split("\n", 1)[1]
    script, n = re.subn(
        r"^\s*\.data\s*:(.*?\}\s*>\s*data)\s*AT>\s*text",
        r"  .data : AT (_etext + 0x40)\1",
        script,
        count=1,
        flags=re.S | re.M,
    )
    if n != 1:
        pytest.skip("unexpected avr-gcc linker script layout")
    path = directory / "gap.x"
    path.write_text(script)
    return path


def open_port(port: str, timeout: float = 5.0) -> serial.Serial:
    return serial.Serial(port, 115200, timeout=timeout)


def read_exact(ser: serial.Serial, n: int, timeout: float = 10.0) -> bytes:
    """Read n bytes; pyserial's read(n) does bulk reads (readline would be 1 byte/syscall)."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n and time.monotonic() < deadline:
        buf += ser.read(n - len(buf))
    return bytes(buf)


def read_line(ser: serial.Serial, timeout: float = 5.0) -> bytes:
    ser.timeout = timeout
    line = ser.readline()
    assert line.endswith(b"\n"), f"timed out waiting for a line, got {line!r}"
    return line


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_echo_2000_lines(firmware: Callable[..., Path]) -> None:
    with VirtualUno(firmware("echo")) as uno, open_port(uno.port) as ser:
        assert read_line(ser) == b"ECHO\n"
        errors = 0
        t0 = time.perf_counter()
        for i in range(2000):
            line = f"{i:04d} the quick brown fox\n".encode()
            ser.write(line)
            if read_exact(ser, len(line), timeout=5) != line:
                errors += 1
        dt = time.perf_counter() - t0
        print(f"\necho: 2000 round trips in {dt:.2f} s ({2000 / dt:.0f}/s), {errors} errors")
        assert errors == 0


def test_burst_survives_slow_reader(firmware: Callable[..., Path]) -> None:
    # the firmware spends 200 us per byte, a byte arrives every ~94 us: without flow control
    # the 64-byte receive fifo would overflow and bytes would be lost
    payload = bytes(33 + (i * 7919) % 94 for i in range(6000))
    with VirtualUno(firmware("echo", "SLOW_US=200")) as uno, open_port(uno.port) as ser:
        assert read_line(ser) == b"ECHO\n"
        writer = threading.Thread(target=ser.write, args=(payload,))
        t0 = time.perf_counter()
        writer.start()
        got = read_exact(ser, len(payload), timeout=10)
        writer.join()
        print(f"\nburst: {len(payload)} bytes echoed by a slow reader in "
              f"{time.perf_counter() - t0:.2f} s")
        assert len(got) == len(payload)
        assert got == payload


def test_sleeping_firmware_wakes_on_input_and_does_not_spin(firmware: Callable[..., Path]) -> None:
    with VirtualUno(firmware("echo_sleep")) as uno, open_port(uno.port) as ser:
        assert read_line(ser) == b"ECHO\n"
        t0 = time.perf_counter()
        for i in range(300):
            line = f"{i:03d} sleepy\n".encode()
            ser.write(line)
            assert read_exact(ser, len(line), timeout=5) == line
        rtt = (time.perf_counter() - t0) / 300
        # idle: the MCU sleeps with nothing scheduled, the bridge should block on the pty (CPU time,
        # not wall time: a loaded host can only lower this fraction)
        cpu0, w0 = cpu_seconds(uno.pid), time.perf_counter()
        time.sleep(0.5)
        busy = (cpu_seconds(uno.pid) - cpu0) / (time.perf_counter() - w0)
        print(f"\nsleep echo: {rtt * 1e3:.2f} ms per round trip, idle bridge CPU {busy:.0%}")
        assert busy < 0.05  # simavr's own sleep callback polls here: ~10%


@pytest.mark.parametrize("layout", ["default", "gap"])
def test_data_and_progmem_intact(
    firmware: Callable[..., Path], tmp_path: Path, layout: str
) -> None:
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53]
    want_sum = sum(p * (i + 1) for i, p in enumerate(primes))
    ldflags = ("-T", str(gap_linker_script(tmp_path))) if layout == "gap" else ()
    with VirtualUno(firmware("data", ldflags=ldflags)) as uno, open_port(uno.port) as ser:
        assert read_line(ser) == b"data: initialised global ok\n"
        assert read_line(ser) == b"progmem: flash string ok\n"
        assert read_line(ser) == f"sum: {want_sum}\n".encode()


def test_open_resets_mcu(firmware: Callable[..., Path]) -> None:
    with VirtualUno(firmware("boot")) as uno:
        with open_port(uno.port) as ser:  # power-on reset (PORF)
            assert read_line(ser) == b"BOOT 1 MCUSR=01\n"
            ser.write(b"x")
            assert read_exact(ser, 1) == b"x"
        time.sleep(0.05)
        with open_port(uno.port) as ser:  # reopen: external reset (EXTRF), SRAM kept
            assert read_line(ser) == b"BOOT 2 MCUSR=02\n"
        with open_port(uno.port) as ser:  # immediate close+reopen is still seen
            assert read_line(ser) == b"BOOT 3 MCUSR=02\n"
            # SLEEP with interrupts off: simavr stops; the bridge keeps the MCU halted
            ser.write(b"h")
            assert read_line(ser) == b"HALT\n"
            ser.write(b"y")
            ser.timeout = 0.3
            assert ser.read(1) == b""
        with open_port(uno.port) as ser:  # and the next open resets it back to life
            assert read_line(ser) == b"BOOT 4 MCUSR=02\n"
        assert uno.returncode is None
        assert "SLEEP with interrupts disabled" in uno.stderr_text()


def test_input_sent_before_rx_enabled_is_held(firmware: Callable[..., Path]) -> None:
    # more than simavr's 64-byte receive fifo, written before the firmware (300 ms busy-wait)
    # has enabled its receiver
    payload = b"".join(f"early line {i:02d}\n".encode() for i in range(40))
    with VirtualUno(firmware("late_rx")) as uno, open_port(uno.port) as ser:
        ser.write(payload)
        assert read_line(ser) == b"READY\n"
        assert read_exact(ser, len(payload)) == payload


def test_timer1_counts_exact_cycles(firmware: Callable[..., Path]) -> None:
    with VirtualUno(firmware("timer1")) as uno, open_port(uno.port) as ser:
        results = {}
        while (line := read_line(ser)) != b"END\n":
            n, d = (int(f.split(b"=")[1]) for f in line.split())
            results[n] = d
    # lds + lds + ldi + N x (dec + brne) - 1: from the AVR instruction timings
    assert results == {n: 3 * n + 4 for n in (1, 7, 100, 255)}


def test_sigterm_sigint_exit_cleanly_and_remove_link(
    firmware: Callable[..., Path], tmp_path: Path
) -> None:
    link = tmp_path / "ttyUNO"
    with VirtualUno(firmware("echo"), link=link) as uno:
        assert link.is_symlink() and os.readlink(link) == uno.port
        with open_port(str(link)) as ser:
            assert read_line(ser) == b"ECHO\n"
            ser.write(b"ping")
            assert read_exact(ser, 4) == b"ping"
        assert uno.stop() == 0
    assert not link.exists() and not link.is_symlink()

    with VirtualUno(firmware("echo"), link=link) as uno:
        with open_port(uno.port) as ser:  # also while a client holds the port
            assert read_line(ser) == b"ECHO\n"
            os.kill(uno.pid, signal.SIGINT)
            assert uno.wait(timeout=5) == 0
    assert not link.is_symlink()


def test_bridge_exits_when_launcher_dies(firmware: Callable[..., Path], tmp_path: Path) -> None:
    link = tmp_path / "ttyORPHAN"
    launcher = (
        "import os, sys\n"
        "from unochat.board.sim import VirtualUno\n"
        "uno = VirtualUno(sys.argv[1], link=sys.argv[2]).start()\n"
        "print(uno.pid, flush=True)\n"
        "os._exit(0)  # no cleanup at all, as if killed\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", launcher, str(firmware("echo")), str(link)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    pid = int(res.stdout)
    deadline = time.monotonic() + 5
    while link.is_symlink() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not link.is_symlink()
    stat = Path(f"/proc/{pid}/stat")

    def gone() -> bool:  # exited (reaped, or a zombie of the dead launcher's init)
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (FileNotFoundError, ProcessLookupError):
            return True

    # the symlink goes first, then the process finishes exiting
    while not gone() and time.monotonic() < deadline + 5:
        time.sleep(0.02)
    assert gone()


def _time_command(ser: serial.Serial, cmd: bytes) -> tuple[float, int]:
    t0 = time.perf_counter()
    ser.write(cmd)
    line = read_line(ser, timeout=15)
    dt = time.perf_counter() - t0
    assert line.startswith(b"DONE ")
    return dt, int(line.split()[1])


def test_realtime_paces_to_wall_clock(firmware: Callable[..., Path]) -> None:
    with VirtualUno(firmware("clock"), realtime=True) as uno, open_port(uno.port) as ser:
        assert read_line(ser) == b"CLOCK\n"
        dt, cycles = _time_command(ser, b"b1")
    print(f"\nrealtime: {cycles} cycles took {dt:.3f} s of wall time")
    assert cycles >= CPU_HZ
    # never faster than a real UNO (a loaded host can only make it slower, so no upper bound)
    assert dt > 0.85


def test_throughput_then_sleep(firmware: Callable[..., Path]) -> None:
    with VirtualUno(firmware("clock")) as uno, open_port(uno.port) as ser:
        assert read_line(ser) == b"CLOCK\n"
        dt, cycles = _time_command(ser, b"b4")
        lead = cycles / CPU_HZ - dt  # seconds of simulated time ahead of the wall clock
        mhz = cycles / dt / 1e6
        print(f"\nthroughput: {cycles} cycles in {dt:.2f} s = {mhz:.1f} simulated MHz "
              f"({mhz / 16:.1f}x a real UNO)")
        assert mhz > 4  # sanity only: the figure depends on the host

        # now the firmware sleeps between Timer1 overflows with its receiver on (waiting for the
        # host): idle time maps to wall time (not to the wall clock since start, like simavr's
        # default sleep callback, which would now wait out the lead the busy loop built up),
        # Timer1 still sees every cycle, and the bridge blocks instead of spinning
        cpu0 = cpu_seconds(uno.pid)
        dt, cycles = _time_command(ser, b"s1")
        busy = (cpu_seconds(uno.pid) - cpu0) / dt
    print(f"sleep: {cycles} cycles in {dt:.2f} s, bridge CPU {busy:.0%}")
    assert CPU_HZ <= cycles < CPU_HZ + 70_000
    # 1 s of sleep takes about 1 s of wall time; simavr's default callback would first wait out the
    # lead the busy loop built up (1 + lead seconds). The bound lies between the two, whatever the
    # host's speed (a host too slow to build a lead makes them equal, and the bound 1.25 s)
    assert 0.8 < dt < 1.25 + 0.5 * max(lead, 0.0)
    assert busy < 0.5


def test_crash_exits_with_message(firmware: Callable[..., Path]) -> None:
    with VirtualUno(firmware("crash")) as uno:
        with open_port(uno.port) as ser:
            assert read_line(ser) == b"CRASHING\n"
            assert uno.wait(timeout=5) == 3
        assert "crashed" in uno.stderr_text()


def test_missing_and_bad_elf(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make firmware"):
        VirtualUno(tmp_path / "nope.elf").start()
    bad = tmp_path / "bad.elf"
    bad.write_text("not an elf at all\n" * 10)
    with pytest.raises(SimError, match="not an ELF"):
        VirtualUno(bad).start()
