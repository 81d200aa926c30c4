"""The benchmark: quality, size and on-device speed of models, one row per model and dataset.

For every model (an integer .npz, a .pt checkpoint, or a pipeline directory standing for its variants):
- quality, always of the integer model (metrics.py): teacher-forced accuracy (TF), exact match of whole
  generated replies (EM) and cross-entropy on the pairs the model was trained on; held-out TF and EM on
  the seeded split (data.dataset.training_split) of the fraction the model or its twin held out. A model
  trained on all pairs has seen the held-out pairs, so its held-out figures come from its held-out twin:
  the same recipe trained without them (`heldout/<name>.npz` beside it, as `unochat pipeline --heldout
  0.1` writes it). A model trained with `heldout` > 0 is measured on its own split.
- flash and static SRAM from avr-size of the real firmware, built in a throw-away copy of the PlatformIO
  project (firmware/project.py: the repo's build/ is left alone); fits = firmware.size.check_budget. The offline build links oversized
  images, so a model that does not fit still has measured sizes.
- cycles and ms per generated character (query features, the EOS step and the UART writes included),
  from the firmware's own Timer1 counts on the virtual board (or a real one), every reply checked against
  the reference. `board` (boards.py; default the UNO) sets the budget, the build and the simulated MCU.
  Only firmware that fits the board is run: the simulated MCU has the board's flash (simavr refuses a
  bigger image), and a latency computed from a formula would not be a measurement. A model that does not
  fit has no latency; the row says why.
- a few example replies (the reference's, which the device matched where it ran).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..board.client import connect
from ..board.flash import flash
from ..boards import UNO, Board
from ..data.augment import TYPED_DIFFERENTLY, typed_differently
from ..data.dataset import Dataset, Pair, load_dataset, recorded_dataset, training_split
from ..firmware.build import build_firmware
from ..firmware.project import firmware_project
from ..firmware.size import BudgetError, SizeReport, avr_size, check_budget
from ..model import reference
from ..model.intmodel import IntModel
from ..model.metrics import evaluate
from ..train.checkpoint import load_model
from ..train.pipeline import HELDOUT_DIR, MANIFEST
from .latency import BENCH_QUERIES, LatencyReport, bench_queries, measure_latency

def not_run(board: Board) -> str:
    return f"not run: does not fit the {board.title} (the simulated {board.mcu} has only its flash and SRAM)"


@dataclass
class BenchRow:
    name: str
    dataset: str
    model: str  # the file measured
    shape: list[int]
    bits: str  # "2", or one format per layer "1,1,2,8"
    params: int
    pairs: int  # pairs the model was trained on (tf, em, loss are measured on them)
    tf: float
    em: float
    loss: float | None
    heldout_pairs: int | None = None
    tf_heldout: float | None = None
    em_heldout: float | None = None
    heldout_model: str | None = None  # the model the held-out figures come from
    decoding: str = "free"  # or "replies": reply-constrained, `stored` replies on the device
    stored: int | None = None
    corpus_pairs: int = 0  # every pair of the corpus, refused lines included
    held_pairs: int = 0  # the pairs the model can answer: its reply stored (constrained) or spellable (free)
    em_corpus: float = 0.0  # exact matches over corpus_pairs
    em_held: float = 0.0  # exact matches over held_pairs
    typed_same: float | None = None  # share of queries typed differently (case, punctuation, spacing, a typo) whose reply stays the same
    typed_same_by_kind: dict = field(default_factory=dict)  # the same per way of typing differently
    flash_bytes: int | None = None
    sram_bytes: int | None = None
    fits: bool | None = None
    budget: str | None = None  # why it does not fit
    cycles_per_char: float | None = None
    ms_per_char: float | None = None
    latency_note: str | None = None
    mismatches: int | None = None  # device replies that differ from the reference
    train_seconds: float | None = None
    examples: list[dict] = field(default_factory=list)
    latency: dict | None = None  # the whole LatencyReport
    board: str = UNO.name  # boards.py: the budget, the build and the (virtual) board it was timed on

    def to_dict(self) -> dict:
        return asdict(self)


# ---- models and datasets -------------------------------------------------------------------------
def expand_models(paths: list[str | Path]) -> list[Path]:
    """Model files; a directory stands for the variants of its pipeline.json (in order), else its *.npz."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
        elif (p / MANIFEST).is_file():
            manifest = json.loads((p / MANIFEST).read_text())
            files += [p / v["model"] for v in manifest["variants"]]
        else:
            files += sorted(p.glob("*.npz"))
    return files


def _bits(model: IntModel) -> str:
    bits = [f.removesuffix("bit").replace("int8", "8") for f in model.formats]
    return bits[0] if len(set(bits)) == 1 else ",".join(bits)


