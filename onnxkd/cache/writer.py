"""Writing one part of a cache: chunks of samples, every view of each, resumable after a kill.

A chunk is `batch_size` consecutive samples of the part. For each chunk the raw samples are
read once, then every view is augmented, preprocessed, run through the teacher and written in
place. Only after every array is synced does `progress.json` move forward, so a run killed at
any point resumes from the last whole chunk and rewrites the same bytes: the final cache is
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxkd.cache.files import PART_DONE, PROGRESS, NpyWriter, describe_file, safe_name
from onnxkd.data import values
from onnxkd.data.augment import PARAM_DTYPE, Augmentation
from onnxkd.data.source import Source
from onnxkd.data.spec import InputSpec
from onnxkd.data.views import read_box_views, read_view
from onnxkd.errors import CacheError
from onnxkd.files import read_json, write_json_atomic
from onnxkd.teacher.runner import TeacherRunner

# Random-resized-crop views of a chunk cut from one decode of each photo are held until the
# teacher has run on them: at 224 px and 256 samples a view is 37 MiB, so 13 views fit.
BOX_VIEWS_BYTES = 512 * 2**20
FP16_MAX = 65504.0


@dataclass(frozen=True)
class TargetLayout:
    """What is stored per sample and view."""

    output: str
    kind: str  # stored values: "logits" or "log_probs"
    from_probs: bool  # the teacher outputs probabilities; log() is taken before storing
    num_classes: int
    topk: int | None  # None: all classes
    dtype: str  # "float16" or "float32"
    features: dict[str, tuple[int, ...]]  # tensor name -> per-sample shape as stored
    feature_pool: str  # "none" or "avg"

    @property
    def index_dtype(self) -> np.dtype:
        return np.dtype(np.int16 if self.num_classes < 2**15 else np.int32)

    def arrays(self, n: int, views: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """File name -> (shape, dtype) of every array of a part with n samples."""
        out = {
            "labels.npy": ((n,), np.dtype(np.int64)),
            "aug_params.npy": ((views, n), PARAM_DTYPE),
        }
        if self.topk is None:
            out["targets.npy"] = ((views, n, self.num_classes), np.dtype(self.dtype))
        else:
            out["topk_values.npy"] = ((views, n, self.topk), np.dtype(self.dtype))
            out["topk_indices.npy"] = ((views, n, self.topk), self.index_dtype)
            out["residual.npy"] = ((views, n), np.dtype(np.float32))
            out["label_value.npy"] = ((views, n), np.dtype(np.float32))
        for name, shape in self.features.items():
            out[f"features/{safe_name(name)}.npy"] = ((views, n, *shape), np.dtype(self.dtype))
        return out

    def encode(self, scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Teacher scores for a batch, and its labels -> what is written (before dtype
        conversion).

        Top-k storage keeps the k largest log-probs with their classes, the log-prob of the
        label class (`label_value`, whether or not it is among the top k) and the `residual`:
        the probability mass outside both, so that top-k mass + label mass (if not in the top
        k) + residual = 1. The residual is summed from the classes it covers, not taken as 1
        minus the rest, so a small one keeps its precision.
        """
        x = scores.astype(np.float32, copy=False)
        if self.from_probs:
            x = np.log(np.maximum(x, np.float32(1e-30)))
        if self.topk is None:
            if self.dtype == "float16" and np.abs(x).max() > FP16_MAX:
                raise CacheError(
                    f"teacher output {self.output!r} has values beyond float16's range "
                    f"({np.abs(x).max():.3g}); pass --dtype float32"
                )
            return {"targets.npy": x}
        log_probs = x - _logsumexp(x)
        idx = np.argpartition(-log_probs, self.topk - 1, axis=1)[:, : self.topk]
        top = np.take_along_axis(log_probs, idx, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
        top = np.take_along_axis(top, order, axis=1)
        labels = np.asarray(labels, dtype=np.int64)[:, None]
        # An unlabeled sample keeps its top-1 class as "label": inside the top k, so the
        # residual and the rebuild are those of a cache that keeps no label.
        labels = np.where(labels < 0, idx[:, :1], labels)
        label_value = np.take_along_axis(log_probs, labels, axis=1)[:, 0]
        probs = np.exp(log_probs)
        np.put_along_axis(probs, idx, 0.0, axis=1)
        np.put_along_axis(probs, labels, 0.0, axis=1)
        return {
            "topk_values.npy": top,
            "topk_indices.npy": idx,
            "residual.npy": probs.sum(axis=1),
            "label_value.npy": label_value,
        }

    def encode_feature(self, value: np.ndarray) -> np.ndarray:
        if self.feature_pool == "avg" and value.ndim > 2:
            return value.mean(axis=tuple(range(2, value.ndim)))
        return value


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def describe_section(section: str, source: Source) -> str:
    """How messages name a section's data: `the train section (digits, train split)`."""
    return f"the {section} section ({source.ref.data}, {source.ref.split} split)"


@dataclass
class PartJob:
    """One slice [start, stop) of one section, written to `root/dirname`."""

    root: Path
    dirname: str
    source: Source
    start: int
    stop: int
    views: int
    augmentation: Augmentation
    batch_size: int

    @property
    def path(self) -> Path:
        return self.root / self.dirname

    @property
    def n(self) -> int:
        return self.stop - self.start

    @property
    def where(self) -> str:
        return describe_section(self.dirname.split("/")[0], self.source)

    @property
    def chunks(self) -> int:
        return -(-self.n // self.batch_size)

    def is_done(self) -> bool:
        return (self.path / PART_DONE).exists()

    def chunks_done(self) -> int:
        progress = self.path / PROGRESS
        return read_json(progress)["chunks_done"] if progress.exists() else 0

    def hits_so_far(self) -> list[int]:
        progress = self.path / PROGRESS
        return read_json(progress)["hits"] if progress.exists() else [0] * self.views


def write_part(
    job: PartJob,
    spec: InputSpec,
    runner: TeacherRunner,
    layout: TargetLayout,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> dict:
    """Fill a part's arrays from where its progress left off; return its `part.json` record."""
    if job.is_done():
        return read_json(job.path / PART_DONE)
    done = job.chunks_done()
    # Teacher hits per view are counted as chunks are written, and saved with the progress,
    # so accuracy never needs a second pass over the arrays.
    hits = job.hits_so_far()
    (job.path / "features").mkdir(parents=True, exist_ok=True)
    arrays = layout.arrays(job.n, job.views)
    # A section's parameters are of its augmentation's type (random-resized-crop stores boxes).
    arrays["aug_params.npy"] = ((job.views, job.n), job.augmentation.param_dtype)
    writers = {
        name: NpyWriter(job.path / name, shape, dtype, create=done == 0)
        for name, (shape, dtype) in arrays.items()
    }
    started = time.perf_counter()
    try:
        # Preprocessing of the next view runs in a thread while onnxruntime (which releases
        # the GIL) computes the current one, so the teacher is never waiting on numpy.
        with ThreadPoolExecutor(max_workers=1) as pool:
            tasks = [(c, v) for c in range(done, job.chunks) for v in range(job.views)]
            raw_cache: dict = {}
            classes = layout.num_classes
            pending = (
                pool.submit(_prepare, job, spec, classes, *tasks[0], raw_cache) if tasks else None
            )
            for i, (chunk, view) in enumerate(tasks):
                x, params, labels = pending.result()
                if i + 1 < len(tasks):
                    pending = pool.submit(_prepare, job, spec, classes, *tasks[i + 1], raw_cache)
                outputs = runner.run(x)
                row = chunk * job.batch_size
                _check_outputs(job, layout, outputs, row)
                _write_view(writers, layout, view, row, outputs, params, labels)
                hits[view] += int((outputs[layout.output].argmax(axis=1) == labels).sum())
                if view == job.views - 1:
                    writers["labels.npy"].write(None, row, labels)
                    for w in writers.values():
                        w.sync()
                    write_json_atomic(job.path / PROGRESS, {"chunks_done": chunk + 1, "hits": hits})
                    on_chunk(len(labels) * job.views)
    finally:
        for w in writers.values():
            w.close()
    record = {
        "dir": job.dirname,
        "start": job.start,
        "stop": job.stop,
        "files": {name: describe_file(job.path / name) for name in writers},
        "teacher_hits": hits,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(job.path / PART_DONE, record)
    (job.path / PROGRESS).unlink(missing_ok=True)
    return record


def _prepare(
    job: PartJob, spec: InputSpec, num_classes: int, chunk: int, view: int, raw_cache: dict
):
    """Model input, augmentation parameters and labels for one chunk and view.

    Decoded samples are read (and checked) once per chunk and kept in `raw_cache` for its other
    views. Random-resized-crop views are cut from each photo as it decodes: every view's box at
    once, so a photo is decoded once per chunk, not once per view; the cut views are kept, at
    most BOX_VIEWS_BYTES of them (beyond that, views are cut in groups, a decode per group).
    Mixed views read their partners' photos too, a decode per view.
    """
    lo = job.start + chunk * job.batch_size
    indices = np.arange(lo, min(lo + job.batch_size, job.stop), dtype=np.int64)
    if job.augmentation.mixes:
        raw, params, labels = read_view(job.source, job.augmentation, indices, view)
        values.check_labels(labels, num_classes, lo, job.where)
        return spec.apply(raw), params, labels
    if job.augmentation.cuts_boxes:
        group = _box_view_group(job, len(indices), view)
        if raw_cache.get("chunk") != chunk or view not in raw_cache["views"]:
            raw_cache.clear()  # the previous group's views first: the bound holds
            raw, params, labels = read_box_views(job.source, job.augmentation, indices, group)
            values.check_labels(labels, num_classes, lo, job.where)
            raw_cache.update(chunk=chunk, views=group, raw=raw, params=params, labels=labels)
        at = raw_cache["views"].index(view)
        return spec.apply(raw_cache["raw"][at]), raw_cache["params"][at], raw_cache["labels"]
    if raw_cache.get("chunk") != chunk:
        raw, labels = job.source.read(indices)
        values.check_samples(raw, lo, job.where)
        values.check_labels(labels, num_classes, lo, job.where)
        raw_cache.clear()
        raw_cache.update(chunk=chunk, raw=raw, labels=labels)
    augmented, params = job.augmentation.view(raw_cache["raw"], indices, view)
    return spec.apply(augmented), params, raw_cache["labels"]


def _box_view_group(job: PartJob, n: int, view: int) -> range:
    """The views cut together with `view`: as many as BOX_VIEWS_BYTES holds for n samples."""
    per_view = max(1, n * int(np.prod(job.source.sample_shape)))  # uint8 pixels
    size = max(1, min(job.views, BOX_VIEWS_BYTES // per_view))
    first = view // size * size
    return range(first, min(first + size, job.views))


def _check_outputs(
    job: PartJob, layout: TargetLayout, outputs: dict[str, np.ndarray], row: int
) -> None:
    """Refuse a view whose scores or features hold NaN or Inf, before any of it is written."""
    for name in (layout.output, *layout.features):
        values.check_outputs(name, outputs[name], job.start + row, job.where)


def _write_view(
    writers: dict[str, NpyWriter],
    layout: TargetLayout,
    view: int,
    row: int,
    outputs: dict[str, np.ndarray],
    params: np.ndarray,
    labels: np.ndarray,
) -> None:
    for name, encoded in layout.encode(outputs[layout.output], labels).items():
        writers[name].write(view, row, encoded)
    writers["aug_params.npy"].write(view, row, params)
    for feature in layout.features:
        value = layout.encode_feature(outputs[feature])
        if layout.dtype == "float16" and np.abs(value).max(initial=0.0) > FP16_MAX:
            raise CacheError(
                f"feature {feature!r} has values beyond float16's range; pass --dtype float32"
            )
        writers[f"features/{safe_name(feature)}.npy"].write(view, row, value)
