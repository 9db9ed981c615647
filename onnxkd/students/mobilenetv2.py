"""MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks, ReLU6.

The blocks follow the paper's Table 2 (t, c, n, s); the width multiplier scales every layer
except the last 1×1 conv (1280 channels) below width 1, and channels are rounded to multiples
of 8 as in the paper's reference code. Blocks are grouped into stages by output resolution, as
RepDistiller taps them for feature distillation: stage1 ends at 24 channels, stage2 at 32,
stage3 at 96, stage4 at 320; `final` is the 1×1 conv to 1280 channels.

Up to 64 px the stem and stage1 do not stride (total stride 8, a 4×4 map at 32 px); above, the
ImageNet design strides 2 at the stem and at each stage (total 32).
"""

from __future__ import annotations

import torch
from torch import nn

from onnxkd.students.common import (
    STUDENTS,
    ClassifierHead,
    ConvBNAct,
    InvertedResidual,
    Size,
    Student,
    init_weights,
    make_divisible,
    plan_strides,
    stage_features,
)

# Per stage, the (expansion t, channels c, repeats n) groups of Table 2; the stage's first
# block carries its stride, the other groups of a stage have stride 1.
STAGES: list[list[tuple[int, int, int]]] = [
    [(1, 16, 1), (6, 24, 2)],
    [(6, 32, 3)],
    [(6, 64, 4), (6, 96, 3)],
    [(6, 160, 3), (6, 320, 1)],
]
# Downsampling points: stem, stage1 .. stage4.
CIFAR_STRIDES = [1, 1, 2, 2, 2]
IMAGENET_STRIDES = [2, 2, 2, 2, 2]


class MobileNetV2(Student):
    """MobileNetV2 at width multiplier `width`."""

    def __init__(
        self, width: float, num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
    ) -> None:
        super().__init__()
        s_stem, *s_stages = plan_strides(input_size, CIFAR_STRIDES, IMAGENET_STRIDES)
        cin = make_divisible(32 * width)
        self.stem = ConvBNAct(in_chans, cin, 3, s_stem, act=nn.ReLU6)
        stages = []
        for groups, stage_stride in zip(STAGES, s_stages, strict=True):
            blocks = []
            for t, c, n in groups:
                cout = make_divisible(c * width)
                for _ in range(n):
                    stride, stage_stride = stage_stride, 1
                    blocks.append(InvertedResidual(cin, cin * t, cout, stride))
                    cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.num_features = make_divisible(1280 * max(1.0, width))
        self.final = ConvBNAct(cin, self.num_features, 1, act=nn.ReLU6)
        self.head = ClassifierHead(self.num_features, num_classes)
        self.feature_modules = stage_features(4, final="final")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(self.final(self.stage4(self.stage3(x))))


@STUDENTS.register()
def mobilenetv2_w035(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV2:
    """MobileNetV2 at width 0.35."""
    return MobileNetV2(0.35, num_classes, in_chans, input_size)


@STUDENTS.register()
def mobilenetv2_w050(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV2:
    """MobileNetV2 at width 0.5: RepDistiller's (CRD's) "MobileNetV2" student.

    RepDistiller truncates channels (int(c × 0.5)) and strides its stem 2 on CIFAR; this one
    rounds to multiples of 8 and keeps the stem at stride 1 on small inputs.
    """
    return MobileNetV2(0.5, num_classes, in_chans, input_size)


@STUDENTS.register()
def mobilenetv2_w075(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV2:
    """MobileNetV2 at width 0.75."""
    return MobileNetV2(0.75, num_classes, in_chans, input_size)


@STUDENTS.register()
def mobilenetv2_w100(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV2:
    """MobileNetV2 at width 1.0 (the paper's main model)."""
    return MobileNetV2(1.0, num_classes, in_chans, input_size)


@STUDENTS.register()
def mobilenetv2(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> MobileNetV2:
    """MobileNetV2 at width 1.0 (alias of `mobilenetv2_w100`; RepDistiller's is `_w050`)."""
    return MobileNetV2(1.0, num_classes, in_chans, input_size)
