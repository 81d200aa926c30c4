"""Find the best model that fits a board: a budget-aware search on Optuna, over hidden sizes, per-layer weight
formats (every format of the registry), pruning ratio, epochs, learning rate, decoding (free or
reply-constrained) and the reply store's share of the flash.

A trial samples settings (Optuna's TPE sampler, which learns from the trials so far), then:
1. sizes them before training anything: the planner's flash for a model of that final shape (codegen.plan
   `placeholder`, tables at their widest). A shape that cannot fit the board is not trained: the trial is
   recorded as infeasible (its `flash_over` > 0, which the sampler takes as a constraint) and scores 0;
2. trains it (train.scratch.train, on the pairs outside the seeded held-out split), reporting its integer
   teacher-forced accuracy as it goes, so that Optuna's median pruner stops a trial that trails the others
   at the same epoch; prunes and fine-tunes it if the ratio says so;
3. scores the integer model: exact match over the pairs it was trained on (`em`, the benchmark's EM) and
   over the held-out pairs (`em_heldout`); either is the objective. The flash figure of a trial is the
   planner's estimate for the trained model.
The front: the trials that fit and that no other beats on score, flash and the planner's cycle model at
once; its best `front_max` are then built for real (avr-size of the ELF) and timed on the virtual board
(Timer1 cycles, every reply checked against the reference) by measure/bench.py, and the front is taken again
on those measured figures. `export_best` copies the best of them that fits.

A study lives in an Optuna storage: SQLite by default, so it resumes where it stopped (Ctrl-C included);
several processes, or machines through a shared database URL (PostgreSQL, MySQL: Optuna's RDB storage), run
trials of one study at once; each trial's model is written to the study's folder, which the machine that
builds the front must see.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..boards import UNO, Board
from ..codegen.plan import flash_bytes, plan_for, placeholder, step_cycles, store_room
from ..data.dataset import CASES, build_charset, load_dataset, training_split
from ..data.features import FeatureSpec
from ..model import formats
from ..model.intmodel import IntModel
from ..model.metrics import exact_match
from ..train.config import DECODINGS, FineTune, PairFocus, TrainConfig
from ..train.finetune import prune_checkpoint
from ..train.pipeline import HELDOUT_DIR
from ..train.prune import kept_count
from ..train.scratch import train
from . import bench

OBJECTIVES = ("em", "em_heldout")
FINISHED = ("COMPLETE", "PRUNED")  # the trials a study's --trials counts


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may choose. The defaults span the models an UNO holds (README "Finding the best model")."""

    widths: tuple[int, ...] = (32, 48, 64, 96, 128, 160, 192, 256)
    depths: tuple[int, ...] = (2, 3)  # hidden layers
    formats: tuple[str, ...] = tuple(formats.FORMATS)
    ratios: tuple[float, ...] = (0.0, 0.3, 0.4, 0.5, 0.6)  # share of each hidden layer's neurons pruned
    epochs: tuple[int, int] = (30, 150)  # in steps of 10
    lr: tuple[float, float] = (1e-3, 1e-2)  # log-uniform
    decodings: tuple[str, ...] = DECODINGS
    store_shares: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of the flash the board leaves the store
    # the features' context buckets: fewer make a smaller first layer and leave a store more flash. Not
    # searched by default: on ChatterBot, 30 minutes over (64, 128) and up to 300 epochs found worse
    # models than over 128 alone and up to 150 (README "Finding the best model")
    context_buckets: tuple[int, ...] = (128,)
    prune_epochs: int = 30  # fine-tuning after pruning (the pipeline's)

    def __post_init__(self) -> None:
        for name in self.formats:
            formats.get(name)
        if not self.widths or not self.depths or min(self.widths) < 1 or min(self.depths) < 1:
            raise ValueError("the search needs hidden widths and depths >= 1")
        if len(self.epochs) != 2 or not 1 <= self.epochs[0] <= self.epochs[1] or not 0 < self.lr[0] <= self.lr[1]:
            raise ValueError(f"bad epochs {self.epochs} or learning rates {self.lr}")
        if any(d not in DECODINGS for d in self.decodings) or any(not 0 <= r < 1 for r in self.ratios):
            raise ValueError(f"decodings are among {', '.join(DECODINGS)}; ratios in [0, 1)")
        if not self.context_buckets:
            raise ValueError("the search needs at least one number of context buckets")
        for buckets in self.context_buckets:
            FeatureSpec(context_buckets=buckets)


