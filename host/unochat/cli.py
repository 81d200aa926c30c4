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
from .latency import BENCH_QUERIES
from .modelfile import DEFAULT_DATA, DEFAULT_MODEL, REPO, load_model

if TYPE_CHECKING:
    from .device import UnoClient
    from .pipeline import FineTune, PairFocus

DEFAULT_ELF = REPO / "build" / "firmware.elf"
DEFAULT_FOCUS = 0.25  # pipeline.PairFocus.beta; not imported: that pulls in torch for every command
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


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"pruning ratios are comma-separated fractions, got {text!r}")
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise argparse.ArgumentTypeError(f"pruning ratios are fractions in [0, 1), got {text!r}")
    return ratios


def _variants(text: str) -> list[str]:
    from .pipeline import VARIANTS

    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"variants are a comma-separated list of {', '.join(VARIANTS)}")
    return names


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
            augment=args.augment,
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
    for path in render(model, out_dir, kernels=args.kernels):
        print(f"wrote {path}")
    if args.int_model:
        model.save(args.int_model)
        print(f"wrote {args.int_model}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_model

    model = load_model(args.model)
    report = build_model(model, kernels=args.kernels)
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


@contextmanager
def _settings_errors() -> Iterator[None]:
    """A bad setting (ValueError from a config or a recipe) is the user's error: one line, exit code 2."""
    try:
        yield
    except ValueError as e:
        if isinstance(e, (DatasetError, ModelError)):
            raise
        raise ModelError(str(e)) from e


def _focus(beta: float) -> "PairFocus | None":
    from .pipeline import PairFocus

    return PairFocus(beta=beta) if beta > 0 else None


def _fine_tune(args: argparse.Namespace) -> "FineTune":
    from .pipeline import FineTune

    return FineTune(epochs=args.fine_tune_epochs, lr=args.lr, patience=args.patience, eval_every=args.eval_every,
                    batch_size=args.batch_size, seed=args.seed, focus=_focus(args.focus), restarts=args.restarts)


def cmd_prune(args: argparse.Namespace) -> int:
    from .pipeline import prune_checkpoint

    with _settings_errors():
        result = prune_checkpoint(args.model, args.out, args.ratios or [args.ratio], _fine_tune(args),
                                  criterion=args.criterion, data_path=args.data)
    print(result.summary())
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .pipeline import quantize_checkpoint

    with _settings_errors():
        result = quantize_checkpoint(args.model, args.out, args.bits, _fine_tune(args), data_path=args.data)
    print(result.summary())
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from .pipeline import FineTune, Recipe, run_pipeline

    def tune(epochs: int, restarts: int = 0) -> FineTune:
        return FineTune(epochs=epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, focus=_focus(args.focus),
                        restarts=restarts)

    with _settings_errors():
        recipe = Recipe(
            hidden=args.hidden, bits=args.bits, epochs=args.epochs, ratios=args.ratios or [args.ratio],
            criterion=args.criterion, prune=tune(args.prune_epochs), binary_bits=args.binary_bits,
            binary=tune(args.binary_epochs, args.binary_restarts), best_hidden=args.best_hidden,
            best_bits=args.best_bits, best_epochs=args.best_epochs, lr=args.lr, batch_size=args.batch_size,
            seed=args.seed,
        )
        run_pipeline(args.data, Path(args.out_dir), recipe, args.variants, heldout=args.heldout,
                     build=not args.no_build, export_best=args.export_best)
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
    from . import bench

    if args.kernels:
        return bench_kernels(args)
    if args.flash and not args.port:
        raise ModelError("--flash writes each model to a real UNO: it needs --port")
    if args.flash and args.no_build:
        raise ModelError("--flash writes each model's firmware build: it cannot go with --no-build")
    models = ([args.model_option] if args.model_option else []) + args.models or [str(DEFAULT_MODEL)]
    with _settings_errors():
        rows = bench.bench(
            models, args.data, build=not args.no_build, latency=not args.no_latency,
            elf=Path(args.sim) if args.sim else None, port=args.port, flash_first=args.flash,
            queries=args.queries or BENCH_QUERIES, examples=args.examples, timeout=args.timeout,
        )
    print(bench.table(rows))
    if args.json:
        bench.write_json(rows, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 1 if any(r.mismatches for r in rows) else 0


@_device_command
def cmd_flash(args: argparse.Namespace) -> int:
    from .device import flash

    command = flash(args.port, args.hex, dry_run=args.dry_run)
    print(" ".join(command) if args.dry_run else f"flashed {args.hex} to {args.port}")
    return 0


def _add_fine_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="query|response file (default: the dataset the model was trained on)")
    p.add_argument("--fine-tune-epochs", type=_positive, default=30)
    p.add_argument("--patience", type=_positive, help="stop after this many epochs without a better integer accuracy")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=_positive, default=5, help="evaluate the integer model every N epochs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    _add_focus_argument(p)
    _add_restarts_argument(p, "--restarts", 0)
    p.add_argument("--out", required=True, help="checkpoint path (.pt); the integer model goes beside it (.npz)")


def _add_focus_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--focus", type=float, default=DEFAULT_FOCUS, metavar="BETA",
                   help=f"weigh each pair by P(whole reply)^BETA while fine-tuning, for exact match "
                        f"(default {DEFAULT_FOCUS:g}; 0: plain cross-entropy)")


