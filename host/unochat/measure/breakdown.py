"""Where a model's generated character goes, per part, on the virtual UNO: `unochat bench --parts MODEL...`.

Context features, each layer, the requantization within them (from a second build that times it apart),
argmax and the rest of a step, on both kernel paths; every reply checked against the reference.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..board.client import connect
from ..codegen.layout import KERNEL_PATHS
from ..codegen.plan import plan_for
from ..firmware.build import build_for_simulator
from ..firmware.size import BudgetError
from ..firmware.project import firmware_project
from ..model import reference
from ..model.intmodel import IntModel
from .cycles import cycle_stats, uart_cycles_per_char
from .latency import BENCH_QUERIES, bench_queries


@dataclass
class CharacterBreakdown:
    """Cycles of one generated character, per part (averages over the steps of real replies)."""

    model: str
    shape: list[int]
    formats: list[str]
    path: str
    chars: int
    mismatches: int
    step_median: float  # a step that generated a character
    per_char_all_in: float  # every cycle of the replies (query and UART writes included) over the characters
    query: float  # per reply: query features and the first layer's cache
    ctx: float  # per step: context features
    layers: list[float]  # per network evaluation, requantization included
    # per network evaluation, per layer (from the profiling build); None for a layer requantized inside its
    # C loop (the C path's, and the fast path's C and sparse kernels), which is not timed apart
    requant: list[float | None]
    argmax: float
    other: float  # per step: the rest (profile calls, the context shift, unochat_step itself)
    flash_bytes: int
    uart: float = 0.0  # per character: writing it to the UART as a chat does (`!u`)

    def table(self, f_cpu: int = 16_000_000) -> str:
        def row(name: str, cycles: float) -> str:
            return f"  {name:<32} {cycles:>10,.0f} {cycles / f_cpu * 1e3:>8.3f}"

        lines = [f"{self.model} {'-'.join(map(str, self.shape))} [{','.join(self.formats)}], {self.path} kernels, "
                 f"{self.chars} characters, {self.mismatches} mismatches, flash {self.flash_bytes:,} B",
                 f"  {'':<32} {'cycles':>10} {'ms':>8}",
                 row("step (median)", self.step_median), row("per character, all in", self.per_char_all_in),
                 row("query (per reply)", self.query), row("context features", self.ctx)]
        for i, (cycles, rq) in enumerate(zip(self.layers, self.requant)):
            lines.append(row(f"layer {i} ({self.shape[i]}->{self.shape[i + 1]} {self.formats[i]})", cycles))
            if self.path == "fast":
                lines.append(row("    of which requantization", rq) if rq is not None
                             else f"  {'    of which requantization':<32} {'(in its C loop: not timed apart)':>19}")
        lines += [row("argmax", self.argmax), row("other", self.other), row("UART write (per character)", self.uart)]
        return "\n".join(lines)


def breakdown(project: Path, model: IntModel, queries: list[str], path: str = "fast") -> CharacterBreakdown:
    """The parts of a generated character on the virtual UNO: `!t` on `queries` with a normal build and,
    for the fast path, with one that times requantization apart (each of its 2 profile calls a block is
    charged half to the requantization it brackets). The C path requantizes inside its layer loops: its
    requantization is not timed apart (0)."""
    expected = reference.generate(model, queries)
    plan = plan_for(model, path)
    runs = {}
    for profiled in (False, True) if path == "fast" else (False,):
        elf, flash = build_for_simulator(model, project, path, plan, profile_requant=profiled)
        with connect(sim=elf) as client:
            runs[profiled] = [client.timed_reply(q) for q in queries]
            if not profiled:
                uart = uart_cycles_per_char(client, [t.reply for t in runs[profiled]])
        runs[profiled, "flash"] = flash
    timed = runs[False]
    profiled = runs.get(True, timed)
    stats = cycle_stats(timed, model, uart)
    extra = (sum(sum(t.layer_cycles) + t.requant_cycles for t in profiled) - sum(sum(t.layer_cycles) for t in timed))
    rq_total = sum(t.requant_cycles for t in profiled) - extra / 2
    # per layer: what the profiling build took from each layer, scaled to the corrected total
    taken = [sum(t.layer_cycles[i] for t in timed) - sum(t.layer_cycles[i] for t in profiled)
             for i in range(len(model.layers))]
    scale = rq_total / max(sum(taken), 1)
    in_c = [k.is_c for k in plan.kernels]
    mismatches = sum(t.reply != e for run in (r for k, r in runs.items() if k in (False, True))
                     for t, e in zip(run, expected))
    network = stats.ctx + sum(stats.layers) + stats.argmax
    return CharacterBreakdown(
        model=model.name, shape=model.shape, formats=model.formats, path=path, chars=stats.chars,
        mismatches=mismatches,
        step_median=stats.step_median or 0.0,
        per_char_all_in=stats.all_in if stats.all_in is not None else 0.0,
        query=stats.query_median,
        ctx=stats.ctx, layers=stats.layers,
        requant=[None if c else x * scale / stats.evaluations for x, c in zip(taken, in_c)],
        argmax=stats.argmax,
        other=(sum(sum(t.steps) for t in timed) - network * stats.evaluations) / stats.steps,
        flash_bytes=runs[False, "flash"], uart=uart,
    )


def breakdowns(models: list[IntModel], n_queries: int = BENCH_QUERIES) -> tuple[list[CharacterBreakdown], list[str]]:
    """`breakdown` of each model on both kernel paths, on n_queries of its training data's queries, and
    why a path was left out: the C path of a model that fits only with the fast path's layouts (z80ai's
    stock model: its row-major weights are 41 KB)."""
    rows, skipped = [], []
    with firmware_project() as project:
        for model in models:
            queries = bench_queries(model, n_queries)[1]
            for path in KERNEL_PATHS:
                try:
                    rows.append(breakdown(project, model, queries, path))
                except BudgetError as e:
                    if path == "fast":
                        raise
                    skipped.append(f"{model.name}: the {path} path is not timed: {e}")
    return rows, skipped


def write_json(rows: list[CharacterBreakdown], path: str | Path) -> None:
    """One object per model and kernel path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