@dataclass
class Search:
    """One study: the corpus, the board, what is maximized, and where trials and their models go."""

    data: Path
    board: Board = UNO
    objective: str = "em"
    heldout: float = 0.1
    case: str = "keep"
    transliterate: bool = False
    seed: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)
    study: str | None = None  # default: <corpus>-<board>
    out_dir: Path | None = None  # default: build/search/<study>
    storage: str | None = None  # default: sqlite:///<out_dir>/search.db
    # a trial still training after this long is stopped (pruned): one slow draw must not eat a timed
    # search; default, with a time to search for: a tenth of it
    trial_seconds: float | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"the objective is one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "em_heldout" and self.heldout <= 0:
            raise ValueError("--objective em_heldout needs a held-out split (--heldout > 0)")
        if self.case not in CASES:
            raise ValueError(f"case is one of {', '.join(CASES)}, got {self.case!r}")
        self.study = self.study or f"{self.data.name.split('.')[0]}-{self.board.name}"
        self.out_dir = Path(self.out_dir or Path("build") / "search" / self.study)
        self.storage = self.storage or f"sqlite:///{self.out_dir / 'search.db'}"


@dataclass
class FrontRow:
    trial: int
    model: str
    shape: list[int]
    formats: list[str]
    decoding: str
    em: float
    em_heldout: float | None
    flash_bytes: int | None  # avr-size of the real ELF
    sram_bytes: int | None
    fits: bool | None
    ms_per_char: float | None  # measured on the virtual board
    mismatches: int | None
    settings: dict


# ---- a trial ----------------------------------------------------------------------------------------
def sample(trial, space: SearchSpace) -> dict:  # noqa: ANN001 (optuna.Trial)
    """The settings of one trial, drawn by the study's sampler."""
    depth = trial.suggest_categorical("depth", list(space.depths))
    hidden = [trial.suggest_categorical(f"width{i}", list(space.widths)) for i in range(depth)]
    layer_formats = [trial.suggest_categorical(f"format{i}", list(space.formats)) for i in range(depth + 1)]
    settings = {
        "hidden": hidden, "formats": layer_formats,
        "ratio": trial.suggest_categorical("ratio", list(space.ratios)),
        "epochs": trial.suggest_int("epochs", space.epochs[0], space.epochs[1], step=10)
        if space.epochs[1] - space.epochs[0] >= 10 else trial.suggest_int("epochs", *space.epochs),
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "decoding": trial.suggest_categorical("decoding", list(space.decodings)),
        "context_buckets": trial.suggest_categorical("context_buckets", list(space.context_buckets)),
    }
    if settings["decoding"] == "replies":
        settings["store_share"] = trial.suggest_categorical("store_share", list(space.store_shares))
    return settings


def final_hidden(settings: dict) -> list[int]:
    """The hidden widths after pruning."""
    return [kept_count(w, settings["ratio"]) for w in settings["hidden"]]


def features_of(settings: dict) -> FeatureSpec:
    """The trial's features (a study made before they were searched: the default ones)."""
    return FeatureSpec(context_buckets=settings.get("context_buckets", FeatureSpec().context_buckets))


def planned_flash(search: Search, settings: dict, n_outputs: int) -> tuple[int, int | None]:
    """(the planner's flash for the trial's final shape, tables at their widest, its store included; the
    store's budget, None for free decoding). Over the board's model_flash: the shape cannot fit."""
    features = features_of(settings)
    hidden = final_hidden(settings)
    if settings["decoding"] != "replies":
        shape = placeholder(features, hidden, settings["formats"], n_outputs)
        return flash_bytes(shape, plan_for(shape, board=search.board)), None
    # the model's smallest fast plan and the store's decoder; the store takes its share of what is left
    room = store_room(features, hidden, settings["formats"], n_outputs, search.board)
    budget = int(room * settings["store_share"])
    if budget <= 0:
        return search.board.model_flash + max(1, -room), None
    return search.board.model_flash - room + budget, budget


