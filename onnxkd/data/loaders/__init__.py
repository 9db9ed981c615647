"""Open what `--data` names as a `Source`: bundled digits, IDX, CIFAR-10, `.npz`, image folders.

Example:
    >>> from onnxkd.data.loaders import open_source
    >>> from onnxkd.data.source import DataRef
    >>> test = open_source(DataRef("digits", split="test"))
    >>> len(test), test.sample_shape, test.split_info["method"]
    (359, (8, 8, 1), 'holdout')
"""

from __future__ import annotations

from pathlib import Path

from onnxkd.data.loaders.cifar import is_cifar_folder, open_cifar_folder
from onnxkd.data.loaders.common import ACCEPTED
from onnxkd.data.loaders.digits import open_digits
from onnxkd.data.loaders.idx import is_idx_folder, open_idx_folder
from onnxkd.data.loaders.image_folder import is_image_folder, open_image_folder
from onnxkd.data.loaders.npz import open_npz
from onnxkd.data.source import DataRef, Source
from onnxkd.errors import DataError

__all__ = ["ACCEPTED", "open_source"]

CIFAR_SUBFOLDER = "cifar-10-batches-py"  # what the official archive unpacks to


def open_source(ref: DataRef) -> Source:
    """Open the data `ref.data` names and return its `ref.split` split.

    Sources with a native train/test split use it unless `ref.holdout` is set; the others are
    split by a seeded random holdout. The returned source's `split_info` says which happened.

    Args:
        ref: `digits`, or a path to an MNIST IDX folder, a CIFAR-10 python folder, a `.npz`
            file or an image folder; and the split to open.

    Returns:
        A `Source` whose `ref` is `ref`.

    Raises:
        DataError: the path does not exist, is none of the accepted kinds, or is malformed.
    """
    if ref.data == "digits":
        return open_digits(ref)
    path = Path(ref.data).expanduser()
    if not path.exists():
        raise DataError(f"{ref.data}: no such file or directory; {ACCEPTED}")
    if path.is_file():
        return _open_file(ref, path)
    if is_idx_folder(path):
        return open_idx_folder(ref, path)
    if is_cifar_folder(path):
        return open_cifar_folder(ref, path)
    if is_cifar_folder(path / CIFAR_SUBFOLDER):
        return open_cifar_folder(ref, path / CIFAR_SUBFOLDER)
    if is_image_folder(path):
        return open_image_folder(ref, path)
    raise DataError(f"{path}: a folder of none of the known kinds ({_describe(path)}); {ACCEPTED}")


def _open_file(ref: DataRef, path: Path) -> Source:
    if path.suffix.lower() == ".npz":
        return open_npz(ref, path)
    if is_idx_folder(path.parent) or is_cifar_folder(path.parent):
        raise DataError(
            f"{path}: is one file of a data set; pass the folder that holds it ({path.parent})"
        )
    raise DataError(f"{path}: not a data file onnxkd reads; {ACCEPTED}")


def _describe(folder: Path, limit: int = 8) -> str:
    """What a folder holds, briefly, so a refusal shows what was looked at."""
    entries = sorted(folder.iterdir())
    if not entries:
        return "it is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", and {len(entries) - limit} more" if len(entries) > limit else ""
    return "found " + ", ".join(names) + more
