"""Losses on intermediate features: FitNets hints, attention transfer, relational KD."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnxkd.distill.losses.base import DistillLoss, check, check_arg, register


def _common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever of two (B, ·, H, W) tensors is larger, per axis, to the other."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


@register("fitnets")
class FitNets(DistillLoss):
    """FitNets hint loss (Romero et al., ICLR 2015): `weight·MSE(adapter(s), t)`.

    The adapter is learned with the student: a 1×1 convolution from the student's channels to
    the teacher's for (B, C, H, W) features, a linear layer for (B, D) ones. A 4-D student
    feature against a 2-D teacher feature (a cache that stored globally pooled features) is
    average-pooled over H, W first. When spatial sizes differ, the larger is adaptive-average
    pooled to the smaller, per axis (before the adapter: a 1×1 convolution commutes with it).

    The adapter's shapes are known only from the features, so it is created on the first
    forward. Its parameters belong in the optimizer: either run one forward before building
    the optimizer (and before wrapping in DDP or loading a checkpoint), or call
    `materialize(student_shape, teacher_shape)` up front.

    Args:
        student_key: student feature (module path captured by a hook).
        teacher_key: teacher feature (ONNX output or node name in the cache).
        weight: multiplier of the MSE.

    Example:
        >>> loss = FitNets(student_key="layer2", teacher_key="features.7")
        >>> adapter = loss.materialize((1, 32, 8, 8), (1, 128, 8, 8))  # Conv2d(32, 128, 1)
    """

    takes_unlabeled = True  # reads no label

    def __init__(self, student_key: str, teacher_key: str, weight: float = 1.0) -> None:
        super().__init__()
        self.student_key, self.teacher_key, self.weight = student_key, teacher_key, float(weight)
        self.student_keys, self.teacher_keys = (student_key,), (teacher_key,)
        self.register_module("adapter", None)
        self._remember(student_key=student_key, teacher_key=teacher_key, weight=self.weight)

    def materialize(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        """Create the adapter now from full feature shapes (batch first; its size is ignored)."""
        s, t = tuple(student_shape), tuple(teacher_shape)
        check(
            len(s) in (2, 4) and len(t) in (2, 4) and not (len(s) == 2 and len(t) == 4),
            self.name,
            f"student feature {self.student_key!r} {s} and teacher feature "
            f"{self.teacher_key!r} {t}: need (B, C, H, W) or (B, D) features, and a 4-D teacher "
            "needs a 4-D student",
        )
        kw = {"device": device, "dtype": dtype}
        if len(t) == 4:
            adapter: nn.Module = nn.Conv2d(s[1], t[1], kernel_size=1, **kw)
        else:
            adapter = nn.Linear(s[1], t[1], **kw)
        self.adapter = adapter
        return adapter

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        s = self._student(student, self.student_key)
        t = self._teacher(teacher, self.teacher_key, like=s)
        if self.adapter is None:
            self.materialize(s.shape, t.shape, device=s.device, dtype=s.dtype)
        if s.dim() == 4 and t.dim() == 2:
            s = s.mean(dim=(2, 3))
        elif s.dim() == 4:
            s, t = _common_size(s, t)
        inputs = self.adapter.in_channels if t.dim() == 4 else self.adapter.in_features
        check(
            s.dim() == t.dim() and s.shape[1] == inputs,
            self.name,
            f"adapter {self.adapter} does not fit student feature {tuple(s.shape)} "
            f"and teacher feature {tuple(t.shape)}",
        )
        return self.weight * F.mse_loss(self.adapter(s), t)


@register("at")
class AT(DistillLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based.

    For a (B, C, H, W) feature f the attention map is `mean_c |f|^p`, flattened over H·W and
    L2-normalised per sample. Per (student, teacher) pair the loss is
    `(at(s) − at(t)).pow(2).mean()`; the result is `weight` times the mean over pairs. When
    the spatial sizes of a pair differ, the larger map is adaptive-average pooled to the
    smaller before normalising.

    The default weight 1000 is RepDistiller's β = 1e3 for AT. RepDistiller sums the pairs
    where this takes their mean: with n pairs, `weight=1000 * n` reproduces it.

    Args:
        pairs: `(student_key, teacher_key)` pairs of (B, C, H, W) features, at least one.
        p: exponent of |f| (2 in the paper).
        weight: multiplier of the mean over pairs.

    Example:
        >>> loss = AT(pairs=[("layer2", "/stage2/Relu"), ("layer3", "/stage3/Relu")])
        >>> loss.student_keys, loss.teacher_keys
        (('layer2', 'layer3'), ('/stage2/Relu', '/stage3/Relu'))
    """

    takes_unlabeled = True  # reads no label

    def __init__(
        self, pairs: Sequence[Sequence[str]], p: float = 2.0, weight: float = 1000.0
    ) -> None:
        super().__init__()
        pairs = [pair if isinstance(pair, str) else tuple(pair) for pair in pairs]
        check_arg(
            len(pairs) > 0 and all(isinstance(p, tuple) and len(p) == 2 for p in pairs),
            self.name,
            f"pairs must be one or more (student_key, teacher_key) pairs; got {pairs}",
        )
        self.student_keys = tuple(s for s, _ in pairs)
        self.teacher_keys = tuple(t for _, t in pairs)
        self.p, self.weight = float(p), float(weight)
        self._remember(pairs=[list(pair) for pair in pairs], p=self.p, weight=self.weight)

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        total = None
        for s_key, t_key in zip(self.student_keys, self.teacher_keys, strict=True):
            s = self._student(student, s_key)
            t = self._teacher(teacher, t_key, like=s)
            check(
                s.dim() == 4 and t.dim() == 4,
                self.name,
                f"needs (B, C, H, W) features; student {s_key!r} is {tuple(s.shape)}, teacher "
                f"{t_key!r} is {tuple(t.shape)}",
            )
            a_s, a_t = _common_size(self._map(s), self._map(t))
            a_s = F.normalize(a_s.flatten(1), dim=1)
            a_t = F.normalize(a_t.flatten(1), dim=1)
            pair = (a_s - a_t).pow(2).mean()
            total = pair if total is None else total + pair
        return self.weight * total / len(self.student_keys)

    def _map(self, f: Tensor) -> Tensor:
        return f.abs().pow(self.p).mean(dim=1, keepdim=True)


