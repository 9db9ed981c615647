"""The cache stage's settings in one flat vocabulary, shared by `cache-teacher`'s options, a
`--config` file's `[cache-teacher]` table and a recipe's `[data]` and `[cache]` tables: the
fields of `DataRef` (the data and its split), of `SpecOptions` (the input spec) and of
`CacheConfig` (everything else).

Example:
    >>> cfg = cache_config(teacher="t.onnx", data="digits", views=4, mean=0.5)
    >>> cfg.data.data, cfg.views, cfg.spec.mean
    ('digits', 4, (0.5,))
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from onnxkd.cache.build import CacheConfig
from onnxkd.data.source import DataRef
from onnxkd.data.spec import SpecOptions
from onnxkd.errors import DataError
from onnxkd.settings import check_keys, shaped

# `exclude` is what --skip-bad found, recorded by cache-teacher, not a setting.
DATA_KEYS = tuple(f.name for f in fields(DataRef) if f.name != "exclude")
SPEC_KEYS = tuple(f.name for f in fields(SpecOptions))
# CacheConfig's own settings; `data` and `spec` are given by the keys above.
CACHE_KEYS = tuple(f.name for f in fields(CacheConfig) if f.name not in ("data", "spec"))
SETTINGS = (*DATA_KEYS, *SPEC_KEYS, *CACHE_KEYS)


def _sizes(value):
    """A size given as one number is square."""
    return (value, value) if isinstance(value, int) else value


def _floats(value):
    """A per-channel value given as one number holds for every channel."""
    return (float(value),) if isinstance(value, (int, float)) else value


def cache_config(**settings: Any) -> CacheConfig:
    """A `CacheConfig` from flat settings; unknown keys are errors naming the valid ones.

    `None` means not given: the config's default applies (so a command's unset options and a
    recipe's missing keys agree).
    """
    check_keys(settings, SETTINGS, "the cache settings")
    given = {k: v for k, v in settings.items() if v is not None}
    if "data" not in given:
        from onnxkd.data.loaders import ACCEPTED

        raise DataError(f"no data to run the teacher on: set `data`; {ACCEPTED}")
    for key in ("size", "image_size"):
        if key in given:
            given[key] = _sizes(given[key])
    for key in ("mean", "std"):
        if key in given:
            given[key] = _floats(given[key])
    data = shaped(DataRef, {k: given.pop(k) for k in DATA_KEYS if k in given})
    spec = shaped(SpecOptions, {k: given.pop(k) for k in SPEC_KEYS if k in given})
    given["teacher"] = Path(given["teacher"])
    return CacheConfig(data=DataRef(**data), spec=SpecOptions(**spec), **shaped(CacheConfig, given))
