"""The weight-format registry (unochat.model.formats): one definition per format, asked everywhere."""
from __future__ import annotations

import re

import numpy as np
import pytest

from unochat import cli
from unochat.codegen.kernels import LayerKernel
from unochat.model import formats
from unochat.model.intmodel import IntLayer, IntModel, ModelError


@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_levels_codes_and_packing(name: str) -> None:
    f = formats.get(name)
    assert f.lo in f.levels and f.hi in f.levels and (0 in f.levels) == f.zero
    rng = np.random.default_rng(0)
    w = rng.choice(f.levels, size=(5, 13)).astype(np.int8)  # 13: a row that does not fill whole bytes
    assert f.check(w) is None
    rows = f.pack_rows(w)
    assert rows.shape == (5, f.row_bytes(13)) and rows.dtype == np.uint8
    # unpack the row-major layout and get the weights back
    if f.bits == 8:
        back = rows.view(np.int8)
    else:
        shifts = np.arange(8 // f.bits) * f.bits
        codes = ((rows[:, :, None] >> shifts) & ((1 << f.bits) - 1)).reshape(5, -1)[:, :13]
        back = np.where(codes == 1, 1, -1) if f.encoding == "binary" else codes - formats.CODES2_OFFSET
    np.testing.assert_array_equal(back, w)
    kernel = LayerKernel(name, "dense", 16)
    blocks = f.pack_blocks(w, kernel.block)
    assert blocks.size == -(-5 // kernel.block) * 13 * kernel.input_bytes


def test_out_of_range_weights_are_refused_with_the_registry_message() -> None:
    assert "1bit weights are -1 or +1, found 0" in formats.get("1bit").check(np.zeros((1, 2), np.int8))
    assert "2bit weights must be in [-2, 1]" in formats.get("2bit").check(np.full((1, 2), 2, np.int8))
    layer = IntLayer("2bit", np.full((41, 256), 1, np.int8), np.ones(41, np.int64), np.zeros(41, np.int64), 0, None)
    layer.fmt = "3bit"
    with pytest.raises(ModelError, match=re.escape(f"layer 0: unknown weight format '3bit': use {formats.choices()}")):
        IntModel([layer], " ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?.\x00").validate()


def test_one_parser_for_every_spelling() -> None:
    assert formats.parse_formats("1,2bit, 8") == ["1bit", "2bit", "int8"]
    assert formats.parse_formats(["int8"], 3) == ["int8"] * 3
    with pytest.raises(formats.FormatError, match="2 weight formats for 3 layers"):
        formats.parse_formats("1,2", 3)


def test_the_command_line_asks_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["quantize", "x.pt", "--bits", "3", "--out", "y.pt"])
    assert f"unknown weight format '3': use {formats.choices()}" in capsys.readouterr().err


def test_sparse_layout_only_where_it_is_smaller_and_can_be_stored() -> None:
    """A random 2-bit 256x256 layer (a quarter of its weights -2, each listed) and a layer with few zeros are
    no smaller sparse: no sparse kernel is offered for them; a ternary layer, and a 2-bit one with few -2
    weights and many zeros, get one. Outputs past a byte, and records past their length byte, cannot be
    stored sparse."""
    from unochat.codegen.kernels import c_kernels

    rng = np.random.default_rng(0)
    def loops(fmt: str, weight: np.ndarray) -> list[str]:
        layer = IntLayer(fmt, weight.astype(np.int8), np.ones(len(weight), np.int64), np.zeros(len(weight), np.int64), 0, "u8")
        return [k.loop for k in c_kernels(layer, 255)]
    assert loops("2bit", rng.choice([-2, -1, 0, 1], size=(256, 256))) == ["c"]
    assert loops("2bit", rng.choice([-2, -1, 0, 1], p=[0.01, 0.2, 0.59, 0.2], size=(256, 256))) == ["c", "sparse"]
    assert loops("2bit", rng.choice([-2, -1, 0, 1], p=[0.01, 0.5, 0.01, 0.48], size=(64, 64))) == ["c"]  # no smaller
    assert loops("ternary", rng.choice([-1, 0, 1], size=(256, 256))) == ["c", "sparse"]
    assert not formats.sparse_fits(np.zeros((257, 256), np.int8))  # an output is a byte
    assert not formats.sparse_fits(np.full((256, 4), -2, np.int8))  # records of 320 B: past their length byte
