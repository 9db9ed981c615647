"""CIFAR-10 "python version" folders: pickled batches as published in `cifar-10-batches-py`.

Each batch is a pickled dict with b"data", a (N, 3072) uint8 array whose rows hold one image as
its red, green and blue 32x32 planes, and b"labels". The format is pickle, which can run code
while loading; the unpickler here accepts only what these files contain (dicts, lists, bytes
and numpy arrays), so a planted file is refused rather than executed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np

from onnxkd.data.loaders.common import check_labels, pick_split
from onnxkd.data.loaders.registry import SourceKind, existing, register_source
from onnxkd.data.source import ArraySource, DataRef
from onnxkd.errors import DataError

SIDE = 32
CHANNELS = 3
ROW_SIZE = CHANNELS * SIDE * SIDE
TRAIN_BATCH = re.compile(r"data_batch_(\d+)")
TEST_BATCH = "test_batch"
META = "batches.meta"
SUBFOLDER = "cifar-10-batches-py"  # what the official archive unpacks to

# What numpy arrays and Python 3 bytes need to be rebuilt from a pickle, across numpy 1 and 2
# and pickle protocols 2 to 5; nothing else in a CIFAR batch refers to a global.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
}


def is_cifar_folder(folder: Path) -> bool:
    """Whether `folder` holds CIFAR-10 python batches."""
    if not folder.is_dir():
        return False
    return bool(_train_batches(folder)) or (folder / TEST_BATCH).is_file()


def open_cifar_folder(ref: DataRef, folder: Path) -> ArraySource:
    """The requested split as uint8 (N, 32, 32, 3) HWC images: all data_batch_* or test_batch."""
    names = _label_names(folder)
    parts = {
        "train": [p.name for p in _train_batches(folder)],
        "test": [TEST_BATCH] if (folder / TEST_BATCH).is_file() else [],
    }

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        batches = [_read_batch(folder / name, names) for name in parts[split]]
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        return x, y

    return pick_split(ref, parts, load, names, "files")


def _read_batch(path: Path, names: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(
            f"{path}: not a CIFAR-10 batch: expected a dict with b'data' and b'labels', "
            f"found {keys}"
        )
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != ROW_SIZE:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(
            f"{path}: b'data' must be an (N, {ROW_SIZE}) array (one 32x32 RGB image per row), "
            f"found {shape}; CIFAR-100 or resized variants are not this format"
        )
    if data.dtype != np.uint8:
        raise DataError(f"{path}: b'data' must be uint8 pixels, found {data.dtype}")
    labels = check_labels(np.asarray(batch[b"labels"]), str(path), names)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    # Rows are channel planes (CHW); sources yield HWC like every other image loader.
    images = data.reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _label_names(folder: Path) -> tuple[str, ...] | None:
    path = folder / META
    if not path.is_file():
        return None  # the batches are usable without names
    meta = _unpickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(
            f"{path}: expected a dict with b'label_names' (a list of names), found "
            f"{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}; "
            "fix or remove the file"
        )
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


def _train_batches(folder: Path) -> list[Path]:
    """data_batch_1, data_batch_2, ... in numeric order (so 10 follows 9, not 1)."""
    numbered = []
    for path in folder.iterdir():
        match = TRAIN_BATCH.fullmatch(path.name)
        if match and path.is_file():
            numbered.append((int(match[1]), path))
    return [path for _, path in sorted(numbered)]


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a CIFAR batch holds only dicts, lists and arrays"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> object:
    try:
        with path.open("rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from e
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same here
        raise DataError(
            f"{path}: not a readable CIFAR-10 python pickle ({type(e).__name__}: {e}); "
            "fetch cifar-10-python.tar.gz again and unpack it"
        ) from e


def _find(data: str) -> Path | None:
    """The batch folder: the one named, or the official archive's subfolder inside it."""
    path = existing(data)
    if path is None or not path.is_dir():
        return None
    return next((p for p in (path, path / SUBFOLDER) if is_cifar_folder(p)), None)


register_source(
    SourceKind(
        name="cifar",
        accepts="a CIFAR-10 python folder (data_batch_*, test_batch, batches.meta)",
        order=30,
        find=_find,
        open=open_cifar_folder,
        holds_file=is_cifar_folder,
    )
)
