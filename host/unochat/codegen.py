"""Render an integer model into C (templates/*.j2 -> firmware/generated/).

Python decides only data and layout here (packing, types, buffer sizes, which kernel runs each layer);
the C and the assembly live in the Jinja2 templates, as emlearn does, so the generated code can be read
next to its template.

Two kernel paths, chosen with `render(..., kernels=)`:
- "c": plain C dot products over row-major weights (templates/layers_c.c.j2): the readable reference.
- "fast" (default): AVR assembly inner loops and requantization (templates/unochat_kernels.S.j2) over
  weights stored in blocks of output neurons, driven by C (templates/layers_fast.c.j2). On the host the
  same C runs with plain-C stand-ins for the assembly, so its layout and arithmetic are tested there too.

How the fast path picks a kernel per layer (`plan_layers`). Every layer whose inputs are uint8 (all but
z80ai's i16 models, which never fit an UNO and keep the C kernels) gets the cheapest of these by the
cost model `layer_cycles`, cycles per input per block of 8 outputs as measured on the virtual UNO with
`unochat bench --kernels` (1-bit; 2-bit blocks are 4 outputs, int8 8, or 7 when it skips zeros with
24-bit sums):
- dense: every input, no test: 29.5 per input (3.7 cycles per 1-bit weight).
- skip: every input, a zero skipped: 31.5 per nonzero input, 9 per zero one.
- list (1bit, 2bit, at most 256 inputs): only the nonzero inputs, listed once per layer by uk_compact
  (about 10 per input): 34 per nonzero input. Needs a list buffer of one byte per input in SRAM.
So list wins below about 85% nonzero inputs, dense above; the first layer's context half (at most
3 * context_len - 3 of its counts are nonzero) always lists. The fraction of nonzero inputs per layer
comes from the `density` argument, else model.meta["density"] (which `unochat train` and the pipeline
measure when they save a model), else `measure_density` (the reference run on real queries; 14-50% for
hidden layers of trained and test models).
A kernel call runs as many blocks as uk_sums (SUMS_BYTES) holds, and one uk_rq call requantizes them
straight from the kernel's sums: the calls' costs (registers saved, pointers, the C around them) are
paid once a group, not once a block.
The first layer's query half is the same for a whole reply: its share of each first-layer sum is computed
once per reply into a cache (a list first layer visits only the query's nonzero counts for it), and a
bit-plane first layer then runs uk_bits_pair8 (8-bit sums of two blocks at a time: 2 cycles a bit), for
the cache too; its sums while replying are small, so they requantize in 16 bits. ReLU layers whose
outputs are mostly 0 (below SKIP_ZEROS_BELOW nonzero) get a per-neuron zero threshold that skips the
requantization arithmetic (22 cycles instead of about 80). The last layer's uk_rq also keeps the
argmax of the logits it makes.
What must fit decides in this order: SRAM (the cache first, then list buffers where they save least),
then flash (the loops a reply runs unrolled 16 times, else 8, else 4, those only unochat_logits runs
COLD_UNROLL times; then the same without zero thresholds; then the C kernels for the largest layers), both
estimated here (`sram_bytes`, `flash_bytes`) and checked on the real ELF by unochat.build.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from . import __version__
from .data import MAX_QUERY
from .intmodel import ACT_MAX, FORMAT_BITS, IntLayer, IntModel
from .uno import FLASH_LIMIT, SRAM_LIMIT, STACK_RESERVE

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
GENERATED = REPO / "firmware" / "generated"
HEADER, SOURCE, ASSEMBLY = "unochat_model.h", "unochat_model.c", "unochat_kernels.S"
CTYPE = {"u8": "uint8_t", "i16": "int16_t", None: "int32_t"}
KERNEL_PATHS = ("fast", "c")
# Bytes of uk_sums, where a kernel call leaves its blocks' sums for uk_rq: several blocks a call share
# the calls' costs (registers saved, pointers set up, the C around them).
SUMS_BYTES = 192
KERNEL_FRAME = 14  # uk_frame: what a kernel's blocks share (unochat_kernels.S)
COLD_UNROLL = 2
UNROLL = 16  # copies of each assembly loop's body; the plan falls back to 8, then 4, when flash is short
SKIP_ZEROS_BELOW = 0.8  # zero thresholds cost ~10 cycles per nonzero output and save ~55 per zero one

SRAM_BUDGET = SRAM_LIMIT - STACK_RESERVE  # static SRAM the plan may fill
# From avr-size and avr-nm of real builds: static SRAM outside the generated code (Arduino core, Serial
# buffers, main.cpp's line and command state; main.cpp adds a reply buffer and 4 B per profile slot), and
# flash outside the generated layers and tables (Arduino core, main.cpp, libgcc, features, line editor),
# of the C driving a fast layer (the first layer's three functions), and of a C-path layer. Rounded up:
# the plan's fallbacks trust the estimate, so it must not fall below the real ELF (an all-C 256-384-192-41
# model was 76 B over it with 260 B per C layer; tests/test_kernels.py builds it).
FIRMWARE_SRAM = 265
FIRMWARE_FLASH = 4_850
FAST_LAYER_FLASH, C_LAYER_FLASH = 260, 310
FAST_FIRST_LAYER_FLASH = {"1bit": 480, "2bit": 620, "int8": 720}
C_REQUANT_FLASH = 350  # a fast layer that requantizes in C (sums past 24 bits, i16 outputs)

# Cycles per input of one block (nonzero input, zero input) by kernel family and loop, measured with
# `unochat bench --kernels`; per kernel call (registers saved, sums stored, the C around it); per input of
# uk_compact; per weight of the C kernels.
COST_PER_INPUT = {
    ("bits", "dense"): (29.5, 29.5),
    ("bits", "skip"): (31.5, 9.0),
    ("bits", "list"): (34.0, 0.0),
    ("i8_16", "dense"): (60.0, 60.0),
    ("i8_16", "skip"): (63.0, 9.0),
    ("i8_24", "dense"): (66.5, 66.5),
    ("i8_24", "skip"): (61.5, 9.0),
}
COST_PER_CALL = 130.0
COST_COMPACT = 10.0
COST_C_PER_WEIGHT = {"1bit": 22.0, "2bit": 33.0, "int8": 60.0}


def pack_weights(layer: IntLayer) -> np.ndarray:
    """Row-major, each row padded to whole bytes, least significant bits first (the C path).

    1bit: bit = 1 for +1, 0 for -1. 2bit: code = w + 2 (0:-2, 1:-1, 2:0, 3:+1). int8: the byte itself.
    """
    bits = FORMAT_BITS[layer.fmt]
    w = layer.weight.astype(np.int64)
    if bits == 8:
        return (w & 0xFF).astype(np.uint8)
    codes = (w > 0).astype(np.int64) if bits == 1 else w + 2
    per_byte = 8 // bits
    pad = -layer.n_in % per_byte
    codes = np.pad(codes, ((0, 0), (0, pad)), constant_values=0)
    codes = codes.reshape(layer.n_out, -1, per_byte)
    shifts = np.arange(per_byte) * bits
    return (codes << shifts).sum(axis=2).astype(np.uint8)


# ---- the fast path's kernels ------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerKernel:
    """How the fast path computes one layer's sums: `loop` is "dense", "skip", "list" (assembly) or "c"."""

    fmt: str
    loop: str
    acc_bits: int = 16  # int8: the kernel's sum, 16 bits (wraps; exact when |acc| < 2^15) or 24

    @property
    def wraps(self) -> bool:
        """The kernel's sums are kept mod 2^16 (int8, 16-bit): only the 16-bit form of the sum is exact."""
        return self.fmt == "int8" and self.acc_bits == 16 and self.loop != "c"

    @property
    def block(self) -> int:
        """Output neurons per kernel call: the sums one call keeps in registers."""
        if self.loop == "c":
            return 1
        # int8 skipping zeros with 24-bit sums: 7 (a register holds 0 for the carries)
        return {"1bit": 8, "2bit": 4}.get(self.fmt, 7 if (self.acc_bits, self.loop) == (24, "skip") else 8)

    @property
    def sums(self) -> int:
        """Sums one call leaves in s[]: a 2bit block has two (one per bit plane) per output."""
        return 8 if self.fmt != "int8" else self.block

    @property
    def query_kernel(self) -> LayerKernel:
        """The first layer's kernel for its query half, and for inputs it must not compact (unochat_logits)."""
        return LayerKernel(self.fmt, "skip", self.acc_bits)

    @property
    def asm(self) -> str | None:
        """The assembly kernel's name without its `uk_` prefix."""
        if self.loop == "c":
            return None
        return f"i8_{self.loop}{self.acc_bits}" if self.fmt == "int8" else f"bits_{self.loop}"

    @property
    def input_bytes(self) -> int:
        """Weight bytes per input per block."""
        return self.block if self.fmt == "int8" else 1


