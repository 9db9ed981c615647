"""File lists: a CSV or TSV of `path,label[,split]` rows, as an alternative to class folders;
rows of paths alone list unlabeled images (a train split).

Paths are relative to the list's folder (or absolute). Labels are class names (sorted into
indices, as folder names are) or, when every label is a whole number, class indices as they
are: a list can then name a subset of a 1000-class teacher's classes. A `split` column
(train, val or test) gives a native split; without one the list is split by holdout. The images
decode exactly as an image folder's (`ImageFolderSource`).
"""

from __future__ import annotations

import csv
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onnxkd.data.loaders.common import holdout_indices
from onnxkd.data.loaders.image_folder import IMAGE_SUFFIXES, ImageFolderSource
from onnxkd.data.loaders.path_table import PathTable
from onnxkd.data.loaders.registry import SourceKind, existing, register_source
from onnxkd.data.source import UNLABELED, DataRef
from onnxkd.errors import DataError, MissingSplitError

SUFFIXES = {".csv": ",", ".tsv": "\t"}
SPLIT_NAMES = {"train": "train", "val": "test", "test": "test"}


def open_file_list(ref: DataRef, path: Path) -> ImageFolderSource:
    """The requested split of a file list. Read twice (labels first, then the names into
    flat tables), so that a list of a million rows never sits in memory as Python rows."""
    skip = set(ref.exclude)
    label_set: set[str] = set()
    splits: set[str] = set()
    rows = 0
    for _, name, label, split in _rows(path):
        if name in skip:
            continue
        label_set.add(label)
        splits.add(split)
        rows += 1
    if not rows:
        raise DataError(f"{path}: lists no images (after {len(skip)} left out)")
    if len(splits) > 1 and "" in splits:
        raise DataError(f"{path}: some rows name a split and some do not; give every row one")
    has_split = "" not in splits
    unlabeled = label_set == {""}  # rows of paths alone
    if "" in label_set and not unlabeled:
        raise DataError(f"{path}: some rows have a label and some do not; label all or none")
    if unlabeled and (has_split or ref.split != "train"):
        raise MissingSplitError(
            f"{path}: lists images without labels, a train split only (no split column); "
            "a test split needs labels"
        )
    if unlabeled:
        names, index = None, {"": UNLABELED}
    elif all(label.isdigit() for label in label_set):
        names, index = None, {label: int(label) for label in label_set}
    else:
        names = tuple(sorted(label_set))
        index = {name: i for i, name in enumerate(names)}
    root = path.parent
    tables: dict[str, tuple[PathTable, array]] = {}
    missing, shown = 0, []
    for _, name, label, split in _rows(path):
        if name in skip:
            continue
        if not _resolve(root, name).is_file():
            missing += 1
            shown += [name] if len(shown) < 3 else []
            continue
        key = split if has_split else "all"
        listed, labels = tables.setdefault(key, (PathTable(root), array("q")))
        listed.append(name)
        labels.append(index[label])
    if missing:
        more = f" and {missing - 3} more" if missing > 3 else ""
        raise DataError(
            f"{path}: lists {missing} file(s) that do not exist: {', '.join(shown)}{more}"
        )
    parts = {
        key: (listed, np.frombuffer(labels, dtype=np.int64).copy())
        for key, (listed, labels) in tables.items()
    }
    everything = [table for table, _ in parts.values()]
    if unlabeled:
        info = {"split": "train", "method": "unlabeled", "list": path.name}
        source = ImageFolderSource(ref, *parts["all"], None, info, everything)
        source.labeled = False
        return source
    if ref.holdout is not None or not has_split:
        table, labels = parts.get("train") or parts.get("all") or next(iter(parts.values()))
        picked, info = holdout_indices(ref, len(table))
        info["list"] = path.name
        return ImageFolderSource(ref, table.take(picked), labels[picked], names, info, everything)
    if ref.split not in parts:
        raise MissingSplitError(
            f"{path}: lists no {ref.split} rows (split column: train, val or test); add "
            "them, or pass a holdout fraction"
        )
    info = {"split": ref.split, "method": "native", "list": path.name}
    return ImageFolderSource(ref, *parts[ref.split], names, info, everything)


def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _rows(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(row number, path, label, split) per row, checked; a first row naming the columns is
    skipped."""
    delimiter = SUFFIXES[path.suffix.lower()]
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
                if not row or not any(row):
                    continue
                if number == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
                    continue
                yield _checked(path, number, row)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: is not a UTF-8 text file list ({e})") from e


def _checked(path: Path, number: int, row: list[str]) -> tuple[int, str, str, str]:
    if len(row) not in (1, 2, 3):
        raise DataError(
            f"{path}: row {number} has {len(row)} column(s); expected path[,label[,split]]"
        )
    name = row[0].strip()
    label = row[1].strip() if len(row) > 1 else ""  # a path alone: unlabeled
    split = row[2].strip().lower() if len(row) == 3 else ""
    if split and split not in SPLIT_NAMES:
        raise DataError(f"{path}: row {number} has split {split!r}; use train, val or test")
    if not name or (len(row) > 1 and not label):
        raise DataError(f"{path}: row {number} has an empty path or label")
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path}: row {number} names {name}, not an image ({', '.join(IMAGE_SUFFIXES)})"
        )
    return number, name, label, SPLIT_NAMES.get(split, "")


register_source(
    SourceKind(
        name="file_list",
        accepts="a file list (.csv or .tsv of path,label[,split] rows)",
        order=45,
        find=lambda data: existing(data, lambda p: p.is_file() and p.suffix.lower() in SUFFIXES),
        open=open_file_list,
    )
)
