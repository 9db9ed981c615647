"""The input spec: how raw samples become model input.

Preprocessing is data, not code: the spec is recorded in the cache manifest, reused by every
later stage and written into every exported model's `metadata_props` (`onnxkd.metadata`), so
a model carries its own preprocessing and teacher/student mismatches cannot happen silently.

Raw samples are what data sources yield: images as (H, W, C) arrays (uint8 or float), flat
feature vectors as (D,) arrays. `InputSpec.apply` turns a batch of them into model input. A flat
model can also take images, flattened: `flatten` then records the (H, W, C) shape of the raw
samples, whose H·W·C values become the D features in row-major (H, W, C) order.

Everything about the spec lives here: the spec itself, layout detection from a model's input
shape, and `resolve_input_spec`, which decides the spec a teacher is fed with (from its
metadata, or from options and detection) and checks it against the teacher and the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from onnxkd.data.photo import (
    DEFAULT_CROP_PCT,
    DEFAULT_INTERPOLATION,
    PhotoTransform,
    check_crop_pct,
    check_interpolation,
)
from onnxkd.data.preprocessing import Preprocessing, describe_origins
from onnxkd.errors import SpecError

if TYPE_CHECKING:
    from onnxkd.data.source import Source

# NHW: single-channel images fed without a channel axis (some MNIST models); flat: vectors.
LAYOUTS = ("NCHW", "NHWC", "NHW", "flat")
DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8")


@dataclass(frozen=True)
class InputSpec:
    """How a raw sample becomes one row of model input.

    `x = ((raw * scale) - mean) / std`, laid out as `layout`, cast to `dtype`. `mean`/`std` hold
    one value, or one per channel (images) or per feature (flat). With `flatten` (flat layout
    only) raw samples are (H, W, C) images, flattened row-major before scaling: pixel (h, w, c)
    is feature (h·W + w)·C + c, the order of scikit-learn's `load_digits().data`.

    Example:
        >>> spec = InputSpec(layout="NCHW", size=(8, 8), channels=1, scale=1 / 16)
        >>> spec.apply(np.zeros((2, 8, 8, 1), np.uint8)).shape
        (2, 1, 8, 8)
    """

    layout: str
    size: tuple[int, int] | None = None  # (H, W) for images
    channels: int = 1  # image channels; for flat inputs, the number of features
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "float32"
    label_names: tuple[str, ...] | None = field(default=None)
    flatten: tuple[int, int, int] | None = None  # flat layout: the (H, W, C) images flattened
    # Photos of any size: resize the shorter side to size / crop_pct, then crop the centre
    # `size` (with `interpolation`); training views are boxes cut from the photo. None: raw
    # images already have `size`.
    crop_pct: float | None = None
    interpolation: str | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise SpecError(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.layout != "flat" and (self.size is None or len(self.size) != 2):
            raise SpecError(f"an image layout ({self.layout}) needs size (H, W), got {self.size}")
        if self.layout == "NHW" and self.channels != 1:
            raise SpecError("layout NHW has no channel axis, so channels must be 1")
        if self.flatten is not None:
            if self.layout != "flat" or len(self.flatten) != 3:
                raise SpecError(
                    f"flatten {self.flatten} needs layout flat and an (H, W, C) image shape"
                )
            if int(np.prod(self.flatten)) != self.channels:
                raise SpecError(
                    f"flatten {self.flatten} makes {int(np.prod(self.flatten))} features, the "
                    f"spec has {self.channels}"
                )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise SpecError(
                    f"{name} has {len(values)} values; give 1 or one per channel ({self.channels})"
                )
        if any(s == 0 for s in self.std):
            raise SpecError("std must not contain 0")
        if self.crop_pct is not None or self.interpolation is not None:
            if self.layout == "flat" or self.crop_pct is None or self.interpolation is None:
                raise SpecError(
                    "crop_pct and interpolation (the photo transform) go together, with an "
                    "image layout"
                )
            check_crop_pct(self.crop_pct)
            check_interpolation(self.interpolation)

    @property
    def photo_transform(self) -> PhotoTransform | None:
        """How photos of any size become `size` (None: raw images already have it)."""
        if self.crop_pct is None:
            return None
        return PhotoTransform(self.size, self.crop_pct, self.interpolation)

    @property
    def is_image(self) -> bool:
        return self.layout != "flat"

    @property
    def raw_is_image(self) -> bool:
        """Raw samples are (H, W, C) images (so augmentation applies), whatever the layout."""
        return self.is_image or self.flatten is not None

    @property
    def raw_size(self) -> tuple[int, int] | None:
        """(H, W) of the raw images; None for feature vectors."""
        return tuple(self.flatten[:2]) if self.flatten else self.size

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """Shape of one raw sample as data sources yield it."""
        if self.flatten is not None:
            return tuple(self.flatten)
        if self.layout == "flat":
            return (self.channels,)
        return (self.size[0], self.size[1], self.channels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one row of model input (no batch axis)."""
        if self.layout == "flat":
            return (self.channels,)
        h, w = self.size
        return {
            "NCHW": (self.channels, h, w),
            "NHWC": (h, w, self.channels),
            "NHW": (h, w),
        }[self.layout]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Turn a batch of raw samples into model input, vectorized over the batch."""
        if tuple(raw.shape[1:]) != self.raw_shape:
            raise SpecError(
                f"raw samples have shape {tuple(raw.shape[1:])}, the input spec expects "
                f"{self.raw_shape}"
            )
        if self.flatten is not None:
            raw = raw.reshape(len(raw), self.channels)  # row-major (H, W, C)
        x = raw.astype(np.float32, copy=False) * np.float32(self.scale)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if not (mean.size == 1 and mean[0] == 0.0 and std.size == 1 and std[0] == 1.0):
            x = (x - mean) / std  # broadcasts over the last axis: channels or features
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        elif self.layout == "NHW":
            x = x[..., 0]
        if self.dtype.startswith(("int", "uint")):
            x = np.rint(x)
        return np.ascontiguousarray(x, dtype=np.dtype(self.dtype))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["label_names"] = list(self.label_names) if self.label_names else None
        # Written only when set: every other spec serializes as it did before `flatten`
        # existed, so existing caches keep their keys and students their metadata.
        if self.flatten is None:
            del d["flatten"]
        else:
            d["flatten"] = list(self.flatten)
        if self.crop_pct is None:
            del d["crop_pct"], d["interpolation"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise SpecError(
                f"unknown input-spec keys {sorted(unknown)}; valid keys: {sorted(known)}"
            )
        d = dict(d)
        for key in ("size", "flatten"):
            if d.get(key) is not None:
                d[key] = tuple(int(v) for v in d[key])
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in np.atleast_1d(d[key]))
        if d.get("label_names") is not None:
            d["label_names"] = tuple(str(v) for v in d["label_names"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> InputSpec:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError) as e:
            raise SpecError(f"input spec is not valid JSON of the expected form: {e}") from e

    def with_labels(self, label_names: Sequence[str] | None) -> InputSpec:
        return replace(self, label_names=tuple(label_names) if label_names else None)


def detect_layout(shape: Sequence[int | str | None]) -> str | None:
    """Guess the layout of a model input from its shape (batch axis first).

    A 1- or 3-channel axis right after the batch axis means NCHW, at the end NHWC. Returns None
    when the shape does not decide it (e.g. both ends are 3).
    """
    rank = len(shape)
    if rank == 2:
        return "flat"
    if rank == 3:
        return "NHW"
    if rank != 4:
        return None
    first, last = shape[1], shape[3]
    first_is_c = isinstance(first, int) and first in (1, 3, 4)
    last_is_c = isinstance(last, int) and last in (1, 3, 4)
    if first_is_c and not last_is_c:
        return "NCHW"
    if last_is_c and not first_is_c:
        return "NHWC"
    return None


def spec_geometry(layout: str, shape: Sequence[int | str | None]) -> dict:
    """The size/channels a model input shape fixes for a layout (unknown dims omitted)."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
    if layout == "flat":
        return {"channels": dims[0]} if dims and dims[0] else {}
    if layout == "NHW":
        h, w = dims
        c = 1
    elif layout == "NCHW":
        c, h, w = dims
    else:
        h, w, c = dims
    out: dict = {}
    if h and w:
        out["size"] = (h, w)
    if c:
        out["channels"] = c
    return out


