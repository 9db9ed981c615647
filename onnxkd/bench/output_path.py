"""Where bench and quantize write: checked before the work starts, never overwritten silently.

A benchmark or a calibration takes minutes; finding only at the end that the output folder
sits under a file, is read-only, or holds results a user kept would waste them or lose data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from onnxkd.errors import OnnxkdError


def check_writable(
    folder: Path,
    error: type[OnnxkdError],
    what: str,
    fix: str = "pass an output path you can write to",
) -> None:
    """Refuse, before any work, a `folder` that cannot be created or written to; `what` names
    what would go there (with its path) for the message.

    Looks at the nearest part of the path that exists: a file there means the folder can never
    be made; no write permission (or a read-only file system) means nothing can go in it.
    """
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"cannot write {what}: {existing} is a file, not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(
            f"cannot write {what}: {existing} is not writable (permissions or a read-only "
            f"file system); {fix}"
        )


def refuse_existing(paths: Iterable[Path], error: type[OnnxkdError], fix: str) -> None:
    """Refuse to replace what an earlier run (or the user) left; a caller told to overwrite
    does not call this. `fix` says what the files are and how to proceed."""
    found = [Path(p) for p in paths if Path(p).exists()]
    if found:
        more = f" (and {', '.join(p.name for p in found[1:])})" if len(found) > 1 else ""
        raise error(f"{found[0]}{more} already exists: {fix}")


@contextlib.contextmanager
def writing(error: type[OnnxkdError], what: str) -> Iterator[None]:
    """Turn a failure to write (disk full, a folder made read-only meanwhile) into one line."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise error(f"could not write {what}: {e.strerror or e}{where}") from e
