"""What every distillation loss shares: the registry, the key contract, errors, composition."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnxkd.errors import OnnxkdError
from onnxkd.registry import Registry

LOSSES: Registry[Callable[..., DistillLoss]] = Registry("loss")


class LossConfigError(OnnxkdError):
    """A loss was given an unknown, missing or out-of-range argument."""


class LossInputError(OnnxkdError):
    """The tensors handed to a loss do not have the shapes it needs."""


class MissingOutputError(LossInputError):
    """A loss reads a student or teacher output that was not handed to it."""


class DistillLoss(nn.Module):
    """Base of every registered loss.

    Subclasses set `student_keys` and `teacher_keys` (what `forward` reads, so that the trainer
    knows which hooks to register and which cached teacher arrays to load: `logits`, the raw
    top-k arrays, or feature names) and call `_remember(...)` with their constructor
    arguments, which are then read-only in `hparams`.

    `config_fields` maps constructor arguments to the distill settings that fill them when the
    loss is `--loss` (e.g. KD's `alpha` <- `--alpha`); `--loss-arg` then overrides any argument
    by name. A loss declares this itself, so the objective builder never branches on a name.
    """

    name: ClassVar[str] = ""
    config_fields: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # Whether rows labeled UNLABELED (-1) are welcome: losses that read no label, or that
    # fall back to the teacher's targets alone on such rows (KD with α = 1 there).
    takes_unlabeled: ClassVar[bool] = False
    student_keys: tuple[str, ...] = ()
    teacher_keys: tuple[str, ...] = ()

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        raise NotImplementedError

    def set_progress(self, epochs_done: float, epochs: int) -> None:
        """Training has done `epochs_done` (fractional) of its `epochs`: for the losses whose
        settings follow a schedule (KD's α and T, its α ramp, DKD's warm-up)."""

    def schedule_state(self) -> dict[str, float]:
        """The scheduled settings' current values, for the metrics log ({} when none)."""
        return {}

    @property
    def hparams(self) -> Mapping[str, Any]:
        return self._hparams

    def config(self) -> dict[str, Any]:
        """The registry name and every constructor argument: enough to rebuild this loss."""
        return {"name": self.name, **self._hparams}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._hparams.items())

    def _remember(self, **hparams: Any) -> None:
        self._hparams = MappingProxyType(dict(hparams))

    def _student(self, outputs: Mapping[str, Tensor], key: str) -> Tensor:
        return _fetch(outputs, key, self.name, "student")

    def _teacher(self, outputs: Mapping[str, Tensor], key: str, like: Tensor) -> Tensor:
        """A teacher tensor on `like`'s device and, if floating point, in its dtype.

        Caches may store float16; the student computes in float32 (or autocast's dtype).
        """
        value = _fetch(outputs, key, self.name, "teacher")
        if value.is_floating_point():
            return value.to(device=like.device, dtype=like.dtype)
        return value.to(device=like.device)


def register(name: str) -> Callable[[type[DistillLoss]], type[DistillLoss]]:
    """Register a `DistillLoss` subclass under `name` and record the name on the class."""

    def add(cls: type[DistillLoss]) -> type[DistillLoss]:
        cls.name = name
        return LOSSES.register(name)(cls)

    return add


