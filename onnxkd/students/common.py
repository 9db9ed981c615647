"""Pieces every student family shares: the registry, the base class, conv blocks, stride planning.

Stride planning is the one rule that lets a family built for 32×32 CIFAR images or 224×224
ImageNet images run on anything from 8×8 digits up: each family lists the stride of each
downsampling point for its CIFAR design and its ImageNet design, `plan_strides` picks one by
input size and then turns the earliest stride-2 points into stride 1 until the last feature map
is still at least 2×2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onnxkd.errors import SpecError
from onnxkd.registry import Registry

STUDENTS: Registry = Registry("student")

# Inputs whose shorter side is at most this use a family's CIFAR design, larger ones its
# ImageNet design (Tiny-ImageNet's 64 px is conventionally trained with the CIFAR design).
SMALL_INPUT_MAX = 64
# The last feature map keeps at least this many pixels a side, so that feature distillation
# (attention transfer, FitNets) still sees a spatial map.
MIN_FINAL_SIDE = 2

Size = int | tuple[int, int]


class Student(nn.Module):
    """Base of every student: logits from `forward`, plus what feature distillation needs.

    Attributes:
        feature_modules: name ("stage1", …, "final", "embedding") -> module path in
            `named_modules()` whose output a forward hook should capture.
        num_features: size of the pooled embedding that the classifier reads.
        input_ndim: 4 for images (N, C, H, W), 2 for flat feature vectors (N, D).
    """

    feature_modules: dict[str, str]
    num_features: int
    input_ndim: int = 4


def stage_features(stages: int, final: str) -> dict[str, str]:
    """`feature_modules` of an image student whose stages are attributes `stage1`… and whose
    classifier head pools into `head.flatten`."""
    names = {f"stage{i}": f"stage{i}" for i in range(1, stages + 1)}
    return {**names, "final": final, "embedding": "head.flatten"}


def shorter_side(input_size: Size) -> int:
    """The shorter side of an `int` or `(height, width)` input size."""
    side = min(input_size) if isinstance(input_size, tuple | list) else int(input_size)
    if side < 1:
        raise SpecError(f"input_size must be positive, got {input_size!r}")
    return side


def plan_strides(input_size: Size, cifar: list[int], imagenet: list[int]) -> list[int]:
    """Strides for a family's downsampling points at this input size.

    Example:
        >>> plan_strides(8, cifar=[1, 1, 2, 2, 2], imagenet=[2, 2, 2, 2, 2])
        [1, 1, 1, 2, 2]
    """
    side = shorter_side(input_size)
    strides = list(cifar if side <= SMALL_INPUT_MAX else imagenet)
    # A stride-2 conv or pool with padding maps n pixels to ceil(n / 2).
    while 2 in strides and math.ceil(side / math.prod(strides)) < MIN_FINAL_SIDE:
        strides[strides.index(2)] = 1
    return strides


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, losing at most 10% (MobileNet)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation; `act=None` leaves it linear."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as MobileNetV3 uses it: pool, 1×1 conv down to
    `squeeze` channels, ReLU, 1×1 conv back, hard-sigmoid gate on the input."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1×1 expand to `hidden` -> k×k depthwise [-> squeeze-excite] -> 1×1 linear project, plus
    the input when shapes match: MobileNetV2's block, which MobileNetV3 (hard-swish, SE, 5×5)
    and EfficientNet-Lite's MBConv (5×5, no SE) reuse. No expand conv when `hidden == cin`."""

    def __init__(
        self,
        cin: int,
        hidden: int,
        cout: int,
        stride: int,
        kernel: int = 3,
        act: type[nn.Module] = nn.ReLU6,
        squeeze: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvBNAct(cin, hidden, 1, act=act))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if squeeze is not None:
            layers.append(SqueezeExcite(hidden, squeeze))
        layers.append(ConvBNAct(hidden, cout, 1, act=None))
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class ClassifierHead(nn.Module):
    """Global average pool -> flatten (the embedding) [-> dropout] -> linear classifier."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(x))
        return self.fc(x if self.dropout is None else self.dropout(x))


def init_weights(model: nn.Module) -> None:
    """He (kaiming) init for convs, unit/zero BatchNorm, PyTorch's default for linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
