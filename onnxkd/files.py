"""Generic file helpers every stage may use: JSON written atomically, JSON read, sha256.

They live below every stage so that no module has to import a higher stage (the cache, say)
for a checksum or an atomic write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def write_text_atomic(path: Path, text: str) -> None:
    """Write text so that a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:  # newline="": the bytes are exactly `text`
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def claim_folder(
    out: Path, marker: str, kind: str, overwrite: bool, error: type[Exception], log
) -> None:
    """Make `out` ours: new or empty, or with `overwrite` a folder of this `kind` (it holds
    `marker`), which is removed. Anything else a user made there is refused, never deleted."""
    import shutil

    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / marker).exists():
        raise error(f"{out} is not empty and holds no {kind}; pass a new or empty folder with -o")
    if not overwrite:
        raise error(
            f"{out} already holds a {kind}; pass --resume to continue it, --overwrite to "
            "replace it, or a new folder with -o"
        )
    shutil.rmtree(out)
    log(f"--overwrite: removed the previous {kind} in {out}")


@contextlib.contextmanager
def in_private_cwd(prefix: str = "onnxkd-cwd-") -> Iterator[Path]:
    """Run library code that writes into the current directory (onnxruntime's symbolic shape
    inference saves `sym_shape_infer_temp.onnx` there when it cannot infer every shape) from
    a temporary directory, removed afterwards, so that nothing lands where the user stands.
    Paths given to that code must be absolute. The working directory is per process: this is
    for the command-line stages, which run such calls one at a time."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)
