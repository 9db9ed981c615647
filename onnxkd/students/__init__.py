"""Student architectures, one registered function per named variant.

Example:
    >>> from onnxkd.students import create_student
    >>> model = create_student("resnet8x4", num_classes=10, in_chans=1, input_size=28)
    >>> model.feature_modules["embedding"], model.num_features
    ('head.flatten', 256)

Every student is a `Student`: `forward(x)` gives logits, `feature_modules` names the modules
whose outputs feature distillation hooks, `num_features` is the embedding size and
`input_ndim` says whether it takes images (4) or flat vectors (2). A variant is one function
with `@STUDENTS.register()` in its family's module; a new family is one new module here.
"""

from __future__ import annotations

import importlib
import pkgutil

from onnxkd.errors import SpecError
from onnxkd.students.common import STUDENTS, Size, Student, shorter_side

__all__ = ["STUDENTS", "Student", "create_student", "student_names"]


def create_student(
    name: str, num_classes: int = 10, in_chans: int = 3, input_size: Size = 32
) -> Student:
    """Build the registered student `name`.

    Args:
        name: a name from `student_names()`; an unknown one raises `UnknownNameError`.
        num_classes: number of logits.
        in_chans: image channels, or the number of features D for flat-vector students.
        input_size: image side, or (height, width); sets the stem and strides.
    """
    build = STUDENTS.get(name)
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or value < 1:
            raise SpecError(f"{arg} must be a positive integer, got {value!r}")
    shorter_side(input_size)
    return build(num_classes=num_classes, in_chans=in_chans, input_size=input_size)


def student_names() -> list[str]:
    """The registered student names, sorted."""
    return STUDENTS.names()


# Every module registers its families at import, so a new family is one new file (imported
# last: for_spec imports create_student).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
