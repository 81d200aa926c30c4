"""The generated code's layout: the Plan (which kernel runs each layer, cache, thresholds, unrolling),
the firmware's buffers, and what the templates get to render a model (`template_context`).

Python decides only data and layout here (packing, types, buffer sizes); the C and the assembly live in
the Jinja2 templates (templates/), as emlearn does, so the generated code can be read next to its template.
"""
from __future__ import annotations

from dataclasses import dataclass

import jinja2
import numpy as np

from .. import __version__
from ..data.dataset import MAX_QUERY
from ..model import formats
from ..model.intmodel import ACT_MAX, IntModel
from ..model.replies import CHECKPOINT, MAX_CODE_BITS, encode
from ..paths import TEMPLATES
from .kernels import SUMS_BYTES, LayerKernel, kernel_group, requant_mode, requant_table, zero_thresholds

CTYPE = {"u8": "uint8_t", "i16": "int16_t", None: "int32_t"}
KERNEL_PATHS = ("fast", "c")
HEADER, SOURCE, ASSEMBLY = "unochat_model.h", "unochat_model.c", "unochat_kernels.S"
COLD_UNROLL = 2
UNROLL = 16  # copies of each assembly loop's body; the plan falls back to 8, then 4, when flash is short


@dataclass(frozen=True)
class Plan:
    kernels: list[LayerKernel]
    cache: bool  # the first layer's query share cached per reply
    density: list[float]
    skip_zeros: list[bool] | None = None  # per layer: uk_rq skips neurons below their zero threshold
    pair8: bool = False  # a bit-plane first layer with a cache runs uk_bits_pair8 while replying
    unroll: int = UNROLL
    density_note: str | None = None  # said when the density is the planner's default, not the model's

    def skips(self, index: int) -> bool:
        return bool(self.skip_zeros and self.skip_zeros[index])

    def asm_kernels(self) -> list[str]:
        """The assembly kernels this plan calls (the first layer also walks its query half with skip)."""
        names = {k.asm for k in self.kernels[1 if self.pair8 else 0:] if k.asm}
        if not self.kernels[0].is_c:
            names.add(self.kernels[0].query_kernel.asm)
        if any(k.loop == "list" for k in self.kernels):
            names.add("compact")
        # T of the first layer (unochat_logits walks it whole) and of the layers that do not list
        if not self.kernels[0].is_c or any(k.loop in ("dense", "skip") for k in self.kernels[1:]):
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
        return {name: self.unroll if name in hot else min(COLD_UNROLL, self.unroll) for name in self.asm_kernels()}


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
    if formats.get(model.layers[0].fmt).binary:
        return "uint8_t"
    worst = MAX_QUERY * int(np.abs(model.layers[0].weight).max(initial=1))
    return "int8_t" if worst <= 127 else "int16_t"


