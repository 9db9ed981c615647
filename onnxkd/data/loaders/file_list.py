"""File lists: a CSV or TSV of `path,label[,split]` rows, as an alternative to class folders.

Paths are relative to the list's folder (or absolute). Labels are class names (sorted into
indices, as folder names are) or, when every label is a whole number, class indices as they
are: a list can then name a subset of a 1000-class teacher's classes. A `split` column
(train, val or test) gives a native split; without one the list is split by holdout. The images
decode exactly as an image folder's (`ImageFolderSource`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from onnxkd.data.loaders.common import holdout_indices
from onnxkd.data.loaders.image_folder import IMAGE_SUFFIXES, ImageFolderSource, relative_name
from onnxkd.data.loaders.registry import SourceKind, existing, register_source
from onnxkd.data.source import DataRef
from onnxkd.errors import DataError, MissingSplitError

SUFFIXES = {".csv": ",", ".tsv": "\t"}
SPLIT_NAMES = {"train": "train", "val": "test", "test": "test"}


def open_file_list(ref: DataRef, path: Path) -> ImageFolderSource:
    rows = _rows(path)
    root = path.parent
    skip = set(ref.exclude)
    rows = [row for row in rows if relative_name(_resolve(root, row[0]), root) not in skip]
    if not rows:
        raise DataError(f"{path}: lists no images (after {len(skip)} left out)")
    labels = [label for _, label, _ in rows]
    if all(label.isdigit() for label in labels):
        names, index = None, {label: int(label) for label in set(labels)}
    else:
        names = tuple(sorted(set(labels)))
        index = {name: i for i, name in enumerate(names)}
    files = [(_resolve(root, name), index[label], split) for name, label, split in rows]
    missing = [str(p) for p, _, _ in files if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise DataError(f"{path}: lists {len(missing)} file(s) that do not exist: {shown}")
    everything = [p for p, _, _ in files]
    has_split = any(split for _, _, split in files)
    if has_split and not all(split for _, _, split in files):
        raise DataError(f"{path}: some rows name a split and some do not; give every row one")
    if ref.holdout is not None or not has_split:
        pool = [(p, y) for p, y, split in files if split == "train"] if has_split else None
        pool = pool or [(p, y) for p, y, _ in files]
        picked, info = holdout_indices(ref, len(pool))
        info["list"] = path.name
        source = ImageFolderSource(ref, root, [pool[i] for i in picked], names, info, everything)
    else:
        chosen = [(p, y) for p, y, split in files if split == ref.split]
        if not chosen:
            raise MissingSplitError(
                f"{path}: lists no {ref.split} rows (split column: train, val or test); add "
                "them, or pass a holdout fraction"
            )
        info = {"split": ref.split, "method": "native", "list": path.name}
        source = ImageFolderSource(ref, root, chosen, names, info, everything)
    return source


def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _rows(path: Path) -> list[tuple[str, str, str]]:
    """(path, label, split) per row; a first row naming the columns is skipped."""
    delimiter = SUFFIXES[path.suffix.lower()]
    try:
        with path.open(newline="", encoding="utf-8") as f:
            table = [row for row in csv.reader(f, delimiter=delimiter) if row and any(row)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: is not a UTF-8 text file list ({e})") from e
    if table and table[0][0].strip().lower() in ("path", "file", "filename", "image"):
        table = table[1:]
    rows = []
    for number, row in enumerate(table, start=1):
        if len(row) not in (2, 3):
            raise DataError(
                f"{path}: row {number} has {len(row)} column(s); expected path,label[,split]"
            )
        name, label = row[0].strip(), row[1].strip()
        split = row[2].strip().lower() if len(row) == 3 else ""
        if split and split not in SPLIT_NAMES:
            raise DataError(f"{path}: row {number} has split {split!r}; use train, val or test")
        if not name or not label:
            raise DataError(f"{path}: row {number} has an empty path or label")
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{path}: row {number} names {name}, not an image ({', '.join(IMAGE_SUFFIXES)})"
            )
        rows.append((name, label, SPLIT_NAMES.get(split, "")))
    return rows


register_source(
    SourceKind(
        name="file_list",
        accepts="a file list (.csv or .tsv of path,label[,split] rows)",
        order=45,
        find=lambda data: existing(data, lambda p: p.is_file() and p.suffix.lower() in SUFFIXES),
        open=open_file_list,
    )
)
