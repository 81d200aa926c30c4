"""Cycles of each inner-loop kernel on the virtual UNO: `unochat bench --kernels`.

Every figure comes from the firmware's own Timer1 profile of a real build. The layer under test is
layer 1 of a small model whose layer 0 is a 2-bit "expander" (output j = input j mod 32, weights 0 and
1), so the raw input of `!x` decides exactly which of the tested layer's inputs are nonzero; `!p` then
reports that layer's cycles. A layer that is not the model's last is followed by a 3-output layer.

Per format, layer shape and kernel (the C path's, and each fast one the generator can pick) it runs:
- dense: every input nonzero; cycles / weights is the cycles-per-weight figure of a dense layer;
- sparse: a fraction `density` of the inputs nonzero (the list and skip kernels' case);
- zero: no input nonzero: what a layer costs besides its weights (calls, requantization, lists).
`first_layer` adds the first layer as the device runs it while it replies (query share cached per
reply, the context half's nonzero counts only): `!t` on real queries, cycles per step.

`breakdown` (`unochat bench --kernels MODEL...`) splits a model's generated character into its parts:
context features, each layer, the requantization within them (from a second build that times it apart),
argmax and the rest of a step.
"""
from __future__ import annotations

import contextlib
import io
import json
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import codegen
from .bench import firmware_project
from .build import BudgetError, build_firmware
from .device import UnoClient, connect
from .features import FeatureSpec
from .intmodel import FORMAT_RANGE, IntLayer, IntModel
from .latency import BENCH_QUERIES, steps_with_network, uart_cycles_per_char
from .uno import FLASH_SIZE, STACK_RESERVE

EXPANDER_INPUTS = 32  # layer 0's inputs: FeatureSpec(16, 16)
# 256x256 and 256x128 int8 weights (64 and 32 KB) cannot fit in flash: int8 takes smaller layers.
# "int8/16" is int8 with weights in {-1, 0, 1}, at most 128 nonzero per row: its sums fit 16 bits, so it
# runs the 16-bit int8 kernels (random int8 weights need the 24-bit ones).
# Two shapes per format share their outputs (256x128 and 128x128, 256x64 and 128x64): the cycles they
# differ by are the inner loop's alone, per weight (KernelReport.loop_cycles_per_weight).
SHAPES = {
    "1bit": ((256, 256), (256, 128), (128, 128), (128, 40)),
    "2bit": ((256, 256), (256, 128), (128, 128), (128, 40)),
    "int8": ((256, 64), (128, 64), (128, 128), (128, 40)),
    "int8/16": ((256, 64), (128, 64), (128, 128), (128, 40)),
}
FORMATS = tuple(SHAPES)
SPARSE_DENSITY = 0.25
FIRST_LAYER_QUERIES = 8  # real queries the first layer is timed on while replying
CHARSET_SMALL = "AB\x00"
CHARSET_40 = " ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?\x00"


@dataclass
class KernelResult:
    format: str
    kernel: str  # "c" (the C path) or the fast loop: dense, skip, list
    path: str  # "c" or "fast"
    inputs: int
    outputs: int
    # int8: the sum width the layer's bound needs (16 or 24), also on the C path's row, so that the two
    # int8 weight sets' rows stay apart (fill_loop_costs pairs rows by it); 16 otherwise
    acc_bits: int
    cycles: int  # the layer with every input nonzero
    cycles_per_weight: float
    sparse_cycles: int  # with a fraction `density` of the inputs nonzero
    density: float
    zero_cycles: int  # with no input nonzero: what is not per weight
    nonzero_outputs: float  # fraction of the layer's outputs (with every input nonzero) that are not 0
    kernel_flash: int  # bytes of the assembly kernel (0 for the C path: its code is in the layer)
    firmware_flash: int
    loop_cycles_per_weight: float | None = None  # the inner loop alone (KernelReport.fill_loop_costs)

    @property
    def weights(self) -> int:
        return self.inputs * self.outputs


