"""The fast path's kernels: which assembly loop computes a layer's sums, what it costs, and how its sums
are requantized (the planner, codegen/plan.py, chooses among them; templates/unochat_kernels.S.j2 holds
them).

Every layer whose inputs are uint8 (all but z80ai's i16 models, whose later layers keep the C kernels)
can run these loops over weights stored in blocks of output neurons (model/formats.py, `pack_blocks`):
- dense: every input, no test (bit formats: 3.7 cycles per 1-bit weight);
- skip: every input, a zero input skipped in 9 cycles;
- list (bit formats, at most 256 inputs): only the nonzero inputs, listed once per layer by uk_compact
  (about 10 cycles per input). Needs a list buffer of one byte per input in SRAM.
`layer_cycles` estimates a layer's cycles from the format registry's measured costs per input of a block.
A kernel call runs as many blocks as uk_sums (SUMS_BYTES) holds, and one uk_rq call requantizes them
straight from the kernel's sums: the calls' costs (registers saved, pointers, the C around them) are
paid once a group, not once a block.

Any layer of codes2 levels with most weights 0 (z80ai's, ternary) can also be stored sparse
(model/formats.py `sparse_record`: a record per input) for the sparse kernel: only the nonzero inputs'
records are walked, each adding its input to the sums of its nonzero weights' outputs, kept in SRAM (24
bits: the low 16 in the outputs themselves, the high byte apart), then requantized in C. On AVR
uk_sparse walks them (u8 outputs keep the C walk). It takes u8 and i16 inputs; the planner gives it a
layer of i16 inputs, and any layer the fast plan cannot fit in flash, where it is the smallest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.dataset import MAX_QUERY
from ..model import formats
from ..model.intmodel import IntLayer, IntModel

# Bytes of uk_sums, where a kernel call leaves its blocks' sums for uk_rq: several blocks a call share
# the calls' costs (registers saved, pointers set up, the C around them).
SUMS_BYTES = 192
KERNEL_FRAME = 14  # uk_frame: what a kernel's blocks share (unochat_kernels.S)
# Cycles per kernel call (registers saved, sums stored, the C around it) and per input of uk_compact,
# measured with `unochat bench --kernels`; the per-input costs are the format registry's.
COST_PER_CALL = 130.0
COST_COMPACT = 10.0
C_LOOPS = ("c", "sparse")
SPARSE_SUM_LIMIT = 2**23 - 2**15  # the sparse kernel's 24-bit sums, stored plus 2^15


@dataclass(frozen=True)
class LayerKernel:
    """How the fast path computes one layer's sums: `loop` is "dense", "skip", "list" (assembly), "c" (C over
    row-major weights) or "sparse" (the sparse layout of model/formats.py, walked by uk_sparse on AVR)."""

    fmt: str
    loop: str
    acc_bits: int = 16  # int8: the kernel's sum, 16 bits (wraps; exact when |acc| < 2^15) or 24

    @property
    def format(self) -> formats.WeightFormat:
        return formats.get(self.fmt)

    @property
    def is_c(self) -> bool:
        """Requantized in C, one output neuron at a time, with no kernel calls in blocks ("sparse" walks
        in assembly, once a layer)."""
        return self.loop in C_LOOPS

    @property
    def bit_planes(self) -> bool:
        """Bit-plane kernels (1bit, 2bit): one byte per input holds a block's bits."""
        return self.format.kernel == "bits"

    @property
    def wraps(self) -> bool:
        """The kernel's sums are kept mod 2^16 (int8, 16-bit): only the 16-bit form of the sum is exact."""
        return not self.bit_planes and self.acc_bits == 16 and not self.is_c

    @property
    def block(self) -> int:
        """Output neurons per kernel call: the sums one call keeps in registers."""
        if self.is_c:
            return 1
        # int8 skipping zeros with 24-bit sums: 7 (a register holds 0 for the carries)
        return 7 if not self.bit_planes and (self.acc_bits, self.loop) == (24, "skip") else self.format.block

    @property
    def sums(self) -> int:
        """Sums one call leaves in s[]: a bit-plane block has one per plane (a 2bit block two per output)."""
        return 8 if self.bit_planes else self.block

    @property
    def query_kernel(self) -> LayerKernel:
        """The first layer's kernel for its query half, and for inputs it must not compact (unochat_logits)."""
        return LayerKernel(self.fmt, "skip", self.acc_bits)

    @property
    def asm(self) -> str | None:
        """The assembly kernel's name without its `uk_` prefix."""
        if self.is_c:
            return None
        return f"bits_{self.loop}" if self.bit_planes else f"i8_{self.loop}{self.acc_bits}"

    @property
    def input_bytes(self) -> int:
        """Weight bytes per input per block."""
        return 1 if self.bit_planes else self.block