def cache_bytes(model: IntModel, kernel: LayerKernel) -> int:
    """The first layer's per-reply cache in the state: one entry per neuron of its padded last block (a
    list layer's: of two blocks, as uk_bits_pair8 may run it; 1bit: and the query's T)."""
    block = kernel.block * (2 if kernel.loop == "list" else 1)
    entries = -(-model.layers[0].n_out // block) * block
    if formats.get(model.layers[0].fmt).binary:
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


def sparse_lo16(act: str | None) -> bool:
    """Whether a sparse layer of outputs `act` keeps its sums' low 16 bits in its outputs (i16 outputs, the
    logits: uk_sparse walks it on AVR) rather than 8 (u8 outputs: the C walk), the high part apart."""
    return act != "u8"


def asm_kernel_names(model: IntModel, plan: Plan) -> list[str]:
    """The assembly kernels a plan's firmware has: the plan's, and uk_sparse for sparse layers whose sums
    have 16-bit low parts (i16 outputs, the logits; u8 outputs keep the C)."""
    sparse = any(k.loop == "sparse" and sparse_lo16(model.layers[i].act) for i, k in enumerate(plan.kernels))
    return plan.asm_kernels() + (["sparse"] if sparse else [])


def sparse_hi_bytes(model: IntModel, kernels: list[LayerKernel]) -> int:
    """The sparse kernel's high sum bytes, shared by its layers (templates/layers_c.c.j2): a 24-bit sum
    keeps its low 16 bits (u8 outputs: 8) in the output itself (the logits: their first bytes) and the
    rest here."""
    return max([model.layers[i].n_out * (1 if sparse_lo16(model.layers[i].act) else 2)
                for i, k in enumerate(kernels) if k.loop == "sparse"] + [0])


def _c_array(values: np.ndarray, per_line: int = 16) -> str:
    flat = [str(int(v)) for v in values.ravel()]
    return ",\n".join("    " + ", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line))


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _int32_literal(v: int) -> str:
    # -2147483648 is not a valid C literal (it is unary minus on an out-of-range constant)
    return "(-2147483647L - 1)" if v == -(2**31) else f"{v}L"


def layer_context(model: IntModel, i: int, kernel: LayerKernel, plan: Plan, arrays: bool = True) -> dict:
    """What the templates need of layer i; without `arrays`, only sizes (for flash_bytes)."""
    layer = model.layers[i]
    in_act = "u8" if i == 0 else model.layers[i - 1].act
    buffers = ("act_a", "act_b")
    uniform = bool((layer.mult == layer.mult[0]).all())
    narrow = bool((np.abs(layer.bias) < 2**15).all())
    sparse = None
    if kernel.loop == "sparse":
        packed = sparse = formats.pack_sparse(layer.weight)
        blocks = layer.n_out
    elif kernel.loop == "c":
        packed = formats.get(layer.fmt).pack_rows(layer.weight)
        blocks = layer.n_out
    else:
        packed = formats.get(layer.fmt).pack_blocks(layer.weight, kernel.block,
                                                    2 * kernel.block if i == 0 and plan.pair8 else None)
        blocks = packed.size // (layer.n_in * kernel.input_bytes)
    mode = requant_mode(model, i, kernel, step=i == 0)
    logits_mode = requant_mode(model, i, kernel)
    if (mode == "c") != (logits_mode == "c"):
        raise AssertionError(f"layer {i}: requantization modes {mode} (replying) and {logits_mode} (any input)")
    skip_zeros = plan.skips(i) and mode != "c" and layer.act is not None
    theta_bytes = 3 if mode == "wide" else 2
    stride = 4 if kernel.acc_bits == 24 else 2
    # the first layer's step: a 1-bit uk_bits_pair8 leaves 8-bit sums
    step_stride = 1 if i == 0 and plan.pair8 and formats.get(layer.fmt).binary else stride
    group = kernel_group(kernel) if mode != "c" and (kernel.loop == "list" or i > 0) and layer.n_in <= 256 else 1
    entry = (theta_bytes if skip_zeros else 0) + (0 if uniform else 2) + (2 if narrow else 4)
    context = {
        "index": i,
        "kernel": kernel,
        "mult_const": int(layer.mult[0]) if uniform else None,
        "bias_ctype": "int16_t" if narrow else "int32_t",
        "fmt": layer.fmt,
        "enc": formats.get(layer.fmt).encoding,  # what the templates branch on: formats sharing one share code
        "dot": "sparse" if kernel.loop == "sparse" else formats.get(layer.fmt).encoding,  # a C layer's dot product
        "n_in": layer.n_in,
        "n_out": layer.n_out,
        "row_bytes": packed.size // layer.n_out if kernel.loop == "c" else None,
        "mask_bytes": -(-layer.n_out // 8),  # the mask bytes of a sparse record
        "minus2_n": int((layer.weight == -2).sum()) if sparse is not None else 0,
        "sparse_lo16": sparse_lo16(layer.act),
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
        if sparse is not None:
            context.update(records=_c_array(sparse))
        context.update(
            weight_rows=_c_array(packed),
            rq_table=_c_array(requant_table(layer, not uniform, 2 if narrow else 4, thresholds, theta_bytes)),
            mult=", ".join(str(int(m)) for m in layer.mult),
            bias=", ".join(str(int(b)) if narrow else _int32_literal(int(b)) for b in layer.bias),
        )
    return context


def _c_kernels(model: IntModel, layers: list[dict]) -> list[dict]:
    """The C kernels' dot products, one per kind (`dot`: an encoding over row-major weights, or "sparse")
    and input type used by C-kernel layers."""
    kernels = []
    c_layers = [(i, l) for i, l in enumerate(layers) if l["kernel"].is_c]
    # the sparse kernel adds into its outputs' sums, whose form depends on the output's type too
    kinds = {(l["dot"], l["in_act"], ("lo16" if l["sparse_lo16"] else "lo8") if l["dot"] == "sparse" else "")
             for _, l in c_layers}
    for dot, act, out in sorted(kinds):
        # S of the 1-bit kernel (a sum of inputs) must not wrap: 16 bits while it is proven below 2^16
        widest = max(model.input_max(i) * l["n_in"] for i, l in c_layers if (l["dot"], l["in_act"]) == (dot, act))
        kernels.append({"dot": dot, "act": act, "out": out, "ctype": CTYPE[act],
                        "sum_type": "uint16_t" if widest < 2**16 else "uint32_t"})
    return kernels


def rq_routines(layers: list[dict]) -> list[dict]:
    """The assembly requantizers: uk_rq<i> per fast layer (the first layer's for its replying step), and
    uk_rq0x for unochat_logits when any input needs a wider mode than replying does."""
    routines = []
    for l in layers:
        if l["rq"] == "c":
            continue
        common = {"layer": l, "fmt": l["fmt"], "enc": l["enc"]}
        routines.append({"name": f"uk_rq{l['index']}", "mode": l["rq"], "skip": l["rq_skip"],
                         "stride": l["rq_step_stride"], **common})
        if l["rq_logits_routine"] != routines[-1]["name"]:
            routines.append({"name": l["rq_logits_routine"], "mode": l["rq_logits"], "skip": False,
                             "stride": l["rq_stride"], **common})
    return routines


def template_context(model: IntModel, plan: Plan, kernels: str, layers: list[dict], profile_requant: bool = False) -> dict:
    mid = model.fingerprint()
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
        "asm_kernels": asm_kernel_names(model, plan),
        "rq_routines": rq_routines(layers),
        "sums_bytes": SUMS_BYTES,
        "unrolls": plan.unrolls(),
        "act_buffers": act_buffers(model),
        "list_bytes": list_bytes(model, plan.kernels),
        "sparse_hi_bytes": sparse_hi_bytes(model, plan.kernels),
        "cache_ctype": cache_ctype(model),
        "charset_bytes": ", ".join(str(ord(c)) for c in model.charset),
        "info": f"model={_c_string(model.name)} id={mid} shape={shape} formats={','.join(model.formats)}"
                + (f" replies={len(model.replies)}" if model.replies is not None else ""),
        "store": store_context(model),
    }


def store_context(model: IntModel) -> dict | None:
    """The reply store's arrays for the templates (model/replies.py `encode`), None for free decoding."""
    if model.store is None:
        return None
    encoded = encode(model.store, model.charset)
    return {
        "n": len(model.store),
        "checkpoint": CHECKPOINT,
        "max_bits": MAX_CODE_BITS,
        "lcp": _c_array(encoded.lcp),
        "head": _c_array(encoded.head),
        "checkpoints": ", ".join(str(int(v)) for v in encoded.checkpoints),
        "checkpoints_n": encoded.checkpoints.size,
        "text": _c_array(encoded.text),
        "text_n": max(encoded.text.size, 1),
        "code_counts": ", ".join(str(int(v)) for v in encoded.code_counts),
        "code_symbols": ", ".join(str(int(v)) for v in encoded.code_symbols),
        "symbols_n": encoded.code_symbols.size,
        "nbytes": encoded.nbytes,
    }


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )

