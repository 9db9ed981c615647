"""`.npz` archives of images (N, H, W[, C]) or feature vectors (N, D) and their labels.

Array names are found by convention (`x_train`/`y_train`/`x_test`/`y_test` for a native split;
`x`/`y`, `images`/`labels`... for one pool that is split by holdout) or given as `x_key` and
`y_key`. A given key containing `{split}` (`feats_{split}`) names a native split; one without
names a single pool. A plain key cannot name "the array of the requested split", since
`DataRef.with_split` keeps the keys and the other split would then be the same data.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from onnxkd.data.loaders.common import check_labels, pick_split
from onnxkd.data.loaders.registry import SourceKind, existing, register_source
from onnxkd.data.source import SPLITS, ArraySource, DataRef, holdout_split
from onnxkd.errors import DataError, MissingSplitError

NATIVE_KEYS = (("x_{split}", "y_{split}"), ("X_{split}", "y_{split}"))
POOLED_KEYS = (
    ("x", "y"),
    ("X", "y"),
    ("images", "labels"),
    ("data", "labels"),
    ("features", "labels"),
)
NAMES_KEY = "label_names"
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def open_npz(ref: DataRef, path: Path) -> ArraySource:
    """The requested split of an `.npz` archive, by native keys or by holdout of one pool."""
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        raise DataError(
            f"{path}: not a readable .npz archive ({e}); write it with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds one bare array, not an archive of named arrays; write it with "
            "np.savez(path, x=samples, y=labels)"
        )
    with archive:
        keys = list(archive.files)
        x_key, y_key = _resolve_keys(ref, keys, path)
        names = _label_names(archive, path)
        if y_key is None:
            return _unlabeled(ref, archive, path, x_key, keys)
        if "{split}" not in x_key:
            x, y = _read_pair(archive, path, x_key, y_key, names)
            source = holdout_split(ref, x, y, names)
            source.split_info["keys"] = [x_key, y_key]
            return source

        parts = {s: [x_key.format(split=s), y_key.format(split=s)] for s in SPLITS}
        parts = {s: pair if set(pair) <= set(keys) else [] for s, pair in parts.items()}
        wanted = ref.split if ref.holdout is None else "train"
        if not parts[wanted] and not (ref.holdout is not None and parts["test"]):
            raise MissingSplitError(
                f"{path}: no arrays {x_key.format(split=wanted)!r} and "
                f"{y_key.format(split=wanted)!r} for the {wanted} split (keys in file: "
                f"{', '.join(keys)}); pass x_key/y_key naming them, or a holdout fraction"
            )
        return pick_split(
            ref, parts, lambda split: _read_pair(archive, path, *parts[split], names), names, "keys"
        )


def _unlabeled(
    ref: DataRef, archive: np.lib.npyio.NpzFile, path: Path, x_key: str, keys: list[str]
) -> ArraySource:
    """Samples without labels: all of them are the train split (nothing to hold out a test
    split from: it would have no labels to score on either)."""
    name = x_key.format(split="train")
    if ref.split != "train" or name not in keys:
        raise MissingSplitError(
            f"{path}: unlabeled samples ({name!r} without labels) form a train split only; "
            "a test split needs labels"
        )
    x, _ = _read_pair(archive, path, name, None, None)
    info = {"split": "train", "method": "unlabeled", "keys": [name]}
    return ArraySource(ref, x, None, None, info)


def _resolve_keys(ref: DataRef, keys: list[str], path: Path) -> tuple[str, str | None]:
    """The (samples, labels) key pair to use, `{split}` standing for a native split's name;
    labels None for an archive of samples alone (unlabeled data)."""
    listed = ", ".join(keys) or "none"
    if ref.x_key is not None or ref.y_key is not None:
        if ref.x_key is None:
            raise DataError(
                f"{path}: y_key names labels, x_key the samples they label; pass x_key too "
                f"(keys in file: {listed})"
            )
        if ref.y_key is None:  # samples without labels
            if ref.x_key not in keys and ref.x_key.format(split="train") not in keys:
                raise DataError(f"{path}: no array named {ref.x_key!r} (keys in file: {listed})")
            return ref.x_key, None
        if ("{split}" in ref.x_key) != ("{split}" in ref.y_key):
            raise DataError(
                f"{path}: x_key {ref.x_key!r} and y_key {ref.y_key!r} must both contain "
                "'{split}' (a native split) or neither (one pool split by holdout)"
            )
        if "{split}" not in ref.x_key:
            missing = [k for k in (ref.x_key, ref.y_key) if k not in keys]
            if missing:
                raise DataError(
                    f"{path}: no array named {', '.join(map(repr, missing))} "
                    f"(keys in file: {listed}); pass x_key/y_key from these"
                )
        return ref.x_key, ref.y_key
    for x_key, y_key in NATIVE_KEYS:
        if any({x_key.format(split=s), y_key.format(split=s)} <= set(keys) for s in SPLITS):
            return x_key, y_key
    for x_key, y_key in POOLED_KEYS:
        if {x_key, y_key} <= set(keys):
            return x_key, y_key
    # Samples and no labels anywhere: unlabeled data.
    for x_key, y_key in (*NATIVE_KEYS, *POOLED_KEYS):
        if y_key.format(split="train") not in keys and x_key.format(split="train") in keys:
            return x_key, None
    raise DataError(
        f"{path}: no known sample and label arrays (keys in file: {listed}); expected "
        "x_train/y_train/x_test/y_test, x/y, X/y, images/labels, data/labels or "
        "features/labels, or pass x_key and y_key ('feats_{split}' names a native split)"
    )


def _read_pair(
    archive: np.lib.npyio.NpzFile,
    path: Path,
    x_key: str,
    y_key: str | None,
    names: tuple[str, ...] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    x = _read_array(archive, path, x_key)
    y = (
        None
        if y_key is None
        else check_labels(_read_array(archive, path, y_key), f"{path}[{y_key}]", names)
    )
    if x.dtype.kind not in "fiub":
        raise DataError(f"{path}[{x_key}]: samples must be numbers, found dtype {x.dtype}")
    if x.ndim == 4 and x.shape[-1] > 4 and x.shape[1] in (1, 3, 4):
        raise DataError(
            f"{path}[{x_key}]: images of shape {x.shape} look channels-first (N, C, H, W); "
            "store them as (N, H, W, C), e.g. x.transpose(0, 2, 3, 1)"
        )
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{path}[{x_key}]: samples must be images (N, H, W[, C]) or vectors (N, D), "
            f"found shape {x.shape}"
        )
    if y is not None and len(x) != len(y):
        raise DataError(f"{path}: {x_key} holds {len(x)} samples but {y_key} {len(y)} labels")
    return x, y


def _read_array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except _READ_ERRORS as e:
        raise DataError(
            f"{path}[{key}]: cannot be read ({type(e).__name__}: {e}); the archive is corrupt, "
            "or the array holds Python objects (save numbers or strings only)"
        ) from e


def _label_names(archive: np.lib.npyio.NpzFile, path: Path) -> tuple[str, ...] | None:
    if NAMES_KEY not in archive.files:
        return None
    names = _read_array(archive, path, NAMES_KEY).reshape(-1)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())


register_source(
    SourceKind(
        name="npz",
        accepts=(
            "a .npz file (x_train/y_train/x_test/y_test, x/y, X/y, images/labels, data/labels, "
            "features/labels)"
        ),
        order=10,
        find=lambda data: existing(data, lambda p: p.is_file() and p.suffix.lower() == ".npz"),
        open=open_npz,
    )
)
