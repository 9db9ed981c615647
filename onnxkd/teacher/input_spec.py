"""Deciding the teacher's input spec: from its metadata when it carries one, else from options
and what the teacher's input shape and the data make obvious. Either way it is checked against
both, so a preprocessing mismatch is an error, never a silent accuracy loss."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from onnxkd.data.source import Source
from onnxkd.data.spec import InputSpec, check_spec_fits, detect_layout, spec_geometry
from onnxkd.errors import SpecError
from onnxkd.teacher.model import Teacher


@dataclass(frozen=True)
class SpecOptions:
    """Input-spec options a user may pass; None means not given."""

    layout: str | None = None
    size: tuple[int, int] | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def given(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def resolve_input_spec(
    teacher: Teacher, source: Source, options: SpecOptions
) -> tuple[InputSpec, str]:
    """The input spec to feed `source` to `teacher`, and where it came from."""
    if teacher.metadata_spec is not None:
        spec = InputSpec.from_json(teacher.metadata_spec)
        for key, value in options.given().items():
            if value != getattr(spec, key):
                raise SpecError(
                    f"the teacher carries its input spec in metadata_props ({key}="
                    f"{getattr(spec, key)}), and --{key} {value} disagrees; drop the option "
                    "(or re-export the teacher with the spec you mean)"
                )
        if spec.dtype != teacher.input_dtype:
            raise SpecError(
                f"the teacher's metadata says input dtype {spec.dtype}, but its input "
                f"{teacher.input_name!r} is {teacher.input_dtype}"
            )
        origin = "teacher metadata"
    else:
        spec = _spec_from_options(teacher, source, options)
        origin = "options and detection" if options.given() else "detection and defaults"
    if source.label_names:
        if spec.label_names and len(spec.label_names) != len(source.label_names):
            raise SpecError(
                f"the teacher's spec names {len(spec.label_names)} classes, the data "
                f"{len(source.label_names)}"
            )
        if not spec.label_names:
            spec = spec.with_labels(source.label_names)
    check_spec_fits(spec, teacher.input_shape, f"the teacher ({teacher.input_name})")
    if spec.raw_shape != source.sample_shape:
        raise SpecError(
            f"data samples have shape {source.sample_shape}, but the teacher's input spec "
            f"({spec.layout}, size {spec.size}, {spec.channels} channels) needs raw samples of "
            f"shape {spec.raw_shape}"
        )
    return spec, origin


def _default_scale(teacher: Teacher, source: Source) -> float:
    if np.issubdtype(np.dtype(teacher.input_dtype), np.integer):
        return 1.0  # an integer input takes raw values
    # Sources may know their value range (digits' pixels go to 16); uint8 images go to 255.
    pixel_max = getattr(source, "pixel_max", None)
    if pixel_max:
        return 1.0 / pixel_max
    return 1.0 / 255 if source.dtype == np.uint8 else 1.0


def _flat_spec(teacher: Teacher, source: Source, features: int | None) -> InputSpec:
    """A flat spec; images whose H·W·C values are the teacher's D features are flattened.

    A scikit-learn model on digits is the classic case: trained on `load_digits().data`, which
    is the 8×8 images flattened row-major, while the `digits` source yields (8, 8, 1) images.
    Row-major (H, W, C) is that order. When the counts differ nothing is flattened, and the
    raw-shape check refuses the data with both shapes.
    """
    shape = source.sample_shape
    if len(shape) == 3 and features in (None, int(np.prod(shape))):
        return InputSpec(
            layout="flat",
            channels=int(np.prod(shape)),
            dtype=teacher.input_dtype,
            flatten=tuple(int(d) for d in shape),
        )
    return InputSpec(layout="flat", channels=features or shape[0], dtype=teacher.input_dtype)


def _spec_from_options(teacher: Teacher, source: Source, options: SpecOptions) -> InputSpec:
    shape = teacher.input_shape
    layout = options.layout or detect_layout(shape)
    if layout is None:
        raise SpecError(
            f"cannot tell the layout of the teacher's input {list(shape)}; pass --layout "
            "NCHW or NHWC"
        )
    geometry = spec_geometry(layout, shape) if len(shape) >= 2 else {}
    if layout == "flat":
        spec = _flat_spec(teacher, source, geometry.get("channels"))
    else:
        if len(source.sample_shape) != 3:
            raise SpecError(
                f"the teacher takes images ({layout} {list(shape)}), the data holds feature "
                f"vectors of shape {source.sample_shape}"
            )
        size = options.size or geometry.get("size") or tuple(source.sample_shape[:2])
        channels = geometry.get("channels") or source.sample_shape[2]
        spec = InputSpec(
            layout=layout, size=tuple(size), channels=channels, dtype=teacher.input_dtype
        )
    return replace(
        spec,
        scale=options.scale if options.scale is not None else _default_scale(teacher, source),
        mean=options.mean or (0.0,),
        std=options.std or (1.0,),
    )
