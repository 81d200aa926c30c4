"""The `unochat` command: a thin argparse layer over the modules, one subcommand per stage."""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .build import BuildError
from .data import DatasetError, normalize_query
from .device import REPLY_TIMEOUT
from .intmodel import MAX_WIDTH, ModelError
from .modelfile import DEFAULT_DATA, REPO, load_model

if TYPE_CHECKING:
    from .device import UnoClient

DEFAULT_ELF = REPO / "build" / "firmware.elf"
DEFAULT_HEX = REPO / "build" / "firmware.hex"


def _formats(text: str) -> list[str]:
    """`1` -> ['1bit'], `1,1,2,8` -> one format per layer; 'int8'/'2bit' spelled out work too."""
    names = {"1": "1bit", "2": "2bit", "8": "int8", "1bit": "1bit", "2bit": "2bit", "int8": "int8"}
    try:
        return [names[t.strip()] for t in text.split(",")]
    except KeyError as e:
        raise argparse.ArgumentTypeError(f"unknown weight format {e.args[0]!r}: use 1, 2 or 8 (per layer: 1,1,2,8)")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer sizes are comma-separated integers, got {text!r}")
    if not sizes or any(not 1 <= n <= MAX_WIDTH for n in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be 1..{MAX_WIDTH}")
    return sizes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# ---- commands ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, parse_bits, train

    try:
        config = TrainConfig(
            hidden=args.hidden,
            formats=parse_bits(args.bits, len(args.hidden) + 1),
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            heldout=args.heldout,
            patience=args.patience,
            eval_every=args.eval_every,
        )
        result = train(args.data, config, Path(args.out))
    except ValueError as e:
        if isinstance(e, (DatasetError, ModelError)):
            raise
        raise ModelError(str(e)) from e
    print(result.summary())
    return 0


def cmd_import_z80ai(args: argparse.Namespace) -> int:
    from .z80ai import load_z80ai

    model = load_z80ai(args.model)
    out = Path(args.out)
    model.name = out.stem
    model.save(out)
    print(f"{model.describe()}\nwrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .codegen import GENERATED, render

    model = load_model(args.model)
    out_dir = Path(args.out_dir) if args.out_dir else GENERATED
    for path in render(model, out_dir):
        print(f"wrote {path}")
    if args.int_model:
        model.save(args.int_model)
        print(f"wrote {args.int_model}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_model

    model = load_model(args.model)
    report = build_model(model)
    print(f"{model.describe()}\nbuild/firmware.hex: {report.summary()}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from . import reference
    from .features import input_vector

    model = load_model(args.model)
    query = normalize_query(args.query)
    if not args.logits:
        print(reference.reply(model, query))
        return 0
    generated = ""
    while len(generated) < model.max_reply:
        logits = reference.logits(model, input_vector(query, generated, model.features))[0]
        best = int(np.argmax(logits))
        symbol = "EOS" if best == model.eos else repr(model.charset[best])
        print(f"{len(generated):2d} {symbol:5s} " + " ".join(str(int(v)) for v in logits))
        if best == model.eos:
            break
        generated += model.charset[best]
    print(generated)
    return 0


def _device_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report a device or simulator problem as one line on stderr (exit code 1), not a traceback."""
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from .device import DeviceError
        from .sim import SimError

        try:
            return func(args)
        except (DeviceError, SimError) as e:
            print(f"unochat {args.command}: {e}", file=sys.stderr)
            return 1

    return run


@contextmanager
def _board(args: argparse.Namespace) -> Iterator["UnoClient"]:
    """The client for --port PORT or --sim [ELF]."""
    from .device import connect

    with connect(port=args.port, sim=args.sim, timeout=args.timeout) as client:
        yield client


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim import main_sim

    return main_sim(Path(args.elf), link=args.link, realtime=args.realtime)


@_device_command
def cmd_chat(args: argparse.Namespace) -> int:
    from .chatdemo import run_chat

    with _board(args) as client:
        return run_chat(client)


@_device_command
def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .build import avr_size
    from .codegen import model_id
    from .latency import bench_queries, measure_latency

    model = load_model(args.model_option or args.model)
    elf = Path(args.sim or DEFAULT_ELF)
    # sizes only from an ELF built for this model: its `!i` string, in flash, names the model id
    built_for_model = elf.is_file() and f"id={model_id(model)} ".encode() in elf.read_bytes()
    sizes = avr_size(elf) if built_for_model else None
    dataset, queries = bench_queries(model, args.queries)
    with _board(args) as client:
        report = measure_latency(client, model, queries, sizes=sizes, dataset=dataset)
    print(report.table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if report.mismatches else 0


@_device_command
def cmd_flash(args: argparse.Namespace) -> int:
    from .device import flash

    command = flash(args.port, args.hex, dry_run=args.dry_run)
    print(" ".join(command) if args.dry_run else f"flashed {args.hex} to {args.port}")
    return 0


def _add_board_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of a real UNO, e.g. /dev/ttyACM0")
    where.add_argument("--sim", nargs="?", const=str(DEFAULT_ELF), metavar="ELF",
                       help=f"run the firmware on a virtual UNO (default ELF {DEFAULT_ELF.relative_to(REPO)})")
    p.add_argument("--timeout", type=float, default=REPLY_TIMEOUT,
                   help=f"seconds to wait for one reply (default {REPLY_TIMEOUT:g})")


# ---- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unochat", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unochat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model with quantization-aware training")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="query|response file (.txt or .txt.gz)")
    p.add_argument("--hidden", type=_sizes, default=[256, 192, 128], help="hidden layer sizes, e.g. 256,192,128")
    p.add_argument("--bits", default="1", help="weight format 1, 2 or 8; per layer: 1,1,2,8")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--warmup-epochs", type=int, default=0, help="epochs to blend float into quantized weights")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=float, default=0.0, help="fraction of pairs held out (seeded split)")
    p.add_argument("--patience", type=int, help="stop after this many evaluations without a better integer accuracy")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate the integer model every N epochs")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); the integer model goes beside it (.npz)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("import-z80ai", help="import a z80ai .npz model as an integer model")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_import_z80ai)

    p = sub.add_parser("export", help="render the model's C into firmware/generated/")
    p.add_argument("model", nargs="?", help="model file (.npz or .pt); default: models/default.npz")
    p.add_argument("--out-dir", help="where to write the C (default firmware/generated)")
    p.add_argument("--int-model", help="also write the integer model to this .npz")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="export, build the UNO firmware, check its size")
    p.add_argument("model", nargs="?", help="model file (.npz or .pt); default: models/default.npz")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("ask", help="the reference's reply to a query, on the host")
    p.add_argument("model_or_query", nargs="+", metavar="[MODEL] QUERY")
    p.add_argument("--logits", action="store_true", help="print the raw integer logits of every step")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("sim", help="run the firmware on a virtual UNO behind a pseudo-terminal")
    p.add_argument("elf", nargs="?", default=str(DEFAULT_ELF), help="firmware ELF (default build/firmware.elf)")
    p.add_argument("--link", help="also make this symlink to the pty, e.g. /tmp/unochat-uno")
    p.add_argument("--realtime", action="store_true", help="pace the simulation to a real UNO's speed")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("chat", help="chat with the model on a UNO or a virtual one, with on-device latency")
    _add_board_arguments(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", help="on-device cycles per character, checked against the reference")
    p.add_argument("model", nargs="?", help="the model the board runs (.npz or .pt); default: models/default.npz")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the same, as an option")
    _add_board_arguments(p)
    p.add_argument("--queries", type=_positive, default=20, help="queries to time (default 20)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("flash", help="write build/firmware.hex to a real UNO with avrdude")
    p.add_argument("--port", required=True, help="serial port of the UNO, e.g. /dev/ttyACM0")
    p.add_argument("--hex", default=str(DEFAULT_HEX), help="image to write (default build/firmware.hex)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the avrdude command only")
    p.set_defaults(func=cmd_flash)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ask":
        words = args.model_or_query
        named_model = len(words) > 1 and Path(words[0]).suffix in (".npz", ".pt")
        args.model, args.query = (words[0], " ".join(words[1:])) if named_model else (None, " ".join(words))
    try:
        return args.func(args)
    except (DatasetError, ModelError, FileNotFoundError) as e:
        print(f"unochat: error: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"unochat: build failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("unochat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
