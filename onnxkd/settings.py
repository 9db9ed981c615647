"""Stage settings from plain mappings: a recipe's tables and a `--config` file's.

There is one vocabulary: the field names of each stage's frozen config dataclass (the CLI's
options carry the same names). A TOML file has arrays where a config holds tuples, so values are
brought to the field's shape here, once, for every caller.

Example:
    >>> from onnxkd.bench.config import BenchConfig
    >>> from_settings(BenchConfig, {"eps": ["cpu"], "batches": [1, 32]}).batches
    (1, 32)
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from onnxkd.errors import OnnxkdError

C = TypeVar("C")


class SettingsError(OnnxkdError):
    """A settings table has a key that is not a setting of its stage."""


def setting_names(cls: type, exclude: Iterable[str] = ()) -> list[str]:
    """The settings a table for `cls` may hold: its fields, less those the caller decides."""
    skip = set(exclude)
    return sorted(f.name for f in fields(cls) if f.name not in skip)


def check_keys(settings: Mapping, valid: Iterable[str], where: str) -> None:
    """Refuse keys outside `valid`, naming the valid ones."""
    valid = sorted(valid)
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise SettingsError(f"unknown key(s) {unknown} in {where}; valid: {', '.join(valid)}")


def tuple_fields(cls: type) -> set[str]:
    """Fields that hold tuples (their annotation names one), where TOML gives arrays."""
    return {f.name for f in fields(cls) if "tuple[" in str(f.type)}


def shaped(cls: type, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with arrays as tuples where `cls` holds a tuple."""
    tuples = tuple_fields(cls)
    return {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in settings.items()}


# A TOML value's kind, as a user reads it.
KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def check_types(cls: type, settings: Mapping[str, Any], where: str) -> None:
    """Refuse a value whose type is not its field's (TOML from a recipe or a `--config` file:
    `epochs = "ten"`, `epochs = 2.7`, `epochs = true`, a number where a list is expected),
    naming the key as the file spells it."""
    hints = typing.get_type_hints(cls)
    for key, value in settings.items():
        if key not in hints:
            continue
        problem = _type_problem(hints[key], value)
        if problem:
            raise SettingsError(f"{where} {key} = {as_toml(value)}: {problem}")


def as_toml(value) -> str:
    """A value as a TOML file spells it (true, "ten", [1, 2])."""
    return json.dumps(value, default=str)


def _type_problem(annotation, value) -> str | None:
    """Why `value` cannot fill a field annotated `annotation`; None if it can."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        problems = [_type_problem(a, value) for a in options]
        return None if None in problems else problems[0]
    if annotation is Any or origin is dict and isinstance(value, dict):
        return None
    if origin is dict:
        return "must be a table"
    if origin is tuple:
        return _tuple_problem(args, value)
    if annotation is Path:
        return None if isinstance(value, str) else "must be a path (a string)"
    if annotation in KINDS:
        return _scalar_problem(annotation, value)
    return None  # a nested settings type (DataRef, SpecOptions) is checked by its own table


def _tuple_problem(args: tuple, value) -> str | None:
    pair = len(args) == 2 and args[1] is not Ellipsis
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if pair and isinstance(value, int):
            return None  # a size given as one number is square
        if not pair and args[0] is float:
            return _scalar_problem(float, value)  # a per-channel value for every channel
    if not isinstance(value, (list, tuple)):
        example = "[32, 32]" if pair else "[...]"
        return f"must be a list, e.g. {example}"
    if pair and len(value) != 2:
        return f"must be a list of 2 values, got {len(value)}"
    item = args[0]
    for v in value:
        problem = _scalar_problem(item, v) if item in KINDS else _type_problem(item, v)
        if problem:
            return f"each item {problem.removeprefix('must be ')}: {v!r} is not"
    return None


def _scalar_problem(kind: type, value) -> str | None:
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isfinite(value) else "must be a finite number"
    if kind is int and isinstance(value, float) and value.is_integer():
        return "must be a whole number (write it without a decimal point)"
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return None
    return f"must be {KINDS[kind]}"


def from_settings(cls: type[C], settings: Mapping[str, Any], **decided: Any) -> C:
    """`cls(**settings, **decided)`: `settings` from a file (checked, arrays as tuples),
    `decided` what the caller sets itself (paths, upstream artifacts)."""
    check_keys(settings, setting_names(cls, exclude=decided), cls.__name__)
    return cls(**shaped(cls, settings), **decided)