def check_spec_fits(spec: InputSpec, shape: Sequence[int | str | None], what: str) -> None:
    """Refuse a spec whose input shape disagrees with a model input's fixed dimensions."""
    expected = spec.input_shape
    dims = list(shape[1:])
    if len(dims) != len(expected):
        raise SpecError(
            f"{what} takes rank-{len(shape)} input {list(shape)}, but the input spec "
            f"({spec.layout}) makes rank-{len(expected) + 1} input"
        )
    for got, want in zip(dims, expected, strict=True):
        if isinstance(got, int) and got > 0 and got != want:
            raise SpecError(
                f"{what} takes input {list(shape)}, but the input spec makes "
                f"[N, {', '.join(map(str, expected))}]; fix --layout/--size or the data"
            )


# --- resolving the spec a model is fed with -------------------------------------------------


@dataclass(frozen=True)
class SpecOptions:
    """Input-spec options a user may pass; None means not given."""

    layout: str | None = None
    size: tuple[int, int] | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_pct: float | None = None  # photos: resize to size / crop_pct, crop the centre
    interpolation: str | None = None

    def given(self) -> dict:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


def override_spec(spec: InputSpec, options: SpecOptions) -> tuple[InputSpec, dict]:
    """`spec` with the options that differ from it applied, and {field: (old, new)} of those.

    A teacher's metadata spec is its exporter's word, but the user may know better (data stored
    in another range, a spec written wrong); an option given explicitly wins, and the change is
    returned so that it is said and recorded, never silent.
    """
    changes = {
        key: (getattr(spec, key), tuple(value) if isinstance(value, list) else value)
        for key, value in options.given().items()
        if value != getattr(spec, key)
    }
    if not changes:
        return spec, {}
    fields_ = {key: value for key, (_, value) in changes.items()}
    # One half of the photo transform given: the other half is its default.
    if ("crop_pct" in fields_) != ("interpolation" in fields_) and spec.crop_pct is None:
        fields_.setdefault("crop_pct", DEFAULT_CROP_PCT)
        fields_.setdefault("interpolation", DEFAULT_INTERPOLATION)
    return replace(spec, **fields_), changes