def score(search: Search, model: IntModel) -> dict:
    """The integer model's exact match on the pairs it was trained on and on the held-out ones."""
    pairs = load_dataset(search.data, charset=model.charset[:-1], case=search.case,
                         transliterate=search.transliterate).pairs
    trained_on, held = training_split(pairs, search.heldout)
    return {"em": exact_match(model, trained_on), "em_heldout": exact_match(model, held) if held else None}


def run_trial(trial, search: Search, n_outputs: int, deadline: float | None = None,  # noqa: ANN001
              trial_seconds: float | None = None) -> float:
    """One trial (an optuna.Trial): sample, size, train, score. Training stops (the trial is pruned) at
    `deadline` (time.monotonic(): the search's end) or after `trial_seconds`, whichever comes first."""
    import optuna

    start = time.perf_counter()
    ends = [t for t in (deadline, time.monotonic() + trial_seconds if trial_seconds else None) if t is not None]
    settings = sample(trial, search.space)
    trial.set_user_attr("settings", settings)
    same = _same_settings(trial)
    if same is not None and same.state.name == "PRUNED":  # the same training would trail again
        trial.set_user_attr("same_as", same.number)
        raise optuna.TrialPruned(f"the settings of trial {same.number}, which was pruned")
    if same is not None:  # another worker (or an earlier run) trains or trained exactly this: take its result
        for key, value in same.user_attrs.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("flash_over", float(same.user_attrs.get("flash_over", 0)))
        trial.set_user_attr("same_as", same.number)
        return same.value
    flash, store = planned_flash(search, settings, n_outputs)
    if flash > search.board.model_flash:
        trial.set_user_attr("planned_flash", flash)
        _flash_over(trial, flash - search.board.model_flash)
        return 0.0  # infeasible: not trained (the sampler learns it from flash_over)
    config = TrainConfig(hidden=settings["hidden"], formats=settings["formats"], epochs=settings["epochs"],
                         lr=settings["lr"], heldout=search.heldout, case=search.case,
                         transliterate=search.transliterate, decoding=settings["decoding"], store_bytes=store,
                         seed=search.seed, features=features_of(settings))

    def overdue(epoch: int) -> None:
        if ends and time.monotonic() > min(ends):
            trial.set_user_attr("stopped", f"out of time at epoch {epoch}")
            raise optuna.TrialPruned(f"out of time at epoch {epoch}")

    def report(epoch: int, tf: float | None) -> None:
        if tf is not None:
            trial.report(tf, epoch)
        overdue(epoch)
        if tf is not None and trial.should_prune():
            raise optuna.TrialPruned(f"integer TF {tf:.4f} at epoch {epoch} trails the other trials")

    out = search.out_dir / f"trial-{trial.number}.pt"
    with contextlib.redirect_stdout(io.StringIO()):  # the dataset's summary, once per trial: said once at the start
        train(search.data, config, out, progress=False, on_epoch=report)
        if settings["ratio"] > 0:
            pruned = out.with_name(f"trial-{trial.number}-pruned.pt")
            prune_checkpoint(out, pruned, [settings["ratio"]], FineTune(epochs=search.space.prune_epochs,
                             focus=PairFocus(), seed=search.seed), data_path=search.data, progress=False,
                             on_epoch=lambda epoch, _: overdue(settings["epochs"] + epoch))
            out = pruned
    model = IntModel.load(out.with_suffix(".npz"))
    plan = plan_for(model, board=search.board)
    planned = flash_bytes(model, plan)
    figures = score(search, model)
    trial.set_user_attr("model", str(out.with_suffix(".npz")))
    trial.set_user_attr("planned_flash", planned)
    _flash_over(trial, planned - search.board.model_flash)
    trial.set_user_attr("planned_cycles", step_cycles(model, plan))  # ranks the front's candidates only
    trial.set_user_attr("shape", model.shape)
    trial.set_user_attr("em", figures["em"])
    trial.set_user_attr("em_heldout", figures["em_heldout"])
    trial.set_user_attr("seconds", time.perf_counter() - start)
    return figures[search.objective]


def _flash_over(trial, over: int) -> None:  # noqa: ANN001
    """Bytes over the board's budget (<= 0: fits): a constraint for the sampler (set once, when the trial
    knows it), and kept with the trial."""
    trial.set_user_attr("flash_over", over)
    trial.set_constraint("flash_over", float(over))


