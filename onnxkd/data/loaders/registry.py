"""The registry of data-source kinds: what `--data` can name and how each kind is opened.

A kind is added by one file in this package that calls `register_source(SourceKind(...))`;
the package imports every module, and `open_source` tries the kinds in `order`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnxkd.data.source import DataRef, Source
from onnxkd.registry import Registry


def _holds_no_file(folder: Path) -> bool:
    return False


@dataclass(frozen=True)
class SourceKind:
    """One kind of data.

    Attributes:
        name: the kind's registry name (`digits`, `idx`, `cifar`, `npz`, `image_folder`).
        accepts: how the "accepted: …" line of an error describes it.
        order: kinds are tried from the lowest order up; the first whose `find` answers wins.
        find: the path to open for what `--data` names, or None when it is not this kind.
        open: opens the split `ref.split` of the data at that path.
        holds_file: whether a folder of this kind holds the given file's parent, so that
            naming one file of it is refused with "pass the folder".
    """

    name: str
    accepts: str
    order: int
    find: Callable[[str], Path | None]
    open: Callable[[DataRef, Path], Source]
    holds_file: Callable[[Path], bool] = _holds_no_file


SOURCES: Registry[SourceKind] = Registry("data source")


def register_source(kind: SourceKind) -> SourceKind:
    SOURCES.register(kind.name)(kind)
    return kind


def source_kinds() -> list[SourceKind]:
    """Every registered kind, in the order they are tried."""
    return sorted((SOURCES.get(name) for name in SOURCES.names()), key=lambda k: k.order)


def accepted() -> str:
    """The "accepted: …" sentence listing every registered kind."""
    return "accepted: " + "; ".join(kind.accepts for kind in source_kinds())


def existing(data: str, is_kind: Callable[[Path], bool] = Path.exists) -> Path | None:
    """`data` as a path when it exists and `is_kind` says it is of the kind (a `find`)."""
    path = Path(data).expanduser()
    return path if path.exists() and is_kind(path) else None
