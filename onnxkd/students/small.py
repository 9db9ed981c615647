"""The smallest students: four-conv CNNs for images and MLPs for flat feature vectors."""

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

# Downsampling points: stem conv, stem max-pool, stage1 .. stage3.
CIFAR_STRIDES = [1, 1, 2, 2, 2]
IMAGENET_STRIDES = [2, 2, 2, 2, 2]


class SmallCNN(Student):
    """A 3×3 conv stem and one strided 3×3 conv-BN-ReLU per stage, then pool and classify."""

    def __init__(
        self,
        widths: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Size = 32,
    ) -> None:
        super().__init__()
        s_stem, s_pool, s1, s2, s3 = plan_strides(input_size, CIFAR_STRIDES, IMAGENET_STRIDES)
        self.stem = ConvBNAct(in_chans, widths[0], 3, s_stem)
        self.pool = nn.MaxPool2d(3, 2, 1) if s_pool == 2 else nn.Identity()
        self.stage1 = ConvBNAct(widths[0], widths[1], 3, s1)
        self.stage2 = ConvBNAct(widths[1], widths[2], 3, s2)
        self.stage3 = ConvBNAct(widths[2], widths[3], 3, s3)
        self.num_features = widths[3]
        self.head = ClassifierHead(widths[3], num_classes)
        self.feature_modules = stage_features(3, final="stage3")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.pool(self.stem(x)))
        return self.head(self.stage3(self.stage2(x)))


class MLP(Student):
    """Linear-BN-ReLU hidden layers and a linear classifier, for inputs of shape (N, D).

    BatchNorm1d needs at least 2 samples per batch in training mode.
    """

    input_ndim = 2

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int = 10) -> None:
        super().__init__()
        sizes = (in_features, *hidden)
        self.hidden = nn.Sequential(
            *(
                nn.Sequential(nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU())
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
        )
        self.fc = nn.Linear(sizes[-1], num_classes)
        self.num_features = sizes[-1]
        self.feature_modules = {f"hidden{i + 1}": f"hidden.{i}" for i in range(len(hidden))}
        self.feature_modules["embedding"] = f"hidden.{len(hidden) - 1}"
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(x))


@STUDENTS.register()
def small_cnn(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> SmallCNN:
    """Four conv layers at 32/32/64/128 channels (about 0.1 M parameters)."""
    return SmallCNN((32, 32, 64, 128), num_classes, in_chans, input_size)


@STUDENTS.register()
def small_cnn_s(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> SmallCNN:
    """Four conv layers at 16/16/32/32 channels (about 17 k parameters on grey input)."""
    return SmallCNN((16, 16, 32, 32), num_classes, in_chans, input_size)


@STUDENTS.register()
def mlp(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> MLP:
    """MLP with hidden layers 256-128 for flat feature vectors.

    Args:
        num_classes: number of logits.
        in_chans: the number of input features D (the input is (N, D)).
        input_size: ignored; accepted so that every student has the same signature.
    """
    return MLP(in_chans, (256, 128), num_classes)


@STUDENTS.register()
def mlp_s(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> MLP:
    """MLP with one hidden layer of 64 for flat vectors (about 5 k parameters on 64 features).

    Half the zoo's scikit-learn digits teacher (9.6 k), which `mlp` (51 k) would outgrow.

    Args:
        num_classes: number of logits.
        in_chans: the number of input features D (the input is (N, D)).
        input_size: ignored; accepted so that every student has the same signature.
    """
    return MLP(in_chans, (64,), num_classes)
