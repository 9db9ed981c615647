"""Pruned students: a registered architecture with channels removed, described as data.

Torch-Pruning removes channels along its dependency graph and records each removal (the root
module's name, whether its output or input channels went, which indices). That history,
replayed on a freshly built registry student, gives back the pruned network exactly, so a
pruned student is stored as `architecture.json` (the base name and the history, per pruning
step) beside plain state-dict weights, never as a pickled module that would have to be loaded
with `weights_only=False`.

    >>> arch = PrunedArchitecture("resnet8", steps=())  # doctest: +SKIP
    >>> student = arch.build(spec, num_classes=10)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from onnxkd.data.spec import InputSpec
from onnxkd.errors import OnnxkdError
from onnxkd.files import read_json, write_json_atomic
from onnxkd.students.common import Student
from onnxkd.students.for_spec import create_student_for_spec

FORMAT = 1
# Families Torch-Pruning cannot follow: ShuffleNetV2's channel shuffle (a reshape that
# interleaves two branches) is outside its dependency graph, as its own documentation says.
UNPRUNABLE = {
    "shufflenetv2": "its channel shuffle interleaves the two branches' channels",
    # Attention's fused q/k/v projection must lose whole heads; Torch-Pruning needs each
    # layer's head count passed in, which this stage does not do.
    "deit": "its attention heads share one fused q/k/v projection",
    "cct": "its attention heads share one fused q/k/v projection",
}

# One removal: (module path, output channels?, removed indices), as Torch-Pruning records it.
Removal = tuple[str, bool, tuple[int, ...]]


class PrunedArchitectureError(OnnxkdError):
    """A pruned architecture cannot be built or read."""


def check_prunable(name: str) -> None:
    """Refuse, in one line, a student whose family structured pruning cannot handle."""
    for family, why in UNPRUNABLE.items():
        if name.startswith(family):
            raise PrunedArchitectureError(
                f"student {name} cannot be pruned: {why}, which Torch-Pruning's dependency "
                "graph does not follow; prune a mobilenetv2_*, mobilenetv3_*, efficientnet_lite*, "
                "resnet* or small_cnn* student"
            )


def example_input(spec: InputSpec) -> torch.Tensor:
    """A one-sample batch of the input the spec describes (for graph tracing)."""
    return torch.zeros((1, *spec.input_shape))


def classifier_layers(student: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers that produce the logits: pruning their outputs would remove classes."""
    return [
        m
        for m in student.modules()
        if (isinstance(m, nn.Linear) and m.out_features == num_classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)
    ]


def dependency_graph(student: nn.Module, spec: InputSpec):
    import torch_pruning as tp

    was_training = student.training
    student.eval()
    graph = tp.DependencyGraph().build_dependency(student, example_inputs=example_input(spec))
    student.train(was_training)
    return graph


@dataclass(frozen=True)
class PrunedArchitecture:
    """A registry student (`base`) with the channel removals of each pruning step applied."""

    base: str
    steps: tuple[tuple[Removal, ...], ...] = ()

    def build(self, spec: InputSpec, num_classes: int) -> Student:
        """The pruned student, with freshly initialised weights of the pruned shapes."""
        student = create_student_for_spec(self.base, spec, num_classes)
        if not self.steps:
            return student
        check_prunable(self.base)
        graph = dependency_graph(student, spec)
        for step in self.steps:
            try:
                graph.load_pruning_history([[name, out, list(idx)] for name, out, idx in step])
            except (AttributeError, IndexError, KeyError, RuntimeError) as e:
                raise PrunedArchitectureError(
                    f"the pruning history does not fit {self.base} for this input "
                    f"({type(e).__name__}: {e})"
                ) from e
        return student

    def then(self, removals: list) -> PrunedArchitecture:
        """This architecture with one more pruning step (Torch-Pruning's history of it)."""
        step = tuple((str(n), bool(out), tuple(int(i) for i in idx)) for n, out, idx in removals)
        return PrunedArchitecture(self.base, (*self.steps, step))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "base": self.base,
            "steps": [[[n, out, list(idx)] for n, out, idx in step] for step in self.steps],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "architecture") -> PrunedArchitecture:
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, this onnxkd reads {FORMAT}")
            steps = tuple(
                tuple((str(n), bool(out), tuple(int(i) for i in idx)) for n, out, idx in step)
                for step in d["steps"]
            )
            return cls(base=str(d["base"]), steps=steps)
        except (KeyError, TypeError, ValueError) as e:
            raise PrunedArchitectureError(f"{where} is malformed ({e})") from e


def read_architecture(path: Path) -> PrunedArchitecture:
    if not Path(path).exists():
        raise PrunedArchitectureError(f"no pruned architecture at {path}")
    try:
        raw = read_json(path)
    except ValueError as e:
        raise PrunedArchitectureError(f"{path} is corrupt: {e}") from e
    return PrunedArchitecture.from_dict(raw, where=str(path))


def write_architecture(path: Path, architecture: PrunedArchitecture) -> None:
    write_json_atomic(path, architecture.to_dict())
