"""Quantization-aware training: the PyTorch MLP and its export to the integer model.

The float model that trains (all layers see the integers the device sees, times a step size):
    hidden layer:  y = fakequant_u8(relu(BN(scale * levels(W) @ x)))
    output layer:  logits = BN(scale * levels(W) @ x)
Layer 0 gets the uint8 feature counts as they are (step 1); layer l > 0 gets the previous layer's
fake-quantized activations q * step, q in 0..255.

Weight formats (model/formats.py: the levels and the rule for one float `scale` per output neuron):
    levels = clamp(floor(w / scale + 1/2), lo, hi), or sign(w) with 0 -> +1 for a format without a
    zero level (1bit);
    scale rules (ROW_SCALES): mean_abs = mean |w| of the row (1bit); rms = RMS of the row, a step near
    the optimum for bell-shaped rows (2bit, z80ai's levels); max_abs = max |w| of the row / hi (int8).
The scales cost nothing on the device: BatchNorm follows, and both fold into the per-neuron multiplier.
Gradients reach the latent float weights straight through the rounding, gated to the quantizer's range
(without a zero level: |w| <= 1, and `clip_weights_` keeps those latents in [-1, 1]; the measured 1-bit
recipe, README "Results").

uint8 activations: q = clamp(floor(y / step + 0.5), 0, 255) (round half up, as the device's +0.5 bias
does); one learned step per layer with LSQ gradients (Esser et al. 2020). The clamp at 0 is the ReLU.

Export (`export_int_model`) folds scale, BatchNorm and steps into the integer layer of intmodel.py:
    hidden: q = clamp((acc*mult + bias) >> shift, 0, 255)   mult/2^shift = A, bias/2^shift = B
    output: logit = acc*mult + bias                          float logit ~= logit * logit_scale
with, per neuron, A = bn_gain * scale * step_in / step_out and B = bn_offset / step_out + 1/2.
The integer model is not simulated in torch: reference.py is the only integer implementation.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..data.features import FeatureSpec
from ..model import formats
from ..model.intmodel import INPUT_MAX, INT32_MAX, MULT_LIMIT, IntLayer, IntModel, ModelError
from .config import DEFAULT_SPARSITY

ACT_LEVELS = 255  # uint8 activations
INIT_RANGE = 0.1  # latent weights start uniform in (-0.1, 0.1), as in the recipe
INIT_STEP = 8.0 / ACT_LEVELS  # after BatchNorm, 8 standard deviations fit the uint8 range
MAX_SHIFT = 30  # IntModel's limit
Z80AI_REPLY_LIMIT = 50  # a model's reply limit when none is given (training sets it from its data)
TINY = 1e-12  # keeps the scale of an all-zero row (a pruned neuron) finite


ROW_SCALES = {  # a format's `scale` rule: one scale per row [out, 1] of latent weights w
    "mean_abs": lambda w, fmt: w.abs().mean(dim=1, keepdim=True),
    "rms": lambda w, fmt: w.pow(2).mean(dim=1, keepdim=True).sqrt(),
    "max_abs": lambda w, fmt: w.abs().amax(dim=1, keepdim=True) / fmt.hi,
}


def weight_levels(w: Tensor, fmt: str, sparsity: float = DEFAULT_SPARSITY) -> tuple[Tensor, Tensor]:
    """Integer levels (as floats) and the per-row scale [out, 1], levels * scale ~= w. No gradients.
    The "ternary" rule zeroes the `sparsity` share of each row's smallest weights and scales the rest by
    their mean magnitude."""
    f = formats.get(fmt)
    w = w.detach()
    if f.scale == "ternary":
        magnitude = w.abs()
        zeros = min(int(round(sparsity * w.shape[1])), w.shape[1] - 1)
        threshold = magnitude.kthvalue(zeros, dim=1, keepdim=True).values if zeros else magnitude.new_full(
            (w.shape[0], 1), -1.0)
        kept = (magnitude > threshold).to(w.dtype)
        scale = ((magnitude * kept).sum(dim=1, keepdim=True) / kept.sum(dim=1, keepdim=True).clamp_min(1))
        return torch.sign(w) * kept, scale.clamp_min(TINY)
    scale = ROW_SCALES[f.scale](w, f).clamp_min(TINY)
    if not f.zero:
        return (w >= 0).to(w.dtype) * 2 - 1, scale
    return torch.floor(w / scale + 0.5).clamp(f.lo, f.hi), scale


def quantize_weight(w: Tensor, fmt: str, sparsity: float = DEFAULT_SPARSITY) -> Tensor:
    """levels * scale forward; backward the identity where w lies inside the quantizer's range, else 0."""
    f = formats.get(fmt)
    levels, scale = weight_levels(w, fmt, sparsity)
    if not f.zero:
        passing = w.clamp(-1.0, 1.0)
    else:
        passing = torch.clamp(w, (f.lo - 0.5) * scale, (f.hi + 0.5) * scale)
    return passing + (levels * scale - passing).detach()