def _same_settings(trial):  # noqa: ANN001, ANN202 (optuna trials)
    """An earlier trial of the study with the same settings (completed or pruned), waited for if it is still
    running; else None."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    while True:
        twins = [t for t in trial.study.get_trials(deepcopy=False, states=states)
                 if t.number != trial.number and t.params == trial.params]
        done = [t for t in twins if t.state != optuna.trial.TrialState.RUNNING]
        if done or not twins:
            return done[0] if done else None
        time.sleep(2.0)


# ---- the study ----------------------------------------------------------------------------------------
def _storage(url: str, attempts: int = 20):  # noqa: ANN202 (optuna.storages.RDBStorage)
    """Optuna's RDB storage at `url`. Workers started together race to create its tables and stamp their
    version; the database then answers one of them "table already exists", "database is locked" or a
    duplicate version row, so a worker tries again (the tables are there by then)."""
    import optuna
    import sqlalchemy.exc

    def connect():  # noqa: ANN202
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=60, grace_period=180,  # a killed worker's trial is failed, not left running
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
        )

    for attempt in range(attempts - 1):
        try:
            return connect()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            time.sleep(0.2 + 0.1 * attempt)
    return connect()


def open_study(search: Search):  # noqa: ANN201 (optuna.Study)
    """The study in its storage, created or resumed. Infeasible shapes are a constraint the sampler learns;
    the median pruner stops trials that trail the others at the same epoch, once 5 trials are done."""
    import optuna

    search.out_dir.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's
    storage = _storage(search.storage)
    existing = len(optuna.load_study(study_name=search.study, storage=storage).trials) \
        if search.study in {s.study_name for s in optuna.get_all_study_summaries(storage)} else 0
    # each worker its own seed: workers drawing the same samples would only wait on each other (_same_settings)
    sampler = optuna.samplers.TPESampler(seed=(search.seed * 1_000_003 + existing * 7_919 + os.getpid()) % 2**31)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10)
    return optuna.create_study(study_name=search.study, storage=storage, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


def finished(study) -> int:  # noqa: ANN001
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def optimize(search: Search, trials: int | None = None, seconds: float | None = None,
             log: Callable[[str], None] = print) -> object:
    """Run trials until the study has `trials` finished ones (completed or pruned, from every worker) or
    `seconds` have passed, whichever comes first. Returns the study. Ctrl-C stops it: the study stays in its
    storage, and the same call resumes it."""
    import optuna

    if trials is None and seconds is None:
        raise ValueError("say how long to search: a number of trials, a time, or both")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dataset = load_dataset(search.data, case=search.case, transliterate=search.transliterate)
    log(dataset.summary())
    n_outputs = len(build_charset(dataset.pairs)) + 1
    study = open_study(search)
    study.set_user_attr("search", {"data": str(search.data), "board": search.board.name,
                                   "objective": search.objective, "heldout": search.heldout,
                                   "case": search.case, "transliterate": search.transliterate,
                                   "space": asdict(search.space)})
    started = time.monotonic()
    trial_seconds = search.trial_seconds or (seconds / 10 if seconds else None)
    already = finished(study)
    log(f"search {search.study}: {already} trials already in {search.storage}; "
        + (f"until {trials} trials" if trials else "") + (" or " if trials and seconds else "")
        + (f"for {_clock(seconds)}" if seconds else ""))
    callbacks = [_progress(search, trials, seconds, started, log)]
    if trials is not None:
        if already >= trials:
            return study
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=tuple(
            getattr(optuna.trial.TrialState, s) for s in FINISHED)))
    deadline = started + seconds if seconds else None
    try:
        study.optimize(lambda t: run_trial(t, search, n_outputs, deadline, trial_seconds), timeout=seconds,
                       callbacks=callbacks, gc_after_trial=True)
    except KeyboardInterrupt:
        log(f"stopped: {finished(study)} trials are kept in {search.storage}; the same command resumes the study")
        raise
    return study


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _progress(search: Search, trials: int | None, seconds: float | None, started: float,
              log: Callable[[str], None]) -> Callable:
    def after(study, t) -> None:  # noqa: ANN001
        done = finished(study)
        s = t.user_attrs.get("settings", {})
        hidden = "-".join(map(str, final_hidden(s))) if s else "?"  # after pruning: what is (or would be) trained
        if t.state.name == "PRUNED":
            what = (f"pruned (as trial {t.user_attrs['same_as']}, the same settings)" if "same_as" in t.user_attrs
                    else f"stopped: {t.user_attrs['stopped']}" if "stopped" in t.user_attrs else "pruned (trailing)")
        elif t.user_attrs.get("flash_over", 0) > 0:
            what = f"does not fit: {t.user_attrs.get('planned_flash', 0):,} B planned"
        elif t.value is not None:
            what = (f"{search.objective} {100 * t.value:.2f}%, {t.user_attrs.get('planned_flash', 0):,} B planned"
                    + (f" (same as trial {t.user_attrs['same_as']})" if "same_as" in t.user_attrs else ""))
        else:
            what = t.state.name.lower()
        try:
            best = f"best {100 * study.best_value:.2f}% (trial {study.best_trial.number})"
        except ValueError:
            best = "no best yet"
        left = []
        if trials:
            left.append(f"{done}/{trials} trials")
        if seconds:
            left.append(f"{_clock(seconds - (time.monotonic() - started))} left")
        log(f"trial {t.number} hidden {hidden} {','.join(s.get('formats', []))} ratio {s.get('ratio')} "
            f"{s.get('decoding')}: {what} | {best} | {', '.join(left)}")
    return after


# ---- the front ------------------------------------------------------------------------------------------
def _dominates(a: tuple, b: tuple) -> bool:
    """a = (score to maximize, then costs to minimize) at least as good everywhere and better somewhere."""
    better_or_equal = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    return better_or_equal and a != b


def pareto(points: list[tuple]) -> list[int]:
    """Indices of the points no other point dominates."""
    return [i for i, p in enumerate(points) if not any(_dominates(q, p) for q in points)]


def front_candidates(study, front_max: int) -> list:  # noqa: ANN001
    """The completed trials that fit (planned) with their model here, non-dominated on score, planned flash
    and planned cycles; the `front_max` best-scoring of them (a repeated setting counts once)."""
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state.name == "COMPLETE" and t.user_attrs.get("flash_over", 1) <= 0
              and "same_as" not in t.user_attrs and Path(t.user_attrs.get("model", "")).is_file()]
    points = [(t.value, t.user_attrs["planned_flash"], t.user_attrs["planned_cycles"]) for t in trials]
    chosen = [trials[i] for i in pareto(points)]
    return sorted(chosen, key=lambda t: (-t.value, t.user_attrs["planned_flash"]))[:front_max]


def measured_front(search: Search, candidates: list, build: bool = True, log: Callable[[str], None] = print,
                   ) -> list[FrontRow]:
    """The candidates built for real and timed on the virtual board (bench.bench), then the front again on
    the measured figures (score, flash, ms per character) among those that fit. Without `build`, the
    candidates as they are, with no measured size or time."""
    if not candidates:
        return []
    rows = bench.bench([t.user_attrs["model"] for t in candidates], search.data, build=build, latency=build,
                       board=search.board, examples=0, quiet_builds=True, log=log) if build else None
    front = []
    for i, t in enumerate(candidates):
        r = rows[i] if rows else None
        front.append(FrontRow(
            trial=t.number, model=t.user_attrs["model"], shape=t.user_attrs["shape"],
            formats=t.user_attrs["settings"]["formats"], decoding=t.user_attrs["settings"]["decoding"],
            em=t.user_attrs["em"], em_heldout=t.user_attrs["em_heldout"],
            flash_bytes=r.flash_bytes if r else None, sram_bytes=r.sram_bytes if r else None,
            fits=r.fits if r else None, ms_per_char=r.ms_per_char if r else None,
            mismatches=r.mismatches if r else None, settings=t.user_attrs["settings"]))
    if not build:
        return front
    fitting = [f for f in front if f.fits and f.ms_per_char is not None]
    points = [(_objective(search, f), f.flash_bytes, f.ms_per_char) for f in fitting]
    return sorted((fitting[i] for i in pareto(points)), key=lambda f: -_objective(search, f))


def _objective(search: Search, row: FrontRow) -> float:
    """A front row's score by the study's objective."""
    return (row.em_heldout or 0.0) if search.objective == "em_heldout" else row.em


def best_row(search: Search, front: list[FrontRow]) -> FrontRow | None:
    """The front's best model that fits (measured), by the study's objective."""
    fitting = [f for f in front if f.fits]
    if not fitting:
        return None
    return max(fitting, key=lambda f: _objective(search, f))


def export_best(row: FrontRow, out: Path) -> list[str]:
    """Copy the model to OUT.npz (named OUT's stem: the firmware reports it) and its training checkpoint to
    OUT.pt. A held-out twin beside OUT (heldout/OUT.*, from `unochat pipeline --export-best`) belonged to
    the model this one replaces, and the benchmark would take its figures for this one's: it is removed
    (a search's model was itself trained without the held-out pairs). What was done, one line each."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = IntModel.load(Path(row.model).with_suffix(".npz"))
    model.name = out.stem
    model.save(out.with_suffix(".npz"))
    done = [f"wrote {out.with_suffix('.npz')} (trial {row.trial})"]
    checkpoint = Path(row.model).with_suffix(".pt")
    if checkpoint.is_file():
        shutil.copy(checkpoint, out.with_suffix(".pt"))
        done.append(f"wrote {out.with_suffix('.pt')}")
    for stale in (out.parent / HELDOUT_DIR / out.with_suffix(suffix).name for suffix in (".npz", ".pt")):
        if stale.is_file():
            stale.unlink()
            done.append(f"removed {stale}: the held-out twin of the model replaced")
    return done


# ---- output -----------------------------------------------------------------------------------------------
def table(search: Search, front: list[FrontRow]) -> str:
    built = any(f.flash_bytes is not None for f in front)
    head = (f"{'trial':>5} {'shape':<20} {'formats':<28} {'decoding':<8} {'EM %':>6} {'EM ho %':>7} "
            f"{'flash B':>8} {'SRAM B':>6} {'ms/char':>7}")
    how = ("avr-size of the real ELF; Timer1 on the virtual board" if built
           else "the candidates from the planner's figures: nothing built or timed")
    lines = [f"front of {search.study} on the {search.board.title}: {search.objective} against flash and ms per "
             f"character ({how})", head]
    for f in front:
        lines.append(
            f"{f.trial:>5} {'-'.join(map(str, f.shape)):<20} {','.join(f.formats):<28} {f.decoding:<8} "
            f"{100 * f.em:>6.2f} {'-' if f.em_heldout is None else format(100 * f.em_heldout, '.2f'):>7} "
            f"{'-' if f.flash_bytes is None else format(f.flash_bytes, ','):>8} "
            f"{'-' if f.sram_bytes is None else format(f.sram_bytes, ','):>6} "
            f"{'-' if f.ms_per_char is None else format(f.ms_per_char, '.2f'):>7}")
    return "\n".join(lines)


def write_json(search: Search, study, front: list[FrontRow], path: Path) -> None:  # noqa: ANN001
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, **t.user_attrs}
              for t in study.get_trials(deepcopy=False)]
    Path(path).write_text(json.dumps({"study": search.study, "storage": search.storage,
                                      "objective": search.objective, "board": search.board.name,
                                      "front": [asdict(f) for f in front], "trials": trials}, indent=2) + "\n")


