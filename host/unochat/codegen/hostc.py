"""The generated C compiled with the host's gcc and called through ctypes: the host half of the proof
that the C computes what the reference (model/reference.py) computes."""
from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..data.dataset import MAX_QUERY
from ..model.intmodel import IntModel
from .layout import Plan
from .render import render


class HostModel:
    """One model's generated C as a shared library."""

    def __init__(self, model: IntModel, workdir: Path | None = None, kernels: str = "fast",
                 plan: Plan | None = None) -> None:
        self.model = model
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="unochat-hostc-")
        self.dir = Path(workdir or self._tmp.name)
        render(model, self.dir, kernels=kernels, plan=plan)
        lib = self.dir / "libunochat_model.so"
        cmd = ["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
               str(self.dir / "unochat_model.c"), "-o", str(lib)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"host gcc failed on the generated C:\n{result.stderr}")
        self.lib = ctypes.CDLL(str(lib))
        self.n_in = model.shape[0]
        self.n_out = model.shape[-1]
        self.lib.unochat_state_size.restype = ctypes.c_uint16
        self._state = ctypes.create_string_buffer(self.lib.unochat_state_size())
        self._line = ctypes.create_string_buffer(1 + MAX_QUERY)
        self.lib.unochat_step.restype = ctypes.c_int16
        self.lib.unochat_line_feed.restype = ctypes.c_uint8
        self.lib.unochat_argmax.restype = ctypes.c_uint8

    def close(self) -> None:
        if self._tmp:
            self._tmp.cleanup()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x: uint8 [N, n_in] -> int32 logits [N, n_out]."""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.uint8)
        out = np.zeros((x.shape[0], self.n_out), dtype=np.int32)
        for k in range(x.shape[0]):
            self.lib.unochat_logits(x[k].ctypes.data_as(ctypes.c_void_p), out[k].ctypes.data_as(ctypes.c_void_p))
        return out

    def query_features(self, query: str) -> np.ndarray:
        spec = self.model.features
        x = np.zeros(spec.query_buckets, dtype=np.uint8)
        raw = query.encode("latin-1")
        self.lib.unochat_query_features(raw, ctypes.c_uint8(len(raw)), x.ctypes.data_as(ctypes.c_void_p))
        return x

    def context_features(self, generated: str) -> np.ndarray:
        spec = self.model.features
        window = generated[-spec.context_len:].lower().rjust(spec.context_len).encode("latin-1")
        x = np.zeros(spec.context_buckets, dtype=np.uint8)
        self.lib.unochat_context_features(window, x.ctypes.data_as(ctypes.c_void_p))
        return x

    def normalize(self, raw: bytes) -> str | None:
        """Feeds raw bytes and a final LF to the C line editor; returns the first completed line."""
        self.lib.unochat_line_reset(self._line)
        for byte in raw + b"\n":
            if self.lib.unochat_line_feed(self._line, ctypes.c_uint8(byte)):
                n = self._line.raw[0]
                return self._line.raw[1:1 + n].decode("latin-1")
        return None

    def reply(self, query: str) -> str:
        raw = query.encode("latin-1")
        self.lib.unochat_start(self._state, raw, ctypes.c_uint8(len(raw)))
        out = []
        while (c := self.lib.unochat_step(self._state)) >= 0:
            out.append(chr(c))
        return "".join(out)
