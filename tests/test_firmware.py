"""The real firmware, built offline with PlatformIO for real models, and the size budget."""
from __future__ import annotations

import pytest

from unochat.boards import UNO
from unochat.codegen.plan import flash_bytes, plan_layers, sram_bytes
from unochat.firmware.build import build_firmware
from unochat.firmware.size import BudgetError
from unochat.model.files import load_int_model
from unochat.model.z80ai import load_z80ai
from unochat.paths import DEFAULT_MODEL

from conftest import TINYCHAT_MODEL, need_shared

pytestmark = pytest.mark.pio


def test_default_model_firmware_fits(firmware_project):
    report = build_firmware(load_int_model(DEFAULT_MODEL), firmware_project)
    assert (firmware_project / "build" / "firmware.hex").is_file()
    assert report.flash_bytes <= UNO.flash_limit
    assert UNO.sram - report.sram_bytes >= UNO.stack_reserve


def test_z80ai_stock_model_fits_sparse(firmware_project):
    """z80ai's tinychat model, unmodified (145,000 weights, 2-bit levels, 74% of them 0): its 2-bit planes
    (36 KB) do not fit, the sparse layout does, walked by uk_sparse; the planner's estimates stay at or
    above the real ELF's (its fallbacks trust them)."""
    need_shared()
    model = load_z80ai(TINYCHAT_MODEL)
    report = build_firmware(model, firmware_project, quiet=True)
    assert report.flash_bytes <= UNO.flash_limit and UNO.sram - report.sram_bytes >= UNO.stack_reserve
    generated = firmware_project / "firmware" / "generated"
    source = (generated / "unochat_model.c").read_text()
    assert source.count(", sparse: a record per input (") == 4 and "the outputs of its -2 weights (254 in all)" in source
    assert "uk_sparse:" in (generated / "unochat_kernels.S").read_text()
    plan = plan_layers(model)
    assert flash_bytes(model, plan) >= report.flash_bytes
    assert sram_bytes(model, plan.kernels, plan.cache) >= report.sram_bytes


def test_a_model_too_big_is_refused_with_the_budget_message(firmware_project):
    from conftest import random_model

    model = random_model(0, ["2bit"] * 4, [256, 192, 128])  # random levels: a quarter 0, sparse does not save enough
    with pytest.raises(BudgetError) as excinfo:
        build_firmware(model, firmware_project, quiet=True)
    report = excinfo.value.report
    assert report.flash_bytes > UNO.flash_limit
    message = str(excinfo.value)
    assert f"firmware needs {report.flash_bytes:,} B of flash; the UNO has 32,256 B" in message
    assert f"(over by {report.flash_bytes - UNO.flash_limit:,} B)" in message
    assert "unochat quantize --bits 1" in message and "unochat prune --ratio 0.5" in message


def test_layer_too_big_to_compile_is_refused_before_compiling(firmware_project):
    from conftest import random_model

    model = random_model(0, ["int8"] * 4, [256, 192, 128])  # 256x256 int8 = 65,536 B in one table
    with pytest.raises(BudgetError) as excinfo:
        build_firmware(model, firmware_project)
    message = str(excinfo.value)
    assert "the model's packed weights alone need 144,512 B of flash" in message
    assert "over by 112,256 B before any code" in message
    assert "256x256 int8 layer is 65,536 B" in message
    assert not (firmware_project / "build").exists()


def test_fixed_code_leaves_flash_to_weights_and_replies(firmware_project, capsys):
    """The firmware's fixed code: a model of a few hundred bytes (256-16-41, 1-bit: 868 B of weight and
    requantization tables) built with the planner's plan, its smallest fast plan (what it falls back to
    when weights and replies need the flash) and the C kernels; flash minus the tables."""
    from dataclasses import replace

    from unochat.codegen.layout import layer_context
    from unochat.codegen.plan import UNROLLS, plan_layers

    from conftest import chatty_model
    from test_device import DEFAULT_PAIRS

    model = chatty_model(1, ["1bit"] * 2, [16], DEFAULT_PAIRS)
    model.meta["density"] = [0.15, 0.4]
    fastest = plan_layers(model)
    tables = sum(layer_context(model, i, k, fastest, arrays=False)["weight_bytes"]
                 + layer_context(model, i, k, fastest, arrays=False)["requant_bytes"]
                 for i, k in enumerate(fastest.kernels))
    smallest = replace(fastest, unroll=UNROLLS[-1], skip_zeros=[False] * 2)
    fixed = {}
    for name, kernels, plan in (("planner's", "fast", fastest), ("smallest fast", "fast", smallest), ("C", "c", None)):
        fixed[name] = build_firmware(model, firmware_project, kernels=kernels, plan=plan, quiet=True).flash_bytes - tables
    with capsys.disabled():
        print(f"\nfixed code beside {tables} B of tables: " + ", ".join(f"{k} {v:,} B" for k, v in fixed.items()))
    assert fixed["C"] < fixed["smallest fast"] <= 6_000 < fixed["planner's"]
