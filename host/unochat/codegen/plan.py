"""The planner: which kernel runs each layer of a model, and whether it all fits the board.

Per layer it takes the cheapest of codegen/kernels.py's candidates by their estimated cycles
(`layer_cycles`) at the fraction of nonzero inputs the layer sees: the `density` argument, else
model.meta["density"] (recorded when the model was made, model/density.py), else a stated default
(`density.default_density`; the plan says so in `density_note`). So list wins below about 85% nonzero
inputs, dense above; the first layer's context half (at most 3 * context_len - 3 of its counts are
nonzero) always lists.
The first layer's query half is the same for a whole reply: its share of each first-layer sum is computed
once per reply into a cache (a list first layer visits only the query's nonzero counts for it), and a
bit-plane first layer then runs uk_bits_pair8 (8-bit sums of two blocks at a time: 2 cycles a bit), for
the cache too; its sums while replying are small, so they requantize in 16 bits. ReLU layers whose
outputs are mostly 0 (below SKIP_ZEROS_BELOW nonzero) get a per-neuron zero threshold that skips the
requantization arithmetic (22 cycles instead of about 80). The last layer's uk_rq also keeps the
argmax of the logits it makes.
What must fit decides in this order: SRAM (the cache first, then list buffers where they save least),
then flash (the loops a reply runs unrolled 16 times, else 8, else 4, those only unochat_logits runs
COLD_UNROLL times; then the same without zero thresholds; then 2 and 1 copies, with and without; then the
C kernels for the largest layers), both estimated here (`sram_bytes`, `flash_bytes`) and checked on the
real ELF by unochat.firmware.build. A reply store's bytes count against the same flash.
"""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from ..boards import UNO, Board
from ..data.features import FeatureSpec
from ..model import formats
from ..model.density import default_density
from ..model.intmodel import IntLayer, IntModel
from ..model.replies import encode
from .kernels import KERNEL_FRAME, SUMS_BYTES, LayerKernel, c_kernels, candidate_kernels, layer_cycles, requant_mode
from .layout import (
    ASSEMBLY,
    KERNEL_PATHS,
    UNROLL,
    Plan,
    act_buffers,
    c_plan,
    cache_bytes,
    environment,
    layer_context,
    list_bytes,
    sparse_hi_bytes,
    template_context,
)

SKIP_ZEROS_BELOW = 0.8  # zero thresholds cost ~10 cycles per nonzero output and save ~55 per zero one

# From avr-size and avr-nm of real builds: static SRAM outside the generated code (Arduino core, the UART's
# receive ring, main.cpp's line and command state; main.cpp adds 4 B per profile slot), and
# flash outside the generated layers and tables (Arduino core, main.cpp, libgcc, features, line editor),
# of the C driving a fast layer (the first layer's: the format registry's first_layer_flash), and of a
# C-path layer. Rounded up: the plan's fallbacks trust the estimate, so it must not fall below the real ELF
# (an all-C 256-384-192-41 model was 76 B over it with 260 B per C layer; tests/test_kernels.py builds a
# 256-400-192-41 one whose only plan that fits is all C).
FIRMWARE_SRAM = 185
FIRMWARE_FLASH = 3_830
FAST_LAYER_FLASH, C_LAYER_FLASH = 260, 310
C_REQUANT_FLASH = 350  # a fast layer that requantizes in C (sums past 24 bits, i16 outputs)
STORE_CODE_FLASH = 600  # the reply store's decoder and its step (unochat_model.c.j2), rounded up
STORE_STATE = 9  # the decoder's cursor in unochat_state_t
UNROLLS = (UNROLL, 8, 4, 2, 1)  # the unrolls the plan tries, fastest first (the template takes any power of 2)