@register("rkd")
class RKD(DistillLoss):
    """Relational KD (Park et al., CVPR 2019): distance-wise plus angle-wise terms.

    Embeddings are flattened to (B, D). Distance term: smooth L1 between the pairwise
    Euclidean distance matrices, each divided by the mean of its non-zero entries (so the
    loss is invariant to scaling either embedding). Angle term: smooth L1 between the cosines
    of the angles at every anchor j of the triplets (i, j, k), i.e. the inner products of the
    normalised differences e_i − e_j and e_k − e_j. Both average over all B² (B³) entries
    as in the authors' and RepDistiller's code.

    Args:
        student_key: student embedding, (B, D) or any (B, ...).
        teacher_key: teacher embedding, same batch size.
        distance_weight: weight of the distance term (25, the paper's).
        angle_weight: weight of the angle term (50, the paper's).
    """

    takes_unlabeled = True  # reads no label

    def __init__(
        self,
        student_key: str = "embedding",
        teacher_key: str = "embedding",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
    ) -> None:
        super().__init__()
        self.student_key, self.teacher_key = student_key, teacher_key
        self.student_keys, self.teacher_keys = (student_key,), (teacher_key,)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self._remember(
            student_key=student_key,
            teacher_key=teacher_key,
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
        )

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        s = self._student(student, self.student_key)
        t = self._teacher(teacher, self.teacher_key, like=s)
        check(
            s.shape[0] == t.shape[0] >= 2,
            self.name,
            f"needs the same batch of at least 2 embeddings; student {tuple(s.shape)}, "
            f"teacher {tuple(t.shape)}",
        )
        s, t = s.flatten(1), t.flatten(1)
        with torch.no_grad():
            t_dist, t_angle = _normalized_distances(t), _angles(t)
        loss_d = F.smooth_l1_loss(_normalized_distances(s), t_dist)
        loss_a = F.smooth_l1_loss(_angles(s), t_angle)
        return self.distance_weight * loss_d + self.angle_weight * loss_a


def _normalized_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    square = e.pow(2).sum(dim=1)
    d2 = (square[:, None] + square[None, :] - 2 * e @ e.t()).clamp_min(eps)
    d = d2.sqrt() * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))
    positive = d > 0
    mean = (d * positive).sum() / positive.sum().clamp_min(1)
    return d / mean.clamp_min(eps)


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()
