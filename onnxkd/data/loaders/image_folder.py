"""Image folders: `root/<class>/**/*.jpg` (split by holdout) or `root/train|val|test/<class>/…`;
`root/*.jpg` with no class folders is unlabeled (a train split of photos without labels).

Photos come in every size and mode. A folder whose images share one size is read as arrays of
that size (the small-image policies apply); otherwise, or when the teacher wants another size,
cache-teacher gives the source the spec's `PhotoTransform` (`configure`) and each photo is
decoded upright, converted, resized and centre-cropped, or cut to a view's box, by a pool of
workers (`onnxkd.data.workers`). Class names are the sorted folder names, taken over both
splits so that a class has the same index in train and test even when one split lacks it.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from pathlib import Path

import numpy as np
from PIL import Image

from onnxkd.data import photo
from onnxkd.data.loaders.common import holdout_indices
from onnxkd.data.loaders.path_table import PathTable
from onnxkd.data.loaders.registry import SourceKind, existing, register_source
from onnxkd.data.records import Changes, DataRecord
from onnxkd.data.source import UNLABELED, DataRef
from onnxkd.data.workers import check_workers, default_workers, parallel_map
from onnxkd.errors import DataError, MissingSplitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
# Modes with one channel of intensity: a folder of these becomes (H, W, 1) "L" images.
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def is_image_folder(folder: Path) -> bool:
    """Whether `folder` has class subfolders holding images, directly or under train/val/test.

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
    if present == [folder] and _is_unlabeled_folder(folder):
        return _unlabeled(ref, folder)
    classes = _class_names(present)
    listed = {root: _without(ref, _list_images(folder, root, classes)) for root in present}
    # Both splits must decode alike, so every image of the folder decides mode and size.
    everything = [table for table, _ in listed.values()]
    if ref.holdout is not None or present == [folder]:
        pool = roots["train"] or roots["test"] or folder
        picked, info = holdout_indices(ref, len(listed[pool][0]))
        if pool != folder:
            info["folder"] = pool.name
        table, labels = listed[pool]
        return ImageFolderSource(ref, table.take(picked), labels[picked], classes, info, everything)
    root = roots[ref.split]
    if root is None:
        found = ", ".join(r.name for r in present)
        wanted = " or ".join(f"{folder / name}" for name in SPLIT_FOLDERS[ref.split])
        raise MissingSplitError(
            f"{folder}: has no {ref.split} split (found folder {found}, no {wanted}); add "
            "it, or pass a holdout fraction to split off a test set from the train images"
        )
    info = {"split": ref.split, "method": "native", "folder": root.name}
    return ImageFolderSource(ref, *listed[root], classes, info, everything)


