"""Distillation losses that read named outputs (torchdistill-style).

Every loss has the signature `loss(student, teacher, labels) -> scalar`: `student` maps module
paths (captured with forward hooks) to tensors, `teacher` maps ONNX output or feature names
(loaded from the cache) to tensors. Each loss says what it reads in `student_keys` and
`teacher_keys`, so the trainer knows which hooks to register and which cached arrays to load;
a missing key is a `MissingOutputError` that lists the keys given.

Registered names: ce, kd, kd_topk, dkd (class scores), fitnets, at, rkd, crd (features). Every
module of this package is imported here, so adding a loss is one new file with a `@register`ed
class (plus its golden-value case in tests/test_losses.py, which a test insists on).

Example:
    >>> import torch
    >>> loss = build_loss("kd", alpha=0.9, temperature=4.0)
    >>> z = torch.randn(8, 10)
    >>> value = loss({"logits": z}, {"logits": torch.randn(8, 10)}, torch.randint(0, 10, (8,)))
    >>> value.shape
    torch.Size([])
"""

import importlib
import pkgutil

from onnxkd.distill.losses.base import (
    LOSSES,
    CompositeLoss,
    DistillLoss,
    LossConfigError,
    LossInputError,
    MissingOutputError,
    build_loss,
    loss_arguments,
)
from onnxkd.distill.losses.features import AT, RKD, FitNets
from onnxkd.distill.losses.logits import DKD, KD, CrossEntropy, KDTopK

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AT",
    "DKD",
    "KD",
    "LOSSES",
    "RKD",
    "CompositeLoss",
    "CrossEntropy",
    "DistillLoss",
    "FitNets",
    "KDTopK",
    "LossConfigError",
    "LossInputError",
    "MissingOutputError",
    "build_loss",
    "loss_arguments",
]
