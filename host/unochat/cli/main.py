"""The `unochat` command: a thin argparse layer over the subpackages, one subcommand per stage.

Defaults come from the dataclasses that hold them (train/config.py), so each is written once. Modules
that pull in torch (training) or the benchmark are imported inside the commands that need them, so
`unochat ask` or `unochat build` start without torch; this is the only module that imports lazily.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..boards import BOARDS, UNO, Board, get_board
from ..board.client import REPLY_TIMEOUT, DeviceError
from ..board.sim import SimError
from ..codegen.layout import KERNEL_PATHS
from ..data.dataset import CASES, SAMPLE_QUERIES, DatasetError, normalize_query
from ..data.features import FeatureSpec
from ..firmware.size import BuildError
from ..model import formats
from ..model.files import CHECKPOINT_SUFFIX, MODEL_SUFFIXES, load_int_model, model_path
from ..model.intmodel import MAX_WIDTH, IntModel, ModelError
from ..paths import DEFAULT_DATA, DEFAULT_ELF, DEFAULT_HEX, DEFAULT_MODEL, GENERATED, REPO
from ..train.config import CRITERIA, DECODINGS, FineTune, PairFocus, Recipe, TrainConfig

if TYPE_CHECKING:
    from ..board.client import UnoClient

TRAIN, TUNE, RECIPE = TrainConfig(), FineTune(), Recipe()  # the defaults shown and used
CORPUS_HELP = ("corpus: query|response .txt, ChatterBot .yml (or a directory of them), .csv/.tsv with query and "
               "response columns, .jsonl; any of them .gz (README \"Dataset format\")")


def _formats(text: str) -> list[str]:
    """`1` -> ['1bit'], `1,1,2,8` -> one format per layer (model/formats.py)."""
    try:
        return formats.parse_formats(text)
    except formats.FormatError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


def _store_bytes(text: str) -> int | str:
    return text if text == "fit" else _positive(text)


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"pruning ratios are comma-separated fractions, got {text!r}")
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise argparse.ArgumentTypeError(f"pruning ratios are fractions in [0, 1), got {text!r}")
    return ratios


def _variants(text: str) -> list[str]:
    from ..train.pipeline import VARIANTS

    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"variants are a comma-separated list of {', '.join(VARIANTS)}")
    return names


def _decodings(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(n not in DECODINGS for n in names):
        raise argparse.ArgumentTypeError(f"decodings are a comma-separated list of {', '.join(DECODINGS)}")
    return names


def load_model(path: str | Path | None) -> IntModel:
    """Any model file a command accepts; torch is imported only for a training checkpoint (.pt)."""
    if model_path(path).suffix == CHECKPOINT_SUFFIX:
        from ..train.checkpoint import load_model as load_any

        return load_any(path)
    return load_int_model(path)


@contextmanager
def _settings_errors() -> Iterator[None]:
    """A bad setting (ValueError from a config or a recipe) is the user's error: one line, exit code 2."""
    try:
        yield
    except ValueError as e:
        if isinstance(e, (DatasetError, ModelError)):
            raise
        raise ModelError(str(e)) from e


# ---- commands ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from ..train.scratch import train

    with _settings_errors():
        if args.store_bytes is not None and args.decoding != "replies":
            raise ValueError("--store-bytes sizes the reply store: it goes with --decoding replies")
        config = TrainConfig(
            hidden=args.hidden,
            formats=formats.parse_formats(args.bits, len(args.hidden) + 1),
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            heldout=args.heldout,
            patience=args.patience,
            eval_every=args.eval_every,
            augment=args.augment,
            decoding=args.decoding,
            case=args.case,
            transliterate=args.transliterate,
            store_bytes=None if args.store_bytes in (None, "fit") else args.store_bytes,
            sparsity=args.sparsity,
            features=FeatureSpec(args.query_buckets, args.context_buckets, args.context_len),
        )
        room = None
        if args.store_bytes == "fit":
            from ..codegen.plan import store_room

            room = functools.partial(store_room, config.features, config.hidden, config.formats,
                                     board=get_board(args.board))
        result = train(args.data, config, Path(args.out), store_room=room)
    print(result.summary())
    return 0


