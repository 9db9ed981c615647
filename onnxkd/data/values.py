"""Values checked where they enter a cache: samples, labels and the teacher's outputs.

A NaN pixel, a label the teacher has no class for, or a teacher that returns Inf would
otherwise be stored and trained on without a word. Each check is vectorised over a batch and
names the count and the first offending index (of the split), so the user can find the sample.
Data held in memory is checked whole before anything is written (`check_source`); data read
lazily is checked chunk by chunk as it streams (the writer calls the same functions).
"""

from __future__ import annotations

import numpy as np

from onnxkd.data.source import UNLABELED, Source
from onnxkd.errors import DataError, TeacherError

SCAN_ROWS = 65536  # rows per step when scanning an in-memory array, to bound the temporaries


def _first_and_count(bad: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(bad)
    return int(rows[0]), len(rows)


def _index(indices: np.ndarray | int, row: int, file_rows: np.ndarray | None = None) -> str:
    """The split index of `row` (`indices` lists them, or is the split index of row 0), and the
    row of the file it came from when a holdout split reordered them."""
    index = int(indices[row]) if isinstance(indices, np.ndarray) else indices + row
    if file_rows is None or int(file_rows[index]) == index:
        return str(index)
    return f"{index} of the split (row {int(file_rows[index])} of the file)"


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """A bool per row: whether the row holds a NaN or an infinity (integers never do)."""
    if values.dtype.kind not in "fc":
        return np.zeros(len(values), dtype=bool)
    return ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def _refuse_samples(
    bad: np.ndarray, indices: np.ndarray | int, where: str, file_rows: np.ndarray | None = None
) -> None:
    if bad.any():
        first, count = _first_and_count(bad)
        raise DataError(
            f"{where}: {count} sample(s) hold NaN or Inf, the first at index "
            f"{_index(indices, first, file_rows)}; remove or repair them in the data (a teacher's "
            "targets on them are meaningless)"
        )


def check_samples(raw: np.ndarray, indices: np.ndarray | int, where: str) -> None:
    """Refuse raw samples holding NaN or Inf; `indices` are their split indices (or the index
    of the first, for consecutive samples)."""
    _refuse_samples(nonfinite_rows(raw), indices, where)


def check_labels(
    labels: np.ndarray,
    num_classes: int,
    indices: np.ndarray | int,
    where: str,
    file_rows: np.ndarray | None = None,
) -> None:
    """Refuse labels that are not one of the teacher's `num_classes` classes (UNLABELED, -1,
    marks a sample without one: the loaders give it only to unlabeled data)."""
    bad = (labels < UNLABELED) | (labels >= num_classes)
    if bad.any():
        first, count = _first_and_count(bad)
        raise DataError(
            f"{where}: {count} label(s) outside the teacher's {num_classes} classes "
            f"(0..{num_classes - 1}), the first at index {_index(indices, first, file_rows)} "
            f"(label {int(labels[first])}); relabel the data to the teacher's classes"
        )


def check_outputs(name: str, values: np.ndarray, indices: np.ndarray | int, where: str) -> None:
    """Refuse teacher outputs holding NaN or Inf for the samples at `indices`."""
    bad = nonfinite_rows(values)
    if bad.any():
        first, count = _first_and_count(bad)
        raise TeacherError(
            f"{where}: the teacher's output {name!r} is NaN or Inf for {count} sample(s), the "
            f"first at index {_index(indices, first)}; run the teacher on those samples with "
            "onnxruntime to see why (an overflow, a log of 0, weights that are NaN)"
        )


def in_memory_arrays(source: Source) -> tuple[np.ndarray, np.ndarray] | None:
    """(samples, labels) of a source that holds both in RAM; None for lazy or mapped data,
    which is checked as it streams instead of read twice."""
    x, y = getattr(source, "x", None), getattr(source, "y", None)
    if isinstance(x, np.ndarray) and not isinstance(x, np.memmap) and isinstance(y, np.ndarray):
        return x, y
    return None


def check_source_samples(source: Source, where: str) -> bool:
    """Check every sample of an in-memory source up front; False when the source is lazy."""
    arrays = in_memory_arrays(source)
    if arrays is None:
        return False
    x = arrays[0]
    if x.dtype.kind in "fc":
        steps = range(0, len(x), SCAN_ROWS)
        _refuse_samples(
            np.concatenate([nonfinite_rows(x[i : i + SCAN_ROWS]) for i in steps]),
            0,
            where,
            getattr(source, "file_rows", None),
        )
    return True


def check_source_labels(source: Source, num_classes: int, where: str) -> bool:
    """Check every label of an in-memory source up front; False when the source is lazy."""
    arrays = in_memory_arrays(source)
    if arrays is None:
        return False
    check_labels(arrays[1], num_classes, 0, where, getattr(source, "file_rows", None))
    return True