class ImageFolderSource:
    """A `Source` over image files, decoded on every `read` by a pool of workers.

    Without a transform, all images become one mode ("L" when the folder's first image is
    grayscale, else "RGB") and one size: `ref.image_size` (squashed bilinearly) or the size
    every image of the folder (`folder_images`, both splits) shares. `configure` gives it the
    input spec's photo transform and channels instead: then any size is welcome.
    """

    accepts_transform = True  # resolve_input_spec may give it a PhotoTransform
    labeled = True  # False: every label is UNLABELED (no class folders, a list of paths)

    def __init__(
        self,
        ref: DataRef,
        paths: PathTable,
        labels: np.ndarray,
        label_names: tuple[str, ...] | None,
        split_info: dict,
        folder_images: list[PathTable],
    ) -> None:
        self.ref = ref
        self.root = paths.root
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_names = label_names
        self.split_info = dict(split_info)
        if ref.exclude:
            self.split_info["excluded"] = len(ref.exclude)
        self.kind = "image"
        self.dtype = np.dtype(np.uint8)
        self.transform: photo.PhotoTransform | None = None
        self.workers = default_workers()
        self._folder_images = [table for table in folder_images if len(table)]
        if not self._folder_images or not len(paths):
            raise DataError(f"{self.root}: no images left to read")
        first_mode = _probe_mode(self._folder_images[0][0])
        self.mode = "L" if first_mode in GRAY_MODES else "RGB"
        self._common_size: tuple[int, int] | None | bool = False  # False: not probed yet
        self._fingerprint: str | None = None
        self._record: DataRecord | None = None
        self._changes: Changes | None = None  # what the record found when this source took it

    def use_record(
        self, workdir: Path | None, verify: bool = False, workers: int | None = None
    ) -> DataRecord:
        """Keep this folder's file facts (hashes, headers, decode verdicts) in the workspace
        `workdir` and trust them while each file's stat is unchanged (`onnxkd.data.records`);
        `verify` rehashes every file, on `workers` threads (None: the source's). Returns the
        record; `data_changes` then names what changed since it was last written."""
        record = DataRecord.for_root(self.root, workdir)
        workers = check_workers(workers or self.workers)
        self._changes = record.refresh(self._all_names(), workers, verify=verify)
        record.save()
        self._record, self._fingerprint, self._common_size = record, None, False
        return record

    @property
    def record(self) -> DataRecord:
        """The file facts; without `use_record`, a record for this process alone."""
        if self._record is None:
            self._record = DataRecord.for_root(self.root, None)
            self._changes = self._record.refresh(self._all_names(), self.workers)
        return self._record

    @property
    def data_changes(self) -> Changes | None:
        """What the workspace's data record found changed when this source opened it."""
        return None if self._record is None else self._changes

    def _all_names(self) -> list[str]:
        return [name for table in self._folder_images for name in table.names()]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def common_size(self) -> tuple[int, int] | None:
        """(H, W) every image of the folder shares upright, or None when sizes vary.

        Headers only (PIL reads the size without decoding pixels), each read once per
        workspace and kept in the data record.
        """
        if self._common_size is False:
            sizes, _ = self.record.headers(self._all_names(), self.workers, photo.header)
            self.record.save()
            same = bool((sizes == sizes[0]).all())
            self._common_size = (int(sizes[0, 1]), int(sizes[0, 0])) if same else None
        return self._common_size

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        if self.transform is not None:
            return (*self.transform.size, self.channels)
        if self.ref.image_size is not None:
            return (*self.ref.image_size, self.channels)
        size = self.common_size()
        if size is None:
            raise DataError(
                f"{self.root}: images of several sizes; a teacher with a fixed input size "
                "resizes and centre-crops them to it (or pass --size HxW), or --image-size HxW "
                "squashes every image to one size"
            )
        return (*size, self.channels)

    def configure(
        self, transform: photo.PhotoTransform | None, channels: int, workers: int | None = None
    ) -> None:
        """Decode for an input spec: its photo transform (None: as the images are) and its
        channels (3: RGB, 1: grayscale), on `workers` threads (None: one per core)."""
        if channels not in (1, 3):
            raise DataError(f"image folders decode to 1 or 3 channels, not {channels}")
        self.transform = transform
        self.mode = "L" if channels == 1 else "RGB"
        self.workers = check_workers(workers)
        self._fingerprint = None

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        _ = self.sample_shape  # resolved here, once, not by each decoding thread
        pixels = parallel_map(self._decode, indices.tolist(), self.workers)
        return self._stack(pixels), self.labels[indices]

    def image_sizes(self, indices: np.ndarray) -> np.ndarray:
        """(width, height) of each image upright, from headers read once per workspace."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        names = [self.paths.name(int(i)) for i in indices]
        sizes, _ = self.record.headers(names, self.workers, photo.header)
        return sizes

    def read_boxes(self, indices: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image's box (random-resized-crop parameters) cut, resized and flipped."""
        if self.transform is None:
            raise DataError("random-resized-crop views need the input spec's photo transform")
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        jobs = list(zip(indices.tolist(), params.tolist(), strict=True))
        return self._stack(parallel_map(self._decode_box, jobs, self.workers)), self.labels[indices]

    def read_boxes_of_views(
        self, indices: np.ndarray, params_per_view: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(views, n, *sample_shape): each image decoded once and every view's box cut from
        it (the full-size decode is dropped as soon as its boxes are cut)."""
        if self.transform is None:
            raise DataError("random-resized-crop views need the input spec's photo transform")
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        boxes = [p.tolist() for p in params_per_view]
        jobs = [(i, [view[row] for view in boxes]) for row, i in enumerate(indices.tolist())]
        crops = parallel_map(self._decode_boxes, jobs, self.workers)
        out = np.empty((len(boxes), len(indices), *self.sample_shape), dtype=np.uint8)
        for row, per_view in enumerate(crops):
            for view, image in enumerate(per_view):
                out[view, row] = image
        return out, self.labels[indices]

    def _stack(self, pixels: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(pixels), *self.sample_shape), dtype=np.uint8)
        for row, image in enumerate(pixels):
            out[row] = image
        return out

    def fingerprint(self) -> str:
        """sha256 of the decoding settings and each file's relative path, label and the sha256
        of its bytes (the bytes read once per workspace while the file's stat is unchanged:
        the data record)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            settings = (self.mode, self.ref.image_size, self.transform, self.ref.exclude)
            h.update(repr(settings).encode())
            names = list(self.paths.names())
            digests = self.record.digests(names, self.workers)
            self.record.save()
            for name, label, digest in zip(names, self.labels.tolist(), digests, strict=True):
                h.update(f"\n{name}\0{label}\0".encode())
                h.update(digest.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def legacy_fingerprint(self) -> str:
        """The fingerprint as caches made before the data record have it (every file's bytes
        streamed into one hash): read in full, and only to accept such a cache."""
        h = hashlib.sha256()
        settings = (self.mode, self.ref.image_size, self.transform, self.ref.exclude)
        h.update(repr(settings).encode())
        for i, label in enumerate(self.labels.tolist()):
            h.update(f"\n{self.paths.name(i)}\0{label}\0".encode())
            with self.paths[i].open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        return h.hexdigest()

    def _decode(self, i: int) -> np.ndarray:
        path = self.paths[i]
        image = photo.load_image(path, self.mode)
        if self.transform is not None:
            return self.transform.centre(image)
        if self.ref.image_size is not None:
            height, width = self.ref.image_size
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image)
        shape = self.sample_shape
        if pixels.shape[:2] != shape[:2]:
            raise DataError(
                f"{path}: is {pixels.shape[1]}x{pixels.shape[0]}, the other images "
                f"{shape[1]}x{shape[0]}; pass --size HxW to resize and centre-crop them all"
            )
        return pixels.reshape(shape)

    def _decode_box(self, job: tuple[int, tuple]) -> np.ndarray:
        i, (top, left, height, width, flip) = job
        image = photo.load_image(self.paths[i], self.mode)
        return self.transform.crop(image, (top, left, height, width), bool(flip))

    def _decode_boxes(self, job: tuple[int, list[tuple]]) -> list[np.ndarray]:
        i, boxes = job
        image = photo.load_image(self.paths[i], self.mode)
        return [self.transform.crop(image, (t, le, h, w), bool(f)) for t, le, h, w, f in boxes]


def scan_bad_images(source: ImageFolderSource) -> list[tuple[str, str]]:
    """(relative path, reason) of every image of `source` that does not decode: what
    `--skip-bad` leaves out. Each file is fully decoded once per workspace; the verdict is
    kept in the data record while the file's stat is unchanged."""

    def problem(path: Path) -> str | None:
        try:
            photo.load_image(path, source.mode)
        except DataError as e:
            return str(e.__cause__ or e)
        return None

    bad = source.record.bad_files(list(source.paths.names()), source.workers, problem)
    source.record.save()
    return bad


def _without(ref: DataRef, listed: tuple[PathTable, np.ndarray]) -> tuple[PathTable, np.ndarray]:
    table, labels = listed
    if not ref.exclude:
        return listed
    skip = set(ref.exclude)
    keep = [i for i, name in enumerate(table.names()) if name not in skip]
    return table.take(keep), labels[keep]


def _is_unlabeled_folder(folder: Path) -> bool:
    """Images lie in the folder itself and no subfolder holds any: photos without classes."""
    return _has_images(folder) and not any(
        _is_image(p, folder) for sub in _subfolders(folder) for p in sub.rglob("*")
    )


def _unlabeled(ref: DataRef, folder: Path) -> ImageFolderSource:
    if ref.split != "train":
        raise MissingSplitError(
            f"{folder}: holds images without class folders (unlabeled), a train split only; "
            "a test split needs labels"
        )
    names = sorted(p.name for p in folder.iterdir() if _is_image(p, folder))
    table, labels = _without(
        ref, (PathTable(folder, names), np.full(len(names), UNLABELED, dtype=np.int64))
    )
    info = {"split": "train", "method": "unlabeled"}
    source = ImageFolderSource(ref, table, labels, None, info, [table])
    source.labeled = False
    return source


def _probe_mode(path: Path) -> str:
    try:
        with Image.open(path) as image:
            return image.mode
    except photo.DECODE_ERRORS as e:
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
            "a folder named after the class: root/<class>/*.jpg"
        )
    return tuple(names)


