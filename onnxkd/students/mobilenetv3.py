"""MobileNetV3 (Howard et al., "Searching for MobileNetV3", ICCV 2019): Small and Large.

The blocks are the paper's Tables 1 (Large) and 2 (Small): kernel, expanded channels, output
channels, squeeze-excite, non-linearity (ReLU or hard-swish) and stride per row; reference
implementation: torchvision's `mobilenet_v3_large`/`_small` (the paper's TF-slim code, as
ported there). The width multiplier scales every channel count but the head's hidden
layer (1280 / 1024), which stays at its width-1 size below 1 as in the paper's 0.75 models;
channels round to multiples of 8. The squeeze-excite bottleneck is a quarter of the expanded
channels, gated by hard-sigmoid. Dropout 0.2 before the classifier, as in the
paper.

Stages for feature distillation group the rows by output resolution (each stage holds one
stride-2 row): Large ends its stages at 24, 40, 112 and 160 channels, Small at 16, 24, 48 and
96; `final` is the last 1×1 conv (960 / 576 channels), and the embedding is its pooled output.
Up to 64 px the stem and the first stride-2 row do not stride (total stride 8, a 4×4 map at
32 px, as MobileNetV2 here); above, the ImageNet design strides 32.

For INT8: hard-swish and hard-sigmoid have no int8 kernel in onnxruntime (they run in float
between a DequantizeLinear and a QuantizeLinear), and the squeeze-excite product too.
"""

from __future__ import annotations

import torch
from torch import nn

from onnxkd.students.common import (
    STUDENTS,
    ConvBNAct,
    InvertedResidual,
    Size,
    Student,
    init_weights,
    make_divisible,
    plan_strides,
    stage_features,
)

# One row: (stage, kernel, expanded channels, output channels, squeeze-excite, hard-swish,
# stride-2?). The stride of a stride-2 row is planned by input size.
Row = tuple[int, int, int, int, bool, bool, bool]
LARGE: list[Row] = [
    (1, 3, 16, 16, False, False, False),
    (1, 3, 64, 24, False, False, True),
    (1, 3, 72, 24, False, False, False),
    (2, 5, 72, 40, True, False, True),
    (2, 5, 120, 40, True, False, False),
    (2, 5, 120, 40, True, False, False),
    (3, 3, 240, 80, False, True, True),
    (3, 3, 200, 80, False, True, False),
    (3, 3, 184, 80, False, True, False),
    (3, 3, 184, 80, False, True, False),
    (3, 3, 480, 112, True, True, False),
    (3, 3, 672, 112, True, True, False),
    (4, 5, 672, 160, True, True, True),
    (4, 5, 960, 160, True, True, False),
    (4, 5, 960, 160, True, True, False),
]
SMALL: list[Row] = [
    (1, 3, 16, 16, True, False, True),
    (2, 3, 72, 24, False, False, True),
    (2, 3, 88, 24, False, False, False),
    (3, 5, 96, 40, True, True, True),
    (3, 5, 240, 40, True, True, False),
    (3, 5, 240, 40, True, True, False),
    (3, 5, 120, 48, True, True, False),
    (3, 5, 144, 48, True, True, False),
    (4, 5, 288, 96, True, True, True),
    (4, 5, 576, 96, True, True, False),
    (4, 5, 576, 96, True, True, False),
]
# (last 1×1 conv's channels as a multiple of the last row's, head hidden width)
HEADS = {"large": (6, 1280), "small": (6, 1024)}
# Downsampling points: stem, then the stride-2 rows in order.
CIFAR_STRIDES = [1, 1, 2, 2, 2]
IMAGENET_STRIDES = [2, 2, 2, 2, 2]


class MobileNetV3Head(nn.Module):
    """Pool -> flatten (the embedding) -> linear -> hard-swish -> dropout -> classifier."""

    def __init__(self, num_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(num_features, hidden)
        self.act = nn.Hardswish()
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.act(self.fc1(self.flatten(self.pool(x))))))


class MobileNetV3(Student):
    """MobileNetV3-`size` ("large" or "small") at width multiplier `width`."""

    def __init__(
        self,
        size: str,
        width: float,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Size = 32,
    ) -> None:
        super().__init__()
        rows = {"large": LARGE, "small": SMALL}[size]
        s_stem, *s_rows = plan_strides(input_size, CIFAR_STRIDES, IMAGENET_STRIDES)
        cin = make_divisible(16 * width)
        self.stem = ConvBNAct(in_chans, cin, 3, s_stem, act=nn.Hardswish)
        stages: list[list[nn.Module]] = [[] for _ in range(4)]
        for stage, kernel, expanded, out, se, hswish, strided in rows:
            hidden, cout = make_divisible(expanded * width), make_divisible(out * width)
            stride = s_rows.pop(0) if strided else 1
            squeeze = make_divisible(hidden // 4) if se else None
            act = nn.Hardswish if hswish else nn.ReLU
            stages[stage - 1].append(
                InvertedResidual(cin, hidden, cout, stride, kernel, act, squeeze)
            )
            cin = cout
        self.stage1, self.stage2, self.stage3, self.stage4 = (nn.Sequential(*s) for s in stages)
        last, hidden = HEADS[size]
        self.num_features = make_divisible(rows[-1][3] * last * width)
        self.final = ConvBNAct(cin, self.num_features, 1, act=nn.Hardswish)
        self.head = MobileNetV3Head(
            self.num_features, make_divisible(hidden * max(1.0, width)), num_classes
        )
        self.feature_modules = stage_features(4, final="final")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(self.final(self.stage4(self.stage3(x))))


@STUDENTS.register()
def mobilenetv3_small(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV3:
    """MobileNetV3-Small at width 1.0 (paper: 2.5 M parameters at 1000 classes)."""
    return MobileNetV3("small", 1.0, num_classes, in_chans, input_size)


@STUDENTS.register()
def mobilenetv3_small_w075(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV3:
    """MobileNetV3-Small at width 0.75 (paper: 2.0 M parameters at 1000 classes)."""
    return MobileNetV3("small", 0.75, num_classes, in_chans, input_size)


@STUDENTS.register()
def mobilenetv3_large(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV3:
    """MobileNetV3-Large at width 1.0 (paper: 5.4 M parameters at 1000 classes)."""
    return MobileNetV3("large", 1.0, num_classes, in_chans, input_size)


@STUDENTS.register()
def mobilenetv3_large_w075(
    num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> MobileNetV3:
    """MobileNetV3-Large at width 0.75 (paper: 4.0 M parameters at 1000 classes)."""
    return MobileNetV3("large", 0.75, num_classes, in_chans, input_size)