@dataclass
class FirstLayerResult:
    format: str
    inputs: int
    outputs: int
    path: str
    step_cycles: float  # layer 0 per generated character (median over steps' averages)
    per_reply_cycles: float  # the query features and the query share (cached per reply), median
    queries: int
    mismatches: int


@dataclass
class KernelReport:
    kernels: list[KernelResult] = field(default_factory=list)
    first_layer: list[FirstLayerResult] = field(default_factory=list)

    def fill_loop_costs(self) -> None:
        """The inner loop's cycles per weight: between two shapes of a format and kernel with the same
        outputs, the difference in cycles over the difference in weights (per-neuron and per-call costs
        cancel)."""
        for r in self.kernels:
            twins = [o for o in self.kernels if (o.format, o.kernel, o.path, o.acc_bits, o.outputs)
                     == (r.format, r.kernel, r.path, r.acc_bits, r.outputs) and o.inputs != r.inputs]
            if twins:
                o = twins[0]
                r.loop_cycles_per_weight = (r.cycles - o.cycles) / ((r.inputs - o.inputs) * r.outputs)

    def to_json(self) -> list[dict]:
        """One object per format, kernel and shape (`make bench` writes them to build/kernels.json)."""
        rows = [{"case": "layer", **asdict(r)} for r in self.kernels]
        rows += [{"case": "first_layer", "kernel": "cache+list" if r.path == "fast" else "c", **asdict(r)}
                 for r in self.first_layer]
        return rows

    def table(self) -> str:
        lines = [
            "cycles of the layer as the firmware times it (kernel, requantization, lists, calls); c/w = per weight;",
            "loop c/w = the inner loop alone; dense: every input nonzero, sparse: "
            f"{SPARSE_DENSITY:g} of them, zero: none; out nz = nonzero outputs (dense)",
            f"{'format':<6} {'shape':>9} {'kernel':<10} {'cycles':>10} {'c/w':>6} {'loop c/w':>8} "
            f"{'sparse':>9} {'c/w':>6} {'zero':>8} {'out nz':>6} {'asm B':>6}",
        ]
        for r in self.kernels:
            name = r.kernel + (f"/{r.acc_bits}" if r.format == "int8" else "")
            loop = "-" if r.loop_cycles_per_weight is None else f"{r.loop_cycles_per_weight:.2f}"
            lines.append(
                f"{r.format:<6} {r.inputs:>4}x{r.outputs:<4} {name:<10} {r.cycles:>10,} {r.cycles_per_weight:>6.2f} "
                f"{loop:>8} {r.sparse_cycles:>9,} {r.sparse_cycles / r.weights:>6.2f} {r.zero_cycles:>8,} "
                f"{r.nonzero_outputs:>6.2f} {r.kernel_flash:>6}"
            )
        if self.first_layer:
            lines.append("first layer while replying (query share cached per reply, context half listed):")
            for r in self.first_layer:
                lines.append(
                    f"{r.format:<6} {r.inputs:>4}x{r.outputs:<4} {r.path:<14} {r.step_cycles:>10,.0f} per step, "
                    f"{r.per_reply_cycles:,.0f} per reply (query), {r.queries} queries, {r.mismatches} mismatches"
                )
        return "\n".join(lines)


# ---- models ------------------------------------------------------------------------------------------
def expander(n_out: int) -> IntLayer:
    """out[j] = in[j mod 32]: 2-bit weights 0 and 1, multiplier 1, no bias or shift."""
    weight = np.zeros((n_out, EXPANDER_INPUTS), dtype=np.int8)
    weight[np.arange(n_out), np.arange(n_out) % EXPANDER_INPUTS] = 1
    return IntLayer("2bit", weight, np.ones(n_out, np.int64), np.zeros(n_out, np.int64), 0, "u8")


