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

from collections.abc import Iterable, Mapping
from dataclasses import fields
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


def from_settings(cls: type[C], settings: Mapping[str, Any], **decided: Any) -> C:
    """`cls(**settings, **decided)`: `settings` from a file (checked, arrays as tuples),
    `decided` what the caller sets itself (paths, upstream artifacts)."""
    check_keys(settings, setting_names(cls, exclude=decided), cls.__name__)
    return cls(**shaped(cls, settings), **decided)
