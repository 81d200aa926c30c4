"""The fast kernels (templates/unochat_kernels.S.j2, layers_fast.c.j2) and how codegen plans them.

On the host: the plan's choices (kernels by density, cache, SRAM and flash fallbacks), the weight layout,
the zero thresholds and the size estimates. On the virtual UNO (marks sim + pio): every kernel variant,
forced by a plan, bit for bit against unochat.reference on random, sparse and extreme inputs and on real
replies; the C path likewise; `unochat bench --kernels`' measurement on one shape.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from unochat import cli
from unochat.board.client import connect
from unochat.boards import UNO
from unochat.codegen.kernels import LayerKernel, candidate_kernels, int8_acc_bits, requant_mode, zero_thresholds
from unochat.codegen.layout import UNROLL, Plan
from unochat.codegen.plan import flash_bytes, plan_layers, sram_bytes
from unochat.codegen.render import render
from unochat.data.dataset import normalize_query
from unochat.data.features import FeatureSpec
from unochat.firmware.build import build_firmware
from unochat.firmware.project import make_project, project_environ
from unochat.firmware.size import BudgetError, SizeReport
from unochat.measure import kernels as kernel_bench
from unochat.model import formats, reference
from unochat.model.density import default_density, measure_density
from unochat.model.intmodel import ACT_MAX, IntLayer, IntModel

from conftest import TINYCHAT_MODEL, chatty_model, need_shared, random_inputs, random_model
from test_device import DEFAULT_PAIRS, on_device


# ---- the plan ------------------------------------------------------------------------------------------
def test_list_for_sparse_inputs_dense_for_dense() -> None:
    model = random_model(0, ["1bit"] * 3, [128, 64])
    sparse = plan_layers(model, [0.15, 0.3, 0.3])
    assert [k.loop for k in sparse.kernels] == ["list", "list", "list"]
    assert sparse.cache and sparse.pair8 and sparse.skip_zeros == [True, True, False]
    dense = plan_layers(model, [0.15, 1.0, 1.0])
    assert [k.loop for k in dense.kernels] == ["list", "dense", "dense"]
    assert dense.skip_zeros == [False, False, False]  # every output nonzero: no thresholds


def test_int8_takes_the_narrowest_exact_sum() -> None:
    model = random_model(0, ["int8"] * 3, [32, 16])
    assert [k.acc_bits for k in plan_layers(model, [0.1, 0.5, 0.5]).kernels] == [24, 24, 24]
    small = model.layers[1]
    small.weight[:] = np.clip(small.weight, -1, 1)
    small.weight[:, 128:] = 0
    small.mult[:] = 1
    assert int8_acc_bits(model, 1) == 16  # 32 inputs, |w| <= 1: |acc| <= 32 * 255


def test_i16_layers_keep_the_c_kernels() -> None:
    model = random_model(0, ["2bit", "1bit", "int8"], [32, 16], act="i16")
    plan = plan_layers(model, [0.1, 0.5, 0.5])
    assert [k.loop for k in plan.kernels][1:] == ["c", "c"] and plan.kernels[0].loop != "c"
    assert requant_mode(model, 0, plan.kernels[0]) == "c"  # i16 outputs: C requantization


def test_sram_gives_up_lists_before_the_cache() -> None:
    model = random_model(1, ["1bit"] * 3, [128, 64])
    density = [0.15, 0.3, 0.3]
    full = plan_layers(model, density)
    assert full.cache and [k.loop for k in full.kernels] == ["list"] * 3
    need = sram_bytes(model, full.kernels, True)
    board = replace(UNO, sram=need - 1 + UNO.stack_reserve)
    # the first layer's 130-byte list goes; the last layer's 66-byte one still fits
    fewer = plan_layers(model, density, board)
    assert fewer.cache and [k.loop for k in fewer.kernels] == ["skip", "skip", "list"]
    no_lists = [k if k.loop != "list" else LayerKernel(k.fmt, "skip") for k in fewer.kernels]
    board = replace(UNO, sram=sram_bytes(model, no_lists, True) - 1 + UNO.stack_reserve)
    tight = plan_layers(model, density, board)
    assert not tight.cache and sram_bytes(model, tight.kernels, False) <= board.sram - board.stack_reserve


def test_wide_model_fits_only_with_the_c_kernels() -> None:
    # 256-400-192-41, 1-bit: 27 KB of tables leave too little flash for the fast path's code
    model = random_model(1, ["1bit"] * 3, [400, 192])
    plan = plan_layers(model, [0.15, 0.3, 0.3])
    assert [k.loop for k in plan.kernels] == ["c", "c", "c"]
    assert flash_bytes(model, plan) <= UNO.flash_limit


def test_flash_falls_back_to_smaller_kernels() -> None:
    model = random_model(2, ["1bit", "2bit", "2bit", "2bit"], [256, 128, 96])
    density = [0.15, 0.3, 0.3, 0.3]
    plan = plan_layers(model, density)
    assert flash_bytes(model, plan) <= UNO.flash_limit
    assert [k.loop for k in plan.kernels] == ["list"] * 4 and plan.cache and plan.pair8
    # with zero thresholds not even 4 copies fit; without them, 8 do and 16 do not
    with_thresholds = replace(plan, unroll=4, skip_zeros=[True, True, True, False])
    assert flash_bytes(model, with_thresholds) > UNO.flash_limit
    assert plan.unroll == 8 and not any(plan.skip_zeros)
    assert flash_bytes(model, replace(plan, unroll=16)) > UNO.flash_limit
    # a little wider: 4 copies do not fit without thresholds either, 2 do not, 1 does
    wider = random_model(2, ["1bit", "2bit", "2bit", "2bit"], [256, 142, 96])
    plan = plan_layers(wider, density)
    assert plan.unroll == 1 and not any(plan.skip_zeros) and plan.kernels[0].loop == "list"
    assert flash_bytes(wider, plan) <= UNO.flash_limit < flash_bytes(wider, replace(plan, unroll=2))


def test_density_from_the_model_else_a_stated_default() -> None:
    """Planning never runs inference: the density is the model's (measured when it was made), else a
    default the plan says it used."""
    model = chatty_model(1, ["1bit"] * 3, [64, 32], DEFAULT_PAIRS)
    density = measure_density(model, [p.query for p in DEFAULT_PAIRS[::400]])
    assert len(density) == 3 and 0 < density[0] <= 21 / 128 and all(0 < d < 1 for d in density[1:])
    plan = plan_layers(model)
    assert plan.density == default_density(model) == [21 / 128, 0.5, 0.5]
    assert "records no input density" in plan.density_note and "unochat density" in plan.density_note
    model.meta["density"] = [0.1, 1.0, 1.0]
    plan = plan_layers(model)
    assert [k.loop for k in plan.kernels] == ["list", "dense", "dense"] and plan.density_note is None


# ---- layout and arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["1bit", "2bit", "int8"])
def test_block_layout(fmt: str) -> None:
    layer = random_model(3, [fmt, fmt], [13]).layers[0]  # 13 outputs: a padded last block
    kernel = candidate_kernels(IntModel([layer], " \x00"), 0)[0]
    packed = formats.get(layer.fmt).pack_blocks(layer.weight, kernel.block).reshape(-1, layer.n_in, kernel.input_bytes)
    w = layer.weight.astype(np.int64)
    for i in range(layer.n_out):
        b, k = divmod(i, kernel.block)
        if fmt == "int8":
            got = packed[b, :, k].astype(np.int64) - 128
        elif fmt == "1bit":
            got = np.where(packed[b, :, 0] >> k & 1, 1, -1)
        else:
            code = packed[b, :, 0].astype(np.int64)
            got = (code >> k & 1) + 2 * (code >> (4 + k) & 1) - 2
        np.testing.assert_array_equal(got, w[i])


@pytest.mark.parametrize("mode", ["half", "acc16", "wide"])
def test_zero_thresholds_are_exact_and_safe(mode: str) -> None:
    """Below its threshold a neuron's output is 0 (for both parities of T in half mode); at it, the
    threshold is tight: the output may be nonzero."""
    rng = np.random.default_rng(4)
    n = 400
    mult = rng.integers(-2000, 2000, size=n)
    layer = IntLayer("1bit", np.ones((n, 1), np.int8), mult, rng.integers(-(2**24), 2**24, size=n), 12, "u8")
    theta = zero_thresholds(layer, mode)
    limit = 2 ** (23 if mode == "wide" else 15)

    def out(d: np.ndarray, p: int) -> np.ndarray:
        v = (2 * d * mult + p * mult if mode == "half" else d * mult) + layer.bias
        return np.clip(v >> layer.shift, 0, ACT_MAX["u8"])

    below = np.maximum(theta - 1, -limit)
    for p in (0, 1) if mode == "half" else (0,):
        assert (out(below, p)[theta > -limit] == 0).all()
    assert (theta[mult <= 0] == -limit).all()
    reachable = (mult > 0) & (np.abs(theta) < limit - 1)
    assert (out(theta, 1 if mode == "half" else 0)[reachable] > 0).all()


def test_c_path_export_removes_the_fast_kernels(tmp_path: Path) -> None:
    model = random_model(0, ["1bit", "1bit"], [16])
    names = {p.name for p in render(model, tmp_path, density=[0.1, 0.5])}
    assert names == {"unochat_model.h", "unochat_model.c", "unochat_kernels.S"}
    assert {p.name for p in render(model, tmp_path, kernels="c")} == {"unochat_model.h", "unochat_model.c"}
    assert not (tmp_path / "unochat_kernels.S").exists()
    with pytest.raises(ValueError, match="kernels must be one of fast, c"):
        render(model, tmp_path, kernels="asm")


def test_export_kernel_path_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = random_model(0, ["1bit", "1bit"], [16])
    model.meta["density"] = [0.1, 0.5]
    path = tmp_path / "m.npz"
    model.save(path)
    assert cli.main(["export", str(path), "--out-dir", str(tmp_path / "c"), "--kernel-path", "c"]) == 0
    assert "Kernels: c:" in (tmp_path / "c" / "unochat_model.c").read_text()
    assert cli.main(["export", str(path), "--out-dir", str(tmp_path / "fast")]) == 0
    assert (tmp_path / "fast" / "unochat_kernels.S").is_file()
    capsys.readouterr()


# ---- on the virtual UNO --------------------------------------------------------------------------------
def _plan(*kernels: LayerKernel, cache: bool = True, skip: list[bool] | None = None, pair8: bool = False,
          unroll: int = UNROLL) -> Plan:
    return Plan(list(kernels), cache, [], skip, pair8, unroll)


bits, list_, skip_, dense_ = "1bit", "list", "skip", "dense"
# (formats, hidden, features, plan or "c"): each forces kernels the generator might not pick for the model
DEVICE_CASES = {
    # 1-bit: pair8 first layer, every bit-plane loop, zero thresholds
    "1bit-loops": (["1bit"] * 4, [64, 48, 32], FeatureSpec(64, 64),
                   _plan(LayerKernel(bits, list_), LayerKernel(bits, dense_), LayerKernel(bits, skip_),
                         LayerKernel(bits, list_), skip=[True, True, True, False], pair8=True)),
    # the same unrolled 4 times, no thresholds, no cache: the query half walked every step
    "1bit-small": (["1bit"] * 3, [40, 24], FeatureSpec(64, 64),
                   _plan(LayerKernel(bits, list_), LayerKernel(bits, skip_), LayerKernel(bits, dense_),
                         cache=False, unroll=4)),
    # 2-bit: 256 inputs (wide requantization), cache of the query share, 16-bit (acc16) hidden layer
    "2bit": (["2bit"] * 3, [24, 16], FeatureSpec(),
             _plan(LayerKernel("2bit", list_), LayerKernel("2bit", dense_), LayerKernel("2bit", list_),
                   skip=[True, True, False])),
    # 2-bit pair8 first layer (8-bit sums of the context half, the 16-bit query cache added), every
    # bit-plane loop unrolled 16 times, blocks groups with a partial last one
    "2bit-pair8": (["2bit"] * 4, [40, 36, 20], FeatureSpec(),
                   _plan(LayerKernel("2bit", list_), LayerKernel("2bit", skip_), LayerKernel("2bit", list_),
                         LayerKernel("2bit", dense_), skip=[True, True, True, False], pair8=True, unroll=16)),
    # ternary on the 2-bit bit planes (first layer listed, cached) and the sparse C layout after it, with
    # 2-bit -2 weights as exceptions in the last layer
    "sparse": (["ternary", "ternary", "2bit"], [40, 24], FeatureSpec(),
               _plan(LayerKernel("ternary", list_), LayerKernel("ternary", "sparse"), LayerKernel("2bit", "sparse"))),
    # int8: 24-bit sums (wide), and 16-bit ones where the bound allows
    "int8": (["int8"] * 3, [24, 16], FeatureSpec(64, 64),
             _plan(LayerKernel("int8", skip_, 24), LayerKernel("int8", dense_, 24), LayerKernel("int8", skip_, 24),
                   skip=[True, False, False])),
    # int8 with 24-bit sums in 8-wide dense blocks (third bytes counted down), the argmax fused
    "int8-dense24": (["int8"] * 3, [24, 16], FeatureSpec(64, 64),
                     _plan(LayerKernel("int8", skip_, 24), LayerKernel("int8", dense_, 24),
                           LayerKernel("int8", dense_, 24), skip=[False, True, False])),
    # a 1-bit layer over 384 inputs: chunks of 256, 32-bit sums, wide requantization
    "chunked": (["1bit", "1bit", "int8"], [384, 16], FeatureSpec(64, 64), None),
    "c-path": (["int8", "2bit", "1bit"], [32, 16], FeatureSpec(64, 64), "c"),
}


@pytest.fixture(scope="module")
def build_plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[IntModel, object], tuple[Path, SizeReport]]]:
    root = tmp_path_factory.mktemp("kernels")
    project = make_project(root)

    def build(model: IntModel, plan: object) -> tuple[Path, SizeReport]:
        if plan == "c":
            sizes = build_firmware(model, project, kernels="c", quiet=True)
        else:
            plan = plan or plan_layers(model, [0.15, 0.4, 0.4, 0.4][:len(model.layers)])
            sizes = build_firmware(model, project, plan=plan, quiet=True)
        return project / "build" / "firmware.elf", sizes

    with pytest.MonkeyPatch.context() as mp:
        for key, value in project_environ(root).items():
            mp.setenv(key, value)
        yield build


def case_model(name: str) -> IntModel:
    formats, hidden, features, _ = DEVICE_CASES[name]
    model = chatty_model(5, formats, hidden, DEFAULT_PAIRS, features=features)
    if name == "int8":
        # the middle layer's sums fit 16 bits: it runs the 16-bit int8 kernel whatever the plan says
        middle = model.layers[1]
        middle.weight[:] = np.clip(middle.weight, -1, 1)
        model.validate()
    return model


@on_device
@pytest.mark.parametrize("name", list(DEVICE_CASES))
def test_kernels_bit_exact_on_device(build_plan: Callable, name: str) -> None:
    model = case_model(name)
    plan = DEVICE_CASES[name][3]
    if isinstance(plan, Plan):
        # the int8 case's middle layer: the narrowest exact sum, as the generator would pick it
        kernels = [LayerKernel(k.fmt, k.loop, int8_acc_bits(model, i)) if k.fmt == "int8" else k
                   for i, k in enumerate(plan.kernels)]
        plan = Plan(kernels, plan.cache, [], plan.skip_zeros, plan.pair8, plan.unroll)
    elf, sizes = build_plan(model, plan)
    x = random_inputs(6, 4, model.shape[0])
    queries = [p.query for p in DEFAULT_PAIRS[11::600]]
    expected = reference.generate(model, [normalize_query(q) for q in queries])
    with connect(sim=elf) as client:
        bad = [i for i, xi in enumerate(x) if not np.array_equal(client.logits(xi), reference.logits(model, xi)[0])]
        replies = [client.timed_reply(q) for q in queries]
    assert not bad, f"{name}: logits differ for inputs {bad}"
    assert [t.reply for t in replies] == expected
    assert all(t.ctx_cycles > 0 and t.argmax_cycles > 0 and t.requant_cycles == 0 for t in replies)
    print(f"\n{name}: {model.describe()}; flash {sizes.flash_bytes:,} B; {len(x)} logits, {len(queries)} replies "
          f"bit-exact; {np.median([s for t in replies for s in t.steps[:t.n]]):,.0f} cycles a character")


@on_device
@pytest.mark.parametrize("middle", [LayerKernel("2bit", list_), LayerKernel("int8", dense_, 24)],
                         ids=["2bit-list", "int8-dense24"])
def test_extreme_sums_on_device(build_plan: Callable, middle: LayerKernel) -> None:
    """Every sum at its bound (all weights at their largest, every input 255) through the list and dense
    kernels and uk_rq: 1-bit and 2-bit S = 65,280, the largest the 16-bit sums may hold; int8 256 *
    255 * 255 = 16,646,400 in 24 bits (third bytes of 253, counted down by uk_i8_dense24)."""
    model = random_model(8, ["1bit", middle.fmt, "1bit"], [256, 16], extreme="max")
    first = model.layers[0]  # passes its inputs' sum on, saturated: 255 for every input below
    first.mult[:], first.bias[:], first.shift = 1, 0, 0
    model.validate()
    plan = _plan(LayerKernel("1bit", list_), middle, LayerKernel("1bit", dense_),
                 skip=[True, True, False], pair8=True)
    elf, _ = build_plan(model, plan)
    x = np.concatenate([random_inputs(9, 2, model.shape[0]), np.full((1, model.shape[0]), 255, np.uint8)])
    with connect(sim=elf) as client:
        for xi in x:
            np.testing.assert_array_equal(client.logits(xi), reference.logits(model, xi)[0])


@on_device
def test_sparse_kernel_carries_on_device(build_plan: Callable) -> None:
    """uk_sparse where sums often leave [-2^15, 2^15) (i16 activations, z80ai's form, here near 32,767): the
    low 16 bits carry into the high byte and borrow from it, through +x, -x and a -2 weight's second -x,
    fixed out of line; every layer sparse (u8 inputs, i16 inputs, the logits; records of 5 mask bytes,
    an odd count), bit-exact with the reference."""
    model = random_model(6, ["2bit", "ternary", "2bit"], [40, 24], act="i16")
    plan = _plan(*[LayerKernel(f, "sparse") for f in model.formats], cache=False)
    x = random_inputs(5, 8, model.shape[0])
    hidden = reference.forward(model, x)[:-1]
    accs = [h.astype(np.int64) @ layer.weight.T.astype(np.int64) for h, layer in zip(hidden, model.layers[1:])]
    assert all((np.abs(acc) >= 2**15).any() and (np.abs(acc) < 2**15).any() for acc in accs)
    assert (model.layers[0].weight == -2).any() and (model.layers[2].weight == -2).any()
    elf, _ = build_plan(model, plan)
    with connect(sim=elf) as client:
        for xi in x:
            np.testing.assert_array_equal(client.logits(xi), reference.logits(model, xi)[0])


@on_device
def test_flash_fallback_holds_on_the_real_elf(build_plan: Callable) -> None:
    """The wide model of test_wide_model_fits_only_with_the_c_kernels, built: even the smallest fast plan
    (dense, unrolled 4 times, no thresholds, no cache) is over the flash limit on the real ELF, as the
    estimate said; the generator's own plan (the C kernels) fits and is bit-exact."""
    model = random_model(1, ["1bit"] * 3, [400, 192])
    smallest = _plan(*[LayerKernel("1bit", dense_)] * 3, cache=False, unroll=4)
    assert flash_bytes(model, smallest) > UNO.flash_limit
    with pytest.raises(BudgetError) as over:
        build_plan(model, smallest)
    assert over.value.report.flash_bytes > UNO.flash_limit
    plan = plan_layers(model, [0.15, 0.3, 0.3])
    elf, sizes = build_plan(model, plan)
    assert sizes.flash_bytes <= flash_bytes(model, plan) <= UNO.flash_limit  # the estimate errs on the safe side
    x = random_inputs(10, 2, model.shape[0])
    with connect(sim=elf) as client:
        for xi in x:
            np.testing.assert_array_equal(client.logits(xi), reference.logits(model, xi)[0])


@on_device
def test_kernel_bench_measures_and_writes_json(tmp_path: Path, pio_env: None) -> None:
    report = kernel_bench.KernelReport()
    report.kernels = kernel_bench.measure_layer(make_project(tmp_path), "1bit", 64, 40)
    report.fill_loop_costs()
    out = tmp_path / "kernels.json"
    kernel_bench.write_json(report, out)
    rows = {row["kernel"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"c", "dense", "skip", "list"}
    for row in rows.values():
        assert {"format", "kernel", "inputs", "outputs", "cycles", "cycles_per_weight"} <= set(row)
        assert row["cycles_per_weight"] == pytest.approx(row["cycles"] / (64 * 40))
    assert rows["dense"]["cycles"] * 3 < rows["c"]["cycles"]
    assert rows["list"]["zero_cycles"] < rows["dense"]["zero_cycles"]  # a list of no inputs costs nothing
    print(f"\n{report.table()}")


@on_device
def test_character_breakdown_both_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`unochat bench --parts MODEL`: a generated character's parts, fast and C path, replies checked."""
    model = chatty_model(1, ["1bit"] * 3, [64, 32], DEFAULT_PAIRS)
    path, out = tmp_path / "m.npz", tmp_path / "breakdown.json"
    model.save(path)
    assert cli.main(["bench", "--parts", str(path), "--queries", "3", "--json", str(out)]) == 0
    fast, c = json.loads(out.read_text())
    assert (fast["path"], c["path"]) == ("fast", "c") and fast["chars"] == c["chars"] > 0
    assert fast["mismatches"] == c["mismatches"] == 0
    assert 0 < sum(fast["requant"]) < sum(fast["layers"]) and c["requant"] == [None] * 3  # C: not timed apart
    assert fast["step_median"] * 3 < c["step_median"]
    assert "of which requantization" in capsys.readouterr().out


@on_device
def test_character_breakdown_of_a_model_only_the_fast_path_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """z80ai's stock model fits only in the sparse layout: `--parts` times its fast path, says why the C
    path (41 KB of row-major weights) is left out, and its sparse layers' requantization is not timed apart."""
    need_shared()
    out = tmp_path / "breakdown.json"
    assert cli.main(["bench", "--parts", str(TINYCHAT_MODEL), "--queries", "2", "--json", str(out)]) == 0
    (fast,) = json.loads(out.read_text())
    assert fast["path"] == "fast" and fast["mismatches"] == 0 and fast["requant"] == [None] * 4
    printed = capsys.readouterr().out
    assert "the c path is not timed: firmware needs" in printed and "(in its C loop: not timed apart)" in printed