def _add_restarts_argument(p: argparse.ArgumentParser, flag: str, default: int) -> None:
    p.add_argument(flag, type=int, default=default, metavar="N",
                   help="then N more cosine cycles of 150 epochs at lr 1e-3, each from the best state so far "
                        f"(warm restarts, pipeline.FineTune; default {default})")


def _add_board_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of a real UNO, e.g. /dev/ttyACM0")
    where.add_argument("--sim", nargs="?", const=str(DEFAULT_ELF), metavar="ELF",
                       help=f"run the firmware on a virtual UNO (default ELF {DEFAULT_ELF.relative_to(REPO)})")
    p.add_argument("--timeout", type=float, default=REPLY_TIMEOUT,
                   help=f"seconds to wait for one reply (default {REPLY_TIMEOUT:g})")


def bench_kernels(args: argparse.Namespace) -> int:
    """`unochat bench --kernels`: unochat.kernelbench's table (and --json); with models, where each
    model's generated character goes instead, per part, on both kernel paths."""
    from . import kernelbench

    models = ([args.model_option] if args.model_option else []) + args.models
    if not models:
        report = kernelbench.run(queries=args.queries or kernelbench.FIRST_LAYER_QUERIES)
        print(report.table())
        if args.json:
            kernelbench.write_json(report, args.json)
            print(f"wrote {args.json}")
        return 0
    rows = kernelbench.breakdowns([load_model(m) for m in models], args.queries or BENCH_QUERIES)
    print("\n".join(row.table() for row in rows))
    if args.json:
        kernelbench.write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 1 if any(row.mismatches for row in rows) else 0