def random_layer(rng: np.random.Generator, fmt: str, n_in: int, n_out: int, last: bool,
                 x: np.ndarray | None = None) -> IntLayer:
    """Random weights of `fmt` ("int8/16": int8 whose sums fit 16 bits), mult and bias; with an input x,
    the biases are centered so that about half the outputs of x are 0, as a ReLU layer's typically are."""
    if fmt == "int8/16":
        weight = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_out, n_in))
        weight[:, 128:] = 0
        fmt = "int8"
    else:
        lo, hi = FORMAT_RANGE[fmt]
        levels = np.array([-1, 1]) if fmt == "1bit" else np.arange(lo, hi + 1)
        weight = rng.choice(levels, size=(n_out, n_in)).astype(np.int8)
    mult = rng.integers(1, 200, size=n_out)
    bias = rng.integers(-(2**14), 2**14, size=n_out)
    if x is not None:
        bias -= (weight.astype(np.int64) @ x.astype(np.int64)) * mult
    return IntLayer(fmt, weight, mult, bias, 12, None if last else "u8")


def bench_model(fmt: str, n_in: int, n_out: int, seed: int = 0) -> IntModel:
    """expander -> the layer under test (n_in -> n_out) [-> 3 outputs]."""
    rng = np.random.default_rng(seed)
    last = n_out == len(CHARSET_40)
    first = expander(n_in)
    dense = first.weight.astype(np.int64) @ bench_inputs(1.0).astype(np.int64)  # what the layer sees
    layers = [first, random_layer(rng, fmt, n_in, n_out, last, dense)]
    if not last:
        layers.append(random_layer(rng, "1bit", n_out, len(CHARSET_SMALL), True))
    name = f"bench-{fmt.replace('/', '-')}-{n_in}x{n_out}"
    model = IntModel(layers, CHARSET_40 if last else CHARSET_SMALL, FeatureSpec(16, 16), name=name)
    model.validate()
    return model


