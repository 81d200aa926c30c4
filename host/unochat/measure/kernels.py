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

A model's generated character, per part, is measure/breakdown.py's (`unochat bench --parts MODEL...`).
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..board.client import UnoClient, connect
from ..codegen.kernels import LayerKernel, c_kernels, candidate_kernels, int8_acc_bits
from ..codegen.layout import KERNEL_PATHS, Plan
from ..data.features import FeatureSpec
from ..firmware.build import build_for_simulator
from ..firmware.project import firmware_project
from ..firmware.size import symbol_sizes
from ..model import formats, reference
from ..model.intmodel import IntLayer, IntModel
from .cycles import steps_with_network
from .latency import bench_queries

EXPANDER_INPUTS = 32  # layer 0's inputs: FeatureSpec(16, 16)
# 256x256 and 256x128 int8 weights (64 and 32 KB) cannot fit in flash: int8 takes smaller layers.
# "int8/16" is int8 with weights in {-1, 0, 1}, at most 128 nonzero per row: its sums fit 16 bits, so it
# runs the 16-bit int8 kernels (random int8 weights need the 24-bit ones).
# Two shapes per format share their outputs (256x128 and 128x128, 256x64 and 128x64): the cycles they
# differ by are the inner loop's alone, per weight (KernelReport.loop_cycles_per_weight).
SHAPES = {
    "1bit": ((256, 256), (256, 128), (128, 128), (128, 40)),
    "2bit": ((256, 256), (256, 128), (128, 128), (128, 40)),
    "ternary": ((256, 256), (256, 128), (128, 128), (128, 40)),
    "int8": ((256, 64), (128, 64), (128, 128), (128, 40)),
    "int8/16": ((256, 64), (128, 64), (128, 128), (128, 40)),
}
MEASURED = tuple(SHAPES)  # the formats the kernel table measures ("int8/16": int8 whose sums fit 16 bits)
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
                 x: np.ndarray | None = None, act: str = "u8") -> IntLayer:
    """Random weights of `fmt` ("int8/16": int8 whose sums fit 16 bits), mult and bias; with an input x,
    the biases are centered so that about half the outputs of x are 0, as a ReLU layer's typically are."""
    if fmt == "int8/16":
        weight = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_out, n_in))
        weight[:, 128:] = 0
        fmt = "int8"
    elif fmt == "ternary":  # z80ai's tinychat model: 74% of its weights 0, the rest half -1, half +1
        weight = rng.choice(np.array([-1, 0, 1], dtype=np.int8), p=[0.13, 0.74, 0.13], size=(n_out, n_in))
    else:
        weight = rng.choice(formats.get(fmt).levels, size=(n_out, n_in)).astype(np.int8)
    mult = rng.integers(1, 200, size=n_out)
    bias = rng.integers(-(2**14), 2**14, size=n_out)
    if x is not None:
        bias -= (weight.astype(np.int64) @ x.astype(np.int64)) * mult
    return IntLayer(fmt, weight, mult, bias, 12, None if last else act)


def bench_model(fmt: str, n_in: int, n_out: int, seed: int = 0, act: str = "u8") -> IntModel:
    """expander -> the layer under test (n_in -> n_out, outputs `act` unless it is the last) [-> 3 outputs]."""
    rng = np.random.default_rng(seed)
    last = n_out == len(CHARSET_40)
    first = expander(n_in)
    dense = first.weight.astype(np.int64) @ bench_inputs(1.0).astype(np.int64)  # what the layer sees
    layers = [first, random_layer(rng, fmt, n_in, n_out, last, dense, act)]
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


def plans_to_measure(model: IntModel) -> Iterator[tuple[str, Plan | None]]:
    """(path, plan): the C path, then one fast plan per kernel the generator could pick for layer 1 (the
    sparse layout among them, for the formats that have it; measure_layer times it with i16 outputs, as
    z80ai's layers have, which uk_sparse walks). A hidden layer under test skips its zero
    outputs' requantization, as the generator has it do for ReLU layers (about half the outputs of these
    random layers are 0)."""
    yield "c", None
    hidden = len(model.layers) > 2
    sparse = [k for k in c_kernels(model.layers[1], model.input_max(1)) if k.loop == "sparse"]
    for kernel in candidate_kernels(model, 1) + sparse:
        kernels = [LayerKernel("2bit", "skip"), kernel]
        kernels += [LayerKernel("1bit", "dense")] * (len(model.layers) - 2)
        skip = [False, hidden] + [False] * (len(model.layers) - 2)
        yield "fast", Plan(kernels, cache=False, density=[], skip_zeros=skip)