def layer_cycles(layer: IntLayer, kernel: LayerKernel, density: float, inputs: int | None = None) -> float:
    """Estimated cycles of one layer's sums over `inputs` of its inputs (default all) at a fraction
    `density` of them nonzero; requantization is left out (the same for every kernel)."""
    inputs = layer.n_in if inputs is None else inputs
    if kernel.loop == "c":
        return COST_C_PER_WEIGHT[layer.fmt] * inputs * layer.n_out
    family = "bits" if kernel.fmt != "int8" else f"i8_{kernel.acc_bits}"
    nonzero, zero = COST_PER_INPUT[(family, kernel.loop)]
    blocks = -(-layer.n_out // kernel.block)
    calls = blocks * -(-inputs // 256)
    compact = COST_COMPACT * inputs if kernel.loop == "list" else 0.0
    return blocks * inputs * (density * nonzero + (1 - density) * zero) + calls * COST_PER_CALL + compact


def int8_acc_bits(model: IntModel, index: int) -> int:
    """The narrowest exact int8 kernel sum: 16 bits (wrapping) when every proven |acc| < 2^15."""
    return 16 if int(model.acc_bounds(index).max()) < 2**15 else 24


def candidate_kernels(model: IntModel, index: int) -> list[LayerKernel]:
    layer = model.layers[index]
    if index > 0 and model.layers[index - 1].act != "u8":  # i16 inputs: the C kernels only
        return [LayerKernel(layer.fmt, "c")]
    if layer.fmt == "int8":
        acc = int8_acc_bits(model, index)
        # the first layer walks its query half with skip, in the layer's layout: 24-bit skip blocks are 7 wide
        loops = ("skip",) if index == 0 and acc == 24 else ("dense", "skip")
        return [LayerKernel("int8", loop, acc) for loop in loops]
    loops = ["dense", "skip"] + (["list"] if layer.n_in <= 256 else [])
    return [LayerKernel(layer.fmt, loop) for loop in loops]


def measure_density(model: IntModel, queries: list[str] | None = None) -> list[float]:
    """Mean fraction of nonzero inputs of each layer over the replies to real queries, as the device
    generates them (BENCH_QUERIES of them unless given): the model's training data when its meta names a
    file here, else data/default.txt.
    For the first layer it is the context half's (the query half is cached per reply)."""
    from . import reference
    from .features import input_vector
    from .latency import BENCH_QUERIES, bench_queries

    if queries is None:
        queries = bench_queries(model, BENCH_QUERIES)[1]
    replies = reference.generate(model, queries)
    steps = [(q, r[:k]) for q, r in zip(queries, replies) for k in range(len(r) + 1)]
    x = np.stack([input_vector(q, g, model.features) for q, g in steps])
    outputs = reference.forward(model, x)
    density = [float((x[:, model.features.query_buckets:] != 0).mean())]
    return density + [float((h != 0).mean()) for h in outputs[:-1]]


# ---- requantization --------------------------------------------------------------------------------
def kernel_group(kernel: LayerKernel) -> int:
    """Blocks per kernel call: as many as uk_sums holds."""
    return SUMS_BYTES // (kernel.sums * (4 if kernel.acc_bits == 24 else 2))


def step_counts(model: IntModel) -> int:
    """The most counts a first-layer input has while the device replies: at most MAX_QUERY query
    trigrams and 3 * context_len - 3 context n-grams (unochat_logits takes any input)."""
    return MAX_QUERY + 3 * model.features.context_len - 3


def requant_mode(model: IntModel, index: int, kernel: LayerKernel, step: bool = False) -> str:
    """How the fast path requantizes a layer, as its bound allows: uk_rq<i> in assembly, straight from
    the kernel's sums, on d, the sum or a stand-in for it, times mult ("half": a 1-bit sum of at most 256
    u8 inputs, d = S - ceil(T / 2) in 16 bits and the product doubled, since 2S - T = 2 (S - ceil(T / 2))
    + (T & 1); "acc16": every |acc| < 2^15, d the sum itself (1-bit: 2S - T); "wide": |acc| < 2^23, a
    24 x 16-bit product), else "c"
    (libgcc's 32 x 16 multiply: i16 outputs, and layers of more than 256 inputs, whose 16-bit kernel
    sums the C adds up in 32 bits). `step`: the first layer while replying, whose sums are small."""
    layer = model.layers[index]
    if kernel.loop == "c" or layer.act == "i16" or layer.n_in > 256:
        return "c"
    bound = int(model.acc_bounds(index).max())
    if step:
        bound = min(bound, step_counts(model) * int(np.abs(layer.weight).max(initial=1)))
    if layer.fmt == "1bit" and bound >= 2**15:
        return "half"
    return "acc16" if bound < 2**15 else "wide" if bound < 2**23 else "c"


def zero_thresholds(layer: IntLayer, mode: str) -> np.ndarray:
    """Per ReLU neuron, the smallest d (what uk_rq multiplies) whose output may be nonzero: below it the
    output is 0 and uk_rq skips the arithmetic. In half mode v = 2 d m + p m + b for p = T & 1 in {0, 1},
    so the threshold holds for both parities. mult <= 0 never skips (the smallest d)."""
    two_s = 1 << layer.shift
    bits = 24 if mode == "wide" else 16
    lowest, highest = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    theta = []
    for m, b in zip(layer.mult.tolist(), layer.bias.tolist()):
        if m <= 0:
            theta.append(lowest)
            continue
        num, den = (two_s - b - m, 2 * m) if mode == "half" else (two_s - b, m)
        theta.append(min(max(-(-num // den), lowest), highest))  # ceil(num / den), clamped
    return np.array(theta, dtype=np.int64)


def requant_table(layer: IntLayer, with_mult: bool, bias_bytes: int, thresholds: np.ndarray | None,
                  threshold_bytes: int = 2) -> np.ndarray:
    """The assembly requantizer's table, per neuron and little-endian: the zero threshold (if used, 2 or
    3 bytes), mult (int16, unless the layer's is one constant), bias (int16 or int32)."""
    def column(values: np.ndarray, size: int) -> np.ndarray:
        return values.astype(np.int64)[:, None] >> (8 * np.arange(size))

    columns = ([column(thresholds, threshold_bytes)] if thresholds is not None else []) + (
        [column(layer.mult, 2)] if with_mult else []) + [column(layer.bias, bias_bytes)]
    return (np.concatenate(columns, axis=1) & 0xFF).astype(np.uint8).ravel()


# ---- the plan: kernels per layer, cache, thresholds, unrolling -------------------------------------------
@dataclass(frozen=True)
class Plan:
    kernels: list[LayerKernel]
    cache: bool  # the first layer's query share cached per reply
    density: list[float]
    skip_zeros: list[bool] | None = None  # per layer: uk_rq skips neurons below their zero threshold
    pair8: bool = False  # a bit-plane first layer with a cache runs uk_bits_pair8 while replying
    unroll: int = UNROLL

    def skips(self, index: int) -> bool:
        return bool(self.skip_zeros and self.skip_zeros[index])

    def asm_kernels(self) -> list[str]:
        """The assembly kernels this plan calls (the first layer also walks its query half with skip)."""
        names = {k.asm for k in self.kernels[1 if self.pair8 else 0:] if k.asm}
        if self.kernels[0].loop != "c":
            names.add(self.kernels[0].query_kernel.asm)
        if any(k.loop == "list" for k in self.kernels):
            names.add("compact")
        # T of the first layer (unochat_logits walks it whole) and of the layers that do not list
        if self.kernels[0].loop != "c" or any(k.loop in ("dense", "skip") for k in self.kernels[1:]):
            names.add("sum")
        if self.pair8:
            names.add("bits_pair8")
        return sorted(names)

    def unrolls(self) -> dict[str, int]:
        """Copies of each assembly loop's body: the plan's unroll, but COLD_UNROLL for the loops only
        unochat_logits runs (with pair8, the first layer's query kernel, and uk_sum unless a later layer
        walks dense or skip): flash goes to the loops a reply runs."""
        hot = {k.asm for k in self.kernels[1:] if k.asm} | {"compact"}
        if any(k.loop in ("dense", "skip") for k in self.kernels[1:]):
            hot.add("sum")
        if self.pair8:
            hot.add("bits_pair8")
        else:
            hot |= {self.kernels[0].asm, self.kernels[0].query_kernel.asm, "sum"}
        return {name: self.unroll if name in hot else COLD_UNROLL for name in self.asm_kernels()}


def c_plan(model: IntModel) -> Plan:
    return Plan([LayerKernel(layer.fmt, "c") for layer in model.layers], False, [])


def act_buffers(model: IntModel) -> tuple[int, int]:
    """Bytes of the two activation buffers: layer i writes buffer i % 2 (even sizes keep i16 aligned)."""
    sizes = [0, 0]
    for i, layer in enumerate(model.layers[:-1]):
        size = layer.n_out * (2 if layer.act == "i16" else 1)
        sizes[i % 2] = max(sizes[i % 2], size + size % 2)
    return sizes[0], sizes[1]


def cache_ctype(model: IntModel) -> str:
    """The first layer's query share: at most MAX_QUERY trigram counts (1bit caches their S, at most
    that), times the largest |w| for the others."""
    if model.layers[0].fmt == "1bit":
        return "uint8_t"
    worst = MAX_QUERY * int(np.abs(model.layers[0].weight).max(initial=1))
    return "int8_t" if worst <= 127 else "int16_t"


def cache_bytes(model: IntModel, kernel: LayerKernel) -> int:
    """The first layer's per-reply cache in the state: one entry per neuron of its padded last block (a
    list layer's: of two blocks, as uk_bits_pair8 may run it; 1bit: and the query's T)."""
    block = kernel.block * (2 if kernel.loop == "list" else 1)
    entries = -(-model.layers[0].n_out // block) * block
    if model.layers[0].fmt == "1bit":
        return entries + 1
    return entries * (2 if cache_ctype(model) == "int16_t" else 1)


def list_bytes(model: IntModel, kernels: list[LayerKernel]) -> int:
    """The list buffer {n, delta[]}: the first layer lists each of its halves (the query half once per
    reply, for the cache), the others their whole input."""
    spec = model.features
    sizes = [0]
    for i, k in enumerate(kernels):
        if k.loop == "list":
            sizes.append(2 + (max(spec.query_buckets, spec.context_buckets) if i == 0 else model.layers[i].n_in))
    return max(sizes)


def sram_bytes(model: IntModel, kernels: list[LayerKernel], cache: bool) -> int:
    """Static SRAM of the firmware with these kernels (the generated buffers exactly, the rest as measured)."""
    spec = model.features
    state = spec.n_inputs + 4 * model.shape[-1] + spec.context_len + 1
    if cache:
        state += cache_bytes(model, kernels[0])
    firmware = FIRMWARE_SRAM + model.max_reply + 4 * (len(model.layers) + 3)
    sums = SUMS_BYTES + KERNEL_FRAME if any(k.loop != "c" for k in kernels) else 0
    return firmware + sum(act_buffers(model)) + state + list_bytes(model, kernels) + sums


def flash_bytes(model: IntModel, plan: Plan) -> int:
    """Estimated flash of the firmware with this plan: the tables and the assembly exactly (every
    instruction unochat_kernels.S uses is one 16-bit word), the C as measured."""
    layers = [_layer_context(model, i, k, plan, arrays=False) for i, k in enumerate(plan.kernels)]
    tables = sum(l["weight_bytes"] + l["requant_bytes"] for l in layers)
    code = sum(C_LAYER_FLASH if k.loop == "c" else FAST_FIRST_LAYER_FLASH[k.fmt] if i == 0 else FAST_LAYER_FLASH
               for i, k in enumerate(plan.kernels))
    code += C_REQUANT_FLASH * sum(l["kernel"].loop != "c" and l["rq"] == "c" for l in layers)
    assembly = 0
    if plan.asm_kernels():
        text = _environment().get_template(ASSEMBLY + ".j2").render(**_context(model, plan, "fast", layers))
        assembly = 2 * len(re.findall(r"^\s+[a-z]+\b(?!:)", text, re.MULTILINE))
    return FIRMWARE_FLASH + tables + code + assembly


def plan_layers(model: IntModel, density: list[float] | None = None) -> Plan:
    """The fastest kernel per layer that fits, whether the first layer's query share is cached, which
    layers skip their zero outputs' requantization, and how far the assembly is unrolled (see the module
    doc for the order in which what does not fit is given up)."""
    if density is None:
        density = model.meta.get("density") or measure_density(model)
    density = [float(d) for d in density]
    n = len(model.layers)
    inputs = [model.features.context_buckets] + [layer.n_in for layer in model.layers[1:]]

    def cost(i: int, kernel: LayerKernel) -> float:
        return layer_cycles(model.layers[i], kernel, density[i], inputs[i])

    ranked = [sorted(candidate_kernels(model, i), key=lambda k, i=i: cost(i, k)) for i in range(n)]
    kernels = [options[0] for options in ranked]
    cache = True
    if sram_bytes(model, kernels, cache) > SRAM_BUDGET:
        # without lists first: the cache saves more than any list
        kernels = [next(k for k in options if k.loop != "list") for options in ranked]
        if sram_bytes(model, kernels, cache) > SRAM_BUDGET:
            cache = False
        for i in np.argsort([cost(i, kernels[i]) - cost(i, ranked[i][0]) for i in range(n)])[::-1]:
            trial = kernels[:i] + [ranked[i][0]] + kernels[i + 1:]
            if sram_bytes(model, trial, cache) <= SRAM_BUDGET:
                kernels = trial
    skip = [model.layers[i].act == "u8" and density[i + 1] < SKIP_ZEROS_BELOW for i in range(n - 1)] + [False]

    def make_plan(kernels: list[LayerKernel], skip: list[bool], unroll: int) -> Plan:
        cached = cache and kernels[0].loop != "c"
        # a bit-plane first layer's sums while replying fit 8 bits: uk_bits_pair8 runs its context half
        pair8 = cached and kernels[0].loop == "list" and requant_mode(model, 0, kernels[0], step=True) != "c"
        return Plan(kernels, cached, density, skip, pair8, unroll)

    for skip_zeros in (skip, [False] * n):  # thresholds save more cycles than unrolling does
        for unroll in (UNROLL, 8, 4):
            candidate = make_plan(kernels, skip_zeros, unroll)
            if flash_bytes(model, candidate) <= FLASH_LIMIT:
                return candidate
    kernels, skip = list(kernels), [False] * n
    while any(k.loop != "c" for k in kernels):
        biggest = max((i for i, k in enumerate(kernels) if k.loop != "c"), key=lambda i: model.layers[i].weight.size)
        kernels[biggest] = LayerKernel(model.layers[biggest].fmt, "c")
        if flash_bytes(model, make_plan(kernels, skip, 4)) <= FLASH_LIMIT:
            break
    return make_plan(kernels, skip, 4)


def pack_blocks(layer: IntLayer, kernel: LayerKernel, pad_to: int | None = None) -> np.ndarray:
    """The fast kernels' layout: blocks of `kernel.block` outputs, within a block input by input.

    1bit: one byte per input, bit k = 1 for +1 of output k. 2bit: one byte per input, bit k the low bit
    and bit 4 + k the high bit of output k's code w + 2. int8: `block` bytes per input, w + 128.
    Outputs past n_out (the last block's padding, up to a multiple of pad_to) get zero bits and zero weights."""
    block = kernel.block
    pad = -layer.n_out % (pad_to or block)
    w = np.pad(layer.weight.astype(np.int64), ((0, pad), (0, 0)))
    w = w.reshape(-1, block, layer.n_in)  # [blocks, k, j]
    if layer.fmt == "int8":
        return (w + 128).transpose(0, 2, 1).astype(np.uint8).ravel()
    if layer.fmt == "1bit":
        bits = (w > 0).astype(np.int64)
    else:
        codes = w + 2
        bits = np.concatenate([codes & 1, codes >> 1], axis=1)  # [blocks, 8, j]
    shifts = np.arange(8)[None, :, None]
    return (bits << shifts).sum(axis=1).astype(np.uint8).ravel()


# ---- rendering -----------------------------------------------------------------------------------------
def model_id(model: IntModel) -> str:
    """A fingerprint of everything that decides the device's output, to check a board runs this model."""
    h = hashlib.sha256()
    h.update(repr((model.charset, model.features.to_dict(), model.max_reply)).encode())
    for layer in model.layers:
        h.update(repr((layer.fmt, layer.shift, layer.act)).encode())
        for array in (layer.weight.astype(np.int8), layer.mult.astype(np.int32), layer.bias.astype(np.int32)):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:8]


def _c_array(values: np.ndarray, per_line: int = 16) -> str:
    flat = [str(int(v)) for v in values.ravel()]
    return ",\n".join("    " + ", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line))


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _int32_literal(v: int) -> str:
    # -2147483648 is not a valid C literal (it is unary minus on an out-of-range constant)
    return "(-2147483647L - 1)" if v == -(2**31) else f"{v}L"


def _layer_context(model: IntModel, i: int, kernel: LayerKernel, plan: Plan, arrays: bool = True) -> dict:
    """What the templates need of layer i; without `arrays`, only sizes (for flash_bytes)."""
    layer = model.layers[i]
    in_act = "u8" if i == 0 else model.layers[i - 1].act
    buffers = ("act_a", "act_b")
    uniform = bool((layer.mult == layer.mult[0]).all())
    narrow = bool((np.abs(layer.bias) < 2**15).all())
    if kernel.loop == "c":
        packed = pack_weights(layer)
        blocks = layer.n_out
    else:
        packed = pack_blocks(layer, kernel, 2 * kernel.block if i == 0 and plan.pair8 else None)
        blocks = packed.size // (layer.n_in * kernel.input_bytes)
    mode = requant_mode(model, i, kernel, step=i == 0)
    logits_mode = requant_mode(model, i, kernel)
    if (mode == "c") != (logits_mode == "c"):
        raise AssertionError(f"layer {i}: requantization modes {mode} (replying) and {logits_mode} (any input)")
    skip_zeros = plan.skips(i) and mode != "c" and layer.act is not None
    theta_bytes = 3 if mode == "wide" else 2
    stride = 4 if kernel.acc_bits == 24 else 2
    # the first layer's step: a 1-bit uk_bits_pair8 leaves 8-bit sums
    step_stride = 1 if i == 0 and plan.pair8 and layer.fmt == "1bit" else stride
    group = kernel_group(kernel) if mode != "c" and (kernel.loop == "list" or i > 0) and layer.n_in <= 256 else 1
    entry = (theta_bytes if skip_zeros else 0) + (0 if uniform else 2) + (2 if narrow else 4)
    context = {
        "index": i,
        "kernel": kernel,
        "mult_const": int(layer.mult[0]) if uniform else None,
        "bias_ctype": "int16_t" if narrow else "int32_t",
        "fmt": layer.fmt,
        "n_in": layer.n_in,
        "n_out": layer.n_out,
        "row_bytes": packed.size // layer.n_out if kernel.loop == "c" else None,
        "weight_bytes": packed.size,
        "blocks": blocks,
        "block_bytes": layer.n_in * kernel.input_bytes,
        # inputs per kernel call: the sums must not wrap (see unochat_kernels.S)
        "chunks": [(j, min(256, layer.n_in - j)) for j in range(0, layer.n_in, 256)],
        "rq": mode,
        "rq_logits": logits_mode,  # the first layer's in unochat_logits, where any input may come
        "rq_stride": stride,  # bytes per kernel sum
        "rq_step_stride": step_stride,
        "rq_logits_routine": f"uk_rq{i}" if (logits_mode, stride) == (mode, step_stride) else f"uk_rq{i}x",
        "group": group,  # blocks per kernel call (the first layer: while replying and for its cache)
        "pairs": SUMS_BYTES // (16 * step_stride),  # uk_bits_pair8's block pairs per call
        "rq_skip": skip_zeros,
        "rq_theta_bytes": theta_bytes,
        "rq_entry": entry,
        "requant_bytes": layer.n_out * (entry if mode != "c" else (0 if uniform else 2) + (2 if narrow else 4)),
        "shift": layer.shift,
        "act": layer.act,
        "act_max": ACT_MAX.get(layer.act or "", 0),
        "in_act": in_act,
        "in_ctype": CTYPE[in_act],
        "out_ctype": CTYPE[layer.act],
        "in_expr": "x" if i == 0 else f"{buffers[(i - 1) % 2]}.{in_act}",
        "out_expr": "logits" if layer.act is None else f"{buffers[i % 2]}.{layer.act}",
    }
    if arrays:
        thresholds = zero_thresholds(layer, mode) if skip_zeros else None
        context.update(
            weight_rows=_c_array(packed),
            rq_table=_c_array(requant_table(layer, not uniform, 2 if narrow else 4, thresholds, theta_bytes)),
            mult=", ".join(str(int(m)) for m in layer.mult),
            bias=", ".join(str(int(b)) if narrow else _int32_literal(int(b)) for b in layer.bias),
        )
    return context


def _c_kernels(model: IntModel, layers: list[dict]) -> list[dict]:
    """The C path's dot products, one per weight format and input type used by C-kernel layers."""
    kernels = []
    c_layers = [(i, l) for i, l in enumerate(layers) if l["kernel"].loop == "c"]
    for fmt, act in sorted({(l["fmt"], l["in_act"]) for _, l in c_layers}):
        # S of the 1-bit kernel (a sum of inputs) must not wrap: 16 bits while it is proven below 2^16
        widest = max(model.input_max(i) * l["n_in"] for i, l in c_layers if (l["fmt"], l["in_act"]) == (fmt, act))
        kernels.append({"fmt": fmt, "act": act, "ctype": CTYPE[act], "sum_type": "uint16_t" if widest < 2**16 else "uint32_t"})
    return kernels


def rq_routines(layers: list[dict]) -> list[dict]:
    """The assembly requantizers: uk_rq<i> per fast layer (the first layer's for its replying step), and
    uk_rq0x for unochat_logits when any input needs a wider mode than replying does."""
    routines = []
    for l in layers:
        if l["rq"] == "c":
            continue
        common = {"layer": l, "fmt": l["fmt"]}
        routines.append({"name": f"uk_rq{l['index']}", "mode": l["rq"], "skip": l["rq_skip"],
                         "stride": l["rq_step_stride"], **common})
        if l["rq_logits_routine"] != routines[-1]["name"]:
            routines.append({"name": l["rq_logits_routine"], "mode": l["rq_logits"], "skip": False,
                             "stride": l["rq_stride"], **common})
    return routines


def _context(model: IntModel, plan: Plan, kernels: str, layers: list[dict], profile_requant: bool = False) -> dict:
    mid = model_id(model)
    shape = "-".join(str(n) for n in model.shape)
    return {
        "version": __version__,
        "model": model,
        "model_id": mid,
        "max_query": MAX_QUERY,
        "layers": layers,
        "kernel_path": kernels,
        "plan": plan,
        "profile_requant": profile_requant,
        "c_kernels": _c_kernels(model, layers),
        "asm_kernels": plan.asm_kernels(),
        "rq_routines": rq_routines(layers),
        "sums_bytes": SUMS_BYTES,
        "unrolls": plan.unrolls(),
        "act_buffers": act_buffers(model),
        "list_bytes": list_bytes(model, plan.kernels),
        "cache_ctype": cache_ctype(model),
        "charset_bytes": ", ".join(str(ord(c)) for c in model.charset),
        "info": f"model={_c_string(model.name)} id={mid} shape={shape} formats={','.join(model.formats)}",
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(
    model: IntModel,
    out_dir: Path = GENERATED,
    kernels: str = "fast",
    density: list[float] | None = None,
    plan: Plan | None = None,
    profile_requant: bool = False,
) -> list[Path]:
    """Write the generated C (and, for the fast kernels, assembly) for `model` into out_dir and return
    the files written. `density` (nonzero fraction of each layer's inputs) or a whole `plan` override
    what the fast path would measure and choose (see the module doc). profile_requant times the fast
    path's requantization apart from the layers (`!t` rq=), at the cost of two profile calls a block."""
    if kernels not in KERNEL_PATHS:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_PATHS)}, got {kernels!r}")
    model.validate()
    if kernels == "c":
        plan = c_plan(model)
    elif plan is None:
        plan = plan_layers(model, density)
    layers = [_layer_context(model, i, k, plan) for i, k in enumerate(plan.kernels)]
    context = _context(model, plan, kernels, layers, profile_requant)
    env = _environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [HEADER, SOURCE] + ([ASSEMBLY] if context["asm_kernels"] else [])
    # a stale kernel file from an earlier fast export would be compiled into a C-path build
    (out_dir / ASSEMBLY).unlink(missing_ok=True)
    written = []
    for name in outputs:
        path = out_dir / name
        path.write_text(env.get_template(name + ".j2").render(**context))
        written.append(path)
    return written