def bench_inputs(density: float, seed: int = 0) -> np.ndarray:
    """Raw inputs of the expander whose outputs have the given fraction of nonzero values."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=EXPANDER_INPUTS).astype(np.uint8)
    x[rng.permutation(EXPANDER_INPUTS)[: round((1 - density) * EXPANDER_INPUTS)]] = 0
    return x


def plans_to_measure(model: IntModel) -> Iterator[tuple[str, codegen.Plan | None]]:
    """(path, plan): the C path, then one fast plan per kernel the generator could pick for layer 1. A
    hidden layer under test skips its zero outputs' requantization, as the generator has it do for ReLU
    layers (about half the outputs of these random layers are 0)."""
    yield "c", None
    hidden = len(model.layers) > 2
    for kernel in codegen.candidate_kernels(model, 1):
        kernels = [codegen.LayerKernel("2bit", "skip"), kernel]
        kernels += [codegen.LayerKernel("1bit", "dense")] * (len(model.layers) - 2)
        skip = [False, hidden] + [False] * (len(model.layers) - 2)
        yield "fast", codegen.Plan(kernels, cache=False, density=[], skip_zeros=skip)


# ---- measuring ---------------------------------------------------------------------------------------
def layer_profile(client: UnoClient, x: np.ndarray) -> list[int]:
    """Cycles per layer of one `!x` evaluation (`!p`)."""
    client.logits(x)
    line = client.exchange(b"!p")[-1].decode()
    if not line.startswith("!p layers="):
        raise ValueError(f"unexpected answer to !p: {line!r}")
    return [int(v) for v in line.removeprefix("!p layers=").split(",")]


def symbol_sizes(elf: Path) -> dict[str, int]:
    out = subprocess.run(["avr-nm", "-S", "--size-sort", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


class Builder:
    """Builds firmware in a throw-away copy of the PlatformIO project (unochat.bench.firmware_project,
    which also points PlatformIO at the repo's core): the repo's build/ is untouched."""

    def __init__(self, project: Path) -> None:
        self.project = project

    def build(self, model: IntModel, path: str, plan: codegen.Plan | None = None,
              profile_requant: bool = False) -> tuple[Path, int]:
        codegen.render(model, self.project / "firmware" / "generated", kernels=path, plan=plan,
                       profile_requant=profile_requant)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                sizes = build_firmware(self.project)
        except BudgetError as e:
            # The build that times requantization apart runs only in the simulator, whose ATmega328P
            # has no bootloader: its extra profile calls may take the bootloader's 512 B of flash.
            room = e.report.stack_room >= STACK_RESERVE
            if not (profile_requant and room and e.report.flash_bytes <= FLASH_SIZE):
                raise
            sizes = e.report
        return self.project / "build" / "firmware.elf", sizes.flash_bytes


def measure_layer(builder: Builder, fmt: str, n_in: int, n_out: int, density: float = SPARSE_DENSITY) -> list[KernelResult]:
    """Every kernel (C path and fast) of one format and shape, checked bit for bit on the inputs used."""
    from . import reference

    model = bench_model(fmt, n_in, n_out)
    fmt = model.layers[1].fmt
    inputs = {"dense": bench_inputs(1.0), "sparse": bench_inputs(density), "zero": bench_inputs(0.0)}
    results = []
    for path, plan in plans_to_measure(model):
        elf, flash = builder.build(model, path, plan)
        cycles = {}
        with connect(sim=elf) as client:
            for name, x in inputs.items():
                cycles[name] = layer_profile(client, x)[1]
                if not np.array_equal(client.logits(x), reference.logits(model, x)[0]):
                    raise AssertionError(f"{model.name} {path} {plan.kernels[1] if plan else ''}: logits differ")
        acc = codegen.int8_acc_bits(model, 1) if fmt == "int8" else 16
        kernel = plan.kernels[1] if plan else codegen.LayerKernel(fmt, "c", acc)
        asm = symbol_sizes(elf).get(f"uk_{kernel.asm}", 0) if kernel.asm else 0
        outputs = reference.forward(model, inputs["dense"])[1]
        results.append(KernelResult(
            format=fmt, kernel=kernel.loop, path=path, inputs=n_in, outputs=n_out,
            acc_bits=kernel.acc_bits, cycles=cycles["dense"], cycles_per_weight=cycles["dense"] / (n_in * n_out),
            sparse_cycles=cycles["sparse"], density=density, zero_cycles=cycles["zero"],
            nonzero_outputs=float((outputs != 0).mean()), kernel_flash=asm, firmware_flash=flash,
        ))
    return results


def measure_first_layer(builder: Builder, fmt: str, n_out: int, queries: list[str]) -> list[FirstLayerResult]:
    """The first layer as it runs while replying, on real queries, both paths (replies checked)."""
    from . import reference

    rng = np.random.default_rng(1)
    spec = FeatureSpec()
    layers = [random_layer(rng, fmt, spec.n_inputs, n_out, False), random_layer(rng, "1bit", n_out, 3, True)]
    model = IntModel(layers, CHARSET_SMALL, spec, max_reply=20, name=f"bench-first-{fmt}-{n_out}")
    model.validate()
    expected = reference.generate(model, queries)
    results = []
    for path in codegen.KERNEL_PATHS:
        elf, _ = builder.build(model, path)
        with connect(sim=elf) as client:
            timed = [client.timed_reply(q) for q in queries]
        per_step = [t.layer_cycles[0] / steps_with_network(t, model.max_reply) for t in timed]
        results.append(FirstLayerResult(
            format=fmt, inputs=spec.n_inputs, outputs=n_out, path=path,
            step_cycles=statistics.median(per_step),
            per_reply_cycles=statistics.median(t.query_cycles for t in timed),
            queries=len(queries), mismatches=sum(t.reply != e for t, e in zip(timed, expected)),
        ))
    return results


def run(
    formats: tuple[str, ...] = FORMATS,
    shapes: dict[str, tuple[tuple[int, int], ...]] = SHAPES,
    first_layer: bool = True,
    queries: int = FIRST_LAYER_QUERIES,
) -> KernelReport:
    """Measure every kernel for every format and its shapes and, with first_layer, the sparse first
    layer on real queries."""
    from .latency import bench_queries

    report = KernelReport()
    with firmware_project() as project:
        builder = Builder(project)
        for fmt in formats:
            for n_in, n_out in shapes[fmt]:
                report.kernels += measure_layer(builder, fmt, n_in, n_out)
        report.fill_loop_costs()
        if first_layer:
            probe = bench_model("1bit", 256, 128)
            texts = bench_queries(probe, queries)[1]
            for fmt in ("1bit", "2bit", "int8"):
                if fmt in formats:
                    report.first_layer += measure_first_layer(builder, fmt, 64 if fmt == "int8" else 256, texts)
    return report


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
    requant: list[float]  # per network evaluation, per layer (from the profiling build)
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
                lines.append(row("    of which requantization", rq))
        lines += [row("argmax", self.argmax), row("other", self.other), row("UART write (per character)", self.uart)]
        return "\n".join(lines)


def breakdown(builder: Builder, model: IntModel, queries: list[str], path: str = "fast") -> CharacterBreakdown:
    """The parts of a generated character on the virtual UNO: `!t` on `queries` with a normal build and,
    for the fast path, with one that times requantization apart (each of its 2 profile calls a block is
    charged half to the requantization it brackets). The C path requantizes inside its layer loops: its
    requantization is not timed apart (0)."""
    from . import reference

    expected = reference.generate(model, queries)
    runs = {}
    for profiled in (False, True) if path == "fast" else (False,):
        elf, flash = builder.build(model, path, profile_requant=profiled)
        with connect(sim=elf) as client:
            runs[profiled] = [client.timed_reply(q) for q in queries]
            if not profiled:
                uart = uart_cycles_per_char(client, [t.reply for t in runs[profiled]])
        runs[profiled, "flash"] = flash
    timed = runs[False]
    profiled = runs.get(True, timed)
    steps = sum(len(t.steps) for t in timed)
    evaluations = sum(steps_with_network(t, model.max_reply) for t in timed)
    chars = sum(t.n for t in timed)
    layers = [sum(t.layer_cycles[i] for t in timed) / evaluations for i in range(len(model.layers))]
    extra = (sum(sum(t.layer_cycles) + t.requant_cycles for t in profiled) - sum(sum(t.layer_cycles) for t in timed))
    rq_total = sum(t.requant_cycles for t in profiled) - extra / 2
    # per layer: what the profiling build took from each layer, scaled to the corrected total
    taken = [sum(t.layer_cycles[i] for t in timed) - sum(t.layer_cycles[i] for t in profiled) for i in range(len(layers))]
    scale = rq_total / max(sum(taken), 1)
    ctx = sum(t.ctx_cycles for t in timed) / evaluations
    argmax = sum(t.argmax_cycles for t in timed) / evaluations
    char_steps = [c for t in timed for c in t.steps[: t.n]]
    mismatches = sum(t.reply != e for run in (r for k, r in runs.items() if k in (False, True))
                     for t, e in zip(run, expected))
    return CharacterBreakdown(
        model=model.name, shape=model.shape, formats=model.formats, path=path, chars=chars,
        mismatches=mismatches,
        step_median=statistics.median(char_steps) if char_steps else 0.0,
        per_char_all_in=sum(t.total_cycles for t in timed) / max(chars, 1) + uart,
        query=statistics.median(t.query_cycles for t in timed),
        ctx=ctx, layers=layers, requant=[x * scale / evaluations for x in taken], argmax=argmax,
        other=(sum(sum(t.steps) for t in timed) - (ctx + sum(layers) + argmax) * evaluations) / steps,
        flash_bytes=runs[False, "flash"], uart=uart,
    )


def breakdowns(models: list[IntModel], n_queries: int = BENCH_QUERIES) -> list[CharacterBreakdown]:
    """`breakdown` of each model on both kernel paths, on n_queries of its training data's queries."""
    from .latency import bench_queries

    rows = []
    with firmware_project() as project:
        builder = Builder(project)
        for model in models:
            queries = bench_queries(model, n_queries)[1]
            rows += [breakdown(builder, model, queries, path) for path in codegen.KERNEL_PATHS]
    return rows


def write_json(report: KernelReport | list[CharacterBreakdown], path: str | Path) -> None:
    """The kernels' rows, or one object per model and kernel path."""
    rows = report.to_json() if isinstance(report, KernelReport) else [asdict(row) for row in report]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rows, indent=2) + "\n")