def describe_overrides(changes: dict) -> str:
    """`scale 0.0625 -> 0.00392157, mean [0.5] -> [0.0]`."""

    def show(value) -> str:
        if isinstance(value, float):
            return f"{value:g}"
        return str(list(value)) if isinstance(value, tuple) else str(value)

    return ", ".join(f"{key} {show(old)} -> {show(new)}" for key, (old, new) in changes.items())


class ModelInput(Protocol):
    """What resolving a spec needs to know of the model it feeds (a `Teacher` is one)."""

    input_name: str
    input_shape: Sequence[int | str | None]
    input_dtype: str
    metadata_spec: str | None  # the `onnxkd.input_spec` JSON the model carries, if any
    # What timm/Hugging Face configs beside it (or plain metadata keys) say; may be absent.
    preprocessing: Preprocessing | None


def resolve_input_spec(
    teacher: ModelInput, source: Source, options: SpecOptions
) -> tuple[InputSpec, str, dict]:
    """The input spec to feed `source` to `teacher`, where it came from, and the fields options
    changed in the teacher's metadata spec ({field: (old, new)}).

    From the teacher's metadata when it carries one (an option given explicitly overrides its
    field), else from options and what the teacher's input shape and the data make obvious.
    Either way it is checked against both, so a shape mismatch is an error.
    """
    overrides: dict = {}
    if teacher.metadata_spec is not None:
        spec = InputSpec.from_json(teacher.metadata_spec)
        if spec.dtype != teacher.input_dtype:
            raise SpecError(
                f"the teacher's metadata says input dtype {spec.dtype}, but its input "
                f"{teacher.input_name!r} is {teacher.input_dtype}"
            )
        spec, overrides = override_spec(spec, options)
        origin = "teacher metadata"
        if overrides:
            origin += f", overridden by options ({describe_overrides(overrides)})"
        if spec.crop_pct is None and _needs_transform(source, spec.size):
            spec = replace(spec, crop_pct=DEFAULT_CROP_PCT, interpolation=DEFAULT_INTERPOLATION)
            origin += (
                f"; the photos are resized and centre-cropped (default crop_pct "
                f"{DEFAULT_CROP_PCT}, {DEFAULT_INTERPOLATION})"
            )
    else:
        spec, origin = _spec_from_options(teacher, source, options)
    fit_source(source, spec)
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
    return spec, origin, overrides


def _default_scale(teacher: ModelInput, source: Source) -> float:
    if np.issubdtype(np.dtype(teacher.input_dtype), np.integer):
        return 1.0  # an integer input takes raw values
    # Sources may know their value range (digits' pixels go to 16); uint8 images go to 255.
    pixel_max = getattr(source, "pixel_max", None)
    if pixel_max:
        return 1.0 / pixel_max
    return 1.0 / 255 if source.dtype == np.uint8 else 1.0