def layer_cycles(layer: IntLayer, kernel: LayerKernel, density: float, inputs: int | None = None) -> float:
    """Estimated cycles of one layer's sums over `inputs` of its inputs (default all) at a fraction
    `density` of them nonzero; requantization is left out (the same for every kernel)."""
    inputs = layer.n_in if inputs is None else inputs
    if kernel.loop == "sparse":  # a record per nonzero input, a step over a zero one
        per_weight, per_zero_input = formats.SPARSE_CYCLES
        return inputs * (density * per_weight * layer.n_out + (1 - density) * per_zero_input)
    if kernel.loop == "c":
        return kernel.format.c_cycles_per_weight * inputs * layer.n_out
    nonzero, zero = formats.FAMILIES[kernel.format.family(kernel.acc_bits)].cost[kernel.loop]
    blocks = -(-layer.n_out // kernel.block)
    calls = blocks * -(-inputs // 256)
    compact = COST_COMPACT * inputs if kernel.loop == "list" else 0.0
    return blocks * inputs * (density * nonzero + (1 - density) * zero) + calls * COST_PER_CALL + compact


def int8_acc_bits(model: IntModel, index: int) -> int:
    """The narrowest exact int8 kernel sum: 16 bits (wrapping) when every proven |acc| < 2^15."""
    return 16 if int(model.acc_bounds(index).max()) < 2**15 else 24


def c_kernels(layer: IntLayer, input_max: int) -> list[LayerKernel]:
    """The C kernels a layer can run on: row-major, and sparse where its format and size allow it and it
    takes less flash (for z80ai-like weights, mostly 0; not for a random 2-bit layer's). The sparse kernel
    keeps its sums in 24 bits, plus 2^15 (templates/layers_c.c.j2): only where every |acc| < 2^23 - 2^15 for
    inputs up to `input_max`."""
    bound = int(np.abs(layer.weight.astype(np.int64)).sum(axis=1).max(initial=0)) * input_max
    sparse = (formats.get(layer.fmt).sparse and formats.sparse_fits(layer.weight)
              and bound < SPARSE_SUM_LIMIT
              and formats.sparse_bytes(layer.weight) < formats.get(layer.fmt).row_bytes(layer.n_in) * layer.n_out)
    return [LayerKernel(layer.fmt, "c")] + ([LayerKernel(layer.fmt, "sparse")] if sparse else [])


def candidate_kernels(model: IntModel, index: int) -> list[LayerKernel]:
    layer = model.layers[index]
    if index > 0 and model.layers[index - 1].act != "u8":  # i16 inputs: the C kernels only
        return c_kernels(layer, model.input_max(index))
    if formats.get(layer.fmt).kernel == "int8":
        acc = int8_acc_bits(model, index)
        # the first layer walks its query half with skip, in the layer's layout: 24-bit skip blocks are 7 wide
        loops = ("skip",) if index == 0 and acc == 24 else ("dense", "skip")
        return [LayerKernel(layer.fmt, loop, acc) for loop in loops]
    loops = ["dense", "skip"] + (["list"] if layer.n_in <= 256 else [])
    return [LayerKernel(layer.fmt, loop) for loop in loops]



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
    if kernel.is_c or layer.act == "i16" or layer.n_in > 256:
        return "c"
    bound = int(model.acc_bounds(index).max())
    if step:
        bound = min(bound, step_counts(model) * int(np.abs(layer.weight).max(initial=1)))
    if formats.get(layer.fmt).binary and bound >= 2**15:
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

