"""Preprocessing settings where the ecosystem writes them, with where each one came from.

A teacher exported from timm or Hugging Face comes with its preprocessing beside it, not in
the `.onnx` file: timm's `config.json` (`pretrained_cfg`: `input_size`, `mean`, `std`,
`crop_pct`, `interpolation`) and a Hugging Face image processor's `preprocessor_config.json`
(`image_mean`, `image_std`, `size`, `crop_size`, `resample`, `rescale_factor`). Some exporters
put the same keys in the model's `metadata_props`. Each is read here into the input-spec fields
it fixes, and every field remembers its origin, so that the cache summary can say where each
setting came from. The model's own metadata wins over files beside it, and a file of the
teacher's own name (`resnet50.preprocessor_config.json`) over a shared one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from onnxkd.data.photo import PIL_RESAMPLE_NAMES, check_interpolation
from onnxkd.errors import SpecError

HF_CONFIG = "preprocessor_config.json"
TIMM_CONFIG = "config.json"
FIELDS = ("size", "channels", "scale", "mean", "std", "crop_pct", "interpolation")


@dataclass(frozen=True)
class Preprocessing:
    """Input-spec fields found for a model, and {field: where it was found}."""

    values: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # where a setting could only be followed approximately

    def describe(self) -> str:
        """`mean, std from config.json (timm); crop_pct from metadata_props`."""
        return describe_origins(
            {name: self.origins[name] for name in FIELDS if name in self.origins}
        )


def describe_origins(origins: dict[str, str]) -> str:
    """{field: where it came from} as one sentence, fields grouped by origin:
    `size from the teacher's input shape; mean, std from config.json (timm); scale default`."""
    by_origin: dict[str, list[str]] = {}
    for name, where in origins.items():
        by_origin.setdefault(where, []).append(name)
    return "; ".join(
        f"{', '.join(names)} {where if where == 'default' else 'from ' + where}"
        for where, names in by_origin.items()
    )


def find_preprocessing(model_path: Path, metadata: dict[str, str]) -> Preprocessing:
    """What the model's metadata and the config files beside it say about its input."""
    values: dict = {}
    origins: dict = {}
    notes: list[str] = []

    def take(found: dict, where: str) -> None:
        if "note" in found:
            notes.append(f"{where}: {found.pop('note')}")
        for name, value in found.items():
            if name not in values:
                values[name], origins[name] = value, where

    take(_from_keys(metadata, "metadata_props"), "metadata_props")
    folder = model_path.parent
    for name, parse, label in (
        (HF_CONFIG, _from_hf, "Hugging Face"),
        (TIMM_CONFIG, _from_timm, "timm"),
    ):
        for candidate in (folder / f"{model_path.stem}.{name}", folder / name):
            if candidate.is_file():
                take(parse(_read(candidate), candidate), f"{candidate.name} ({label})")
                break
    return Preprocessing(values, origins, tuple(notes))


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: is not valid JSON ({e}); fix or remove it") from e
    if not isinstance(data, dict):
        raise SpecError(f"{path}: holds {type(data).__name__}, not a JSON object")
    return data