def dataset_path(model: IntModel, data: str | Path | None = None) -> Path:
    """`data` if given, else the dataset the model was trained on (its meta), found here or in the repo."""
    if data is not None:
        return Path(data)
    found = recorded_dataset(model.meta)
    if found is None:
        named = (model.meta.get("dataset") or {}).get("path")
        raise FileNotFoundError(f"{model.name}: its training data ({named or 'not recorded'}) is not here; pass --data")
    return found


def dataset_label(path: Path) -> str:
    """The dataset's absolute path, however it was given (relative to some directory, or absolute), so
    that one dataset is one block of the table and one colour of the plot."""
    return str(path.resolve())


def reading(model: IntModel) -> dict:
    """How the model read its corpus (case, transliteration): as its config records, else upper-cased,
    as every model made before the option existed and z80ai's models were."""
    config = model.meta.get("config") or {}
    return {"case": config.get("case", "upper"), "transliterate": config.get("transliterate", False)}


def heldout_fraction(model: IntModel) -> float:
    return float((model.meta.get("config") or {}).get("heldout", 0.0))


def split(model: IntModel, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(pairs it was trained on, pairs held out from it), by the model's own training config."""
    return training_split(pairs, heldout_fraction(model))


def heldout_twin(path: Path, model: IntModel) -> tuple[Path, IntModel] | None:
    """The same recipe trained without the held-out pairs, if it sits in heldout/ beside the model."""
    for suffix in (".npz", ".pt"):
        twin_path = path.parent / HELDOUT_DIR / (path.stem + suffix)
        if twin_path.is_file():
            twin = load_model(twin_path)
            same_data = (twin.meta.get("dataset") or {}).get("digest") == (model.meta.get("dataset") or {}).get("digest")
            if heldout_fraction(twin) > 0 and same_data:
                return twin_path, twin
    return None


def corpus_figures(model: IntModel, dataset: Dataset, seed: int = 0) -> dict:
    """EM over every pair of the corpus (a refused line is a pair no model answers) and over the pairs the
    model holds, and the share of queries that keep their reply when typed differently (one variant of
    each kind of data.augment.TYPED_DIFFERENTLY per distinct query, seeded)."""
    pairs = dataset.pairs
    spellable = set(model.charset[:-1])
    if model.store is None:
        held = [set(p.response) <= spellable for p in pairs]
    else:
        held = [p.response in model.store for p in pairs]
    queries = list(dict.fromkeys(p.query for p in pairs))
    replies = dict(zip(queries, reference.generate(model, queries)))
    right = [replies[p.query] == p.response for p in pairs]
    rng = np.random.default_rng(seed)
    variants = [(q, v, kind) for q in queries for kind in TYPED_DIFFERENTLY
                if (v := typed_differently(q, kind, rng)) != q and v]
    variant_replies = reference.generate(model, [v for _, v, _ in variants])
    same = [replies[q] == r for (q, _, _), r in zip(variants, variant_replies)]
    kinds = [kind for _, _, kind in variants]
    return {
        "corpus_pairs": len(pairs) + len(dataset.problems),
        "held_pairs": sum(held),
        "em_corpus": sum(right) / (len(pairs) + len(dataset.problems)),
        "em_held": sum(r for r, h in zip(right, held) if h) / max(sum(held), 1),
        "typed_same": float(np.mean(same)) if same else None,
        "typed_same_by_kind": {kind: float(np.mean([s for s, k in zip(same, kinds) if k == kind]))
                               for kind in dict.fromkeys(kinds)},
    }


def measure_quality(path: Path, model: IntModel, data: str | Path | None, n_examples: int,
                    board: Board = UNO) -> BenchRow:
    data_path = dataset_path(model, data)
    corpus = load_dataset(data_path, **reading(model))
    pairs = load_dataset(data_path, charset=model.charset[:-1], **reading(model)).pairs  # unspellable: skipped
    trained_on, held = split(model, pairs)
    m = evaluate(model, trained_on)
    row = BenchRow(
        name=path.stem, dataset=dataset_label(data_path), model=str(path), board=board.name, shape=model.shape,
        bits=_bits(model),
        params=model.params(), pairs=len(trained_on), tf=m["tf"], em=m["em"], loss=m["loss"],
        train_seconds=model.meta.get("total_seconds"), decoding=model.decoding,
        stored=len(model.replies) if model.replies is not None else None, **corpus_figures(model, corpus),
    )
    source: tuple[Path, IntModel] | None = (path, model) if held else heldout_twin(path, model)
    if source is not None:
        held_model = source[1]
        held = split(held_model, pairs)[1]
        h = evaluate(held_model, held)
        row.heldout_pairs, row.tf_heldout, row.em_heldout = len(held), h["tf"], h["em"]
        row.heldout_model = str(source[0])
    step = max(1, len(trained_on) // max(n_examples, 1))
    shown = trained_on[::step][:n_examples]
    for pair, got in zip(shown, reference.generate(model, [p.query for p in shown])):
        row.examples.append({"query": pair.query, "reply": got, "expected": pair.response})
    return row


# ---- firmware ------------------------------------------------------------------------------------
def build_sizes(model: IntModel, project: Path, board: Board = UNO,
                quiet: bool = False) -> tuple[SizeReport | None, Path | None, str | None]:
    """(avr-size of the linked firmware, its ELF, why it does not fit or None). Sizes and ELF are None
    when no image could be linked (a layer too big for avr-gcc: build_firmware refuses it before compiling)."""
    elf = project / "build" / "firmware.elf"
    elf.unlink(missing_ok=True)  # the project is reused: never measure the previous model's image
    try:
        return build_firmware(model, project, board=board, quiet=quiet), elf, None
    except BudgetError as e:
        return (e.report, elf, str(e)) if elf.is_file() else (None, None, str(e))


def elf_sizes(model: IntModel, elf: Path, board: Board = UNO) -> tuple[SizeReport | None, Path, str | None]:
    """The same for an already built ELF; sizes only if it was built for this model (its `!i` names the id)."""
    if f"id={model.fingerprint()} ".encode() not in elf.read_bytes():
        return None, elf, None
    report = avr_size(elf, board)
    try:
        check_budget(report, board.stack_reserve)
    except BudgetError as e:
        return report, elf, str(e)
    return report, elf, None


def time_on_device(
    model: IntModel, elf: Path | None, sizes: SizeReport | None, *, port: str | None, flash_first: bool,
    queries: int, timeout: float, board: Board = UNO,
) -> LatencyReport:
    """measure_latency on the virtual board running `elf`, or on the real one at `port` (flashed first if asked)."""
    dataset, chosen = bench_queries(model, queries)
    if port is not None and flash_first:
        flash(port, elf.with_suffix(".hex"), board=board)
    with connect(port=port, sim=None if port else elf, timeout=timeout, board=board) as client:
        return measure_latency(client, model, chosen, sizes=sizes, dataset=dataset)


def _add_sizes(row: BenchRow, sizes: SizeReport | None, budget: str | None) -> None:
    if sizes is not None:
        row.flash_bytes, row.sram_bytes = sizes.flash_bytes, sizes.sram_bytes
    if sizes is not None or budget is not None:  # refused before linking: no sizes, but it does not fit
        row.fits = budget is None
    row.budget = budget


def _add_latency(row: BenchRow, report: LatencyReport) -> None:
    row.cycles_per_char, row.ms_per_char = report.char_cycles, report.ms(report.char_cycles)
    row.mismatches, row.latency = len(report.mismatches), report.to_dict()


def bench(
    paths: list[str | Path],
    data: str | Path | None = None,
    *,
    build: bool = True,
    latency: bool = True,
    elf: Path | None = None,
    port: str | None = None,
    flash_first: bool = False,
    queries: int = BENCH_QUERIES,
    examples: int = 3,
    timeout: float = 20.0,
    board: Board = UNO,
    quiet_builds: bool = False,
    log: Callable[[str], None] = print,
) -> list[BenchRow]:
    """One BenchRow per model on `board`. `elf`: time this already built firmware (one model) instead of
    building; `port`: a real board (`flash_first`: flash each model's build before timing it, else it must
    run it)."""
    files = expand_models(paths)
    if (elf is not None or (port is not None and not flash_first)) and len(files) != 1:
        raise ValueError("a given firmware, or a board that is not flashed, runs one model: bench one at a time")
    rows = []
    with firmware_project() as project:
        for path in files:
            model = load_model(path)
            model.name = path.stem
            log(f"bench {path}: {model.describe()}")
            row = measure_quality(path, model, data, examples, board)
            if elf is not None:
                sizes, run_elf, budget = elf_sizes(model, elf, board)
            elif build:
                sizes, run_elf, budget = build_sizes(model, project, board, quiet_builds)
            else:
                sizes, run_elf, budget = None, None, None
            _add_sizes(row, sizes, budget)
            if not latency:
                row.latency_note = "not measured (--no-latency)"
            elif budget is not None:
                row.latency_note = not_run(board)
            elif run_elf is None and port is None:
                row.latency_note = "not measured (no firmware built)"
            else:
                report = time_on_device(model, run_elf, sizes, port=port, flash_first=flash_first,
                                        queries=queries, timeout=timeout, board=board)
                log(report.table())
                _add_latency(row, report)
            rows.append(row)
    return rows


# ---- output --------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v: float | int | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[BenchRow]) -> str:
    """The benchmark as text: one block per dataset, one line per model, then the example replies."""
    head = (f"{'name':<10} {'shape':<20} {'bits':<8} {'params':>8} {'TF %':>6} {'EM %':>6} {'loss':>6} "
            f"{'TF ho':>6} {'EM ho':>6} {'flash B':>8} {'SRAM B':>7} {'fits':>4} {'cyc/char':>9} "
            f"{'ms/char':>7} {'train s':>7}")
    lines: list[str] = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        block = [r for r in rows if r.dataset == dataset]
        lines += ["", f"{dataset}: TF/EM/loss on the pairs each model was trained on; "
                  "TF ho/EM ho on the seeded held-out split, from a model trained without it", head]
        for r in block:
            fits = "-" if r.fits is None else ("yes" if r.fits else "no")
            name = r.name if r.board == UNO.name else f"{r.name}@{r.board}"
            lines.append(
                f"{name:<10} {'-'.join(map(str, r.shape)):<20} {r.bits:<8} {r.params:>8,} {_pct(r.tf):>6} "
                f"{_pct(r.em):>6} {_num(r.loss, '.4f'):>6} {_pct(r.tf_heldout):>6} {_pct(r.em_heldout):>6} "
                f"{_num(r.flash_bytes):>8} {_num(r.sram_bytes):>7} {fits:>4} {_num(r.cycles_per_char):>9} "
                f"{_num(r.ms_per_char, '.2f'):>7} {_num(r.train_seconds):>7}"
            )
        for r in block:
            for note in (r.latency_note, r.budget and r.budget.splitlines()[0]):
                if note:
                    lines.append(f"  {r.name}: {note}")
            if r.mismatches:
                lines.append(f"  {r.name}: {r.mismatches} device replies differ from the reference")
            for ex in r.examples:
                mark = "ok" if ex["reply"] == ex["expected"] else f"expected {ex['expected']!r}"
                lines.append(f"  {r.name}: {ex['query']!r} -> {ex['reply']!r} ({mark})")
    return "\n".join(lines[1:])


def write_json(rows: list[BenchRow], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")


def plot(rows: list[BenchRow], path: str | Path) -> None:
    """EM (filled) and held-out EM (hollow) against flash, the UNO's flash marked; one colour per dataset."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.axvspan(0, UNO.flash_limit / 1024, color="tab:green", alpha=0.1, label=f"fits the UNO's flash ({UNO.flash_limit:,} B)")
    ax.axvline(UNO.flash_limit / 1024, color="tab:green", linestyle="--", linewidth=1)
    for i, dataset in enumerate(dict.fromkeys(r.dataset for r in rows)):
        color = f"C{i}"
        shown = [r for r in rows if r.dataset == dataset and r.flash_bytes is not None]
        x = [r.flash_bytes / 1024 for r in shown]
        ax.scatter(x, [100 * r.em for r in shown], color=color, label=f"EM, {Path(dataset).name}")
        held = [(xi, r) for xi, r in zip(x, shown) if r.em_heldout is not None]
        ax.scatter([xi for xi, _ in held], [100 * r.em_heldout for _, r in held], facecolors="none",
                   edgecolors=color, label=f"held-out EM, {Path(dataset).name}")
        for xi, r in zip(x, shown):
            ax.annotate(r.name, (xi, 100 * r.em), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("flash (KB, avr-size of the firmware)")
    ax.set_ylabel("exact match of whole replies (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("unochat: quality against flash (integer models)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def export_fitting(rows: list[BenchRow], out: Path) -> str:
    """Copy the model that fits the UNO with the highest EM (then TF) to out.pt + out.npz, and its
    held-out twin, if any, to heldout/ beside it (where the benchmark looks for it)."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        raise ValueError("no variant fits the UNO: nothing to export")
    best = max(fitting, key=lambda r: (r.em, r.tf))
    source = Path(best.model)
    copies = [(source, out)]
    twin = source.parent / HELDOUT_DIR / source.name
    if twin.is_file():
        copies.append((twin, out.parent / HELDOUT_DIR / out.name))
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.with_suffix(".pt"), dst.with_suffix(".pt"))
        model = IntModel.load(src.with_suffix(".npz"))
        model.name = dst.stem  # the firmware reports this name
        model.save(dst.with_suffix(".npz"))
    return f"exported {best.name} (EM {100 * best.em:.2f}%, fits the UNO) to {out.with_suffix('.pt')} and .npz"
