"""The integer model: what the UNO computes, as data. Its semantics are in model/reference.py.

A model is a chain of layers. Layer l maps an input vector x (uint8 counts for layer 0, the previous
layer's activations after that) to
    acc  = W x                         exact integer dot products
    z    = (acc * mult + bias) >> shift  per neuron; >> is an arithmetic (floor) shift
    out  = clamp(z, 0, ACT_MAX[act])   hidden layers (ReLU and saturation in one)
    out  = z                           the output layer: int32 logits, argmax with the first index on ties
Weights are stored one int8 per weight here and packed only in the generated C.

No silent overflow: `check_bounds` proves at export that, for every input the device can produce, every
partial sum of acc and acc*mult + bias fit in int32; a model that cannot be proven is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..data.dataset import EOS, is_printable
from ..data.features import FeatureSpec
from . import formats
from .formats import FormatError
from .replies import ReplyStore

ACT_MAX = {"u8": 255, "i16": 32767}
INPUT_MAX = 255  # layer 0 sees uint8 counts
INT32_MAX = 2**31 - 1
MULT_LIMIT = 2**15  # |mult| < 2^15: a 16-bit signed multiplier on the device
FILE_VERSION = 1
MAX_WIDTH = 1024  # far beyond what fits an UNO's 2 KB of SRAM; keeps every count in 16 bits


class ModelError(ValueError):
    """An integer model that is malformed or whose arithmetic cannot be proven safe."""


@dataclass
class IntLayer:
    fmt: str
    weight: np.ndarray  # int8 [out, in]
    mult: np.ndarray  # int64 [out], |mult| < 2^15
    bias: np.ndarray  # int64 [out], int32 range
    shift: int
    act: str | None  # 'u8' or 'i16' for hidden layers, None for the output layer

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def packed_bytes(self) -> int:
        """Flash bytes of the packed weights: each row padded to whole bytes."""
        return self.n_out * formats.get(self.fmt).row_bytes(self.n_in)


@dataclass
class IntModel:
    layers: list[IntLayer]
    charset: str  # output alphabet, EOS ('\x00') last
    features: FeatureSpec = field(default_factory=FeatureSpec)
    max_reply: int = 50
    name: str = "model"
    logit_scale: float | None = None  # float logit = int logit * logit_scale, for the loss; None if unknown
    meta: dict = field(default_factory=dict)
    # The replies generation is kept to (model/replies.py), sorted; None: free decoding (any string).
    # Set when the model is made (`store` caches them): another store is another model (dataclasses.replace).
    replies: list[str] | None = None

    @cached_property
    def store(self) -> ReplyStore | None:
        """The stored replies as a ReplyStore (model/replies.py), None for free decoding."""
        return None if self.replies is None else ReplyStore(self.replies)

    @cached_property
    def symbol_index(self) -> dict[str, int]:
        """charset character -> its index (EOS, the last, is "")."""
        return {c: i for i, c in enumerate(self.charset[:-1])} | {"": self.eos}

    @property
    def decoding(self) -> str:
        """"replies" (reply-constrained: only stored replies) or "free"."""
        return "free" if self.replies is None else "replies"

    @property
    def eos(self) -> int:
        return len(self.charset) - 1

    @property
    def shape(self) -> list[int]:
        return [self.layers[0].n_in] + [layer.n_out for layer in self.layers]

    @property
    def formats(self) -> list[str]:
        return [layer.fmt for layer in self.layers]

    def params(self) -> int:
        """Weights plus one bias per neuron, as the original experiment counted them."""
        return sum(layer.weight.size + layer.n_out for layer in self.layers)

    def input_max(self, index: int) -> int:
        return INPUT_MAX if index == 0 else ACT_MAX[self.layers[index - 1].act]

    def describe(self) -> str:
        shape = "→".join(str(n) for n in self.shape)
        fmts = ",".join(self.formats)
        store = f", {len(self.replies):,} stored replies" if self.replies is not None else ""
        return f"{self.name}: {shape} [{fmts}], {self.params():,} params, {len(self.charset) - 1} chars + EOS{store}"

    # --- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.layers:
            raise ModelError("a model needs at least one layer")
        if len(self.charset) < 2 or self.charset[-1] != EOS or EOS in self.charset[:-1]:
            raise ModelError("charset must end with EOS ('\\x00') and contain it once")
        if not is_printable(self.charset[:-1]):
            raise ModelError("charset characters must be printable ASCII")
        if not 1 <= self.max_reply <= 255:
            raise ModelError(f"max_reply must be 1..255, got {self.max_reply}")
        if self.replies is not None:
            self._validate_replies()
        if self.shape[0] != self.features.n_inputs:
            raise ModelError(f"first layer takes {self.shape[0]} inputs, features give {self.features.n_inputs}")
        if self.shape[-1] != len(self.charset):
            raise ModelError(f"last layer has {self.shape[-1]} outputs, charset has {len(self.charset)} symbols")
        for i, layer in enumerate(self.layers):
            self._validate_layer(i, layer)
        self.check_bounds()

    def _validate_replies(self) -> None:
        replies = self.replies or []
        if not replies or replies != sorted(set(replies)):
            raise ModelError("stored replies must be a non-empty sorted list of distinct strings")
        outside = sorted({c for r in replies for c in r} - set(self.charset[:-1]))
        if outside:
            raise ModelError(f"stored replies use characters outside the charset: {''.join(outside)!r}")
        if any(not 1 <= len(r) <= self.max_reply for r in replies):
            raise ModelError(f"stored replies must have 1..max_reply ({self.max_reply}) characters")

    def _validate_layer(self, i: int, layer: IntLayer) -> None:
        where = f"layer {i}"
        try:
            fmt = formats.get(layer.fmt)
        except FormatError as e:
            raise ModelError(f"{where}: {e}") from None
        if i > 0 and layer.n_in != self.layers[i - 1].n_out:
            raise ModelError(f"{where}: takes {layer.n_in} inputs but layer {i - 1} gives {self.layers[i - 1].n_out}")
        if layer.n_out > MAX_WIDTH or layer.n_in > MAX_WIDTH:
            raise ModelError(f"{where}: layers are limited to {MAX_WIDTH} inputs and outputs")
        wrong = fmt.check(layer.weight)
        if wrong:
            raise ModelError(f"{where}: {wrong}")
        if layer.mult.shape != (layer.n_out,) or layer.bias.shape != (layer.n_out,):
            raise ModelError(f"{where}: mult and bias need one value per output neuron")
        if np.abs(layer.mult).max(initial=0) >= MULT_LIMIT:
            raise ModelError(f"{where}: multipliers must be below 2^15 in magnitude")
        if not 0 <= layer.shift <= 30:
            raise ModelError(f"{where}: shift must be 0..30, got {layer.shift}")
        is_last = i == len(self.layers) - 1
        if is_last and layer.act is not None:
            raise ModelError(f"{where}: the output layer has no activation (its values are the logits)")
        if not is_last and layer.act not in ACT_MAX:
            raise ModelError(f"{where}: hidden activations must be 'u8' or 'i16', got {layer.act!r}")

    def acc_bounds(self, index: int) -> np.ndarray:
        """Largest |acc| per neuron over every input the device can produce (and every partial sum)."""
        layer = self.layers[index]
        return np.abs(layer.weight.astype(np.int64)).sum(axis=1) * self.input_max(index)

    def check_bounds(self) -> None:
        for i, layer in enumerate(self.layers):
            acc = self.acc_bounds(i)
            total = acc * np.abs(layer.mult) + np.abs(layer.bias)
            worst = int(np.argmax(total))
            if total[worst] > INT32_MAX:
                raise ModelError(
                    f"layer {i} neuron {worst}: |acc*mult| + |bias| can reach {int(total[worst]):,}, "
                    f"beyond int32 ({INT32_MAX:,}); lower the multiplier or the activation width"
                )

    def fingerprint(self) -> str:
        """Everything that decides the device's output, hashed: `!i` reports it, so a host can check
        that a board runs this model."""
        h = hashlib.sha256()
        h.update(repr((self.charset, self.features.to_dict(), self.max_reply)).encode())
        if self.replies is not None:  # models without a store keep the fingerprints they had
            h.update(repr(self.replies).encode())
        for layer in self.layers:
            h.update(repr((layer.fmt, layer.shift, layer.act)).encode())
            for array in (layer.weight.astype(np.int8), layer.mult.astype(np.int32), layer.bias.astype(np.int32)):
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:8]

    # --- files ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        self.validate()
        header = {
            "version": FILE_VERSION,
            "name": self.name,
            "charset": self.charset,
            "features": self.features.to_dict(),
            "max_reply": self.max_reply,
            "logit_scale": self.logit_scale,
            "layers": [{"fmt": l.fmt, "shift": l.shift, "act": l.act} for l in self.layers],
            "meta": self.meta,
            "replies": self.replies,
        }
        arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
        for i, layer in enumerate(self.layers):
            arrays[f"w{i}"] = layer.weight.astype(np.int8)
            arrays[f"m{i}"] = layer.mult.astype(np.int32)
            arrays[f"b{i}"] = layer.bias.astype(np.int32)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "IntModel":
        try:
            with np.load(path, allow_pickle=False) as data:
                if "header" not in data.files:
                    raise ModelError(f"{path}: not a unochat integer model (no header); z80ai models need `unochat import-z80ai`")
                header = json.loads(str(data["header"]))
                if header.get("version") != FILE_VERSION:
                    raise ModelError(f"{path}: model file version {header.get('version')}, this unochat reads {FILE_VERSION}")
                layers = [
                    IntLayer(
                        fmt=spec["fmt"],
                        weight=data[f"w{i}"].astype(np.int8),
                        mult=data[f"m{i}"].astype(np.int64),
                        bias=data[f"b{i}"].astype(np.int64),
                        shift=int(spec["shift"]),
                        act=spec["act"],
                    )
                    for i, spec in enumerate(header["layers"])
                ]
        except (OSError, ValueError, KeyError) as e:
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"{path}: cannot read integer model: {e}") from e
        model = cls(
            layers=layers,
            charset=header["charset"],
            features=FeatureSpec(**header["features"]),
            max_reply=int(header["max_reply"]),
            name=header["name"],
            logit_scale=header.get("logit_scale"),
            meta=header.get("meta", {}),
            replies=header.get("replies"),
        )
        model.validate()
        return model
