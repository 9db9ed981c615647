"""Reading a cache: targets and augmentation parameters by sample index and view.

Arrays are opened with memory mapping and gathered row by row, so a reader never loads the
whole cache into RAM. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from onnxkd.cache.files import MANIFEST, PART_DONE, PENDING, PROGRESS
from onnxkd.cache.integrity import check_arrays as check_arrays_match
from onnxkd.cache.integrity import find_problems
from onnxkd.cache.manifest import LABEL_VALUE, SCORES, TOPK_ARRAYS, Manifest, Section
from onnxkd.data.augment import Augmentation
from onnxkd.data.loaders import open_source
from onnxkd.data.records import use_data_record
from onnxkd.data.source import Source
from onnxkd.data.spec import InputSpec, fit_source
from onnxkd.data.views import read_view
from onnxkd.errors import CacheError
from onnxkd.files import read_json


def incomplete_status(path: Path) -> str:
    """A sentence on how far an unfinished cache got, naming the shards not yet written."""
    pending = read_json(path / PENDING)
    shards = pending["shards"]
    lines, missing = [], []
    for name, section in pending["sections"].items():
        done = total = 0
        for i in range(shards):
            part = path / name / f"part-{i}-of-{shards}"
            n = int(np.ceil(section["n"] / shards))
            total += n
            if (part / PART_DONE).exists():
                done += n
                continue
            missing.append(f"{name} {i}/{shards}")
            if (part / PROGRESS).exists():
                chunks = read_json(part / PROGRESS)["chunks_done"]
                done += min(chunks * pending["config"]["batch_size"], n)
        lines.append(f"{name} ~{done}/{total} samples")
    status = ", ".join(lines)
    if shards > 1 and missing:
        status += (
            f"; shards not yet written: {', '.join(missing)} (failed, stopped or never started: "
            "rerun the same cache-teacher command for each, with --shard i/n or under the "
            "launcher, and it resumes where it stopped)"
        )
    return status


def rebuild_log_probs(
    values: np.ndarray,
    classes: np.ndarray,
    residual: np.ndarray,
    num_classes: int,
    labels: np.ndarray | None = None,
    label_value: np.ndarray | None = None,
) -> np.ndarray:
    """Full (B, C) log-probs from top-k storage: exact at the top k classes and, given
    `labels` and their `label_value`, at the label class; the `residual` mass (what the
    stored classes leave) is spread evenly over the classes left, C − k − 1 where the label is
    outside the top k and C − k where it is inside (or without a label). That is the
    maximum-entropy guess that keeps the total mass right.

    Example: C = 5, k = 2, top-k probabilities .5 and .3 at classes 0 and 1, label 4 with .1,
    residual .1:
        >>> lp = rebuild_log_probs(
        ...     np.log([[0.5, 0.3]]), np.array([[0, 1]]), np.array([0.1]), 5, [4], np.log([0.1])
        ... )
        >>> np.exp(lp).astype(float).round(3).tolist()
        [[0.5, 0.3, 0.05, 0.05, 0.1]]
    """
    others = np.full(len(classes), num_classes - classes.shape[1])
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)[:, None]
        others = others - (classes != labels).all(axis=1)
    # k = C − 1 with the label outside leaves no class to fill (and a residual of ~0).
    fill = np.log(np.maximum(residual, 1e-12) / np.maximum(others, 1)).astype(np.float32)
    full = np.repeat(fill[:, None], num_classes, axis=1)
    if labels is not None:
        label = np.asarray(label_value, dtype=np.float32)[:, None]
        np.put_along_axis(full, labels, label, axis=1)
    np.put_along_axis(full, classes, values.astype(np.float32, copy=False), axis=1)
    return full


class CacheReader:
    """A complete cache, opened for reading.

    Example:
        >>> cache = CacheReader(Path("onnxkd-out/caches/digits_cnn-digits-01234"))  # doctest: +SKIP
        >>> train = cache.section("train")  # doctest: +SKIP
        >>> train.log_probs(np.arange(4), view=0, temperature=4.0).shape  # doctest: +SKIP
        (4, 10)
    """

    def __init__(
        self, path: Path | str, manifest: Manifest | None = None, check_arrays: bool = True
    ) -> None:
        """Open the cache at `path`, refusing it if any array differs from the manifest
        (cheap after the first read: see `onnxkd.cache.integrity`). `check_arrays=False` is
        for callers that read only the manifest (its key, spec or accuracy), never arrays."""
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else self._load_manifest()
        if check_arrays:
            check_arrays_match(self.path, self.manifest)

    def _load_manifest(self) -> Manifest:
        if not self.path.is_dir():
            raise CacheError(f"cache folder {self.path} does not exist")
        if not (self.path / MANIFEST).exists():
            if (self.path / PENDING).exists():
                raise CacheError(
                    f"cache {self.path} is incomplete ({incomplete_status(self.path)}); rerun "
                    "the same cache-teacher command to finish it"
                )
            raise CacheError(f"{self.path} is not an onnxkd cache (no {MANIFEST})")
        try:
            raw = read_json(self.path / MANIFEST)
        except ValueError as e:
            raise CacheError(f"{self.path / MANIFEST} is corrupt: {e}") from e
        manifest = Manifest.from_dict(raw, where=str(self.path))
        if not manifest.complete:
            raise CacheError(f"cache {self.path} is marked incomplete")
        return manifest

    @property
    def input_spec(self) -> InputSpec:
        return self.manifest.input_spec

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def sections(self) -> list[str]:
        return list(self.manifest.sections)

    def section(self, name: str = "train") -> CacheSection:
        if name not in self.manifest.sections:
            raise CacheError(f"cache {self.path} has no section {name!r}; it has {self.sections}")
        return CacheSection(self, name)

    def check_data(self, source: Source, section: str = "train") -> None:
        """Refuse data that is not what the teacher saw for this section."""
        recorded = self.manifest.section(section)
        found = source.fingerprint()
        if found != recorded.fingerprint and hasattr(source, "legacy_fingerprint"):
            # a photo cache made before the data record hashed the bytes another way
            found = source.legacy_fingerprint()
        if found != recorded.fingerprint:
            changes = getattr(source, "data_changes", None)
            named = (
                f"; changed since the workspace last read it: {changes.describe()}"
                if changes
                else ""
            )
            raise CacheError(
                f"the data given ({source.ref.data}, {source.ref.split}, {len(source)} samples) "
                f"is not the data this cache was made from ({recorded.data_ref.data}, "
                f"{recorded.n} samples): fingerprints differ{named}"
            )

    def open_data(
        self,
        section: str = "train",
        data: str | None = None,
        workers: int | None = None,
        workdir: Path | None = None,
    ) -> Source:
        """The data a section was made from (at `data` if it moved), decoded as the teacher's
        was (photos on `workers` threads), checked by fingerprint (photos: against the data
        record of the workspace `workdir` where given, so unchanged files are not reread)."""
        ref = self.manifest.section(section).data_ref
        if data is not None:
            ref = replace(ref, data=data)
        source = open_source(ref)
        fit_source(source, self.input_spec, workers)
        if workdir is not None:
            use_data_record(source, workdir)
        self.check_data(source, section)
        return source

    def verify(self) -> list[str]:
        """Check every array against the manifest (header, size, sha256, ignoring earlier
        verification records); return the problems."""
        return find_problems(self.path, self.manifest, full=True)


class CacheSection:
    """One section (`train` with its views, or `eval`) of a cache."""

    def __init__(self, cache: CacheReader, name: str) -> None:
        self.cache = cache
        self.name = name
        self.meta: Section = cache.manifest.section(name)
        self.n = self.meta.n
        self.views = self.meta.views
        self.parts = self.meta.parts
        self._starts = np.array([p.start for p in self.parts])
        self._open: dict[tuple[int, str], np.ndarray] = {}
        targets = cache.manifest.targets
        self.storage = targets.storage
        self.num_classes = targets.num_classes
        self.keeps_label = targets.keeps_label
        self.augmentation = Augmentation(**self.meta.augmentation)
        self.labeled = self.meta.labeled  # False: every label is UNLABELED

    def _array(self, part: int, file: str) -> np.ndarray:
        key = (part, file)
        if key not in self._open:
            path = self.cache.path / self.parts[part].dir / file
            try:
                self._open[key] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CacheError(f"cache array {path} cannot be read ({e}); run cache-info") from e
        return self._open[key]

    def _gather(self, file: str, indices: np.ndarray, view: int | None) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n):
            raise CacheError(f"sample index out of range [0, {self.n}) for section {self.name}")
        if view is not None and not 0 <= view < self.views:
            raise CacheError(f"view {view} out of range: section {self.name} has {self.views}")
        which = np.searchsorted(self._starts, indices, side="right") - 1
        out = None
        for part in np.unique(which):
            mask = which == part
            local = indices[mask] - self.parts[part].start
            arr = self._array(int(part), file)
            rows = arr[local] if view is None else arr[view][local]
            if out is None:
                out = np.empty((len(indices), *rows.shape[1:]), dtype=rows.dtype)
            out[mask] = rows
        if out is None:
            arr = self._array(0, file)
            shape = arr.shape[1:] if view is None else arr.shape[2:]
            out = np.empty((0, *shape), dtype=arr.dtype)
        return out

    def labels(self, indices: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.n) if indices is None else indices
        return self._gather("labels.npy", idx, None)

    def aug_params(self, indices: np.ndarray, view: int) -> np.ndarray:
        return self._gather("aug_params.npy", indices, view)

    def _stored_topk(
        self, indices: np.ndarray, view: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The top-k arrays as stored (the residual leaves out the label where it is kept)."""
        if self.storage != "topk":
            raise CacheError("this cache stores every class, not top-k; use log_probs()")
        values = self._gather("topk_values.npy", indices, view).astype(np.float32)
        classes = self._gather("topk_indices.npy", indices, view).astype(np.int64)
        residual = self._gather("residual.npy", indices, view)
        return values, classes, residual

    def topk(self, indices: np.ndarray, view: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k log-probabilities, their class indices and the probability mass outside the
        top k (the label's included where it is outside them, as in caches that keep no label
        value: kd_topk reads it so)."""
        values, classes, residual = self._stored_topk(indices, view)
        if self.keeps_label:
            labels = self._label_classes(indices, classes)[:, None]
            outside = (classes != labels).all(axis=1)
            residual = residual + np.where(outside, np.exp(self.label_value(indices, view)), 0)
        return values, classes, residual.astype(np.float32, copy=False)

    def _label_classes(self, indices: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The class label_value.npy was kept for: the label, or for an unlabeled sample its
        top-1 class (as the writer keeps it)."""
        labels = self.labels(indices)
        return np.where(labels < 0, classes[:, 0], labels)

    def label_value(self, indices: np.ndarray, view: int) -> np.ndarray:
        """The teacher's log-probability of each sample's label class, at temperature 1."""
        if self.storage != "topk" or not self.keeps_label:
            raise CacheError(
                "only a top-k cache keeps label_value, and only one written since it did; "
                "use log_probs()"
            )
        return self._gather("label_value.npy", indices, view)

    def scores(self, indices: np.ndarray, view: int) -> np.ndarray:
        """Teacher scores over every class at temperature 1, up to a per-row constant.

        Full storage returns what was stored (logits, or log-probs for probability teachers);
        top-k storage returns the log-probs `rebuild_log_probs` makes of it.
        """
        if self.storage == "full":
            return self._gather("targets.npy", indices, view).astype(np.float32)
        values, classes, residual = self._stored_topk(indices, view)
        if not self.keeps_label:
            return rebuild_log_probs(values, classes, residual, self.num_classes)
        labels = self._label_classes(indices, classes)
        label_value = self.label_value(indices, view)
        return rebuild_log_probs(values, classes, residual, self.num_classes, labels, label_value)

    def log_probs(self, indices: np.ndarray, view: int, temperature: float = 1.0) -> np.ndarray:
        """Teacher log-probabilities softened by `temperature`, shape (len(indices), classes)."""
        z = self.scores(indices, view) / np.float32(temperature)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def argmax(self, indices: np.ndarray, view: int) -> np.ndarray:
        if self.storage == "topk":
            return self._gather("topk_indices.npy", indices, view)[:, 0].astype(np.int64)
        return self._gather("targets.npy", indices, view).argmax(axis=1)

    def features(self, name: str, indices: np.ndarray, view: int) -> np.ndarray:
        features = self.cache.manifest.features
        if name not in features:
            raise CacheError(f"cache has no feature {name!r}; it has {list(features)}")
        return self._gather(features[name].file, indices, view)

    def teacher_arrays(
        self, keys: tuple[str, ...], indices: np.ndarray, view: int
    ) -> dict[str, np.ndarray]:
        """The teacher arrays named `keys` (see `Manifest.arrays`) for these samples and view.

        `logits` are the scores over every class; `residual` the mass outside the top k;
        `label_value` the log-prob of each sample's label; features come as float32.
        """
        problem = self.cache.manifest.missing_arrays(keys, "this read", str(self.cache.path))
        if problem:
            raise CacheError(problem)
        arrays: dict[str, np.ndarray] = {}
        if SCORES in keys:
            arrays[SCORES] = self.scores(indices, view)
        if any(k in TOPK_ARRAYS for k in keys):
            values, classes, residual = self.topk(indices, view)
            parts = dict(zip(TOPK_ARRAYS, (values, classes, residual), strict=True))
            arrays.update({k: v for k, v in parts.items() if k in keys})
        if LABEL_VALUE in keys:
            arrays[LABEL_VALUE] = self.label_value(indices, view)
        for name in keys:
            if name not in arrays:
                arrays[name] = self.features(name, indices, view).astype(np.float32)
        return arrays

    def raw_view(self, source: Source, indices: np.ndarray, view: int) -> np.ndarray:
        """Rebuild the raw pixels the teacher saw for these samples and view."""
        params = self.aug_params(indices, view)
        # a mixed view's partner is rebuilt from its own stored row of the same view
        partner = self.aug_params(params["partner"], view) if self.augmentation.mixes else None
        return read_view(source, self.augmentation, indices, view, params, partner)[0]

    def mixing(self, indices: np.ndarray, view: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For a section of mixed views: each view's partner's label and λ, the share of the
        sample's own label (the label term mixes as the pixels did); None otherwise."""
        if not self.augmentation.mixes:
            return None
        params = self.aug_params(indices, view)
        return self.labels(params["partner"]), params["lam"].astype(np.float32)

    def model_input(self, source: Source, indices: np.ndarray, view: int) -> np.ndarray:
        """Exactly the teacher's input for these samples and view."""
        return self.cache.input_spec.apply(self.raw_view(source, indices, view))