def sram_bytes(model: IntModel, kernels: list[LayerKernel], cache: bool) -> int:
    """Static SRAM of the firmware with these kernels (the generated buffers exactly, the rest as measured)."""
    spec = model.features
    state = spec.n_inputs + 4 * model.shape[-1] + spec.context_len + 1
    if model.replies is not None:
        state += STORE_STATE
    if cache:
        state += cache_bytes(model, kernels[0])
    firmware = FIRMWARE_SRAM + 4 * (len(model.layers) + 3)
    sums = SUMS_BYTES + KERNEL_FRAME if any(not k.is_c for k in kernels) else 0
    return firmware + sum(act_buffers(model)) + state + list_bytes(model, kernels) + sums + sparse_hi_bytes(model, kernels)


def flash_bytes(model: IntModel, plan: Plan) -> int:
    """Estimated flash of the firmware with this plan: the tables and the assembly exactly (every
    instruction unochat_kernels.S uses is one 16-bit word), the C as measured."""
    layers = [layer_context(model, i, k, plan, arrays=False) for i, k in enumerate(plan.kernels)]
    tables = sum(l["weight_bytes"] + l["requant_bytes"] for l in layers)
    code = sum(C_LAYER_FLASH if k.is_c else k.format.first_layer_flash if i == 0 else FAST_LAYER_FLASH
               for i, k in enumerate(plan.kernels))
    code += C_REQUANT_FLASH * sum(not l["kernel"].is_c and l["rq"] == "c" for l in layers)
    assembly = 0
    context = template_context(model, plan, "fast", layers)
    if context["asm_kernels"]:
        text = environment().get_template(ASSEMBLY + ".j2").render(**context)
        assembly = 2 * len(re.findall(r"^\s+[a-z]+\b(?!:)", text, re.MULTILINE))
    store = 0
    if model.store is not None:
        store = encode(model.store, model.charset).nbytes + STORE_CODE_FLASH
    return FIRMWARE_FLASH + tables + code + assembly + store

def plan_layers(model: IntModel, density: list[float] | None = None, board: Board = UNO) -> Plan:
    """The fastest kernel per layer that fits `board`, whether the first layer's query share is cached,
    which layers skip their zero outputs' requantization, and how far the assembly is unrolled (see the
    module doc for the order in which what does not fit is given up)."""
    note = None
    if density is None:
        density = model.meta.get("density")
    if density is None:
        density = default_density(model)
        note = (f"{model.name} records no input density: planned with the default "
                f"{', '.join(f'{d:.2f}' for d in density)} (`unochat density MODEL --data F` measures it)")
    density = [float(d) for d in density]
    sram_budget = board.sram - board.stack_reserve
    n = len(model.layers)
    inputs = [model.features.context_buckets] + [layer.n_in for layer in model.layers[1:]]

    def cost(i: int, kernel: LayerKernel) -> float:
        return layer_cycles(model.layers[i], kernel, density[i], inputs[i])

    ranked = [sorted(candidate_kernels(model, i), key=lambda k, i=i: cost(i, k)) for i in range(n)]
    kernels = [options[0] for options in ranked]
    cache = True
    if sram_bytes(model, kernels, cache) > sram_budget:
        # without lists first: the cache saves more than any list
        kernels = [next(k for k in options if k.loop != "list") for options in ranked]
        if sram_bytes(model, kernels, cache) > sram_budget:
            cache = False
        for i in np.argsort([cost(i, kernels[i]) - cost(i, ranked[i][0]) for i in range(n)])[::-1]:
            trial = kernels[:i] + [ranked[i][0]] + kernels[i + 1:]
            if sram_bytes(model, trial, cache) <= sram_budget:
                kernels = trial
    skip = [model.layers[i].act == "u8" and density[i + 1] < SKIP_ZEROS_BELOW for i in range(n - 1)] + [False]

    def make_plan(kernels: list[LayerKernel], skip: list[bool], unroll: int) -> Plan:
        cached = cache and not kernels[0].is_c
        # a bit-plane first layer's sums while replying fit 8 bits: uk_bits_pair8 runs its context half
        pair8 = cached and kernels[0].loop == "list" and requant_mode(model, 0, kernels[0], step=True) != "c"
        return Plan(kernels, cached, density, skip, pair8, unroll, note)

    # thresholds save more cycles than unrolling 16 -> 4 costs (measured); below 4 copies the loop's own
    # jump weighs on every input, so those come last
    for unrolls in (UNROLLS[:3], UNROLLS[3:]):
        for skip_zeros in (skip, [False] * n):
            for unroll in unrolls:
                candidate = make_plan(kernels, skip_zeros, unroll)
                if flash_bytes(model, candidate) <= board.model_flash:
                    return candidate
    kernels, skip = list(kernels), [False] * n
    while any(not k.is_c for k in kernels):
        # the largest layer still in assembly goes to its smallest C kernel (sparse, where it is smaller)
        biggest = max((i for i, k in enumerate(kernels) if not k.is_c), key=lambda i: model.layers[i].weight.size)
        kernels[biggest] = min(c_kernels(model.layers[biggest], model.input_max(biggest)),
                               key=lambda k, i=biggest: layer_context(model, i, k, c_plan(model), arrays=False)["weight_bytes"])
        if flash_bytes(model, make_plan(kernels, skip, UNROLLS[-1])) <= board.model_flash:
            break
    return make_plan(kernels, skip, UNROLLS[-1])



