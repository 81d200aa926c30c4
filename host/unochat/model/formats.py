"""The weight formats: everything unochat knows about each one, defined once.

A format is the set of integer levels a layer's weights take, how they are stored in flash, which
family of kernels computes with them, and what those kernels cost the planner. Every other module asks
this one (`get`, `parse_formats`, `FORMATS`); adding a format means an entry here, its blocks in the
templates (templates/layers_c.c.j2, layers_fast.c.j2, unochat_kernels.S.j2) and its tests (README,
"Architecture").

Storage, per layer:
- the C path (`pack_rows`): row-major, each row padded to whole bytes, least significant bits first;
  a weight is stored as its code (by encoding: binary 0:-1 1:+1; codes2 w + 2, 0:-2 1:-1 2:0 3:+1) or,
  for int8, as the byte itself;
- the fast path (`pack_blocks`): blocks of `block` output neurons, within a block input by input. Bit
  formats put one byte per input (1bit: bit k = 1 for +1 of output k; 2bit: bit k the low bit and bit
  4 + k the high bit of output k's code w + 2), int8 `block` bytes per input (w + 128).

Planner costs (measured with `unochat bench --kernels`, README "Fast kernels"): cycles per input of one
block by kernel family and loop, nonzero and zero input; per weight of the C kernel; flash of the C
that drives a fast first layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CODES2_OFFSET = 2  # a "codes2" weight w is stored as w + 2: 0:-2 1:-1 2:0 3:+1 (z80ai's levels)


class FormatError(ValueError):
    """An unknown weight format, or weights outside a format's levels."""


@dataclass(frozen=True)
class KernelFamily:
    """Assembly kernels that share a loop structure: `name` is their stem (uk_bits_dense, uk_i8_dense16...)."""

    name: str
    cost: dict[str, tuple[float, float]]  # loop -> cycles per input of a block (nonzero input, zero input)


FAMILIES = {
    f.name: f
    for f in (
        KernelFamily("bits", {"dense": (29.5, 29.5), "skip": (31.5, 9.0), "list": (34.0, 0.0)}),
        KernelFamily("i8_16", {"dense": (60.0, 60.0), "skip": (63.0, 9.0)}),
        KernelFamily("i8_24", {"dense": (66.5, 66.5), "skip": (61.5, 9.0)}),
    )
}