def plot(search: Search, study, front: list[FrontRow], path: Path) -> None:  # noqa: ANN001
    """Every feasible trial's score against its planned flash, the measured front on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and t.user_attrs.get("flash_over", 1) <= 0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([t.user_attrs["planned_flash"] for t in done], [100 * t.value for t in done], s=14, c="0.6",
               label="trials (planned flash)")
    key = "em_heldout" if search.objective == "em_heldout" else "em"
    measured = [f for f in front if f.flash_bytes is not None]
    sc = ax.scatter([f.flash_bytes for f in measured], [100 * (getattr(f, key) or 0) for f in measured],
                    c=[f.ms_per_char for f in measured], cmap="viridis", s=40, label="front (measured)")
    if measured:
        fig.colorbar(sc, ax=ax, label="ms per character (measured)")
    ax.axvline(search.board.flash_limit, color="r", lw=0.8, ls="--", label=f"{search.board.title} flash")
    ax.set_xlabel("flash (B)")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(f"unochat search {search.study}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_time(text: str) -> float:
    """Seconds of "90", "90s", "30m", "2h" or "1h30m"."""
    parts = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ValueError(f"not a time: {text!r} (say e.g. 90s, 30m, 2h or 1h30m)")
    h, m, s = (int(g) if g else 0 for g in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise ValueError(f"a search needs some time, not {text!r}")
    return float(seconds)
