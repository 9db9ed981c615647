"""Data sources: what `--data` names, opened as an indexable set of (raw sample, label).

A `Source` reads batches by index, so a stage never needs the whole data set in RAM; loaders of
small formats keep arrays in memory, a large `.npy` is memory-mapped. Every source describes
itself as a `DataRef` (enough to reopen it) and fingerprints its contents, so a later stage can
check it is given the same data the teacher saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from onnxkd.errors import DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DataRef:
    """What the user asked for: a data set and a split of it.

    `data` is a bundled name (`digits`) or a path. Sources with a native train/test split use it
    unless `holdout` is set; sources without one are split by a seeded random holdout of
    `holdout` (default 0.2) of the samples, which become the test split.
    """

    data: str
    split: str = "train"
    holdout: float | None = None
    split_seed: int = 0
    x_key: str | None = None  # .npz array names; None = detect x_train/x_test, x/y, images/labels
    y_key: str | None = None
    image_size: tuple[int, int] | None = None  # image folders: resize every image to (H, W)
    # Image folders and file lists: files (relative paths) left out, as --skip-bad found them.
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DataError(f"split {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.holdout is not None and not 0.0 < self.holdout < 1.0:
            raise DataError(f"holdout must be a fraction in (0, 1), got {self.holdout}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        # Written only when set, so the refs (and cache keys) of earlier caches stay the same.
        if self.exclude:
            d["exclude"] = list(self.exclude)
        else:
            del d["exclude"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataRef:
        d = dict(d)
        if d.get("image_size") is not None:
            d["image_size"] = tuple(d["image_size"])
        d["exclude"] = tuple(d.get("exclude", ()))
        return cls(**d)

    def with_split(self, split: str) -> DataRef:
        return replace(self, split=split)


@runtime_checkable
class Source(Protocol):
    """An indexable data set of raw samples and integer labels."""

    ref: DataRef
    kind: str  # "image" (samples are (H, W, C)) or "features" (samples are (D,))
    sample_shape: tuple[int, ...]
    dtype: np.dtype
    label_names: tuple[str, ...] | None
    split_info: dict  # how the split was made, for the manifest

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw samples and int64 labels at `indices` (a sorted or unsorted int array)."""
        ...

    def fingerprint(self) -> str:
        """A hash of the split's contents (samples and labels)."""
        ...


# The label of a sample that has none (unlabeled data: a folder of photos without class
# folders, an .npz without labels, a file list of paths). Distillation uses the teacher's
# targets alone on such samples.
UNLABELED = -1


def is_labeled(source) -> bool:
    """False for a source of unlabeled samples (every label UNLABELED)."""
    return getattr(source, "labeled", True)


class ArraySource:
    """A source over arrays: in memory, or memory-mapped `.npy` for data larger than RAM."""

    # The largest raw value where it is not the dtype's (digits' pixels go to 16); the default
    # input scale is its inverse.
    pixel_max: float | None = None

    def __init__(
        self,
        ref: DataRef,
        x: np.ndarray,
        y: np.ndarray | None,
        label_names: tuple[str, ...] | None = None,
        split_info: dict | None = None,
    ) -> None:
        # No labels: every sample is UNLABELED.
        self.labeled = y is not None
        if y is None:
            y = np.full(len(x), UNLABELED, dtype=np.int64)
        if len(x) != len(y):
            raise DataError(f"{ref.data}: {len(x)} samples but {len(y)} labels")
        if x.ndim == 3:  # grayscale images without a channel axis
            x = x[..., None]
        if x.ndim not in (2, 4):
            raise DataError(
                f"{ref.data}: samples must be images (N, H, W[, C]) or vectors (N, D), "
                f"got shape {x.shape}"
            )
        self.ref = ref
        self.x = x
        self.y = np.asarray(y).astype(np.int64, copy=False).reshape(-1)
        self.kind = "image" if x.ndim == 4 else "features"
        self.sample_shape = tuple(int(d) for d in x.shape[1:])
        self.dtype = x.dtype
        self.label_names = tuple(label_names) if label_names is not None else None
        self.split_info = split_info or {"split": ref.split, "method": "native"}
        # Where each sample sits in the file, when a holdout split picked them (error messages
        # name the row a user can find); None: sample i is row i.
        self.file_rows: np.ndarray | None = None
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.x)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        return np.asarray(self.x[indices]), self.y[indices]

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_arrays(self.x, self.y)
        return self._fingerprint


def fingerprint_arrays(x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> str:
    """sha256 over shapes, dtypes and contents, read in chunks so memory stays bounded."""
    h = hashlib.sha256()
    h.update(repr((x.shape, str(x.dtype), y.shape, str(y.dtype))).encode())
    for start in range(0, len(x), chunk):
        h.update(np.ascontiguousarray(x[start : start + chunk]).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def holdout_split(
    ref: DataRef, x: np.ndarray, y: np.ndarray, label_names: tuple[str, ...] | None
) -> ArraySource:
    """Split one pool of samples by a seeded random holdout; the holdout part is `test`."""
    fraction = ref.holdout if ref.holdout is not None else 0.2
    n = len(x)
    order = np.random.default_rng(ref.split_seed).permutation(n)
    n_test = int(round(fraction * n))
    if n_test == 0 or n_test == n:
        raise DataError(f"{ref.data}: holdout {fraction} of {n} samples leaves an empty split")
    picked = np.sort(order[:n_test] if ref.split == "test" else order[n_test:])
    info = {
        "split": ref.split,
        "method": "holdout",
        "fraction": fraction,
        "seed": ref.split_seed,
        "of": n,
    }
    source = ArraySource(ref, x[picked], y[picked], label_names, info)
    source.file_rows = picked
    return source
