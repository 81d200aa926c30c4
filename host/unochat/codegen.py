"""Render an integer model into C (templates/*.j2 -> firmware/generated/).

Python decides only data and layout here (packing, types, buffer sizes); the C itself lives in the
Jinja2 templates, as emlearn does, so the generated code can be read next to its template.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2
import numpy as np

from . import __version__
from .data import MAX_QUERY
from .intmodel import ACT_MAX, FORMAT_BITS, IntLayer, IntModel

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
GENERATED = REPO / "firmware" / "generated"
OUTPUTS = ("unochat_model.h", "unochat_model.c")
CTYPE = {"u8": "uint8_t", "i16": "int16_t", None: "int32_t"}


def pack_weights(layer: IntLayer) -> np.ndarray:
    """Row-major, each row padded to whole bytes, least significant bits first.

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


def _layer_context(model: IntModel, i: int) -> dict:
    layer = model.layers[i]
    in_act = "u8" if i == 0 else model.layers[i - 1].act
    buffers = ("act_a", "act_b")
    in_expr = "x" if i == 0 else f"{buffers[(i - 1) % 2]}.{in_act}"
    out_expr = "logits" if layer.act is None else f"{buffers[i % 2]}.{layer.act}"
    packed = pack_weights(layer)
    uniform = bool((layer.mult == layer.mult[0]).all())
    narrow = bool((np.abs(layer.bias) < 2**15).all())
    return {
        "mult_const": int(layer.mult[0]) if uniform else None,
        "bias_ctype": "int16_t" if narrow else "int32_t",
        "fmt": layer.fmt,
        "n_in": layer.n_in,
        "n_out": layer.n_out,
        "row_bytes": packed.shape[1],
        "shift": layer.shift,
        "act": layer.act,
        "act_max": ACT_MAX.get(layer.act or "", 0),
        "in_act": in_act,
        "in_ctype": CTYPE[in_act],
        "out_ctype": CTYPE[layer.act],
        "in_expr": in_expr,
        "out_expr": out_expr,
        "weight_rows": _c_array(packed),
        "mult": ", ".join(str(int(m)) for m in layer.mult),
        "bias": ", ".join(str(int(b)) if narrow else _int32_literal(int(b)) for b in layer.bias),
    }


def _kernels(model: IntModel, layers: list[dict]) -> list[dict]:
    kernels = []
    for fmt, act in sorted({(l["fmt"], l["in_act"]) for l in layers}):
        # S of the 1-bit kernel (a sum of inputs) must not wrap: 16 bits while it is proven below 2^16
        widest = max(model.input_max(i) * l["n_in"] for i, l in enumerate(layers) if (l["fmt"], l["in_act"]) == (fmt, act))
        kernels.append({"fmt": fmt, "act": act, "ctype": CTYPE[act], "sum_type": "uint16_t" if widest < 2**16 else "uint32_t"})
    return kernels


def render(model: IntModel, out_dir: Path = GENERATED) -> list[Path]:
    """Write the generated C for `model` into out_dir and return the files written."""
    model.validate()
    layers = [_layer_context(model, i) for i in range(len(model.layers))]
    hidden_bytes = [l["n_out"] * (2 if l["act"] == "i16" else 1) for l in layers if l["act"]]
    mid = model_id(model)
    shape = "-".join(str(n) for n in model.shape)
    info = f"model={_c_string(model.name)} id={mid} shape={shape} formats={','.join(model.formats)}"
    context = {
        "version": __version__,
        "model": model,
        "model_id": mid,
        "max_query": MAX_QUERY,
        "layers": layers,
        "kernels": _kernels(model, layers),
        "buffer_bytes": max(hidden_bytes + [2]) + max(hidden_bytes + [2]) % 2,
        "charset_bytes": ", ".join(str(ord(c)) for c in model.charset),
        "info": info,
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in OUTPUTS:
        path = out_dir / name
        path.write_text(env.get_template(name + ".j2").render(**context))
        written.append(path)
    return written