def _record_density(model: IntModel, data: str | Path) -> None:
    from ..data.dataset import load_dataset, spread_queries
    from ..model.density import measure_density

    dataset = load_dataset(data)
    model.meta["density"] = measure_density(model, spread_queries(dataset.pairs))
    model.meta["density_data"] = str(data)
    print(f"density measured on {data}: {', '.join(f'{d:.3f}' for d in model.meta['density'])}")


def cmd_import_z80ai(args: argparse.Namespace) -> int:
    from ..model.z80ai import load_z80ai

    model = load_z80ai(args.model)
    out = Path(args.out)
    model.name = out.stem
    if args.data:
        _record_density(model, args.data)
        model.meta["dataset"] = {"path": str(args.data)}  # where the bench takes its queries and quality
    model.save(out)
    print(f"{model.describe()}\nwrote {out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """`unochat data FILE...`: what each corpus holds, and how much of it an UNO can hold."""
    import json
    from dataclasses import asdict

    from ..codegen.plan import store_room
    from ..data.dataset import answerable, build_charset, corpus_report, load_dataset
    from ..model.replies import ReplyStore, encode, select_replies

    rows = []
    for path in args.files:
        dataset = load_dataset(path, case=args.case, transliterate=args.transliterate)
        report = corpus_report(dataset)
        charset = build_charset(dataset.pairs)
        # beside the model README "Real corpora" measures: 256-128-96, 1-bit, replies kept by pairs served per byte
        room = store_room(FeatureSpec(), [128, 96], ["1bit"] * 3, len(charset))
        held = select_replies(dataset.pairs, charset, room)
        held_pairs = sum(n for reply, n in answerable(dataset.pairs).items() if reply in held)
        every_pair = report.pairs + sum(report.refused.values())
        uno = {"store_bytes_all": encode(ReplyStore([p.response for p in dataset.pairs]), charset).nbytes,
               "store_room": room, "held_replies": len(held), "held_ceiling": held_pairs / every_pair}
        print(dataset.summary())
        print(f"  {report.queries:,} distinct queries, {report.replies:,} distinct replies, {report.reply_bytes:,} B of "
              f"reply text (longest {report.longest}); exact-match ceiling {100 * report.ceiling:.2f}%")
        print(f"  on an UNO: all replies stored take {uno['store_bytes_all']:,} B; beside a 256-128-96 1-bit model "
              f"{room:,} B hold {len(held):,} replies, a ceiling of {100 * uno['held_ceiling']:.2f}%")
        for problem in dataset.problems if args.refused else []:
            print(f"  {problem} [{problem.kind}]")
        rows.append({**asdict(report), "on_uno": uno})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_density(args: argparse.Namespace) -> int:
    model = load_int_model(args.model)
    _record_density(model, args.data)
    out = Path(args.out or args.model)
    model.save(out)
    print(f"wrote {out}")
    return 0


def _plan(model: IntModel, kernel_path: str, board: Board):  # noqa: ANN202 (codegen.layout.Plan)
    from ..codegen.plan import plan_for

    plan = plan_for(model, kernel_path, board=board)
    if plan.density_note:
        print(f"note: {plan.density_note}")
    return plan


def cmd_export(args: argparse.Namespace) -> int:
    from ..codegen.render import render

    model = load_model(args.model)
    if args.arduino_library:
        return _export_library(model, args)
    out_dir = Path(args.out_dir) if args.out_dir else GENERATED
    plan = _plan(model, args.kernel_path, get_board(args.board))
    for path in render(model, out_dir, kernels=args.kernel_path, plan=plan):
        print(f"wrote {path}")
    if args.int_model:
        model.save(args.int_model)
        print(f"wrote {args.int_model}")
    return 0


def _export_library(model: IntModel, args: argparse.Namespace) -> int:
    from ..firmware.arduino import LIBRARY, export_library, zip_library

    lib_dir = Path(args.arduino_library)
    if lib_dir.name != LIBRARY:
        lib_dir = lib_dir / LIBRARY
    board = get_board(args.board)
    written = export_library(model, lib_dir, board, kernels=args.kernel_path, question=args.question)
    print(f"wrote the Arduino library {lib_dir} ({len(written)} files) and {zip_library(lib_dir)}: in the "
          f"Arduino IDE, Sketch > Include Library > Add .ZIP Library, then File > Examples > unochat > Chat "
          f"(board: {board.title})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from ..firmware.build import build_firmware

    model = load_model(args.model)
    board = get_board(args.board)
    report = build_firmware(model, kernels=args.kernel_path, board=board)
    print(f"{model.describe()}\nbuild/firmware.hex for the {board.title}: {report.summary()}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from ..model import reference

    model = load_model(args.model)
    query = normalize_query(args.query)
    if not args.logits:
        print(reference.reply(model, query))
        return 0

    def show(prefixes: list[str], logits: np.ndarray, chosen: list[int]) -> None:
        symbol = "EOS" if chosen[0] == model.eos else repr(model.charset[chosen[0]])
        print(f"{len(prefixes[0]):2d} {symbol:5s} " + " ".join(str(int(v)) for v in logits[0]))

    print(reference.generate(model, [query], on_step=show)[0])
    return 0


def _focus(beta: float) -> PairFocus | None:
    return PairFocus(beta=beta) if beta > 0 else None


def _fine_tune(args: argparse.Namespace) -> FineTune:
    return FineTune(epochs=args.fine_tune_epochs, lr=args.lr, patience=args.patience, eval_every=args.eval_every,
                    batch_size=args.batch_size, seed=args.seed, focus=_focus(args.focus), restarts=args.restarts)


def cmd_prune(args: argparse.Namespace) -> int:
    from ..train.finetune import prune_checkpoint

    with _settings_errors():
        result = prune_checkpoint(args.model, args.out, args.ratios or [args.ratio], _fine_tune(args),
                                  criterion=args.criterion, data_path=args.data)
    print(result.summary())
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..train.finetune import quantize_checkpoint

    with _settings_errors():
        result = quantize_checkpoint(args.model, args.out, args.bits, _fine_tune(args), sparsity=args.sparsity,
                                     data_path=args.data)
    print(result.summary())
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from ..measure import bench
    from ..train.pipeline import make_variants, stage_times

    def tune(epochs: int, restarts: int = 0) -> FineTune:
        return FineTune(epochs=epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, focus=_focus(args.focus),
                        restarts=restarts)

    with _settings_errors():
        if args.export_best and args.no_build:
            raise ValueError("--export-best picks the best model that fits the UNO: it needs the firmware builds")
        recipe = Recipe(
            hidden=args.hidden, bits=args.bits, epochs=args.epochs, ratios=args.ratios or [args.ratio],
            criterion=args.criterion, prune=tune(args.prune_epochs), binary_bits=args.binary_bits,
            binary=tune(args.binary_epochs, args.binary_restarts), ternary_sparsity=args.ternary_sparsity,
            ternary=tune(args.ternary_epochs, args.ternary_restarts), best_hidden=args.best_hidden,
            best_bits=args.best_bits, best_epochs=args.best_epochs, lr=args.lr, batch_size=args.batch_size,
            seed=args.seed, case=args.case, transliterate=args.transliterate,
        )
        out_dir = Path(args.out_dir)
        runs = make_variants(args.data, out_dir, recipe, args.variants, heldout=args.heldout)
        rows = bench.bench([out_dir], build=not args.no_build, latency=False)
        print(bench.table(rows))
        print(stage_times(runs))
        if args.export_best:
            print(bench.export_fitting(rows, Path(args.export_best)))
    return 0


def _device_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report a device or simulator problem as one line on stderr (exit code 1), not a traceback."""
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (DeviceError, SimError) as e:
            print(f"unochat {args.command}: {e}", file=sys.stderr)
            return 1

    return run


@contextmanager
def _board(args: argparse.Namespace) -> Iterator[UnoClient]:
    """The client for --port PORT or --sim [ELF]."""
    from ..board.client import connect

    with connect(port=args.port, sim=args.sim, timeout=args.timeout, board=get_board(args.board)) as client:
        yield client


def cmd_sim(args: argparse.Namespace) -> int:
    from ..board.sim import main_sim

    return main_sim(Path(args.elf), link=args.link, realtime=args.realtime, board=get_board(args.board),
                    bootloader=args.bootloader)


@_device_command
def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    with _board(args) as client:
        return run_chat(client)


def _write_json(write: Callable[[object, str], None], rows: object, path: str | None) -> None:
    if path:
        write(rows, path)
        print(f"wrote {path}")


@_device_command
def cmd_bench(args: argparse.Namespace) -> int:
    models = ([args.model_option] if args.model_option else []) + args.models
    if args.kernels:
        from ..measure import kernels

        if models:
            raise ModelError("--kernels measures the kernels on models of its own; "
                             "--parts MODEL... splits a model's character into its parts")
        report = kernels.run(queries=args.queries or kernels.FIRST_LAYER_QUERIES)
        print(report.table())
        _write_json(kernels.write_json, report, args.json)
        return 0
    if args.parts:
        from ..measure import breakdown

        rows, skipped = breakdown.breakdowns([load_model(m) for m in models or [DEFAULT_MODEL]],
                                             args.queries or SAMPLE_QUERIES)
        print("\n".join([row.table() for row in rows] + skipped))
        _write_json(breakdown.write_json, rows, args.json)
        return 1 if any(row.mismatches for row in rows) else 0
    from ..measure import bench

    if args.flash and not args.port:
        raise ModelError("--flash writes each model to a real board: it needs --port")
    if args.flash and args.no_build:
        raise ModelError("--flash writes each model's firmware build: it cannot go with --no-build")
    with _settings_errors():
        rows = bench.bench(
            models or [str(DEFAULT_MODEL)], args.data, build=not args.no_build, latency=not args.no_latency,
            elf=Path(args.sim) if args.sim else None, port=args.port, flash_first=args.flash,
            queries=args.queries or SAMPLE_QUERIES, examples=args.examples, timeout=args.timeout,
            board=get_board(args.board),
        )
    print(bench.table(rows))
    _write_json(bench.write_json, rows, args.json)
    if args.plot:
        bench.plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 1 if any(r.mismatches for r in rows) else 0


@_device_command
def cmd_search(args: argparse.Namespace) -> int:
    from ..measure import search as s

    if args.export_best and args.no_build:
        raise ModelError("--export-best picks the best model that fits: it needs the front's firmware builds")
    with _settings_errors():
        seconds = s.parse_time(args.time) if args.time else None
        chosen = {"widths": args.widths, "depths": args.depths, "formats": args.formats,
                  "ratios": args.ratios, "epochs": args.epochs, "decodings": args.decodings,
                  "context_buckets": args.context_buckets}
        space = s.SearchSpace(**{k: tuple(v) for k, v in chosen.items() if v is not None})
        search = s.Search(data=Path(args.data), board=get_board(args.board), objective=args.objective,
                          heldout=args.heldout, case=args.case, transliterate=args.transliterate, seed=args.seed,
                          space=space, study=args.study, out_dir=args.out_dir, storage=args.storage,
                          trial_seconds=s.parse_time(args.trial_time) if args.trial_time else None)
        if args.trials is None and seconds is None:
            raise ValueError("say how long to search: --trials N, --time T, or both")
    try:
        study = s.optimize(search, args.trials, seconds)
    except KeyboardInterrupt:
        return 130
    front = s.measured_front(search, s.front_candidates(study, args.front_max), build=not args.no_build)
    print(s.table(search, front))
    s.write_json(search, study, front, search.out_dir / "front.json")
    s.plot(search, study, front, search.out_dir / "front.png")
    print(f"wrote {search.out_dir / 'front.json'}, {search.out_dir / 'front.png'}")
    if args.export_best:
        best = s.best_row(search, front)
        if best is None:
            raise ModelError("no model of the front fits the board: search longer, or give it more room")
        print("\n".join(s.export_best(best, Path(args.export_best))))
    return 0


@_device_command
def cmd_flash(args: argparse.Namespace) -> int:
    from ..board.flash import flash

    command = flash(args.port, args.hex, dry_run=args.dry_run, board=get_board(args.board))
    print(" ".join(command) if args.dry_run else f"flashed {args.hex} to {args.port}")
    return 0


# ---- arguments -----------------------------------------------------------------------------------
def _add_fine_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="corpus file (default: the dataset the model was trained on)")
    p.add_argument("--fine-tune-epochs", type=_positive, default=TUNE.epochs)
    p.add_argument("--patience", type=_positive, help="stop after this many epochs without a better integer score")
    p.add_argument("--lr", type=float, default=TUNE.lr)
    p.add_argument("--eval-every", type=_positive, default=TUNE.eval_every,
                   help="evaluate the integer model every N epochs")
    p.add_argument("--batch-size", type=int, default=TUNE.batch_size)
    p.add_argument("--seed", type=int, default=TUNE.seed)
    _add_focus_argument(p)
    _add_restarts_argument(p, "--restarts", TUNE.restarts)
    p.add_argument("--out", required=True, help="checkpoint path (.pt); the integer model goes beside it (.npz)")