def plan_for(model: IntModel, kernels: str = "fast", density: list[float] | None = None, board: Board = UNO) -> Plan:
    """The plan of a kernel path: "fast" (plan_layers) or "c" (the plain C kernels for every layer)."""
    if kernels not in KERNEL_PATHS:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_PATHS)}, got {kernels!r}")
    return c_plan(model) if kernels == "c" else plan_layers(model, density, board)


def placeholder(features: FeatureSpec, hidden: list[int], layer_formats: list[str], n_outputs: int) -> IntModel:
    """A model of this shape whose tables are sized at their widest (16-bit multipliers, 32-bit biases), its
    weights all nonzero: what a trained model of the shape takes at most, before it is trained."""
    sizes = [features.n_inputs, *hidden, n_outputs]
    layers = [IntLayer(fmt, np.full((n_out, n_in), formats.get(fmt).hi, dtype=np.int8),
                       np.arange(1, n_out + 1, dtype=np.int64), np.full(n_out, 2**20, dtype=np.int64), 30,
                       None if i == len(layer_formats) - 1 else "u8")
              for i, (fmt, n_in, n_out) in enumerate(zip(layer_formats, sizes, sizes[1:]))]
    charset = "".join(chr(ord(" ") + k) for k in range(n_outputs - 1)) + "\x00"  # only its size matters
    return IntModel(layers, charset, features, name="placeholder")


def store_room(features: FeatureSpec, hidden: list[int], layer_formats: list[str], n_outputs: int,
               board: Board = UNO) -> int:
    """Flash a reply store may take beside a model of this shape on `board`: what the model's smallest fast
    plan (the least unrolled, no zero thresholds) leaves, its tables sized at their widest (placeholder),
    the store's decoder counted. The planner then gives the model the fastest plan that fits beside the
    store (at least this one)."""
    model = placeholder(features, hidden, layer_formats, n_outputs)
    fastest = plan_layers(model, board=replace(board, flash_limit=2**31))
    smallest = replace(fastest, unroll=UNROLLS[-1], skip_zeros=[False] * len(model.layers))
    return board.model_flash - flash_bytes(model, smallest) - STORE_CODE_FLASH


def step_cycles(model: IntModel, plan: Plan) -> float:
    """The planner's cost model of the layers' sums for one generated character under `plan`: for ranking
    plans and shapes only. Timings are measured on the device (measure/latency.py), never taken from here."""
    inputs = [model.features.context_buckets if plan.cache else model.layers[0].n_in]
    inputs += [layer.n_in for layer in model.layers[1:]]
    density = plan.density or default_density(model)  # the C path's plan records none
    return sum(layer_cycles(layer, kernel, density[i], inputs[i])
               for i, (layer, kernel) in enumerate(zip(model.layers, plan.kernels)))