def _numbers(value, where: str, name: str) -> tuple[float, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {name} is {value!r}, not numbers") from e
    if not out or not all(math.isfinite(v) for v in out):
        raise SpecError(f"{where}: {name} is {value!r}, not finite numbers")
    return out


def _interpolation(value, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in PIL_RESAMPLE_NAMES:
            raise SpecError(f"{where}: resample {value} is not a PIL resampling filter")
        return PIL_RESAMPLE_NAMES[value]
    try:
        return check_interpolation(str(value).lower())
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from e


def _from_keys(d: dict, where: str) -> dict:
    """timm's keys (`input_size`, `mean`, `std`, `crop_pct`, `interpolation`), flat in `d`.

    metadata_props hold strings: lists arrive as JSON text.
    """
    found: dict = {}

    def value(key: str):
        raw = d[key]
        if isinstance(raw, str) and raw[:1] in "[{0123456789.":
            try:
                return json.loads(raw)
            except ValueError:
                return raw
        return raw

    if "input_size" in d:
        shape = _numbers(value("input_size"), where, "input_size")
        if len(shape) != 3:
            raise SpecError(f"{where}: input_size {list(shape)} is not [C, H, W]")
        found["channels"] = int(shape[0])
        found["size"] = (int(shape[1]), int(shape[2]))
    for key in ("mean", "std"):
        if key in d:
            found[key] = _numbers(value(key), where, key)
    if "mean" in found or "std" in found:
        found["scale"] = 1 / 255  # timm's mean/std apply to pixels in [0, 1]
    if "crop_pct" in d and d["crop_pct"] is not None:
        found["crop_pct"] = _numbers(value("crop_pct"), where, "crop_pct")[0]
    if "interpolation" in d and d["interpolation"]:
        found["interpolation"] = _interpolation(value("interpolation"), where)
    if d.get("crop_mode", "center") != "center":
        raise SpecError(
            f"{where}: crop_mode {d['crop_mode']!r}; onnxkd follows timm's 'center' crop only"
        )
    return found


def _from_timm(d: dict, path: Path) -> dict:
    cfg = d.get("pretrained_cfg", d)
    if not isinstance(cfg, dict):
        raise SpecError(f"{path}: pretrained_cfg is not an object")
    return _from_keys(cfg, str(path))


def _side(value, where: str, name: str) -> dict:
    """A Hugging Face size: an int, {height, width} or {shortest_edge}."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"shortest_edge": value}
    if isinstance(value, dict) and ({"height", "width"} <= set(value) or "shortest_edge" in value):
        return value
    raise SpecError(f"{where}: {name} {value!r} is not an int, {{height, width}} or shortest_edge")


def _from_hf(d: dict, path: Path) -> dict:
    """A Hugging Face image processor: resize (shortest edge) then centre crop, rescale,
    normalize. The crop over the resized edge is the crop_pct."""
    where = str(path)
    found: dict = {}
    rescale = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
    found["scale"] = rescale
    if d.get("do_normalize", True):
        for key, name in (("image_mean", "mean"), ("image_std", "std")):
            if key in d:
                found[name] = _numbers(d[key], where, key)
    else:
        found["mean"], found["std"] = (0.0,), (1.0,)
    if "resample" in d:
        found["interpolation"] = _interpolation(d["resample"], where)
    size = _side(d["size"], where, "size") if "size" in d else None
    crop = _side(d["crop_size"], where, "crop_size") if d.get("crop_size") else None
    if d.get("do_center_crop", crop is not None) and crop and size and "shortest_edge" in size:
        out = (int(crop["height"]), int(crop["width"])) if "height" in crop else None
        if out is None:
            out = (int(crop["shortest_edge"]),) * 2
        found["size"] = out
        found["crop_pct"] = _crop_pct(out[0], int(size["shortest_edge"]))
    elif size and "shortest_edge" in size and "crop_pct" in d:  # ConvNeXt's processor
        edge = int(size["shortest_edge"])
        found["size"] = (edge, edge)
        found["crop_pct"] = float(d["crop_pct"])
    elif size and "height" in size:
        # Resized to exactly H x W without a crop (ViT's processor): the closest transform that
        # keeps the aspect ratio is the whole shorter side, centre-cropped (crop_pct 1).
        found["size"] = (int(size["height"]), int(size["width"]))
        found["crop_pct"] = 1.0
        found["note"] = (
            f"resizes to {found['size'][0]}x{found['size'][1]} without keeping the aspect "
            "ratio; onnxkd keeps it and centre-crops the whole shorter side (crop_pct 1)"
        )
    return found


def _crop_pct(crop: int, edge: int) -> float:
    """crop / edge, nudged where floating point would make floor(crop / pct) miss `edge`."""
    pct = crop / edge
    while math.floor(crop / pct) < edge:
        pct = math.nextafter(pct, 0.0)
    return pct