# ---- measuring ---------------------------------------------------------------------------------------
def layer_profile(client: UnoClient, x: np.ndarray) -> list[int]:
    """Cycles per layer of one `!x` evaluation (`!p`)."""
    client.logits(x)
    return client.profile()


def measure_layer(project: Path, fmt: str, n_in: int, n_out: int, density: float = SPARSE_DENSITY) -> list[KernelResult]:
    """Every kernel (C path and fast) of one format and shape, checked bit for bit on the inputs used."""
    model = bench_model(fmt, n_in, n_out)
    fmt = model.layers[1].fmt
    inputs = {"dense": bench_inputs(1.0), "sparse": bench_inputs(density), "zero": bench_inputs(0.0)}
    results = []
    for path, plan in plans_to_measure(model):
        kernel = plan.kernels[1] if plan else LayerKernel(fmt, "c", int8_acc_bits(model, 1) if fmt == "int8" else 16)
        tested = model
        if kernel.loop == "sparse":  # with i16 outputs, as z80ai's layers have: the kernel's assembly (uk_sparse)
            tested = bench_model(fmt, n_in, n_out, act="i16")
            plan = replace(plan, kernels=plan.kernels[:2] + [LayerKernel(layer.fmt, "c") for layer in tested.layers[2:]])
        elf, flash = build_for_simulator(tested, project, path, plan)
        cycles = {}
        with connect(sim=elf) as client:
            for name, x in inputs.items():
                cycles[name] = layer_profile(client, x)[1]
                if not np.array_equal(client.logits(x), reference.logits(tested, x)[0]):
                    raise AssertionError(f"{tested.name} {path} {plan.kernels[1] if plan else ''}: logits differ")
        asm = "uk_sparse" if kernel.loop == "sparse" else f"uk_{kernel.asm}" if kernel.asm else None
        asm = symbol_sizes(elf).get(asm, 0) if asm else 0
        outputs = reference.forward(tested, inputs["dense"])[1]
        results.append(KernelResult(
            format=fmt, kernel=kernel.loop, path=path, inputs=n_in, outputs=n_out,
            acc_bits=kernel.acc_bits, cycles=cycles["dense"], cycles_per_weight=cycles["dense"] / (n_in * n_out),
            sparse_cycles=cycles["sparse"], density=density, zero_cycles=cycles["zero"],
            nonzero_outputs=float((outputs != 0).mean()), kernel_flash=asm, firmware_flash=flash,
        ))
    return results


def measure_first_layer(project: Path, fmt: str, n_out: int, queries: list[str]) -> list[FirstLayerResult]:
    """The first layer as it runs while replying, on real queries, both paths (replies checked)."""
    rng = np.random.default_rng(1)
    spec = FeatureSpec()
    layers = [random_layer(rng, fmt, spec.n_inputs, n_out, False), random_layer(rng, "1bit", n_out, 3, True)]
    model = IntModel(layers, CHARSET_SMALL, spec, max_reply=20, name=f"bench-first-{fmt}-{n_out}")
    model.validate()
    expected = reference.generate(model, queries)
    results = []
    for path in KERNEL_PATHS:
        elf, _ = build_for_simulator(model, project, path)
        with connect(sim=elf) as client:
            timed = [client.timed_reply(q) for q in queries]
        per_step = [t.layer_cycles[0] / steps_with_network(t, model) for t in timed]
        results.append(FirstLayerResult(
            format=fmt, inputs=spec.n_inputs, outputs=n_out, path=path,
            step_cycles=statistics.median(per_step),
            per_reply_cycles=statistics.median(t.query_cycles for t in timed),
            queries=len(queries), mismatches=sum(t.reply != e for t, e in zip(timed, expected)),
        ))
    return results


def run(
    measured: tuple[str, ...] = MEASURED,
    shapes: dict[str, tuple[tuple[int, int], ...]] = SHAPES,
    first_layer: bool = True,
    queries: int = FIRST_LAYER_QUERIES,
) -> KernelReport:
    """Measure every kernel for every format and its shapes and, with first_layer, the sparse first
    layer on real queries."""
    report = KernelReport()
    with firmware_project() as project:
        for fmt in measured:
            for n_in, n_out in shapes[fmt]:
                report.kernels += measure_layer(project, fmt, n_in, n_out)
        report.fill_loop_costs()
        if first_layer:
            probe = bench_model("1bit", 256, 128)
            texts = bench_queries(probe, queries)[1]
            for fmt in ("1bit", "2bit", "int8"):
                if fmt in measured:
                    report.first_layer += measure_first_layer(project, fmt, 64 if fmt == "int8" else 256, texts)
    return report


def write_json(report: KernelReport, path: str | Path) -> None:
    """The kernels' rows (`make bench` writes them to build/kernels.json)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