def _list_images(
    folder: Path, root: Path, classes: tuple[str, ...]
) -> tuple[PathTable, np.ndarray]:
    """Every image under root/<class>/ (nested folders included), named relative to `folder`,
    sorted by class, then by path, and its class index."""
    names: list[str] = []
    labels = array("q")
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        images = _image_names(class_dir)
        if not images:
            raise DataError(
                f"{class_dir}: class folder with no images (accepted: "
                f"{', '.join(IMAGE_SUFFIXES)}); add images or remove the folder"
            )
        prefix = class_dir.relative_to(folder).as_posix()
        names.extend(f"{prefix}/{name}" for name in images)
        labels.extend([label] * len(images))
    if not names:
        raise DataError(
            f"{root}: no class folders with images; put each class's images in "
            f"{root}/<class>/ (accepted: {', '.join(IMAGE_SUFFIXES)})"
        )
    return PathTable(folder, names), np.frombuffer(labels, dtype=np.int64).copy()


def _image_names(folder: Path) -> list[str]:
    """Every image file under `folder` (nested folders too, hidden ones not), as posix paths
    relative to it, in the order of their path parts (as sorted `Path`s are). os.scandir,
    not pathlib: a million photos are listed in seconds, not minutes."""
    found: list[str] = []
    pending = [("", os.fspath(folder))]
    while pending:
        prefix, path = pending.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append((f"{prefix}{entry.name}/", entry.path))
                elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    found.append(prefix + entry.name)
    found.sort(key=lambda name: name.split("/"))
    return found


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    return any(_is_image(p, folder) for p in folder.iterdir())


def _is_image(path: Path, under: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(under).parts)
    return path.suffix.lower() in IMAGE_SUFFIXES and not hidden and path.is_file()


register_source(
    SourceKind(
        name="image_folder",
        accepts=(
            "an image folder (root/<class>/*.jpg|png, nested folders too, or "
            "root/train|val/<class>/…)"
        ),
        order=40,
        find=lambda data: existing(data, lambda p: p.is_dir() and is_image_folder(p)),
        open=open_image_folder,
    )
)
