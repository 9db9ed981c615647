"""Open what `--data` names as a `Source`: bundled digits, IDX, CIFAR-10, `.npz`, image folders.

Each kind is one module of this package that registers a `SourceKind` (see `registry`); every
module is imported here, so adding a kind of data is one new file.

Example:
    >>> from onnxkd.data.loaders import open_source
    >>> from onnxkd.data.source import DataRef
    >>> test = open_source(DataRef("digits", split="test"))
    >>> len(test), test.sample_shape, test.split_info["method"]
    (359, (8, 8, 1), 'holdout')
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from onnxkd.data.loaders.registry import SOURCES, accepted, source_kinds
from onnxkd.data.source import DataRef, Source
from onnxkd.errors import DataError

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ACCEPTED", "SOURCES", "open_source"]

ACCEPTED = accepted()


def open_source(ref: DataRef) -> Source:
    """Open the data `ref.data` names and return its `ref.split` split.

    Sources with a native train/test split use it unless `ref.holdout` is set; the others are
    split by a seeded random holdout. The returned source's `split_info` says which happened.

    Args:
        ref: `digits`, or a path to an MNIST IDX folder, a CIFAR-10 python folder, a `.npz`
            file or an image folder; and the split to open.

    Returns:
        A `Source` whose `ref` is `ref`.

    Raises:
        DataError: the path does not exist, is none of the accepted kinds, or is malformed.
    """
    for kind in source_kinds():
        found = kind.find(ref.data)
        if found is not None:
            return kind.open(ref, found)
    path = Path(ref.data).expanduser()
    if not path.exists():
        raise DataError(f"{ref.data}: no such file or directory; {ACCEPTED}")
    if path.is_file():
        if any(kind.holds_file(path.parent) for kind in source_kinds()):
            raise DataError(
                f"{path}: is one file of a data set; pass the folder that holds it ({path.parent})"
            )
        raise DataError(f"{path}: not a data file onnxkd reads; {ACCEPTED}")
    raise DataError(f"{path}: a folder of none of the known kinds ({_describe(path)}); {ACCEPTED}")


def _describe(folder: Path, limit: int = 8) -> str:
    """What a folder holds, briefly, so a refusal shows what was looked at."""
    entries = sorted(folder.iterdir())
    if not entries:
        return "it is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", and {len(entries) - limit} more" if len(entries) > limit else ""
    return "found " + ", ".join(names) + more