class QuantLinear(nn.Module):
    """A linear layer without bias (BatchNorm follows) whose weights are quantized to `fmt`.

    `mix` blends float and quantized weights for progressive quantization: 0 = float, 1 = quantized."""

    def __init__(self, n_in: int, n_out: int, fmt: str, sparsity: float = DEFAULT_SPARSITY) -> None:
        super().__init__()
        self.fmt = formats.get(fmt).name
        self.sparsity = sparsity  # the share of zero weights in a ternary row
        self.weight = nn.Parameter(torch.empty(n_out, n_in).uniform_(-INIT_RANGE, INIT_RANGE))
        self.mix = 1.0

    def levels(self) -> tuple[Tensor, Tensor]:
        """This layer's integer levels and row scales (weight_levels)."""
        return weight_levels(self.weight, self.fmt, self.sparsity)

    def forward(self, x: Tensor) -> Tensor:
        w = quantize_weight(self.weight, self.fmt, self.sparsity)
        if self.mix < 1.0:
            w = (1.0 - self.mix) * self.weight + self.mix * w
        return x @ w.t()


def fake_quant_u8(y: Tensor, step: Tensor) -> Tensor:
    """clamp(floor(y/step + 0.5), 0, 255) * step with LSQ gradients for y and step."""
    n = y.shape[-1]
    # LSQ's gradient scale 1/sqrt(n * Qp) keeps the step's update comparable to the weights' updates
    g = 1.0 / (n * ACT_LEVELS) ** 0.5
    s = step * g + (step - step * g).detach()
    x = (y / s).clamp(0, ACT_LEVELS)
    q = x + (torch.floor(x + 0.5) - x).detach()
    return q * s


class UInt8Act(nn.Module):
    """ReLU plus uint8 fake-quantization with one learned step size.

    The step is learned as its logarithm: Adam moves a parameter by about lr per step whatever its
    gradient, which drove a step of ~0.01 through zero within a few updates (a dead layer, the loss
    jumping from 0.14 to 2.7 mid-training); in log space the same update is a ~0.3% relative change."""

    def __init__(self) -> None:
        super().__init__()
        self.log_step = nn.Parameter(torch.tensor(INIT_STEP).log())

    def step_value(self) -> Tensor:
        return self.log_step.exp()

    def forward(self, y: Tensor) -> Tensor:
        return fake_quant_u8(y, self.step_value())


class HiddenBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, fmt: str, sparsity: float = DEFAULT_SPARSITY) -> None:
        super().__init__()
        self.linear = QuantLinear(n_in, n_out, fmt, sparsity)
        self.norm = nn.BatchNorm1d(n_out)
        self.act = UInt8Act()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.linear(x)))


