"""CIFAR ResNets (He et al. 2016, section 4.2) as used for students in RepDistiller (CRD).

Depth 6n+2: a 3×3 stem, three stages of n BasicBlocks at widths 16/32/64 (the stage that
changes width or stride starts with a 1×1 conv + BN shortcut, RepDistiller's "option B"),
global average pooling and a linear classifier. `resnet8x4` is RepDistiller's 4× wide variant:
stem 32, stages 64/128/256.

Above 64 px the stem becomes ImageNet's 7×7/2 conv + 3×3/2 max-pool and every stage strides,
for the usual total stride of 32 (the CIFAR design strides 4× in all).
"""

from __future__ import annotations

import torch
from torch import nn

from onnxkd.students.common import (
    STUDENTS,
    ClassifierHead,
    ConvBNAct,
    Size,
    Student,
    init_weights,
    plan_strides,
    stage_features,
)

# Downsampling points: stem conv, stem max-pool, stage1, stage2, stage3.
CIFAR_STRIDES = [1, 1, 1, 2, 2]
IMAGENET_STRIDES = [2, 2, 2, 2, 2]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride)
        self.conv2 = ConvBNAct(cout, cout, 3, act=None)
        self.shortcut = (
            ConvBNAct(cin, cout, 1, stride, act=None)
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(Student):
    """ResNet-(6n+2) with BasicBlocks; `widths` = (stem, stage1, stage2, stage3)."""

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Size = 32,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        s_stem, s_pool, *s_stages = plan_strides(input_size, CIFAR_STRIDES, IMAGENET_STRIDES)
        self.stem = ConvBNAct(in_chans, widths[0], 7 if s_stem == 2 else 3, s_stem)
        self.pool = nn.MaxPool2d(3, 2, 1) if s_pool == 2 else nn.Identity()
        stages = []
        for cin, cout, stride in zip(widths[:-1], widths[1:], s_stages, strict=True):
            blocks = [BasicBlock(cin, cout, stride)] + [
                BasicBlock(cout, cout) for _ in range(n - 1)
            ]
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.num_features = widths[-1]
        self.head = ClassifierHead(widths[-1], num_classes)
        self.feature_modules = stage_features(3, final="stage3")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        return self.head(self.stage3(self.stage2(self.stage1(x))))


@STUDENTS.register()
def resnet8(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> CifarResNet:
    """ResNet-8, widths 16/32/64 (about 0.08 M parameters)."""
    return CifarResNet(8, (16, 16, 32, 64), num_classes, in_chans, input_size)


@STUDENTS.register()
def resnet14(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> CifarResNet:
    """ResNet-14, widths 16/32/64 (about 0.17 M parameters)."""
    return CifarResNet(14, (16, 16, 32, 64), num_classes, in_chans, input_size)


@STUDENTS.register()
def resnet20(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> CifarResNet:
    """ResNet-20, widths 16/32/64 (about 0.27 M parameters)."""
    return CifarResNet(20, (16, 16, 32, 64), num_classes, in_chans, input_size)


@STUDENTS.register()
def resnet32(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> CifarResNet:
    """ResNet-32, widths 16/32/64 (about 0.47 M parameters)."""
    return CifarResNet(32, (16, 16, 32, 64), num_classes, in_chans, input_size)


@STUDENTS.register()
def resnet8x4(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> CifarResNet:
    """ResNet-8 at 4× width: stem 32, stages 64/128/256 (about 1.2 M parameters)."""
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_chans, input_size)
