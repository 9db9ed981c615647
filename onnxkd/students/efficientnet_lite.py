"""EfficientNet-Lite (Tan & Le, "EfficientNet", ICML 2019; the Lite variants TF-Lite deploys).

The blocks are EfficientNet-B0's MBConv table (expansion, kernel, stride, channels, repeats);
the Lite changes, from the reference `efficientnet/lite/efficientnet_lite_builder.py` of
tensorflow/tpu (and timm's `_gen_efficientnet_lite`): no squeeze-excite, ReLU6 instead of
swish, the stem (32) and head (1280) channels not scaled with width, and the first and last
block groups not repeated more with depth. Lite0 is width 1.0, depth 1.0 (224 px); Lite1 is
width 1.0, depth 1.1 (240 px). Channels round to multiples of 8, repeats up (ceil). Dropout
0.2 before the classifier; the drop-connect of EfficientNet's training recipe is not applied.

Stages for feature distillation group the groups by output resolution: stage1 ends at 24
channels, stage2 at 40, stage3 at 112, stage4 at 320; `final` is the 1×1 head conv. Up to
64 px the stem and the first stride-2 group do not stride (total stride 8), above they do (32).

For INT8 every op has an int8 kernel in onnxruntime (ReLU6 folds into the quantized conv), the
reason TF-Lite dropped SE and swish for these variants.
"""

from __future__ import annotations

import math

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

# Per group: (stage, expansion, kernel, stride-2?, channels, repeats), EfficientNet-B0's table.
GROUPS: list[tuple[int, int, int, bool, int, int]] = [
    (1, 1, 3, False, 16, 1),
    (1, 6, 3, True, 24, 2),
    (2, 6, 5, True, 40, 2),
    (3, 6, 3, True, 80, 3),
    (3, 6, 5, False, 112, 3),
    (4, 6, 5, True, 192, 4),
    (4, 6, 3, False, 320, 1),
]
STEM, HEAD = 32, 1280
# Downsampling points: stem, then the stride-2 groups in order.
CIFAR_STRIDES = [1, 1, 2, 2, 2]
IMAGENET_STRIDES = [2, 2, 2, 2, 2]


class EfficientNetLite(Student):
    """EfficientNet-Lite at width and depth multipliers `width`, `depth`."""

    def __init__(
        self,
        width: float,
        depth: float,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Size = 32,
    ) -> None:
        super().__init__()
        s_stem, *s_groups = plan_strides(input_size, CIFAR_STRIDES, IMAGENET_STRIDES)
        cin = STEM
        self.stem = ConvBNAct(in_chans, cin, 3, s_stem, act=nn.ReLU6)
        stages: list[list[nn.Module]] = [[] for _ in range(4)]
        last = len(GROUPS) - 1
        for i, (stage, expand, kernel, strided, channels, repeats) in enumerate(GROUPS):
            cout = make_divisible(channels * width)
            if 0 < i < last:
                repeats = math.ceil(repeats * depth)
            stride = s_groups.pop(0) if strided else 1
            for _ in range(repeats):
                stages[stage - 1].append(
                    InvertedResidual(cin, cin * expand, cout, stride, kernel, nn.ReLU6)
                )
                cin, stride = cout, 1
        self.stage1, self.stage2, self.stage3, self.stage4 = (nn.Sequential(*s) for s in stages)
        self.num_features = HEAD
        self.final = ConvBNAct(cin, HEAD, 1, act=nn.ReLU6)
        self.head = ClassifierHead(HEAD, num_classes, dropout=0.2)
        self.feature_modules = stage_features(4, final="final")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(self.final(self.stage4(self.stage3(x))))


@STUDENTS.register()
def efficientnet_lite0(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> EfficientNetLite:
    """EfficientNet-Lite0: width 1.0, depth 1.0 (4.7 M parameters at 1000 classes)."""
    return EfficientNetLite(1.0, 1.0, num_classes, in_chans, input_size)


@STUDENTS.register()
def efficientnet_lite1(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> EfficientNetLite:
    """EfficientNet-Lite1: width 1.0, depth 1.1 (5.4 M parameters at 1000 classes)."""
    return EfficientNetLite(1.0, 1.1, num_classes, in_chans, input_size)