def loss_arguments(name: str, settings: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of loss `name`: its `config_fields` read from `settings` (a
    `DistillConfig`), then `overrides` (`--loss-arg`), checked later by `build_loss`."""
    cls = LOSSES.get(name)
    shared = {arg: getattr(settings, field) for arg, field in cls.config_fields.items()}
    return {**shared, **overrides}


def build_loss(name: str, **kwargs: Any) -> DistillLoss:
    """Build a registered loss from keyword arguments; bad arguments name the valid ones.

    Example:
        >>> loss = build_loss("kd", alpha=0.5, temperature=2.0)
        >>> loss.student_keys, loss.teacher_keys
        (('logits',), ('logits',))
    """
    cls = LOSSES.get(name)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise LossConfigError(
            f"loss {name!r} has no argument {', '.join(unknown)}; "
            f"its arguments are {', '.join(params) or '(none)'}"
        )
    missing = [
        p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in kwargs
    ]
    if missing:
        raise LossConfigError(f"loss {name!r} needs argument {', '.join(missing)}")
    return cls(**kwargs)


def _fetch(outputs: Mapping[str, Tensor], key: str, loss: str, side: str) -> Tensor:
    if key in outputs:
        return outputs[key]
    how = (
        "capture that module with a forward hook or give the loss another student key"
        if side == "student"
        else "cache that teacher output or feature, or give the loss another teacher key"
    )
    raise MissingOutputError(
        f"loss {loss!r} reads {side} output {key!r}, but the {side} outputs given are "
        f"{sorted(outputs)}; {how}"
    )


def check(condition: bool, loss: str, message: str) -> None:
    if not condition:
        raise LossInputError(f"loss {loss!r}: {message}")


def check_arg(condition: bool, loss: str, message: str) -> None:
    if not condition:
        raise LossConfigError(f"loss {loss!r}: {message}")


class CompositeLoss(DistillLoss):
    """Weighted sum of losses, reading the union of their keys and logging each term.

    After each `forward`, `last_terms` maps each term's name to its value (unweighted, i.e.
    as the term itself returns it, including any `weight` of its own), so that
    `total == sum(w * last_terms[n])`. A name used twice gets a suffix: `fitnets`, `fitnets_1`.

    Args:
        terms: `(weight, loss)` pairs; a loss is any module with the distillation signature.

    Example:
        >>> loss = CompositeLoss([(1.0, build_loss("kd")), (0.5, build_loss("rkd"))])
        >>> loss.student_keys
        ('logits', 'embedding')
    """

    name = "composite"

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        check_arg(len(terms) > 0, self.name, "needs at least one (weight, loss) term")
        self.weights = tuple(float(w) for w, _ in terms)
        self.terms = nn.ModuleList(m for _, m in terms)
        names: list[str] = []
        for _, module in terms:
            base = getattr(module, "name", "") or type(module).__name__.lower()
            label, n = base, 0
            while label in names:
                n += 1
                label = f"{base}_{n}"
            names.append(label)
        self.term_names = tuple(names)
        self.student_keys = _union(getattr(m, "student_keys", ()) for m in self.terms)
        self.teacher_keys = _union(getattr(m, "teacher_keys", ()) for m in self.terms)
        self.last_terms: dict[str, float] = {}
        self._remember(weights=dict(zip(self.term_names, self.weights, strict=True)))

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        total: Tensor | None = None
        values: dict[str, float] = {}
        for label, weight, term in zip(self.term_names, self.weights, self.terms, strict=True):
            value = term(student, teacher, labels)
            values[label] = float(value.detach())
            total = weight * value if total is None else total + weight * value
        self.last_terms = values
        assert total is not None
        return total

    def set_progress(self, epochs_done: float, epochs: int) -> None:
        for term in self.terms:
            if hasattr(term, "set_progress"):
                term.set_progress(epochs_done, epochs)

    def lacking(self, capability: str, default: bool = False) -> list[str]:
        """The labels of the terms whose class flag `capability` (e.g. "takes_unlabeled")
        is false, the flag taken as `default` where a term does not set it."""
        return [
            label
            for label, term in zip(self.term_names, self.terms, strict=True)
            if not getattr(term, capability, default)
        ]

    def schedule_state(self) -> dict[str, float]:
        """Each term's scheduled values; a term after the first prefixes its label."""
        state: dict[str, float] = {}
        for i, (label, term) in enumerate(zip(self.term_names, self.terms, strict=True)):
            values = term.schedule_state() if hasattr(term, "schedule_state") else {}
            state.update({k if i == 0 else f"{label}_{k}": v for k, v in values.items()})
        return state

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "terms": [
                {"weight": w, **(m.config() if hasattr(m, "config") else {"module": repr(m)})}
                for w, m in zip(self.weights, self.terms, strict=True)
            ],
        }


def _union(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for keys in groups for k in keys))


# The partner's label and λ of mixed views (MixUp, CutMix), handed in with the teacher's
# arrays (the names of onnxkd.distill.data.MIX_LABEL and MIX_LAMBDA).
MIX_LABEL, MIX_LAMBDA = "mix_label", "mix_lambda"


def label_loss(
    logits: Tensor, labels: Tensor, teacher: Mapping[str, Tensor], label_smoothing: float = 0.0
) -> Tensor:
    """Per-row cross-entropy with the labels, (B,); for a mixed view `λ·CE(y) + (1 − λ)·CE(y')`
    with its partner's label y' and the λ its pixels were mixed by. Unlabeled rows (-1) give
    the CE of class 0: a caller weighs them 0."""
    ce = F.cross_entropy(
        logits, labels.clamp_min(0), reduction="none", label_smoothing=label_smoothing
    )
    if MIX_LAMBDA not in teacher:
        return ce
    lam = teacher[MIX_LAMBDA].to(device=logits.device, dtype=logits.dtype)
    partner = teacher[MIX_LABEL].to(logits.device).long().clamp_min(0)
    other = F.cross_entropy(logits, partner, reduction="none", label_smoothing=label_smoothing)
    return lam * ce + (1 - lam) * other


def kl_batchmean(teacher_log_p: Tensor, student_log_q: Tensor) -> Tensor:
    """KL(p ‖ q) summed over classes, averaged over rows, from log-probabilities.

    Classes where p is exactly 0 contribute 0 (xlogy), so -inf teacher log-probs are safe.
    """
    return kl_rows(teacher_log_p, student_log_q).sum() / teacher_log_p.shape[0]


def kl_rows(teacher_log_p: Tensor, student_log_q: Tensor) -> Tensor:
    """KL(p ‖ q) of each row, (B, C) log-probabilities -> (B,); p = 0 classes add 0."""
    p = teacher_log_p.exp()
    terms = torch.where(p > 0, p * (teacher_log_p - student_log_q), torch.zeros_like(p))
    return terms.sum(dim=1)
