"""Folding a BatchNorm into the conv or linear layer before it, with its running statistics.

With s = gamma / sqrt(running_var + eps), BN(W * x + b) = (s * W) * x + (s * (b - running_mean) +
beta): one layer computes both. QAT folds once, before fake quantization, so the weights that
get fake-quantized are the ones the int8 export carries, and the folded weight and bias then
train as the layer's own (the statistics stay those of the float run). The arithmetic is the
one torch's own eval-mode fusion uses, so results do not move by a rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

CONV_NORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
NORMS = tuple(CONV_NORMS.values())


def can_fold(layer: nn.Module, norm: nn.Module) -> bool:
    """Whether `fold(layer, norm)` applies: a conv and its dimension's BatchNorm, or a
    linear layer and a BatchNorm1d, with running statistics and one value per channel."""
    if not isinstance(norm, NORMS) or norm.running_mean is None:
        return False
    if type(layer) in CONV_NORMS:
        return type(norm) is CONV_NORMS[type(layer)] and norm.num_features == layer.out_channels
    return (
        type(layer) is nn.Linear
        and type(norm) is nn.BatchNorm1d
        and norm.num_features == layer.out_features
    )


def fold(layer: nn.Module, norm: nn.Module) -> nn.Module:
    """A copy of `layer` that computes `norm(layer(x))` in eval mode; both stay as they are.

    Example:
        >>> conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8).eval()
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(fold(conv, bn)(x), bn(conv(x)), atol=1e-6)
        True
    """
    if not can_fold(layer, norm):
        raise ValueError(f"cannot fold {norm} into {layer}")
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        mean, var = norm.running_mean, norm.running_var
        gamma = norm.weight if norm.weight is not None else torch.ones_like(mean)
        beta = norm.bias if norm.bias is not None else torch.zeros_like(mean)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        rsqrt = torch.rsqrt(var + norm.eps)
        if isinstance(layer, nn.Linear):
            scale = gamma * rsqrt
            weight = layer.weight * scale.unsqueeze(-1)
            bias = (bias - mean) * scale + beta
        else:
            shape = [-1] + [1] * (layer.weight.dim() - 1)
            weight = layer.weight * (gamma * rsqrt).reshape(shape)
            bias = (bias - mean) * rsqrt * gamma + beta
    # A layer without a bias of its own gets a frozen one, as torch's own fusion makes it and as
    # onnxkd's QAT has always trained: the BN shift stays what the float run learnt.
    trains_bias = layer.bias is not None and layer.bias.requires_grad
    folded.weight = nn.Parameter(weight.to(layer.weight.dtype), layer.weight.requires_grad)
    folded.bias = nn.Parameter(bias.to(layer.weight.dtype), trains_bias)
    return folded
