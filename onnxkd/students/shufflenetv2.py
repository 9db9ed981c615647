"""ShuffleNet V2 (Ma et al. 2018): channel split, two branches, concat and channel shuffle.

Layout of the paper's Table 5: a 3×3 stem (24 channels), a 3×3 max-pool, three stages of 4, 8
and 4 units (the paper's stage2..stage4, named stage1..stage3 here like the other students),
each opened by a downsampling unit, then a 1×1 conv to 1024 channels (`final`).

Up to 64 px the stem neither strides nor pools (total stride 8, a 4×4 map at 32 px, as in
RepDistiller's CIFAR ShuffleNetV2); above, the ImageNet design strides 32 in all.
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

REPEATS = (4, 8, 4)
# Downsampling points: stem conv, stem max-pool, stage1 .. stage3.
CIFAR_STRIDES = [1, 1, 2, 2, 2]
IMAGENET_STRIDES = [2, 2, 2, 2, 2]


class ChannelShuffle(nn.Module):
    """Interleave the channels of `groups` equal groups (the paper's channel shuffle).

    Written as a gather with a constant channel permutation instead of the usual
    reshape-transpose-reshape: the legacy ONNX exporter turns every traced shape into
    Shape/Gather/Div arithmetic, while this exports to one Gather on axis 1 with constant
    indices, which holds for any batch and image size.
    """

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        perm = torch.arange(channels).reshape(groups, channels // groups).t().reshape(-1)
        self.register_buffer("perm", perm, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.perm)


def _branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    """1×1 conv (ReLU) -> 3×3 depthwise (linear) -> 1×1 conv (ReLU)."""
    return nn.Sequential(
        ConvBNAct(cin, cout, 1),
        ConvBNAct(cout, cout, 3, stride, groups=cout, act=None),
        ConvBNAct(cout, cout, 1),
    )


class ShuffleUnit(nn.Module):
    """The basic unit (split, one branch) or, when `down`, the two-branch downsampling unit."""

    def __init__(self, cin: int, cout: int, stride: int = 1, down: bool = False) -> None:
        super().__init__()
        half = cout // 2
        self.down, self.half = down, half
        if down:
            self.left = nn.Sequential(
                ConvBNAct(cin, cin, 3, stride, groups=cin, act=None),
                ConvBNAct(cin, half, 1),
            )
            self.right = _branch(cin, half, stride)
        else:
            self.right = _branch(half, half, 1)
        self.shuffle = ChannelShuffle(cout, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        else:
            # Constant slices (not chunk) keep the exported split free of shape arithmetic.
            out = torch.cat((x[:, : self.half], self.right(x[:, self.half :])), dim=1)
        return self.shuffle(out)


class ShuffleNetV2(Student):
    """ShuffleNet V2; `widths` = the output channels of stage1..stage3 and of `final`."""

    def __init__(
        self,
        widths: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Size = 32,
    ) -> None:
        super().__init__()
        s_stem, s_pool, *s_stages = plan_strides(input_size, CIFAR_STRIDES, IMAGENET_STRIDES)
        self.stem = ConvBNAct(in_chans, 24, 3, s_stem)
        self.pool = nn.MaxPool2d(3, 2, 1) if s_pool == 2 else nn.Identity()
        stages, cin = [], 24
        for cout, repeats, stride in zip(widths[:3], REPEATS, s_stages, strict=True):
            units = [ShuffleUnit(cin, cout, stride, down=True)]
            units += [ShuffleUnit(cout, cout) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage1, self.stage2, self.stage3 = stages
        self.num_features = widths[3]
        self.final = ConvBNAct(cin, self.num_features, 1)
        self.head = ClassifierHead(self.num_features, num_classes)
        self.feature_modules = stage_features(3, final="final")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.pool(self.stem(x)))
        return self.head(self.final(self.stage3(self.stage2(x))))


@STUDENTS.register()
def shufflenetv2(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> ShuffleNetV2:
    """ShuffleNet V2 1.0×: stages 116/232/464, final 1024."""
    return ShuffleNetV2((116, 232, 464, 1024), num_classes, in_chans, input_size)


@STUDENTS.register()
def shufflenetv2_w050(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> ShuffleNetV2:
    """ShuffleNet V2 0.5×: stages 48/96/192, final 1024."""
    return ShuffleNetV2((48, 96, 192, 1024), num_classes, in_chans, input_size)
