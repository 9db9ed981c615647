"""Image folders: `root/<class>/*.png` (split by holdout) or `root/train|test/<class>/*.png`.

Images are decoded in `read`, a batch at a time, so a folder larger than RAM can be cached.
Class names are the sorted folder names, taken over both splits so that a class has the same
index in train and test even when one split lacks it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from onnxkd.data.loaders.common import holdout_indices
from onnxkd.data.loaders.registry import SourceKind, existing, register_source
from onnxkd.data.source import DataRef
from onnxkd.errors import DataError, MissingSplitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
# Modes with one channel of intensity: a folder of these becomes (H, W, 1) "L" images.
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def is_image_folder(folder: Path) -> bool:
    """Whether `folder` has class subfolders holding images, directly or under train/test.

    Images lying in `folder` itself count too, so that opening it explains the layout.
    """
    if _has_images(folder):
        return True
    for sub in _subfolders(folder):
        if _has_images(sub) or any(_has_images(c) for c in _subfolders(sub)):
            return True
    return False


def open_image_folder(ref: DataRef, folder: Path) -> ImageFolderSource:
    """The requested split of an image folder, decoded lazily by the returned source."""
    roots = {split: _split_root(folder, split) for split in SPLIT_FOLDERS}
    present = [root for root in roots.values() if root is not None] or [folder]
    classes = _class_names(present)
    listed = {root: _list_images(root, classes) for root in present}
    # Both splits must decode alike, so every image of the folder decides mode and size.
    everything = [path for files in listed.values() for path, _ in files]
    if ref.holdout is not None or present == [folder]:
        pool = roots["train"] or roots["test"] or folder
        picked, info = holdout_indices(ref, len(listed[pool]))
        if pool != folder:
            info["folder"] = pool.name
        files = [listed[pool][i] for i in picked]
        return ImageFolderSource(ref, folder, files, classes, info, everything)
    root = roots[ref.split]
    if root is None:
        found = ", ".join(r.name for r in present)
        wanted = " or ".join(f"{folder / name}" for name in SPLIT_FOLDERS[ref.split])
        raise MissingSplitError(
            f"{folder}: has no {ref.split} split (found folder {found}, no {wanted}); add "
            "it, or pass a holdout fraction to split off a test set from the train images"
        )
    info = {"split": ref.split, "method": "native", "folder": root.name}
    return ImageFolderSource(ref, folder, listed[root], classes, info, everything)


class ImageFolderSource:
    """A `Source` over image files, decoded and converted on every `read`.

    All images become one mode, "L" when the folder's first image is grayscale and "RGB"
    otherwise, and one size: `ref.image_size` (resized bilinearly) or, if that is not given,
    the size every image of the folder (`folder_images`, both splits) must share.
    """

    def __init__(
        self,
        ref: DataRef,
        root: Path,
        files: list[tuple[Path, int]],
        label_names: tuple[str, ...],
        split_info: dict,
        folder_images: list[Path],
    ) -> None:
        self.ref = ref
        self.root = root
        self.paths = [path for path, _ in files]
        self.labels = np.array([label for _, label in files], dtype=np.int64)
        self.label_names = label_names
        self.split_info = split_info
        self.kind = "image"
        self.dtype = np.dtype(np.uint8)
        first_mode, first_size = _probe(folder_images[0])
        self.mode = "L" if first_mode in GRAY_MODES else "RGB"
        if ref.image_size is None:
            _check_one_size(folder_images, first_size)
            height, width = first_size[1], first_size[0]
        else:
            height, width = ref.image_size
        self.size = (width, height)  # PIL's order
        self.sample_shape = (height, width, 1 if self.mode == "L" else 3)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), *self.sample_shape), dtype=np.uint8)
        for row, i in enumerate(indices):
            out[row] = self._decode(self.paths[i])
        return out, self.labels[indices]

    def fingerprint(self) -> str:
        """sha256 of the decoding settings and each file's relative path, label and bytes."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(repr((self.mode, self.sample_shape, self.ref.image_size)).encode())
            for path, label in zip(self.paths, self.labels.tolist(), strict=True):
                h.update(f"\n{path.relative_to(self.root).as_posix()}\0{label}\0".encode())
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _decode(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
                if self.ref.image_size is not None:
                    image = image.resize(self.size, Image.Resampling.BILINEAR)
                pixels = np.asarray(image)
        except _DECODE_ERRORS as e:
            raise DataError(f"{path}: cannot be decoded as an image ({e}); fix or remove it") from e
        if pixels.shape[:2] != self.sample_shape[:2]:
            raise DataError(
                f"{path}: is {pixels.shape[1]}x{pixels.shape[0]}, the other images "
                f"{self.size[0]}x{self.size[1]}; pass an image size to resize them all"
            )
        return pixels.reshape(self.sample_shape)


def _check_one_size(paths: list[Path], size: tuple[int, int]) -> None:
    # Headers only: PIL reads the size without decoding pixels, so this stays quick.
    for path in paths[1:]:
        _, other = _probe(path)
        if other != size:
            raise DataError(
                f"{path}: is {other[0]}x{other[1]} (width x height) but {paths[0].name} is "
                f"{size[0]}x{size[1]}; images of several sizes need an image size (H, W) to "
                "resize them to"
            )


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except _DECODE_ERRORS as e:
        raise DataError(f"{path}: cannot be read as an image ({e}); fix or remove it") from e


def _split_root(folder: Path, split: str) -> Path | None:
    for name in SPLIT_FOLDERS[split]:
        if (folder / name).is_dir():
            return folder / name
    return None


def _class_names(roots: list[Path]) -> tuple[str, ...]:
    names = sorted({sub.name for root in roots for sub in _subfolders(root)})
    if not names:
        loose = sum(1 for r in roots for p in r.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        hint = f" (it holds {loose} image file(s) directly)" if loose else ""
        raise DataError(
            f"{', '.join(map(str, roots))}: no class folders{hint}; put each class's images in "
            "a folder named after the class: root/<class>/*.png"
        )
    return tuple(names)


def _list_images(root: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(path, class index) for every image under root/<class>/, sorted by class then name."""
    files = []
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        images = sorted(p for p in class_dir.iterdir() if _is_image(p))
        if not images:
            raise DataError(
                f"{class_dir}: class folder with no images (accepted: "
                f"{', '.join(IMAGE_SUFFIXES)}); add images or remove the folder"
            )
        files.extend((path, label) for path in images)
    if not files:
        raise DataError(
            f"{root}: no class folders with images; put each class's images in "
            f"{root}/<class>/ (accepted: {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    return any(_is_image(p) for p in folder.iterdir())


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


register_source(
    SourceKind(
        name="image_folder",
        accepts="an image folder (root/<class>/*.png|jpg or root/train|test/<class>/*.png|jpg)",
        order=40,
        find=lambda data: existing(data, lambda p: p.is_dir() and is_image_folder(p)),
        open=open_image_folder,
    )
)
