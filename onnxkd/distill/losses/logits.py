"""Losses on class scores: cross-entropy, KD, KD from top-k targets, decoupled KD."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxkd.distill.losses.base import (
    MIX_LAMBDA,
    DistillLoss,
    LossConfigError,
    check,
    check_arg,
    kl_batchmean,
    kl_rows,
    label_loss,
    register,
)
from onnxkd.distill.schedule import Schedule, ScheduleError

# Same floor as the cache reader's uniform reconstruction, so both see the same residual.
RESIDUAL_FLOOR = 1e-12


def _check_kd_args(name: str, alpha: float, temperature: float) -> None:
    check_arg(0.0 <= alpha <= 1.0, name, f"alpha must be in [0, 1], got {alpha}")
    check_arg(temperature > 0, name, f"temperature must be > 0, got {temperature}")


@register("ce")
class CrossEntropy(DistillLoss):
    """Cross-entropy of the student's logits against the labels; reads no teacher output.

    Args:
        student_key: student output holding (B, C) logits.
        label_smoothing: ε in [0, 1); the target is (1 − ε)·one-hot + ε/C.

    Example:
        >>> loss = CrossEntropy(label_smoothing=0.1)
        >>> round(float(loss({"logits": torch.zeros(2, 4)}, {}, torch.tensor([0, 3]))), 4)
        1.3863
    """

    config_fields = MappingProxyType({"label_smoothing": "label_smoothing"})

    def __init__(self, student_key: str = "logits", label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_arg(0.0 <= label_smoothing < 1.0, self.name, "label_smoothing must be in [0, 1)")
        self.student_key = student_key
        self.label_smoothing = float(label_smoothing)
        self.student_keys = (student_key,)
        self._remember(student_key=student_key, label_smoothing=self.label_smoothing)

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        s = self._student(student, self.student_key)
        if MIX_LAMBDA in teacher:  # mixed views: both labels, by λ
            return label_loss(s, labels, teacher, self.label_smoothing).mean()
        return F.cross_entropy(s, labels, label_smoothing=self.label_smoothing)


class _Scheduled:
    """α and T that follow a `Schedule` over training (constant unless an end value and a
    shape are given), with α also ramped up from 0 over `warmup_epochs` epochs (0: no ramp),
    so that the student first fits the labels before the teacher's targets take their weight.
    `set_progress` moves them; `alpha` and `temperature` hold the values in force."""

    def _init_schedules(
        self,
        alpha: float,
        temperature: float,
        warmup_epochs: float | None,
        alpha_end: float | None,
        alpha_schedule: str,
        temperature_end: float | None,
        temperature_schedule: str,
    ) -> None:
        _check_kd_args(self.name, alpha, temperature)
        if alpha_end is not None or temperature_end is not None:
            _check_kd_args(
                self.name,
                alpha if alpha_end is None else alpha_end,
                temperature if temperature_end is None else temperature_end,
            )
        warmup_epochs = 0.0 if warmup_epochs is None else warmup_epochs  # None: the default
        check_arg(warmup_epochs >= 0, self.name, "warmup_epochs must be >= 0")
        self.alpha_schedule = _schedule(self.name, "alpha", alpha, alpha_end, alpha_schedule)
        self.temperature_schedule = _schedule(
            self.name, "temperature", temperature, temperature_end, temperature_schedule
        )
        self.warmup_epochs = float(warmup_epochs)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def set_progress(self, epochs_done: float, epochs: int) -> None:
        ramp = min(1.0, epochs_done / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        self.alpha = self.alpha_schedule.at(epochs_done / epochs) * ramp
        self.temperature = self.temperature_schedule.at(epochs_done / epochs)

    def schedule_state(self) -> dict[str, float]:
        return {"alpha": self.alpha, "temperature": self.temperature}

    def _schedule_hparams(self) -> dict:
        return {
            "alpha": self.alpha_schedule.start,
            "temperature": self.temperature_schedule.start,
            "warmup_epochs": self.warmup_epochs,
            "alpha_end": self.alpha_schedule.end,
            "alpha_schedule": self.alpha_schedule.shape,
            "temperature_end": self.temperature_schedule.end,
            "temperature_schedule": self.temperature_schedule.shape,
        }


def _schedule(loss: str, setting: str, start: float, end: float | None, shape: str) -> Schedule:
    try:
        return Schedule(float(start), None if end is None else float(end), shape)
    except ScheduleError as e:
        raise LossConfigError(f"loss {loss!r}: {setting}: {e}") from None


# The distill settings that fill a scheduled loss's arguments.
_SCHEDULE_FIELDS = {
    "alpha": "alpha",
    "temperature": "temperature",
    "warmup_epochs": "alpha_warmup_epochs",
    "alpha_end": "alpha_end",
    "alpha_schedule": "alpha_schedule",
    "temperature_end": "temperature_end",
    "temperature_schedule": "temperature_schedule",
}


@register("kd")
class KD(_Scheduled, DistillLoss):
    """Hinton's KD: `(1 − α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`, KL batchmean.

    The teacher scores may be logits or log-probabilities: softmax ignores per-row constants.

    Args:
        alpha: α, the weight of the distillation term (1 − α goes to the hard labels).
        temperature: T; T² keeps the gradient scale independent of T.
        student_key: student output holding (B, C) logits.
        teacher_key: teacher output holding (B, C) logits or log-probabilities.
        warmup_epochs: epochs over which α ramps up from 0 (0: none).
        alpha_end, alpha_schedule: α's value at the end of training and the shape that
            leads there ("constant", "linear" or "cosine"; see `onnxkd.distill.schedule`).
        temperature_end, temperature_schedule: the same for T.

    Example:
        >>> loss = KD(alpha=1.0, temperature=2.0)
        >>> z = torch.randn(3, 5)
        >>> float(loss({"logits": z}, {"logits": z}, torch.tensor([0, 1, 2])))
        0.0
    """

    config_fields = MappingProxyType(_SCHEDULE_FIELDS)
    takes_unlabeled = True  # α = 1 on unlabeled rows

    def __init__(
        self,
        alpha: float = 0.9,
        temperature: float = 4.0,
        student_key: str = "logits",
        teacher_key: str = "logits",
        warmup_epochs: float | None = 0,
        alpha_end: float | None = None,
        alpha_schedule: str = "constant",
        temperature_end: float | None = None,
        temperature_schedule: str = "constant",
    ) -> None:
        super().__init__()
        self._init_schedules(
            alpha,
            temperature,
            warmup_epochs,
            alpha_end,
            alpha_schedule,
            temperature_end,
            temperature_schedule,
        )
        self.student_key, self.teacher_key = student_key, teacher_key
        self.student_keys, self.teacher_keys = (student_key,), (teacher_key,)
        self._remember(**self._schedule_hparams(), student_key=student_key, teacher_key=teacher_key)

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        s = self._student(student, self.student_key)
        t = self._teacher(teacher, self.teacher_key, like=s)
        check(
            s.shape == t.shape, self.name, f"student {tuple(s.shape)} != teacher {tuple(t.shape)}"
        )
        T = self.temperature
        return _kd_mix(
            s,
            labels,
            teacher,
            self.alpha,
            T,
            F.log_softmax(t / T, dim=1),
            F.log_softmax(s / T, dim=1),
        )


@register("kd_topk")
class KDTopK(_Scheduled, DistillLoss):
    """KD from top-k teacher targets, on k + 1 bins: the teacher's top-k classes and the rest.

    Both distributions are collapsed onto the same bins and KD's KL is taken between them; the
    CE term is the same as in `kd`. The student's bins are its tempered softmax gathered at
    the top-k indices plus a "rest" bin holding the mass of every other class (a logsumexp
    over the complement, which is `log(1 − sum)` computed stably).

    The teacher's bins at temperature T: top-k class i gets `exp(v_i / T)` and the rest bin
    gets `(C − k)·(r / (C − k))^(1/T)`, then all are renormalised. This is exact at T = 1
    (the rest bin's mass is then the residual r itself). For T ≠ 1 it assumes the residual is
    spread evenly over the C − k other classes, so the teacher's bins equal the tempered
    softmax of the reader's rebuilt log-probs collapsed to k + 1 bins, exactly, where that
    rebuild makes the same assumption: caches that keep no label value, and rows whose label
    is among the top k. Where a cache keeps the label's value and the label lies outside the
    top k, the reader rebuilds the label exactly and spreads the rest over C − k − 1 classes,
    while this loss still folds the label into the rest bin (`CacheSection.topk` adds its
    mass back), so the two differ there by how the rest bin is tempered. Treating the rest as
    one class instead (mass r^(1/T)) would make this loss disagree with `kd` on the rebuilt
    log-probs at every T ≠ 1.

    Relation to `kd` on the rebuilt logits: collapsing can only lose information, so this loss
    is never above it; they are equal when k = C − 1 or when the student's tempered scores are
    equal over the rest classes, and the gap is exactly
    `α·T²·mean_b[ P_teacher(rest)·KL(uniform ‖ q_student(· | rest)) ]`. In return, no
    assumption about how the teacher spreads its residual enters the target the student is
    pulled toward within the rest.

    Args:
        alpha: α, the weight of the distillation term.
        temperature: T.
        student_key: student output holding (B, C) logits.
        values_key: teacher (B, k) top-k log-probabilities at T = 1.
        indices_key: teacher (B, k) int64 class indices of those values.
        residual_key: teacher (B,) probability mass outside the top k at T = 1.
        warmup_epochs, alpha_end, alpha_schedule, temperature_end, temperature_schedule:
            as in `kd`.
    """

    config_fields = MappingProxyType(_SCHEDULE_FIELDS)
    takes_unlabeled = True  # α = 1 on unlabeled rows

    def __init__(
        self,
        alpha: float = 0.9,
        temperature: float = 4.0,
        student_key: str = "logits",
        values_key: str = "topk_values",
        indices_key: str = "topk_indices",
        residual_key: str = "residual",
        warmup_epochs: float | None = 0,
        alpha_end: float | None = None,
        alpha_schedule: str = "constant",
        temperature_end: float | None = None,
        temperature_schedule: str = "constant",
    ) -> None:
        super().__init__()
        self._init_schedules(
            alpha,
            temperature,
            warmup_epochs,
            alpha_end,
            alpha_schedule,
            temperature_end,
            temperature_schedule,
        )
        self.student_key, self.student_keys = student_key, (student_key,)
        self.values_key, self.indices_key, self.residual_key = values_key, indices_key, residual_key
        self.teacher_keys = (values_key, indices_key, residual_key)
        self._remember(
            **self._schedule_hparams(),
            student_key=student_key,
            values_key=values_key,
            indices_key=indices_key,
            residual_key=residual_key,
        )

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        s = self._student(student, self.student_key)
        values = self._teacher(teacher, self.values_key, like=s)
        indices = self._teacher(teacher, self.indices_key, like=s).long()
        residual = self._teacher(teacher, self.residual_key, like=s)
        (b, c), k = s.shape, values.shape[-1]
        check(
            values.shape == indices.shape == (b, k) and residual.shape == (b,) and k <= c,
            self.name,
            f"expected top-k values and indices (B, k) with k <= C and residual (B,) for "
            f"student logits {tuple(s.shape)}; got {tuple(values.shape)}, "
            f"{tuple(indices.shape)}, {tuple(residual.shape)}",
        )
        T = self.temperature
        log_q = F.log_softmax(s / T, dim=1)
        student_bins = log_q.gather(1, indices)
        teacher_bins = values / T
        if k < c:
            rest = math.log(c - k)
            mass = residual.clamp_min(RESIDUAL_FLOOR).log()
            teacher_rest = rest + (mass - rest) / T
            student_rest = log_q.scatter(1, indices, float("-inf")).logsumexp(dim=1)
            teacher_bins = torch.cat([teacher_bins, teacher_rest[:, None]], dim=1)
            student_bins = torch.cat([student_bins, student_rest[:, None]], dim=1)
        return _kd_mix(
            s, labels, teacher, self.alpha, T, F.log_softmax(teacher_bins, dim=1), student_bins
        )


def _kd_mix(
    s: Tensor,
    labels: Tensor,
    teacher: Mapping[str, Tensor],
    alpha: float,
    T: float,
    teacher_log_p: Tensor,
    student_log_q: Tensor,
) -> Tensor:
    """`(1 − α)·CE + α·T²·KL`, batch means; a row labeled UNLABELED (-1) takes α = 1 (the
    teacher's targets alone), and the mean is then over the rows' own mixtures. The CE of a
    mixed view mixes its two labels by its λ (`label_loss`)."""
    unlabeled = labels < 0
    if not bool(unlabeled.any()) and MIX_LAMBDA not in teacher:
        kl = kl_batchmean(teacher_log_p, student_log_q)
        return (1 - alpha) * F.cross_entropy(s, labels) + alpha * T * T * kl
    ce = label_loss(s, labels, teacher)
    row_alpha = torch.where(unlabeled, torch.ones_like(ce), torch.full_like(ce, alpha))
    kl = kl_rows(teacher_log_p, student_log_q)
    return ((1 - row_alpha) * ce + row_alpha * T * T * kl).mean()


# The authors' warm-up of DKD's distillation part: 20 of 240 epochs on CIFAR-100 (mdistiller's
# configs), kept as that share of however long the schedule is. 20 epochs of a 30-epoch run
# would leave the teacher out of two thirds of it; 1 epoch of 30 leaves the student's first
# steps, at the peak learning rate, to a term ~5x KD's in gradient (10 classes).
DKD_WARMUP_FRACTION = 20 / 240


@register("dkd")
class DKD(DistillLoss):
    """Decoupled KD (Zhao et al., CVPR 2022): `ce_weight·CE + w·T²·(α·TCKD + β·NCKD)`.

    As in the authors' code (mdistiller, `mdistiller/distillers/DKD.py`): TCKD is the KL
    between the binary (target, non-target) tempered distributions; NCKD is the KL between the
    tempered distributions over the non-target classes (the target's tempered logit shifted by
    −1000 before the softmax); both are averaged over the batch and scaled by T². The binary
    probabilities are formed in log space (logsumexp over non-target classes): the same value,
    without underflow when the student is confident. Per sample, at the same T,
    `KL(p_t ‖ p_s) = TCKD + (1 − p_t,y)·NCKD` (the paper's Eq. 5; `decoupled_kl`).

    Warm-up: `w` ramps linearly from 0 to 1 over the first `warmup_epochs` epochs, step by
    step (mdistiller: `min(epoch / 20, 1)` per epoch of 240). None (the default) takes the
    authors' share of the schedule, `DKD_WARMUP_FRACTION` of the epochs; 0 turns it off.

    Args:
        alpha: α, weight of the target-class term TCKD.
        beta: β, weight of the non-target term NCKD (8 in the paper's CIFAR-100 setting; the
            paper lowers it for weaker teachers).
        temperature: T (may follow a schedule: temperature_end, temperature_schedule).
        ce_weight: weight of the cross-entropy with the labels.
        warmup_epochs: W, epochs of linear warm-up of the distillation part.
        student_key: student output holding (B, C) logits.
        teacher_key: teacher output holding (B, C) logits or log-probabilities.
    """

    # Its α weighs TCKD and is not KD's α, so --alpha (and its schedule) does not reach it;
    # the warm-up ramps the whole distillation part (TCKD and NCKD), as the authors' code does.
    takes_mixed_labels = False  # one target class per sample
    config_fields = MappingProxyType(
        {
            "beta": "dkd_beta",
            "temperature": "temperature",
            "warmup_epochs": "alpha_warmup_epochs",
            "temperature_end": "temperature_end",
            "temperature_schedule": "temperature_schedule",
        }
    )

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        warmup_epochs: float | None = None,
        student_key: str = "logits",
        teacher_key: str = "logits",
        temperature_end: float | None = None,
        temperature_schedule: str = "constant",
    ) -> None:
        super().__init__()
        check_arg(temperature > 0, self.name, f"temperature must be > 0, got {temperature}")
        check_arg(
            temperature_end is None or temperature_end > 0,
            self.name,
            f"temperature_end must be > 0, got {temperature_end}",
        )
        check_arg(
            warmup_epochs is None or warmup_epochs >= 0, self.name, "warmup_epochs must be >= 0"
        )
        check_arg(alpha >= 0 and beta >= 0, self.name, "alpha and beta must be >= 0")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature_schedule = _schedule(
            self.name, "temperature", temperature, temperature_end, temperature_schedule
        )
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)
        self.warmup_epochs = None if warmup_epochs is None else float(warmup_epochs)
        self.student_key, self.teacher_key = student_key, teacher_key
        self.student_keys, self.teacher_keys = (student_key,), (teacher_key,)
        self.warmup_factor = 1.0
        self._remember(
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            ce_weight=self.ce_weight,
            warmup_epochs=self.warmup_epochs,
            student_key=student_key,
            teacher_key=teacher_key,
            temperature_end=self.temperature_schedule.end,
            temperature_schedule=self.temperature_schedule.shape,
        )

    def warmup_length(self, epochs: int) -> float:
        """W in epochs for a run of `epochs`."""
        if self.warmup_epochs is None:
            return DKD_WARMUP_FRACTION * epochs
        return self.warmup_epochs

    def set_progress(self, epochs_done: float, epochs: int) -> None:
        warmup = self.warmup_length(epochs)
        self.warmup_factor = min(epochs_done / warmup, 1.0) if warmup > 0 else 1.0
        self.temperature = self.temperature_schedule.at(epochs_done / epochs)

    def schedule_state(self) -> dict[str, float]:
        return {"distill_weight": self.warmup_factor, "temperature": self.temperature}

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        s = self._student(student, self.student_key)
        t = self._teacher(teacher, self.teacher_key, like=s)
        check(
            s.shape == t.shape, self.name, f"student {tuple(s.shape)} != teacher {tuple(t.shape)}"
        )
        check(
            MIX_LAMBDA not in teacher,
            self.name,
            "decouples at one label per sample and mixed views (MixUp, CutMix) have two; use "
            "kd on a mixed-view cache",
        )
        T = self.temperature
        tckd, nckd = decoupled_kl(s, t, labels, T)
        kd = (self.alpha * tckd.mean() + self.beta * nckd.mean()) * T * T
        return self.ce_weight * F.cross_entropy(s, labels) + self.warmup_factor * kd


def decoupled_kl(
    student: Tensor, teacher: Tensor, labels: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD (each (B,), without T²) of (B, C) logits at `temperature`.

    `TCKD + (1 − p_t,y)·NCKD` is the KL of the full tempered distributions, row by row:

    Example:
        >>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 3, 9, 2])
        >>> tckd, nckd = decoupled_kl(s, t, y, 4.0)
        >>> log_p = F.log_softmax(t / 4, 1)
        >>> full = kl_rows(log_p, F.log_softmax(s / 4, 1))
        >>> p_y = log_p.exp().gather(1, y[:, None])[:, 0]
        >>> torch.allclose(tckd + (1 - p_y) * nckd, full, atol=1e-6)
        True
    """
    target = F.one_hot(labels, student.shape[1]).bool()
    s_t, t_t = student / temperature, teacher / temperature
    tckd = kl_rows(_binary(F.log_softmax(t_t, 1), target), _binary(F.log_softmax(s_t, 1), target))
    masked = -1000.0 * target.to(student.dtype)
    nckd = kl_rows(F.log_softmax(t_t + masked, 1), F.log_softmax(s_t + masked, 1))
    return tckd, nckd


def _binary(log_p: Tensor, target: Tensor) -> Tensor:
    """(B, C) log-probs -> (B, 2) log-probs of (target class, every other class)."""
    on = log_p.masked_fill(~target, float("-inf")).logsumexp(dim=1)
    off = log_p.masked_fill(target, float("-inf")).logsumexp(dim=1)
    return torch.stack([on, off], dim=1)