def _add_focus_argument(p: argparse.ArgumentParser) -> None:
    default = PairFocus().beta
    p.add_argument("--focus", type=float, default=default, metavar="BETA",
                   help=f"weigh each pair by P(whole reply)^BETA while fine-tuning, for exact match "
                        f"(default {default:g}; 0: plain cross-entropy)")


def _add_restarts_argument(p: argparse.ArgumentParser, flag: str, default: int) -> None:
    p.add_argument(flag, type=int, default=default, metavar="N",
                   help=f"then N more cosine cycles of {TUNE.restart_epochs} epochs at lr {TUNE.restart_lr:g}, "
                        f"each from the best state so far (warm restarts; default {default})")


def _add_board_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", choices=list(BOARDS), default=UNO.name,
                   help=f"the board: its flash and SRAM budget, build, simulated MCU and upload (default {UNO.name})")


def _add_device_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of a real board, e.g. /dev/ttyACM0")
    where.add_argument("--sim", nargs="?", const=str(DEFAULT_ELF), metavar="ELF",
                       help=f"run the firmware on a virtual board (default ELF {DEFAULT_ELF.relative_to(REPO)})")
    _add_board_choice(p)
    p.add_argument("--timeout", type=float, default=REPLY_TIMEOUT,
                   help=f"seconds to wait for one reply (default {REPLY_TIMEOUT:g})")