class QuantMLP(nn.Module):
    """features -> hidden blocks -> quantized linear -> BatchNorm (per-class affine) -> float logits."""

    def __init__(self, n_inputs: int, hidden: list[int], n_outputs: int, formats: list[str],
                 sparsity: float = DEFAULT_SPARSITY) -> None:
        super().__init__()
        if len(formats) != len(hidden) + 1:
            raise ValueError(f"{len(hidden) + 1} layers need {len(hidden) + 1} weight formats, got {len(formats)}")
        sizes = [n_inputs, *hidden]
        self.sparsity = sparsity
        self.hidden = nn.ModuleList(HiddenBlock(a, b, f, sparsity) for a, b, f in zip(sizes, sizes[1:], formats))
        self.out_linear = QuantLinear(sizes[-1], n_outputs, formats[-1], sparsity)
        self.out_norm = nn.BatchNorm1d(n_outputs)

    @property
    def linears(self) -> list[QuantLinear]:
        return [block.linear for block in self.hidden] + [self.out_linear]

    def set_quant_mix(self, t: float) -> None:
        for layer in self.linears:
            layer.mix = float(t)

    @torch.no_grad()
    def clip_weights_(self) -> None:
        """Latents of a format without a zero level (1bit) stay in [-1, 1] (the recipe), so a sign can
        always flip back within a few steps."""
        for layer in self.linears:
            if not formats.get(layer.fmt).zero:
                layer.weight.clamp_(-1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.hidden:
            x = block(x)
        return self.out_norm(self.out_linear(x))


# --- export ---------------------------------------------------------------------------------------


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = gain * z + offset (float64)."""
    var = bn.running_var.detach().double().numpy()
    mean = bn.running_mean.detach().double().numpy()
    gain = bn.weight.detach().double().numpy() / np.sqrt(var + bn.eps)
    return gain, bn.bias.detach().double().numpy() - gain * mean


def _levels_and_scale(layer: QuantLinear) -> tuple[np.ndarray, np.ndarray]:
    levels, scale = layer.levels()
    return levels.numpy().astype(np.int8), scale.double().numpy()[:, 0]


def _step_neurons(real_mult: np.ndarray, real_bias: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """mult, bias that compute clamp(floor(acc*r + c), 0, 255) exactly when |r| >= 255 per unit of acc.

    Such a neuron (BatchNorm of a nearly constant pre-activation) is a step: 0 on one side of some acc a0,
    255 on the other, and some v at a0. With a slope of exactly 255 levels per unit of acc the integer
    formula lands on v at a0 and saturates at every other acc, whatever the shift."""
    r, c = real_mult, real_bias
    a0 = np.where(r > 0, np.ceil((1 - c) / r), np.floor((1 - c) / r))  # the first acc where y > 0
    v = np.clip(np.floor(a0 * r + c), 0, ACT_LEVELS)
    mult = np.sign(r) * ACT_LEVELS * 2.0**shift
    return mult, v * 2.0**shift - a0 * mult


def _fold_hidden(weight: np.ndarray, real_mult: np.ndarray, real_bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """mult, bias, shift for clamp(floor(acc*real_mult + real_bias), 0, 255) with the largest safe shift.

    Neurons steeper than 255 levels per unit of acc are exact steps (_step_neurons): they cap the layer's
    shift at 6 or 7 instead of at 0, which costs nothing measurable (tinychat, 2-bit 160-128-96: shift 7
    for every layer gives TF 97.26% / EM 86.45% against 97.27% / 86.52% with the largest shifts)."""
    acc_max = np.abs(weight.astype(np.int64)).sum(axis=1) * INPUT_MAX
    steep = np.abs(real_mult) >= ACT_LEVELS
    for shift in range(MAX_SHIFT, -1, -1):
        mult = np.rint(real_mult * 2.0**shift)
        bias = np.rint(real_bias * 2.0**shift)
        if steep.any():
            step_mult, step_bias = _step_neurons(real_mult[steep], real_bias[steep], shift)
            mult[steep], bias[steep] = step_mult, step_bias
        if np.abs(mult).max(initial=0) >= MULT_LIMIT:
            continue
        mult = mult.astype(np.int64)
        reach = acc_max * np.abs(mult)
        # A neuron whose bias no accumulator can offset gives the same output (0 or 255) for every input:
        # mult 0 and a small bias compute it exactly, so a dead neuron cannot force a small shift on the layer.
        always_off = reach + bias < 2**shift
        always_on = bias - reach >= ACT_LEVELS * 2**shift
        mult[always_off | always_on] = 0
        bias = np.where(always_off, 0, np.where(always_on, ACT_LEVELS * 2**shift, bias)).astype(np.int64)
        if (acc_max * np.abs(mult) + np.abs(bias)).max(initial=0) <= INT32_MAX:
            return mult, bias, shift
    raise ModelError(f"no shift fits the multipliers (largest {np.abs(real_mult).max():.3g}) in 16 bits")


def _fold_output(weight: np.ndarray, real_mult: np.ndarray, real_bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """mult, bias, logit_scale for logits = acc*mult + bias (shift 0).

    Only argmax and logit differences matter, so the output unit (logit_scale) is free: the finest unit
    that keeps |mult| < 2^15 and acc*mult + bias inside int32 gives the most exact logits; a shift
    would only make the unit coarser."""
    acc_max = np.abs(weight.astype(np.int64)).sum(axis=1) * INPUT_MAX
    # the room left for rounding mult (half a unit per accumulator step) and bias (one unit)
    room = INT32_MAX - 0.5 * acc_max.max(initial=0) - 2
    unit = max(
        np.abs(real_mult).max(initial=0) / (MULT_LIMIT - 1),
        (acc_max * np.abs(real_mult) + np.abs(real_bias)).max(initial=0) / room,
    )
    unit = unit if unit > 0 else 1.0  # a constant-zero layer: any unit will do
    mult = np.rint(real_mult / unit).astype(np.int64)
    bias = np.rint(real_bias / unit + 0.5).astype(np.int64)  # +1/2: logits round to nearest, not down
    return mult, bias, float(unit)


@torch.no_grad()
def export_int_model(
    model: QuantMLP, charset: str, features: FeatureSpec, name: str = "model", meta: dict | None = None,
    max_reply: int = Z80AI_REPLY_LIMIT, replies: list[str] | None = None,
) -> IntModel:
    """The integer model the float model (in eval mode: BatchNorm running statistics) stands for."""
    layers = []
    step_in = 1.0  # layer 0 sees the raw counts
    for block in model.hidden:
        weight, scale = _levels_and_scale(block.linear)
        gain, offset = _bn_affine(block.norm)
        step_out = float(block.act.step_value())
        mult, bias, shift = _fold_hidden(weight, gain * scale * step_in / step_out, offset / step_out + 0.5)
        layers.append(IntLayer(block.linear.fmt, weight, mult, bias, shift, "u8"))
        step_in = step_out
    weight, scale = _levels_and_scale(model.out_linear)
    gain, offset = _bn_affine(model.out_norm)
    mult, bias, logit_scale = _fold_output(weight, gain * scale * step_in, offset)
    layers.append(IntLayer(model.out_linear.fmt, weight, mult, bias, 0, None))
    int_model = IntModel(
        layers=layers,
        charset=charset,
        features=features,
        max_reply=max_reply,
        name=name,
        logit_scale=logit_scale,
        meta=dict(meta or {}),
        replies=replies,
    )
    int_model.validate()
    return int_model
