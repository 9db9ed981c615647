"""A student's feature taps: the names feature distillation hooks, with their output shapes.

A registry student's taps are its stage names (`stage1`, …, `final`, `embedding`) and then
every module path; a custom student's are its own dotted module paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onnxkd.data.spec import InputSpec
from onnxkd.students.custom import ExternalStudent
from onnxkd.students.for_spec import create_student_for_spec


@dataclass(frozen=True)
class Tap:
    name: str  # what --hint and the other feature options take
    module_type: str
    shape: tuple[int, ...] | str  # the output's shape, or its type when it is not a tensor


def feature_taps(spec: str, size: int, channels: int, num_classes: int) -> list[Tap]:
    """Build `spec` for a `size`x`size`x`channels` image and run one batch through it."""
    student = create_student_for_spec(
        spec, InputSpec(layout="NCHW", size=(size, size), channels=channels), num_classes
    ).eval()
    modules = dict(student.named_modules())
    aliases = dict(student.feature_modules)
    # registry students: the stage names, then each module path not already named (a custom
    # student's names are all its module paths already)
    named = set(aliases.values())
    more = {} if isinstance(student, ExternalStudent) else {p: p for p in modules if p}
    names = {**aliases, **{p: v for p, v in more.items() if p not in named}}
    outputs: dict[str, object] = {}
    hooks = [
        modules[path].register_forward_hook(
            lambda _m, _i, out, path=path: outputs.setdefault(path, out)
        )
        for path in set(names.values())
    ]
    with torch.no_grad():
        student(torch.zeros(1, channels, size, size))
    for hook in hooks:
        hook.remove()
    return [
        Tap(name, type(modules[path]).__name__, _shape(outputs.get(path)))
        for name, path in names.items()
    ]


def _shape(output) -> tuple[int, ...] | str:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    return "not run" if output is None else type(output).__name__