def _add_reading_arguments(p: argparse.ArgumentParser, case: str) -> None:
    p.add_argument("--case", choices=CASES, default=case,
                   help=f"keep: replies in the corpus's own case; upper: upper-cased (z80ai's models) (default {case})")
    p.add_argument("--transliterate", action="store_true",
                   help="map letters outside ASCII to their ASCII forms (é -> e) instead of refusing those pairs")


def _add_kernel_path_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel-path", choices=KERNEL_PATHS, default=KERNEL_PATHS[0],
                   help="fast: AVR assembly inner loops (default); c: the plain C reference kernels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unochat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"unochat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model with quantization-aware training")
    p.add_argument("--data", default=str(DEFAULT_DATA), help=CORPUS_HELP)
    p.add_argument("--hidden", type=_sizes, default=TRAIN.hidden, help="hidden layer sizes, e.g. 256,192,128")
    p.add_argument("--bits", default=TRAIN.formats[0],
                   help=f"weight format, or one per layer (hidden layers, then the output): {formats.choices()}")
    p.add_argument("--epochs", type=int, default=TRAIN.epochs)
    p.add_argument("--warmup-epochs", type=int, default=TRAIN.warmup_epochs,
                   help="epochs to blend float into quantized weights")
    p.add_argument("--batch-size", type=int, default=TRAIN.batch_size)
    p.add_argument("--lr", type=float, default=TRAIN.lr)
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument("--heldout", type=float, default=TRAIN.heldout, help="fraction of pairs held out (seeded split)")
    p.add_argument("--patience", type=int, help="stop after this many epochs without a better integer score")
    p.add_argument("--eval-every", type=int, default=TRAIN.eval_every, help="evaluate the integer model every N epochs")
    p.add_argument("--augment", type=int, default=TRAIN.augment, metavar="N",
                   help="also train on N seeded variants of each training query (typos, dropped/swapped words)")
    _add_reading_arguments(p, TRAIN.case)
    p.add_argument("--query-buckets", type=int, default=TRAIN.features.query_buckets,
                   help="hashed query trigram buckets: the first layer's first inputs (16..256, a power of 2)")
    p.add_argument("--context-buckets", type=int, default=TRAIN.features.context_buckets,
                   help="hashed n-gram buckets of the reply so far: the first layer's other inputs")
    p.add_argument("--context-len", type=int, default=TRAIN.features.context_len,
                   help="characters of the reply so far the context n-grams see (3..16)")
    p.add_argument("--sparsity", type=float, default=TRAIN.sparsity,
                   help=f"ternary layers (--bits t): the share of each row's weights that are 0 (default {TRAIN.sparsity:g})")
    p.add_argument("--decoding", choices=DECODINGS, default=TRAIN.decoding,
                   help="replies: keep generation to the corpus's replies, stored on the device (README \"Real "
                        "corpora\"); free: any string (default)")
    p.add_argument("--store-bytes", type=_store_bytes, metavar="B|fit",
                   help="with --decoding replies: the reply store's flash budget, or `fit`: what the board "
                        "(--board) leaves beside the model; the replies serving the most pairs per byte are kept "
                        "(default: every reply)")
    _add_board_choice(p)
    p.add_argument("--out", required=True, help="checkpoint path (.pt); the integer model goes beside it (.npz)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("import-z80ai", help="import a z80ai .npz model as an integer model")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="measure the model's input density on this dataset (for the kernel plan)")
    p.set_defaults(func=cmd_import_z80ai)

    p = sub.add_parser("data", help="what a corpus holds: pairs, refusals, replies, the exact-match ceiling, "
                                    "how much of it an UNO can hold")
    p.add_argument("files", nargs="+", metavar="FILE", help=CORPUS_HELP)
    _add_reading_arguments(p, TRAIN.case)
    p.add_argument("--refused", action="store_true", help="list every refused line with its file, line and reason")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("density", help="measure a model's input density on a dataset and record it in the model")
    p.add_argument("model", help="integer model (.npz)")
    p.add_argument("--data", required=True, help="query|response file whose queries the model replies to")
    p.add_argument("--out", help="write the model here (default: in place)")
    p.set_defaults(func=cmd_density)

    p = sub.add_parser("export", help="render the model's C into firmware/generated/, or an Arduino library")
    p.add_argument("model", nargs="?", help="model file (.npz or .pt); default: models/default.npz")
    p.add_argument("--out-dir", help="where to write the C (default firmware/generated)")
    p.add_argument("--int-model", help="also write the integer model to this .npz")
    p.add_argument("--arduino-library", metavar="DIR",
                   help="instead: write an Arduino library (DIR/unochat, and DIR/unochat.zip for the IDE's Add .ZIP "
                        "Library) with the model, a C API and the examples Chat and Hello")
    p.add_argument("--question", default="hello", help="what the library's Hello example asks (default: hello)")
    _add_kernel_path_argument(p)
    _add_board_choice(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="export, build the firmware for a board (default the UNO), check its size")
    p.add_argument("model", nargs="?", help="model file (.npz or .pt); default: models/default.npz")
    _add_kernel_path_argument(p)
    _add_board_choice(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("ask", help="the reference's reply to a query, on the host")
    p.add_argument("model_or_query", nargs="+", metavar="[MODEL] QUERY")
    p.add_argument("--logits", action="store_true", help="print the raw integer logits of every step")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("sim", help="run the firmware on a virtual board (default the UNO) behind a pseudo-terminal")
    p.add_argument("elf", nargs="?", default=str(DEFAULT_ELF), help="firmware ELF (default build/firmware.elf)")
    p.add_argument("--link", help="also make this symlink to the pty, e.g. /tmp/unochat-uno")
    p.add_argument("--realtime", action="store_true", help="pace the simulation to a real board's speed")
    p.add_argument("--bootloader", action="store_true",
                   help="start in the board's bootloader at every reset, as a real board does, so that "
                        "`unochat flash` can write a new firmware through the port (optiboot: UNO, Nano)")
    _add_board_choice(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("chat", help="chat with the model on a UNO or a virtual one, with on-device latency")
    _add_device_arguments(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("prune", help="remove hidden neurons from a trained model, fine-tune it")
    p.add_argument("model", help="training checkpoint (.pt)")
    p.add_argument("--ratio", type=float, default=RECIPE.ratios[0],
                   help="fraction of every hidden layer's neurons to remove")
    p.add_argument("--ratios", type=_ratios, help="one fraction per hidden layer, e.g. 0.5,0.4,0.3 (instead of --ratio)")
    p.add_argument("--criterion", choices=CRITERIA, default=RECIPE.criterion, help="neuron ranking")
    _add_fine_tune_arguments(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="give a trained model new weight formats (latent weights kept), fine-tune it")
    p.add_argument("model", help="training checkpoint (.pt)")
    p.add_argument("--bits", type=_formats, required=True, help=f"{formats.choices()}; per layer: 1,1,2,8")
    p.add_argument("--sparsity", type=float, help="ternary layers: the share of zero weights (default: the model's)")
    _add_fine_tune_arguments(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("pipeline", help="baseline -> pruned -> binary (and ternary, best): train, compress, summarize")
    p.add_argument("--data", default=str(DEFAULT_DATA), help=CORPUS_HELP)
    p.add_argument("--out-dir", default=str(REPO / "models" / "pipeline"), help="where the variants go")
    p.add_argument("--variants", type=_variants, default=["baseline", "pruned", "binary"],
                   help="which of baseline,pruned,binary,ternary,best to make (and what they start from)")
    p.add_argument("--hidden", type=_sizes, default=RECIPE.hidden, help="baseline hidden layer sizes")
    p.add_argument("--bits", default=RECIPE.bits, help="baseline (and pruned) weight format; per layer: 1,1,2,8")
    p.add_argument("--epochs", type=_positive, default=RECIPE.epochs, help="baseline training epochs")
    p.add_argument("--ratio", type=float, default=RECIPE.ratios[0], help="fraction of every hidden layer's neurons pruned")
    p.add_argument("--ratios", type=_ratios, help="one fraction per hidden layer (instead of --ratio)")
    p.add_argument("--criterion", choices=CRITERIA, default=RECIPE.criterion, help="neuron ranking")
    p.add_argument("--prune-epochs", type=_positive, default=RECIPE.prune.epochs, help="fine-tuning epochs after pruning")
    p.add_argument("--binary-bits", default=RECIPE.binary_bits,
                   help="the binary variant's weight format; per layer: 1,1,1,8")
    p.add_argument("--binary-epochs", type=_positive, default=RECIPE.binary.epochs,
                   help="fine-tuning epochs after binarizing")
    _add_restarts_argument(p, "--binary-restarts", RECIPE.binary.restarts)
    p.add_argument("--ternary-sparsity", type=float, default=RECIPE.ternary_sparsity,
                   help="the ternary variant's share of zero weights in each row")
    p.add_argument("--ternary-epochs", type=_positive, default=RECIPE.ternary.epochs,
                   help="fine-tuning epochs after making the pruned model ternary")
    _add_restarts_argument(p, "--ternary-restarts", RECIPE.ternary.restarts)
    p.add_argument("--best-hidden", type=_sizes, default=RECIPE.best_hidden, help="the best variant's hidden sizes")
    p.add_argument("--best-bits", default=RECIPE.best_bits, help="the best variant's weight format")
    p.add_argument("--best-epochs", type=_positive, default=RECIPE.best_epochs, help="the best variant's training epochs")
    p.add_argument("--lr", type=float, default=RECIPE.lr)
    p.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    p.add_argument("--seed", type=int, default=RECIPE.seed)
    _add_focus_argument(p)
    _add_reading_arguments(p, RECIPE.case)
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
    what = p.add_mutually_exclusive_group()
    what.add_argument("--kernels", action="store_true",
                      help="instead: cycles of every inner-loop kernel (C path and fast) per weight format and "
                           "layer shape on the virtual UNO, with its own firmware builds (no model)")
    what.add_argument("--parts", action="store_true",
                      help="instead: the cycles of each model's generated character per part (query, context "
                           "features, each layer and its requantization, argmax), C path and fast")
    p.add_argument("--no-latency", action="store_true", help="build and measure sizes, but do not run the firmware")
    p.add_argument("--queries", type=_positive,
                   help=f"queries to time (default {SAMPLE_QUERIES}; the kernel table's first layer: 8)")
    p.add_argument("--examples", type=int, default=3, help="example replies shown per model (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON (a list, one object per model)")
    p.add_argument("--plot", metavar="FILE", help="also plot EM against flash (matplotlib, e.g. bench.png)")
    _add_board_choice(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("search", help="find the best model that fits a board: Optuna over shapes, formats, pruning, "
                                      "training and decoding; the Pareto front built and timed")
    p.add_argument("--data", required=True, help="the corpus (file or directory)")
    _add_board_choice(p)
    p.add_argument("--trials", type=_positive, help="until the study has N finished trials (all workers together)")
    p.add_argument("--time", help="for this long, e.g. 30m, 2h, 90s (with --trials: whichever comes first)")
    p.add_argument("--trial-time", help="stop a trial still training after this long (default: a tenth of --time)")
    p.add_argument("--objective", choices=["em", "em_heldout"], default="em",
                   help="maximize exact match on the pairs trained on (em, default) or on the held-out ones")
    p.add_argument("--heldout", type=float, default=0.1, help="share of the pairs held out (default 0.1)")
    _add_reading_arguments(p, "keep")
    p.add_argument("--seed", type=int, default=0, help="training seed of every trial (the sampler's varies by worker)")
    p.add_argument("--storage", help="Optuna storage URL: sqlite:///F.db (default: OUT_DIR/search.db), or a shared "
                                     "database, e.g. postgresql://user@host/db, for workers on several machines")
    p.add_argument("--study", help="the study's name (default: <corpus>-<board>)")
    p.add_argument("--out-dir", help="where trials' models and the front go (default: build/search/<study>)")
    p.add_argument("--front-max", type=_positive, default=6, help="build and time at most this many front models")
    p.add_argument("--no-build", action="store_true", help="the front from the planner's figures, nothing built")
    p.add_argument("--export-best", metavar="OUT", help="copy the best model of the front that fits to OUT.npz/.pt")
    p.add_argument("--widths", type=_sizes, help="hidden widths a layer may take, e.g. 64,128,192")
    p.add_argument("--depths", type=_sizes, help="numbers of hidden layers, e.g. 2,3")
    p.add_argument("--formats", type=_formats, help=f"weight formats a layer may take ({formats.choices()})")
    p.add_argument("--ratios", type=_ratios, help="pruning ratios, e.g. 0,0.3,0.5")
    p.add_argument("--epochs", type=_sizes, help="LOW,HIGH epochs of training")
    p.add_argument("--decodings", type=_decodings, help="free,replies")
    p.add_argument("--context-buckets", type=_sizes, help="the features' context buckets a trial may take, e.g. 64,128")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("flash", help="write build/firmware.hex to a board through its bootloader, with avrdude")
    p.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyACM0")
    p.add_argument("--hex", default=str(DEFAULT_HEX), help="image to write (default build/firmware.hex)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the image and print the avrdude command only (the port need not exist)")
    _add_board_choice(p)
    p.set_defaults(func=cmd_flash)
    return parser


def _split_ask(words: list[str]) -> tuple[str | None, str]:
    """(model, query) of `unochat ask [MODEL] QUERY`: the first word is a model when more words follow
    and it has a model's suffix or is an existing file (whose suffix model_path then checks)."""
    first = Path(words[0])
    if len(words) > 1 and (first.suffix in MODEL_SUFFIXES or first.is_file()):
        return words[0], " ".join(words[1:])
    return None, " ".join(words)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ask":
        args.model, args.query = _split_ask(args.model_or_query)
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
