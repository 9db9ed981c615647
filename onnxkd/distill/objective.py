"""The student with its hooks and the distillation objective, as one module (so DDP syncs the
learned adapters of feature losses along with the student)."""

from __future__ import annotations

import torch
from torch import nn

from onnxkd.distill.config import DistillConfig
from onnxkd.distill.losses import (
    LOSSES,
    CompositeLoss,
    LossConfigError,
    build_loss,
    loss_arguments,
)
from onnxkd.errors import OnnxkdError


def _pairs(pairs: tuple[str, ...]) -> list[tuple[str, str]]:
    # At the first colon: teacher names may hold colons (TensorFlow's "conv/Relu:0").
    return [tuple(p.split(":", 1)) for p in pairs]  # type: ignore[misc]


# Settings that only some losses take: set away from their default for a loss that does not
# read them, they would silently do nothing.
_OPTIONAL_SETTINGS = {
    "alpha_end": None,
    "alpha_schedule": "constant",
    "temperature_end": None,
    "temperature_schedule": "constant",
}


def build_objective(cfg: DistillConfig, num_samples: int | None = None) -> CompositeLoss:
    """The weighted loss terms the config asks for; `num_samples` (the training samples'
    index space) sizes CRD's memory banks."""
    taken = set(LOSSES.get(cfg.loss).config_fields.values())
    unused = [
        name
        for name, default in _OPTIONAL_SETTINGS.items()
        if getattr(cfg, name) != default and name not in taken
    ]
    if unused:
        flags = ", ".join(f"--{n.replace('_', '-')} ({n})" for n in unused)
        raise LossConfigError(f"loss {cfg.loss!r} does not take {flags}; drop it")
    # Each loss says which settings fill which of its arguments; --loss-arg overrides them.
    main = build_loss(cfg.loss, **loss_arguments(cfg.loss, cfg, cfg.loss_args))
    terms: list[tuple[float, nn.Module]] = [(1.0, main)]
    for student_key, teacher_key in _pairs(cfg.hints):
        terms.append(
            (
                cfg.hint_weight,
                build_loss("fitnets", student_key=student_key, teacher_key=teacher_key),
            )
        )
    if cfg.attention:
        terms.append(
            (1.0, build_loss("at", pairs=_pairs(cfg.attention), weight=cfg.attention_weight))
        )
    if cfg.rkd:
        student_key, teacher_key = cfg.rkd.split(":", 1)
        terms.append((1.0, build_loss("rkd", student_key=student_key, teacher_key=teacher_key)))
    if cfg.crd:
        if num_samples is None:
            raise LossConfigError("--crd needs the number of training samples for its memory")
        student_key, teacher_key = cfg.crd.split(":", 1)
        crd = build_loss(
            "crd",
            student_key=student_key,
            teacher_key=teacher_key,
            num_samples=num_samples,
            weight=cfg.crd_weight,
            seed=cfg.seed,
        )
        terms.append((1.0, crd))
    return CompositeLoss(terms)


class DistillModule(nn.Module):
    """Runs the student, captures the named outputs the objective reads, returns the loss."""

    def __init__(self, student: nn.Module, objective: CompositeLoss) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self._captured: dict[str, torch.Tensor] = {}
        modules = dict(student.named_modules())
        aliases = getattr(student, "feature_modules", {})
        for key in objective.student_keys:
            if key == "logits":
                continue
            path = aliases.get(key, key)
            if path not in modules:
                raise OnnxkdError(
                    f"student has no module {key!r} to distill features from; stages: "
                    f"{sorted(aliases)} (or a module path from named_modules())"
                )
            modules[path].register_forward_hook(self._capture(key))

    def _capture(self, key: str):
        def hook(module, inputs, output):
            self._captured[key] = output

        return hook

    def forward(
        self, x: torch.Tensor, teacher: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._captured.clear()
        logits = self.student(x)
        outputs = {"logits": logits, **self._captured}
        # Losses compute in float32 even under autocast: KL of softened distributions is
        # sensitive to bf16/fp16 rounding.
        outputs = {k: v.float() for k, v in outputs.items()}
        loss = self.objective(outputs, teacher, labels)
        return loss, logits