def _flat_spec(teacher: ModelInput, source: Source, features: int | None) -> InputSpec:
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


def _spec_from_options(
    teacher: ModelInput, source: Source, options: SpecOptions
) -> tuple[InputSpec, str]:
    """The spec from options, the teacher's input shape, configs found beside it and the data,
    in that order of precedence, and a sentence saying where each field came from."""
    shape = teacher.input_shape
    found = getattr(teacher, "preprocessing", None) or Preprocessing()
    given = options.given()
    origins: dict[str, str] = {name: "options" for name in given}
    layout = options.layout or detect_layout(shape)
    if layout is None:
        raise SpecError(
            f"cannot tell the layout of the teacher's input {list(shape)}; pass --layout "
            "NCHW or NHWC"
        )
    geometry = spec_geometry(layout, shape) if len(shape) >= 2 else {}
    config = found.values

    def pick(name: str, *candidates: tuple[object, str]):
        for value, where in ((given.get(name), "options"), *candidates):
            if value is not None:
                origins[name] = where
                return value
        return None

    photo_fields: dict = {}
    if layout == "flat":
        spec = _flat_spec(teacher, source, geometry.get("channels"))
    else:
        if not _accepts_transform(source) and len(source.sample_shape) != 3:
            raise SpecError(
                f"the teacher takes images ({layout} {list(shape)}), the data holds feature "
                f"vectors of shape {source.sample_shape}"
            )
        data_size = _data_size(source)
        size = pick(
            "size",
            (geometry.get("size"), "the teacher's input shape"),
            (config.get("size"), found.origins.get("size")),
            (data_size, "the data"),
        )
        if size is None:
            raise SpecError(
                "the images have several sizes and the teacher's input size is not fixed; "
                "pass --size HxW (the size the teacher was trained at)"
            )
        channels = pick(
            "channels",
            (geometry.get("channels"), "the teacher's input shape"),
            (config.get("channels"), found.origins.get("channels")),
            (source.channels if _accepts_transform(source) else source.sample_shape[2], "data"),
        )
        spec = InputSpec(
            layout=layout, size=tuple(size), channels=channels, dtype=teacher.input_dtype
        )
        crop_pct = pick("crop_pct", (config.get("crop_pct"), found.origins.get("crop_pct")))
        if crop_pct is not None or _needs_transform(source, tuple(size)):
            interpolation = pick(
                "interpolation",
                (config.get("interpolation"), found.origins.get("interpolation")),
                (DEFAULT_INTERPOLATION, "default"),
            )
            if crop_pct is None:
                crop_pct, origins["crop_pct"] = DEFAULT_CROP_PCT, "default"
            photo_fields = {"crop_pct": crop_pct, "interpolation": interpolation}
    integer_input = np.issubdtype(np.dtype(teacher.input_dtype), np.integer)
    scale = pick(
        "scale", (None if integer_input else config.get("scale"), found.origins.get("scale"))
    )
    if scale is None:
        scale, origins["scale"] = _default_scale(teacher, source), "default"
    mean = pick("mean", (config.get("mean"), found.origins.get("mean")), ((0.0,), "default"))
    std = pick("std", (config.get("std"), found.origins.get("std")), ((1.0,), "default"))
    spec = replace(spec, scale=scale, mean=tuple(mean), std=tuple(std), **photo_fields)
    return spec, describe_origins(origins) or "detection and defaults"


def _accepts_transform(source: Source) -> bool:
    return getattr(source, "accepts_transform", False) and source.ref.image_size is None


def _data_size(source: Source) -> tuple[int, int] | None:
    if _accepts_transform(source):
        return source.common_size()
    return tuple(source.sample_shape[:2])


def _needs_transform(source: Source, size: tuple[int, int] | None) -> bool:
    """Photos of several sizes, or of one size that is not the teacher's."""
    return _accepts_transform(source) and source.common_size() != tuple(size or ())


def fit_source(source: Source, spec: InputSpec, workers: int | None = None) -> None:
    """Make a photo source decode for `spec` (its transform and channels) on `workers`
    threads; other sources are left as they are. Every stage that reads a cache's data calls
    this with the cache's spec, so it decodes exactly as the teacher's did."""
    if getattr(source, "accepts_transform", False) and spec.is_image:
        source.configure(spec.photo_transform, spec.channels, workers or source.workers)
