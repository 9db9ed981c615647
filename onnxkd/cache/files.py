"""The cache's on-disk pieces: JSON written atomically, and `.npy` files written in place.

A cache directory holds `manifest.json` (present only once the cache is complete),
`pending.json` (the manifest draft while it is being written), and one folder per section and
part: `train/part-0-of-1/targets.npy`, … Each part has `progress.json` while it is written and
`part.json` (checksums) once done.

Arrays are preallocated `.npy` files filled chunk by chunk with positional writes rather than
through a memory map: pages written through a map stay in the process's resident set, so RSS
would grow with the data set; positional writes keep it flat.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from onnxkd.files import sha256_file

MANIFEST = "manifest.json"
PENDING = "pending.json"
PROGRESS = "progress.json"
PART_DONE = "part.json"


def part_dir(section: str, shard: int, shards: int) -> str:
    return f"{section}/part-{shard}-of-{shards}"


class NpyWriter:
    """A preallocated `.npy` file of fixed shape, written in place by leading-axis slices."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, create: bool) -> None:
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        if create or not path.exists():
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape)
            self.offset = mm.offset
            del mm
        else:
            mm = np.load(path, mmap_mode="r")
            if mm.shape != self.shape or mm.dtype != self.dtype:
                raise ValueError(
                    f"{path}: expected {self.shape} {self.dtype}, found {mm.shape} {mm.dtype}"
                )
            self.offset = mm.offset
            del mm
        self.row_bytes = int(np.prod(self.shape[2:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDWR)

    def write(self, view: int | None, start: int, values: np.ndarray) -> None:
        """Write rows `start:start+len(values)` of view `view` (axis 0), or of the array itself
        when it has no view axis (`view=None`)."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if view is None:
            row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            pos = self.offset + start * row_bytes
        else:
            pos = self.offset + (view * self.shape[1] + start) * self.row_bytes
        data = memoryview(values.reshape(-1).view(np.uint8))
        while data:
            written = os.pwrite(self._fd, data, pos)
            data, pos = data[written:], pos + written

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def describe_file(path: Path) -> dict:
    arr = np.load(path, mmap_mode="r")
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": sha256_file(path)}


def safe_name(tensor: str) -> str:
    """A file name for a tensor name (ONNX names may hold '/', ':' and the like)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in tensor)
    return f"{cleaned}-{hashlib.sha1(tensor.encode()).hexdigest()[:6]}"
