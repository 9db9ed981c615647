"""MNIST-style IDX folders: `train*-images-idx3-ubyte[.gz]`, `t10k*-labels-idx1-ubyte[.gz]`...

The IDX header is parsed here with numpy rather than by a dataset library, so that a truncated
download or a file with a wrong header is refused with a message naming the file instead of
yielding fewer, shifted or garbage samples.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from onnxkd.data.loaders.common import DIGIT_NAMES, check_labels, pick_split
from onnxkd.data.loaders.registry import SourceKind, existing, register_source
from onnxkd.data.source import ArraySource, DataRef
from onnxkd.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
GZIP_MAGIC = b"\x1f\x8b"

# Official names are `train-images-idx3-ubyte`; subsets (`train-3k-...`) and the dotted
# variant some mirrors use (`train-images.idx3-ubyte`) must match too.
PREFIXES = {"train": "train", "test": "t10k"}
IMAGES_GLOB = "{prefix}*images[.-]idx3-ubyte*"
LABELS_GLOB = "{prefix}*labels[.-]idx1-ubyte*"


def is_idx_folder(folder: Path) -> bool:
    """Whether `folder` holds any IDX image or label file, whatever its split prefix."""
    return any(_idx_names(folder, "*idx[13]-ubyte*"))


def open_idx_folder(ref: DataRef, folder: Path) -> ArraySource:
    """The requested split of an IDX folder as uint8 (N, rows, cols, 1) images, labels 0..9."""
    pairs = {split: _find_pair(folder, prefix) for split, prefix in PREFIXES.items()}
    if not any(pairs.values()):
        found = sorted(p.name for p in _idx_names(folder, "*idx[13]-ubyte*"))
        raise DataError(
            f"{folder}: IDX files found ({', '.join(found)}) but none named like "
            "train*-images-idx3-ubyte[.gz] or t10k*-images-idx3-ubyte[.gz] with matching "
            "*-labels-idx1-ubyte[.gz] files; rename them to the MNIST naming"
        )

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        images_path, labels_path = pairs[split]
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path.name} holds "
                f"{len(labels)} labels; both files must come from the same set"
            )
        return images[..., None], check_labels(labels, str(labels_path), DIGIT_NAMES)

    parts = {split: [p.name for p in pair] if pair else [] for split, pair in pairs.items()}
    return pick_split(ref, parts, load, DIGIT_NAMES, "files")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (gzip or raw, told apart by content) as a uint8 array shaped as its header.

    Raises:
        DataError: the gzip stream is corrupt or cut short, the magic number is not `magic`,
            the file holds fewer bytes than its header promises, or more.
    """
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{path}: truncated: {len(raw)} bytes is shorter than the {header_size}-byte IDX "
            f"header of an {kind} file; fetch the file again"
        )
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x} for an IDX "
            f"{kind} file; check that this is the {kind} file and that it is not corrupt"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(dims))
    if len(raw) < expected:
        each = f" of {dims[1]}x{dims[2]} pixels" if kind == "images" else ""
        raise DataError(
            f"{path}: truncated: its header promises {dims[0]} {kind}{each} ({expected} "
            f"bytes) but the file holds {len(raw)} bytes; fetch the file again"
        )
    if len(raw) > expected:
        raise DataError(
            f"{path}: {len(raw) - expected} bytes of trailing data after the {dims[0]} {kind} "
            "its header declares; the file is corrupt or its header count is wrong"
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from e
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as e:
        raise DataError(
            f"{path}: truncated: the gzip stream ends before its end marker; the download "
            "was cut short, fetch the file again"
        ) from e
    except (OSError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt gzip data ({e}); fetch the file again, or gunzip it by hand to "
            "see what is wrong"
        ) from e


def _find_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of one split, None if it has neither; errors if half."""
    images = _pick_one(folder, IMAGES_GLOB.format(prefix=prefix))
    labels = _pick_one(folder, LABELS_GLOB.format(prefix=prefix))
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        have, lacking = (images, "labels") if labels is None else (labels, "images")
        pattern = (IMAGES_GLOB if lacking == "images" else LABELS_GLOB).format(prefix=prefix)
        raise DataError(
            f"{folder}: found {have.name} but no {lacking} file to go with it "
            f"(looked for {pattern}); add it, or remove {have.name}"
        )
    return images, labels


def _pick_one(folder: Path, pattern: str) -> Path | None:
    """The one file matching `pattern`; a raw copy wins over the `.gz` it was unpacked from."""
    by_stem: dict[str, list[Path]] = {}
    for path in _idx_names(folder, pattern):
        by_stem.setdefault(path.name.removesuffix(".gz"), []).append(path)
    if len(by_stem) > 1:
        raise DataError(
            f"{folder}: several files match {pattern} ({', '.join(sorted(by_stem))}); keep one "
            "set per split in the folder"
        )
    if not by_stem:
        return None
    (paths,) = by_stem.values()
    return min(paths, key=lambda p: p.name.endswith(".gz"))


def _idx_names(folder: Path, pattern: str) -> list[Path]:
    # The trailing `*` of the patterns admits `.gz`; it must not admit `.md5` or `.part` files.
    return sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.name.endswith(("ubyte", "ubyte.gz"))
    )


register_source(
    SourceKind(
        name="idx",
        accepts="an MNIST IDX folder (*-images-idx3-ubyte[.gz] with *-labels-idx1-ubyte[.gz])",
        order=20,
        find=lambda data: existing(data, lambda p: p.is_dir() and is_idx_folder(p)),
        open=open_idx_folder,
        holds_file=is_idx_folder,
    )
)
