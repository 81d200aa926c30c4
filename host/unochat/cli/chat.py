"""`unochat chat`: an interactive prompt to the model on a UNO (or the virtual one), with on-device latency.

Each line is sent as `!t <query>`, so the reply comes with the firmware's Timer1 cycle counts; the latency
shown is the device's own, whatever the serial link and the host add.
"""
from __future__ import annotations

try:
    import readline  # noqa: F401  (imported for its side effect: line editing and history in input())
except ImportError:  # not on every platform; input() still works without it
    pass

from ..board.client import DeviceSilentError, TimedReply, UnoClient
from ..data.dataset import COMMAND_PREFIX, normalize_query

PROMPT = "you> "


def describe_latency(timed: TimedReply, f_cpu: int) -> str:
    """`12 chars, 31.4 ms/char, 377 ms on the device`: the per-character figure includes the query
    features and the final (EOS) step, as a user waits for them."""
    total_ms = timed.total_cycles / f_cpu * 1e3
    per_char = f", {total_ms / timed.n:.1f} ms/char" if timed.n else ""
    return f"{timed.n} chars{per_char}, {total_ms:.0f} ms on the device"


def run_chat(client: UnoClient) -> int:
    """Prompt until end of input (Ctrl-D) or Ctrl-C; returns the exit code."""
    info = client.info()
    f_cpu = int(info["f_cpu"])
    print(f"connected to {client.port}: model {info['model']} {info['shape']} [{info['formats']}], id {info['id']}")
    print("Type a message and press Enter; Ctrl-D or Ctrl-C quits.")
    try:
        while True:
            query = normalize_query(input(PROMPT))
            if not query:
                continue
            if query.startswith(COMMAND_PREFIX):
                print(f"(lines starting with {COMMAND_PREFIX!r} are device commands; not sent)")
                continue
            try:
                timed = client.timed_reply(query)
            except DeviceSilentError as exc:
                # the board may be busy or was reset; the next line syncs again
                print(f"(no reply: {exc})")
                continue
            print(f"uno> {timed.reply}")
            print(f"     ({describe_latency(timed, f_cpu)})")
    except (EOFError, KeyboardInterrupt):
        print()
        return 0