@dataclass(frozen=True)
class WeightFormat:
    name: str  # as stored in model files and shown everywhere: "1bit"
    aliases: tuple[str, ...]  # what the command line also accepts: "1"
    bits: int  # bits per weight in the C path's row-major packing
    lo: int  # the smallest level
    hi: int  # the largest level
    zero: bool  # 0 is a level (1bit has none: a weight is -1 or +1, latents are clipped to [-1, 1])
    scale: str  # QAT's per-row scale rule (train.qat.ROW_SCALES): levels * scale ~= latent weights
    kernel: str  # the fast path's kernel family: "bits" (bit planes) or "int8" (MUL per weight)
    # How a weight is stored and computed with, in every template: "binary" (a bit: +1 or -1), "codes2"
    # (2-bit codes w + 2, two bit planes) or "int8" (a byte). Formats of one encoding share all code.
    encoding: str
    block: int  # output neurons per fast-kernel block
    c_cycles_per_weight: float  # the planner's cost of the C kernel
    first_layer_flash: int  # flash of the C driving a fast first layer (its three functions), rounded up

    @property
    def sparse(self) -> bool:
        """Whether a layer may be stored sparse (`pack_sparse`): codes2 levels, most weights 0."""
        return self.encoding == "codes2"

    @property
    def binary(self) -> bool:
        """Two levels, -1 and +1: a dot product is 2S - T, S the sum of the inputs whose weight is +1."""
        return not self.zero

    @property
    def levels(self) -> np.ndarray:
        every = np.arange(self.lo, self.hi + 1)
        return every if self.zero else every[every != 0]

    def family(self, acc_bits: int = 16) -> str:
        """The kernel family computing this format with sums of `acc_bits` (int8: 16 or 24)."""
        return "bits" if self.kernel == "bits" else f"i8_{acc_bits}"

    def check(self, weight: np.ndarray) -> str | None:
        """Why `weight` is not of this format, or None."""
        if weight.size and (weight.min() < self.lo or weight.max() > self.hi):
            return f"{self.name} weights must be in [{self.lo}, {self.hi}], found [{weight.min()}, {weight.max()}]"
        if not self.zero and (weight == 0).any():
            return f"{self.name} weights are -1 or +1, found 0"
        return None

    def codes(self, weight: np.ndarray) -> np.ndarray:
        """The stored code of each weight (int64): its index among the levels for sub-byte formats, the
        byte itself for int8."""
        w = weight.astype(np.int64)
        if self.encoding == "int8":
            return w & 0xFF
        return (w > 0).astype(np.int64) if self.encoding == "binary" else w + CODES2_OFFSET

    def row_bytes(self, n_in: int) -> int:
        return -(-n_in * self.bits // 8)

    def pack_rows(self, weight: np.ndarray) -> np.ndarray:
        """The C path's layout: uint8 [n_out, row_bytes], row-major, least significant bits first."""
        codes = self.codes(weight)
        if self.bits == 8:
            return codes.astype(np.uint8)
        per_byte = 8 // self.bits
        n_out, n_in = codes.shape
        codes = np.pad(codes, ((0, 0), (0, -n_in % per_byte))).reshape(n_out, -1, per_byte)
        return (codes << (np.arange(per_byte) * self.bits)).sum(axis=2).astype(np.uint8)

    def pack_blocks(self, weight: np.ndarray, block: int, pad_to: int | None = None) -> np.ndarray:
        """The fast kernels' layout (module doc), flattened; outputs past n_out (the last block's padding,
        up to a multiple of pad_to) get zero bits and zero weights."""
        n_out, n_in = weight.shape
        w = np.pad(weight.astype(np.int64), ((0, -n_out % (pad_to or block)), (0, 0)))
        w = w.reshape(-1, block, n_in)  # [blocks, k, j]
        if self.kernel == "int8":
            return (w + 128).transpose(0, 2, 1).astype(np.uint8).ravel()
        if self.encoding == "binary":
            planes = (w > 0).astype(np.int64)
        else:
            codes = w + CODES2_OFFSET
            planes = np.concatenate([codes & 1, codes >> 1], axis=1)  # [blocks, 8, j]
        return (planes << np.arange(8)[None, :, None]).sum(axis=1).astype(np.uint8).ravel()


# The sparse layout of a codes2 layer (z80ai's levels: most weights 0, -2 rare), the sparse kernel's
# (templates/layers_c.c.j2, unochat_kernels.S.j2): one record per input, so that the kernel visits only
# the records of the inputs that are not 0 and steps over the others by their length:
# - a byte: the record's length after it (at most 255);
# - a bit per output (1: the weight is nonzero), least significant first, ceil(n_out / 8) mask bytes; the
#   signs of the nonzero weights (1: negative), 8 a byte, in output order, each sign byte right after the
#   mask byte whose set bits first need it (a mask byte needs at most one);
# - the output of each -2 weight (a byte each, so at most 256 outputs): it is stored as -1 and taken
#   once more.
# Measured on z80ai's tinychat model (74% of its weights 0, 0.3% -2): 24,605 B, 1.36 bits a weight against the
# planes' 2 (18,048 B of masks, 5,282 of signs, 832 of lengths, 443 of -2 outputs).
SPARSE_MAX_OUTPUTS = 256
SPARSE_MAX_RECORD = 255
# the planner's cost of the sparse kernel (uk_sparse): cycles per weight of a nonzero input's record, and
# per zero input (unochat bench --kernels, ternary at 74% zero weights, 256x128 against 128x128: 8.11
# cycles a weight with every input nonzero, 18.0 an input with none)
SPARSE_CYCLES = (8.1, 18.0)


def sparse_record(column: np.ndarray) -> list[int]:
    """One input's record (its length byte first) from its column of weights (module comment above)."""
    mask = np.packbits(column != 0, bitorder="little")
    signs = (column[column != 0] < 0).astype(np.int64)
    record, used, left = [], 0, 0  # signs taken, and left in the last sign byte read
    for byte in mask.tolist():
        record.append(byte)
        need = bin(byte).count("1")
        if need > left:  # the kernel reads the next sign byte while it walks this mask byte
            chunk = signs[used + left:used + left + 8]
            record.append(int((chunk << np.arange(chunk.size)).sum()))
            left += 8
        used, left = used + need, left - need
    record += np.flatnonzero(column == -2).tolist()
    return [len(record)] + record


def _records(weight: np.ndarray) -> list[list[int]]:
    return [sparse_record(column) for column in weight.astype(np.int64).T]


def pack_sparse(weight: np.ndarray) -> np.ndarray:
    """The records of a codes2 layer, input after input (uint8; a layer sparse_fits refuses may not pack)."""
    return np.array([b for record in _records(weight) for b in record], dtype=np.uint8)


# avr-gcc's largest array (its sizes are 16-bit signed)
MAX_ARRAY_BYTES = 2**15 - 1


def sparse_fits(weight: np.ndarray) -> bool:
    """Whether a codes2 layer can be stored sparse: its outputs numbered in a byte, each record's length
    in a byte, and its records an array avr-gcc allows."""
    if weight.shape[0] > SPARSE_MAX_OUTPUTS:
        return False
    records = _records(weight)
    return max((len(r) - 1 for r in records), default=0) <= SPARSE_MAX_RECORD and sum(map(len, records)) <= MAX_ARRAY_BYTES


def sparse_bytes(weight: np.ndarray) -> int:
    """Flash of a layer stored sparse."""
    return pack_sparse(weight).size


FORMATS = {
    f.name: f
    for f in (
        WeightFormat("1bit", ("1",), bits=1, lo=-1, hi=1, zero=False, scale="mean_abs", kernel="bits", encoding="binary", block=8,
                     c_cycles_per_weight=22.0, first_layer_flash=480),
        WeightFormat("2bit", ("2",), bits=2, lo=-2, hi=1, zero=True, scale="rms", kernel="bits", encoding="codes2", block=4,
                     c_cycles_per_weight=33.0, first_layer_flash=620),
        # {-1, 0, +1}, most weights 0 (`sparsity`, TrainConfig): z80ai's 2-bit levels without -2, so it runs on
        # every 2-bit kernel; QAT's "ternary" rule zeroes each row's smallest weights
        WeightFormat("ternary", ("t",), bits=2, lo=-1, hi=1, zero=True, scale="ternary", kernel="bits",
                     encoding="codes2", block=4, c_cycles_per_weight=33.0, first_layer_flash=620),
        WeightFormat("int8", ("8",), bits=8, lo=-127, hi=127, zero=True, scale="max_abs", kernel="int8", encoding="int8", block=8,
                     c_cycles_per_weight=60.0, first_layer_flash=720),
    )
}
_BY_SPELLING = {spelling: f for f in FORMATS.values() for spelling in (f.name, *f.aliases)}


def choices() -> str:
    """The formats as the one error message spells them: `1bit (1), 2bit (2), int8 (8)`."""
    return ", ".join(f"{f.name} ({', '.join(f.aliases)})" if f.aliases else f.name for f in FORMATS.values())


def get(name: str) -> WeightFormat:
    """The format called `name` or one of its aliases."""
    try:
        return _BY_SPELLING[name.strip()]
    except KeyError:
        raise FormatError(f"unknown weight format {name.strip()!r}: use {choices()}") from None


def parse_formats(text: str | list[str], n_layers: int | None = None) -> list[str]:
    """`1` -> every layer 1bit; `1,1,2,8` (or a list) -> one format per layer, hidden layers first, the
    output layer last. With n_layers, one format stands for every layer and a list must have n_layers."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [get(p).name for p in parts]
    if n_layers is None or len(names) == n_layers:
        return names
    if len(names) == 1:
        return names * n_layers
    raise FormatError(f"{len(names)} weight formats for {n_layers} layers (hidden layers + output)")
