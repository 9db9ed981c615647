"""Building a student for the input a cache's spec makes, so that it takes the teacher's input.

Image students are NCHW networks. For a teacher that takes NHWC (Keras via tf2onnx) or NHW
(single-channel images without a channel axis), the student is wrapped in `TeacherLayout`,
which moves the axes at its input: the exported `student.onnx` then takes exactly the teacher's
input, and the export check, quantization and the benchmark feed it what they feed the teacher.
Converting the data to NCHW instead would change the deployed model's input behind the user's
back.
"""

from __future__ import annotations

import torch

from onnxkd.data.spec import InputSpec
from onnxkd.errors import SpecError
from onnxkd.students import create_student, student_names
from onnxkd.students.common import Student
from onnxkd.students.custom import build_custom, parse_custom

# Layouts an NCHW image network is adapted to, with the rank of the input they take.
ADAPTED = {"NHWC": 4, "NHW": 3}


class TeacherLayout(Student):
    """An NCHW image student that takes NHWC or NHW input.

    The network sits at `net`, so its module paths, and the `feature_modules` that feature
    distillation hooks, start with `net.`. Plain tensor ops only: FX tracing (QAT) and the
    ONNX export see one Transpose (NHWC) or Unsqueeze (NHW) before the first convolution.
    """

    def __init__(self, net: Student, layout: str) -> None:
        super().__init__()
        if layout not in ADAPTED:
            raise SpecError(f"layout {layout!r} needs no adapter; adapted: {', '.join(ADAPTED)}")
        self.layout = layout
        self.net = net
        self.num_features = net.num_features
        self.input_ndim = ADAPTED[layout]
        self.feature_modules = {k: f"net.{v}" for k, v in net.feature_modules.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The NCHW view of a contiguous NHWC batch is already channels_last in memory: no copy.
        x = x.permute(0, 3, 1, 2) if self.layout == "NHWC" else x.unsqueeze(1)
        return self.net(x)


def create_student_for_spec(
    name: str, spec: InputSpec, num_classes: int, code: str | None = None
) -> Student:
    """The student `name` sized for `spec`'s input and taking it as the teacher does.

    `name` is a registry name or a custom student (`FILE.py:FACTORY`, `package.module:FACTORY`,
    `timm:NAME`; see `onnxkd.students.custom`); `code`, for a file student, is the file's
    content to run instead of reading it again.

    Raises SpecError when the student takes images and the input is flat, or the other way.

    Example:
        >>> spec = InputSpec(layout="NHWC", size=(8, 8), channels=1)
        >>> model = create_student_for_spec("small_cnn_s", spec, num_classes=10)
        >>> model(torch.zeros(2, 8, 8, 1)).shape
        torch.Size([2, 10])
    """
    if parse_custom(name) is not None:
        flat = spec.layout == "flat"
        size = spec.channels if flat else tuple(spec.size)
        student = build_custom(name, num_classes, spec.channels, size, 2 if flat else 4, code)
        return TeacherLayout(student, spec.layout) if spec.layout in ADAPTED else student
    if spec.layout == "flat":
        student = create_student(name, num_classes, spec.channels, input_size=spec.channels)
        if student.input_ndim != 2:
            raise SpecError(
                f"student {name} takes images, but this cache's input is {spec.channels} flat "
                f"features; pick a flat-input student ({', '.join(_flat_students())})"
            )
        return student
    student = create_student(name, num_classes, spec.channels, input_size=tuple(spec.size))
    if student.input_ndim == 2:
        h, w = spec.size
        raise SpecError(
            f"student {name} takes flat feature vectors, but this cache's input is {spec.layout} "
            f"images ({h}x{w}x{spec.channels}); pick an image student such as small_cnn"
        )
    return TeacherLayout(student, spec.layout) if spec.layout in ADAPTED else student


def _flat_students() -> list[str]:
    return [n for n in student_names() if create_student(n, 2, 4, 8).input_ndim == 2]