def _add_kernels_argument(p: argparse.ArgumentParser) -> None:
    from .codegen import KERNEL_PATHS

    p.add_argument("--kernels", choices=KERNEL_PATHS, default=KERNEL_PATHS[0],
                   help="fast: AVR assembly inner loops (default); c: the plain C reference kernels")


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
    p.add_argument("--augment", type=int, default=0, metavar="N",
                   help="also train on N seeded variants of each training query (typos, dropped/swapped words)")
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
    _add_kernels_argument(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="export, build the UNO firmware, check its size")
    p.add_argument("model", nargs="?", help="model file (.npz or .pt); default: models/default.npz")
    _add_kernels_argument(p)
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

    p = sub.add_parser("prune", help="remove hidden neurons from a trained model, fine-tune it")
    p.add_argument("model", help="training checkpoint (.pt)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of every hidden layer's neurons to remove")
    p.add_argument("--ratios", type=_ratios, help="one fraction per hidden layer, e.g. 0.5,0.4,0.3 (instead of --ratio)")
    p.add_argument("--criterion", default="l1_std", help="neuron ranking: l1_std (default), l1_mean or gamma")
    _add_fine_tune_arguments(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="give a trained model new weight formats (latent weights kept), fine-tune it")
    p.add_argument("model", help="training checkpoint (.pt)")
    p.add_argument("--bits", type=_formats, required=True, help="1, 2 or 8; per layer: 1,1,2,8")
    _add_fine_tune_arguments(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("pipeline", help="baseline -> pruned -> binary (and best): train, compress, summarize")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="query|response file (.txt or .txt.gz)")
    p.add_argument("--out-dir", default=str(REPO / "models" / "pipeline"), help="where the variants go")
    p.add_argument("--variants", type=_variants, default=["baseline", "pruned", "binary"],
                   help="which of baseline,pruned,binary,best to make (and what they start from)")
    p.add_argument("--hidden", type=_sizes, default=[256, 192, 128], help="baseline hidden layer sizes")
    p.add_argument("--bits", default="2", help="baseline (and pruned) weight format; per layer: 1,1,2,8")
    p.add_argument("--epochs", type=_positive, default=100, help="baseline training epochs")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of every hidden layer's neurons pruned")
    p.add_argument("--ratios", type=_ratios, help="one fraction per hidden layer (instead of --ratio)")
    p.add_argument("--criterion", default="l1_std", help="neuron ranking: l1_std, l1_mean or gamma")
    p.add_argument("--prune-epochs", type=_positive, default=30, help="fine-tuning epochs after pruning")
    p.add_argument("--binary-bits", default="1", help="the binary variant's weight format; per layer: 1,1,1,8")
    p.add_argument("--binary-epochs", type=_positive, default=400, help="fine-tuning epochs after binarizing")
    _add_restarts_argument(p, "--binary-restarts", 3)
    p.add_argument("--best-hidden", type=_sizes, default=[160, 128, 96], help="the best variant's hidden sizes")
    p.add_argument("--best-bits", default="2", help="the best variant's weight format")
    p.add_argument("--best-epochs", type=_positive, default=100, help="the best variant's training epochs")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    _add_focus_argument(p)
    p.add_argument("--heldout", type=float, default=0.0,
                   help="also make every variant without this fraction of held-out pairs (into OUT_DIR/heldout/)")
    p.add_argument("--no-build", action="store_true", help="skip the firmware builds (no flash, SRAM or fits)")
    p.add_argument("--export-best", metavar="OUT.pt",
                   help="copy the best variant that fits the UNO (highest EM) to OUT.pt + OUT.npz")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("bench", help="quality, flash, SRAM and on-device speed of models, as a table, JSON, plot")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model files (.npz, .pt) or pipeline directories; default: models/default.npz")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="a model, as an option")
    p.add_argument("--data", help="measure quality on this dataset (default: the one each model was trained on); "
                   "the timed queries come from the model's training data (data/default.txt where that "
                   "is missing)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--sim", nargs="?", const=str(DEFAULT_ELF), metavar="ELF",
                       help="time this built firmware on the virtual UNO instead of building each model "
                            f"(default ELF {DEFAULT_ELF.relative_to(REPO)}); one model")
    where.add_argument("--port", help="time on a real UNO at this serial port (it must run the model, or --flash)")
    p.add_argument("--flash", action="store_true", help="with --port: flash each model's firmware before timing it")
    p.add_argument("--timeout", type=float, default=REPLY_TIMEOUT,
                   help=f"seconds to wait for one reply (default {REPLY_TIMEOUT:g})")
    p.add_argument("--no-build", action="store_true", help="no firmware: quality only (no flash, SRAM, latency)")
    p.add_argument("--kernels", action="store_true",
                   help="instead: cycles of every inner-loop kernel (C path and fast) per weight format and "
                        "layer shape on the virtual UNO, with its own firmware builds (no model needed); with "
                        "models: the cycles of a generated character per part (query, context features, each "
                        "layer and its requantization, argmax), C path and fast")
    p.add_argument("--no-latency", action="store_true", help="build and measure sizes, but do not run the firmware")
    p.add_argument("--queries", type=_positive,
                   help=f"queries to time (default {BENCH_QUERIES}; the kernel table's first layer: 8)")
    p.add_argument("--examples", type=int, default=3, help="example replies shown per model (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON (a list, one object per model)")
    p.add_argument("--plot", metavar="FILE", help="also plot EM against flash (matplotlib, e.g. bench.png)")
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
