"""What every loader shares: choosing a split, and checking labels before they are trusted."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from onnxkd.data.source import ArraySource, DataRef, holdout_split
from onnxkd.errors import DataError, MissingSplitError

DIGIT_NAMES = tuple(str(i) for i in range(10))


def pick_split(
    ref: DataRef,
    parts: dict[str, Sequence[str]],
    load: Callable[[str], tuple[np.ndarray, np.ndarray]],
    label_names: tuple[str, ...] | None,
    what: str,
) -> ArraySource:
    """Open the requested split of a source that may have a native train/test split.

    Args:
        ref: What was asked for. With `ref.holdout` set, the native split is ignored and the
            train part (or, lacking one, whatever part there is) is split by `holdout_split`.
        parts: For "train" and "test", the names (files or array keys) that make that part;
            an empty list where the source lacks it.
        load: Reads one part, by split name, as (samples, labels).
        label_names: Class names, if the source has them.
        what: How the names in `parts` are called in messages ("files", "keys").

    Returns:
        The requested split, with `split_info` naming the parts it was made from.
    """
    if ref.holdout is not None:
        pool = "train" if parts.get("train") else "test"
        x, y = load(pool)
        source = holdout_split(ref, x, y, label_names)
        source.split_info[what] = list(parts[pool])
        return source
    if not parts.get(ref.split):
        found = [name for names in parts.values() for name in names]
        raise MissingSplitError(
            f"{ref.data}: has no {ref.split} split (found {what}: {', '.join(found) or 'none'}); "
            f"add the {ref.split} {what}, or pass a holdout fraction to split off a test set "
            "from the data that is there"
        )
    x, y = load(ref.split)
    info = {"split": ref.split, "method": "native", what: list(parts[ref.split])}
    return ArraySource(ref, x, y, label_names, info)


def holdout_indices(ref: DataRef, n: int) -> tuple[np.ndarray, dict]:
    """The indices of `ref.split` in a holdout split of `n` samples, and its split_info.

    Lazy sources cannot hand their samples to `holdout_split`; splitting the index range
    through it keeps a single definition of the holdout, so every source splits alike.
    """
    positions = np.arange(n, dtype=np.int64)[:, None]
    picked = holdout_split(ref, positions, np.zeros(n, np.int64), None)
    return picked.x[:, 0], picked.split_info


def check_labels(
    y: np.ndarray, where: str, label_names: tuple[str, ...] | None = None
) -> np.ndarray:
    """Labels as a flat int64 array of class indices, or a DataError saying what is wrong."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{where}: labels must be a 1-D array of class indices, got shape {y.shape}; "
            "one-hot labels can be turned into indices with argmax(axis=1)"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels are {y.dtype} with non-integer values")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    if label_names is not None and y.size and y.max() >= len(label_names):
        raise DataError(
            f"{where}: label {int(y.max())} has no name: there are only {len(label_names)} "
            f"label names ({', '.join(label_names)})"
        )
    return y
