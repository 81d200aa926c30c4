"""Model surgery on a trained QuantMLP: structured pruning of hidden neurons, and new weight formats.

Both leave a model that needs fine-tuning (pipeline.derive does it) and whose BatchNorm statistics no
longer describe its pre-activations; `recalibrate_batchnorm` measures them again on the training data.

Pruning removes whole hidden neurons: the neuron's row of its own layer, its BatchNorm entries and the
matching input column of the next layer, so the result is a smaller dense model the UNO runs as is.

Which neurons go (criterion, per hidden layer, the lowest scores are removed):
    l1_std   std of the neuron's activation on the training data x the L1 norm of its outgoing
             effective weights (the next layer's quantized weight x row scale x BatchNorm gain).
             This is about how far the next layer's normalized pre-activations move when the neuron is
             removed: the constant part of the activation is absorbed by the next BatchNorm's re-centring,
             only its variation is lost. The default; after fine-tuning, the three criteria end within a
             point of exact match of each other (README, "The compression pipeline").
    l1_mean  the same with the mean activation instead of the std (the original experiment's criterion).
    gamma    |BatchNorm gamma| of the neuron itself (network slimming, without its L1 training penalty).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..model import formats
from .config import CRITERIA
from .qat import QuantMLP

CALIBRATION_BATCH = 4096  # big batches: the running statistics average fewer, better estimates


@torch.no_grad()
def hidden_activations(model: QuantMLP, x: np.ndarray) -> list[Tensor]:
    """Every hidden block's output (eval mode: BatchNorm running statistics) for inputs x."""
    model.eval()
    h = torch.as_tensor(x, dtype=torch.float32)
    outputs = []
    for block in model.hidden:
        h = block(h)
        outputs.append(h)
    return outputs


@torch.no_grad()
def outgoing_weight_l1(model: QuantMLP, layer: int) -> Tensor:
    """Per neuron of hidden layer `layer`: sum over the next layer's neurons of |effective weight|."""
    linears = model.linears
    norms = [block.norm for block in model.hidden] + [model.out_norm]
    nxt, norm = linears[layer + 1], norms[layer + 1]
    levels, scale = nxt.levels()
    gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return ((levels * scale) * gain[:, None]).abs().sum(dim=0)


def neuron_scores(model: QuantMLP, x: np.ndarray, criterion: str = "l1_std") -> list[np.ndarray]:
    """One importance score per neuron of every hidden layer; higher is more important."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}: use one of {', '.join(CRITERIA)}")
    if criterion == "gamma":
        return [block.norm.weight.detach().abs().numpy() for block in model.hidden]
    acts = hidden_activations(model, x)
    scores = []
    for layer, a in enumerate(acts):
        spread = a.std(dim=0) if criterion == "l1_std" else a.mean(dim=0)
        scores.append((spread * outgoing_weight_l1(model, layer)).numpy())
    return scores


def kept_count(width: int, ratio: float) -> int:
    """Neurons left after removing `ratio` of `width` (at least one)."""
    return max(1, width - round(width * ratio))


def select_neurons(scores: list[np.ndarray], ratios: list[float]) -> list[np.ndarray]:
    """Indices (ascending) of the neurons to keep in each hidden layer: the highest scores.

    Ties go to the lower index, so a selection is reproducible."""
    if len(ratios) != len(scores):
        raise ValueError(f"{len(scores)} hidden layers need {len(scores)} pruning ratios, got {len(ratios)}")
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"pruning ratios are fractions in [0, 1), got {ratios}")
    keep = []
    for s, ratio in zip(scores, ratios):
        order = np.argsort(-s, kind="stable")
        keep.append(np.sort(order[: kept_count(len(s), ratio)]))
    return keep


def _copy_norm(src: nn.BatchNorm1d, dst: nn.BatchNorm1d, rows: Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[rows])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


@torch.no_grad()
def prune_model(model: QuantMLP, keep: list[np.ndarray]) -> QuantMLP:
    """A new, smaller QuantMLP with only the `keep` neurons of each hidden layer (weights copied).

    Latent weights are copied, not re-quantized: the row scales of the next layer are recomputed from
    its remaining columns, which is why the result needs `recalibrate_batchnorm` and fine-tuning."""
    if len(keep) != len(model.hidden):
        raise ValueError(f"{len(model.hidden)} hidden layers need {len(model.hidden)} keep lists, got {len(keep)}")
    rows = [torch.as_tensor(k, dtype=torch.long) for k in keep]
    n_inputs = model.hidden[0].linear.weight.shape[1]
    layer_formats = [layer.fmt for layer in model.linears]
    pruned = QuantMLP(n_inputs, [len(r) for r in rows], model.out_norm.num_features, layer_formats, model.sparsity)
    columns = torch.arange(n_inputs)
    for src, dst, r in zip(model.hidden, pruned.hidden, rows):
        dst.linear.weight.copy_(src.linear.weight[r][:, columns])
        _copy_norm(src.norm, dst.norm, r)
        dst.act.load_state_dict(src.act.state_dict())
        columns = r
    pruned.out_linear.weight.copy_(model.out_linear.weight[:, columns])
    _copy_norm(model.out_norm, pruned.out_norm, torch.arange(model.out_norm.num_features))
    return pruned


@torch.no_grad()
def requantize(model: QuantMLP, new_formats: list[str], sparsity: float | None = None) -> None:
    """Give each layer a new weight format, in place, keeping the latent float weights (e.g. 2bit -> 1bit);
    one format stands for every layer. `sparsity`, if given, is the ternary layers' new share of zeros."""
    if sparsity is not None:
        model.sparsity = sparsity
    for layer, fmt in zip(model.linears, formats.parse_formats(new_formats, len(model.linears))):
        layer.fmt = fmt
        layer.sparsity = model.sparsity
    model.clip_weights_()


@torch.no_grad()
def recalibrate_batchnorm(model: QuantMLP, x: np.ndarray) -> None:
    """Measure every BatchNorm's running mean and variance again on x (a cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: the plain average over the batches seen
    model.train()
    inputs = torch.as_tensor(x, dtype=torch.float32)
    for batch in inputs.split(CALIBRATION_BATCH):
        if len(batch) >= 2:
            model(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
