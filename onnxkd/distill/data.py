"""Batches for distillation: the pixels the teacher saw, with the teacher's cached targets.

Epoch `e` uses cached view `e mod K`: each batch's raw samples are read from the data source,
augmented with the parameters stored in the cache for that view, and preprocessed with the
cache's input spec, so the student sees exactly the teacher's input. Shuffling is a pure
function of (seed, epoch), so a resumed run and every DDP rank agree on the order without
saving any random state. Batches are prepared in a background thread while the student trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onnxkd.cache.manifest import SCORES
from onnxkd.cache.reader import CacheReader, CacheSection
from onnxkd.data.source import UNLABELED, Source
from onnxkd.data.views import read_view

# Not a cached array: the batch's sample numbers, for losses that keep a memory per sample
# (CRD), given with the teacher's arrays.
SAMPLE_INDEX = "sample_index"
# Given with the teacher's arrays for mixed views (MixUp, CutMix): the partner's label and λ,
# so the label term mixes as the pixels did (see `onnxkd.distill.losses.base.label_loss`).
MIX_LABEL, MIX_LAMBDA = "mix_label", "mix_lambda"


def cached_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The teacher keys that name arrays in the cache (all but SAMPLE_INDEX)."""
    return tuple(k for k in keys if k != SAMPLE_INDEX)


@dataclass
class Batch:
    """One batch: model input, labels and teacher targets, as numpy arrays."""

    x: np.ndarray
    labels: np.ndarray
    teacher: dict[str, np.ndarray]
    indices: np.ndarray


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of an epoch, the same in every process and after a resume."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def rank_slice(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's share of an epoch, padded by wrapping so every rank gets as many samples."""
    if world == 1:
        return order
    per_rank = -(-len(order) // world)
    padded = np.resize(order, per_rank * world)
    return padded[rank::world]


def batches_per_epoch(
    samples: int, batch_size: int, world: int = 1, drop_last: bool = False
) -> int:
    """How many batches each rank's epoch yields: what a schedule sized in steps must count.

    Each rank gets ceil(samples / world) samples (rank_slice pads by wrapping); drop_last
    drops a partial last batch unless it is the only one.
    """
    per_rank = samples if world == 1 else -(-samples // world)
    full, rest = divmod(per_rank, batch_size)
    return full + 1 if rest and not (drop_last and full) else full


class _Batches:
    """Shared batching: shuffled (per seed and epoch), split across ranks, prefetched.

    `members` restricts it to some of the source's samples (the validation split holds some
    back); None: all of them.
    """

    members: np.ndarray | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def _subset_len(self, total: int) -> int:
        return total if self.members is None else len(self.members)

    def view_for_epoch(self, epoch: int) -> int:
        raise NotImplementedError

    def batches_per_epoch(self, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
        return batches_per_epoch(len(self), batch_size, world, drop_last)

    def load(self, indices: np.ndarray, view: int) -> Batch:
        raise NotImplementedError

    def epoch(
        self,
        epoch: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        finish: Callable[[Batch], Batch] | None = None,
    ) -> Iterator[Batch]:
        """The batches of one epoch, prepared one ahead in a background thread.

        `finish` runs on each batch in that thread too (distill pins CUDA batches there, so
        the copy to the GPU overlaps the step instead of following it).
        """
        order = epoch_order(len(self), seed, epoch) if shuffle else np.arange(len(self))
        if self.members is not None:
            order = self.members[order]
        order = rank_slice(order, rank, world)
        # A last batch of a handful of samples gives BatchNorm noisy statistics: drop_last
        # drops it (the count is the one schedules are sized by).
        count = batches_per_epoch(len(order), batch_size, drop_last=drop_last)
        chunks = [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]
        if not chunks:
            return
        view = self.view_for_epoch(epoch)

        def prepare(indices: np.ndarray) -> Batch:
            batch = self.load(indices, view)
            return finish(batch) if finish is not None else batch

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(prepare, chunks[0])
            for i in range(len(chunks)):
                batch = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(prepare, chunks[i + 1])
                yield batch


class CachedBatches(_Batches):
    """Iterates over a cache section in batches of exactly what the teacher saw.

    Args:
        section: the cache section (`train` with its views, or `eval`).
        source: the data the cache was made from (checked by fingerprint by the caller).
        teacher_keys: the teacher arrays to load (the objective's `teacher_keys`: `logits`,
            top-k arrays, feature names; see `Manifest.arrays`), and nothing else.
        members: the section's sample indices to iterate over (None: all).
        clean: give the samples as they are, without the view's augmentation (the teacher
            arrays are still those of the view): what a deployed model sees.
    """

    def __init__(
        self,
        section: CacheSection,
        source: Source,
        teacher_keys: tuple[str, ...] = (SCORES,),
        members: np.ndarray | None = None,
        clean: bool = False,
    ) -> None:
        self.section = section
        self.source = source
        self.spec = section.cache.input_spec
        self.teacher_keys = tuple(teacher_keys)
        self.members = members
        self.clean = clean

    def __len__(self) -> int:
        return self._subset_len(self.section.n)

    def view_for_epoch(self, epoch: int) -> int:
        return epoch % self.section.views

    def load(self, indices: np.ndarray, view: int) -> Batch:
        """One batch for these sample indices and this cached view."""
        indices = np.asarray(indices, dtype=np.int64)
        # Sorted reads are sequential on disk; the batch keeps the shuffled order.
        order = np.argsort(indices, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        sorted_idx = indices[order]
        if self.clean:
            x = self.spec.apply(self.source.read(sorted_idx)[0])[inverse]
        else:
            x = self.section.model_input(self.source, sorted_idx, view)[inverse]
        arrays = self.section.teacher_arrays(cached_keys(self.teacher_keys), sorted_idx, view)
        teacher = {name: values[inverse] for name, values in arrays.items()}
        if SAMPLE_INDEX in self.teacher_keys:
            teacher[SAMPLE_INDEX] = indices
        mixing = None if self.clean else self.section.mixing(sorted_idx, view)
        if mixing is not None:
            teacher[MIX_LABEL], teacher[MIX_LAMBDA] = (m[inverse] for m in mixing)
        labels = self.section.labels(sorted_idx)[inverse]
        return Batch(x=x, labels=labels, teacher=teacher, indices=indices)


class JoinedBatches(_Batches):
    """Several caches' batches as one data set: the first (labeled) one's members, then every
    sample of each further cache, which trains without its labels (UNLABELED), on the
    teacher's targets alone. Each epoch is shuffled over all of them together; each part
    reads its own view of the epoch (its `epoch mod K`).

    Sample i of the joined set is the labeled cache's i for i < its size, then the next
    cache's i - size, and so on: `indices` (and a CRD memory) use these joined numbers.
    """

    def __init__(self, parts: list[CachedBatches]) -> None:
        self.parts = parts
        self.sizes = np.array([p.section.n for p in parts])
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        first = parts[0].members if parts[0].members is not None else np.arange(self.sizes[0])
        rest = [off + np.arange(n) for off, n in zip(self.offsets[1:], self.sizes[1:], strict=True)]
        self.members = np.concatenate([first, *rest]).astype(np.int64)
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.members)

    @property
    def total(self) -> int:
        """The size of the joined index space (the labeled cache's held-back samples too)."""
        return int(self.sizes.sum())

    def view_for_epoch(self, epoch: int) -> int:
        return self.parts[0].view_for_epoch(epoch)

    def epoch(self, epoch: int, *args, **kwargs) -> Iterator[Batch]:
        self._epoch = epoch  # each part's view of this epoch, for `load`
        return super().epoch(epoch, *args, **kwargs)

    def load(self, indices: np.ndarray, view: int) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        part_of = np.searchsorted(self.offsets, indices, side="right") - 1
        loaded = []
        for p, part in enumerate(self.parts):
            rows = np.flatnonzero(part_of == p)
            if len(rows):
                local = indices[rows] - self.offsets[p]
                own_view = view if p == 0 else part.view_for_epoch(self._epoch)
                loaded.append((rows, part.load(local, own_view), p))
        order = np.argsort(np.concatenate([rows for rows, _, _ in loaded]), kind="stable")
        x = np.concatenate([b.x for _, b, _ in loaded])[order]
        labels = np.concatenate(
            [b.labels if p == 0 else np.full(len(b.labels), UNLABELED) for _, b, p in loaded]
        )[order]
        keys = dict.fromkeys(k for _, b, _ in loaded for k in b.teacher)
        teacher = {
            key: np.concatenate([_teacher_part(b, key, p) for _, b, p in loaded])[order]
            for key in keys
        }
        if SAMPLE_INDEX in teacher:  # the joined numbers, not each cache's own
            teacher[SAMPLE_INDEX] = indices
        return Batch(x=x, labels=labels, teacher=teacher, indices=indices)


def _teacher_part(batch: Batch, key: str, part: int) -> np.ndarray:
    """One part's rows of a teacher array for the joined batch; a part of unmixed views
    mixes with itself (λ 1), and the unlabeled parts' partner labels are hidden too."""
    n = len(batch.labels)
    if key == MIX_LAMBDA and key not in batch.teacher:
        return np.ones(n, np.float32)
    if key == MIX_LABEL and (key not in batch.teacher or part > 0):
        return np.full(n, UNLABELED, np.int64)
    values = batch.teacher[key]
    return values.astype(_wide(values))


def _wide(values: np.ndarray) -> np.dtype:
    """float32 for floating teacher arrays (caches may store float16 or float32), else as is."""
    return np.dtype(np.float32) if values.dtype.kind == "f" else values.dtype


class OnlineBatches(_Batches):
    """The online-KD baseline: a fresh augmented view every epoch (view = epoch, with the
    cache's augmentation policy), the teacher run live on each batch.

    `teacher` maps a batch of model input to teacher scores; by default the cache's teacher
    runs through onnxruntime with the passes it needed when cached.
    """

    def __init__(
        self, cache: CacheReader, source: Source, teacher=None, members: np.ndarray | None = None
    ) -> None:
        self.source = source
        self.members = members
        self.spec = cache.input_spec
        self.augmentation = cache.section("train").augmentation
        self.from_probs = cache.manifest.targets.teacher_output_kind == "probs"
        self.teacher = teacher or _onnx_teacher(cache)

    def __len__(self) -> int:
        return self._subset_len(len(self.source))

    def view_for_epoch(self, epoch: int) -> int:
        return epoch

    def load(self, indices: np.ndarray, view: int) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        augmented, _, labels = read_view(self.source, self.augmentation, indices, view)
        x = self.spec.apply(augmented)
        scores = np.asarray(self.teacher(x), dtype=np.float32)
        if self.from_probs:
            scores = np.log(np.maximum(scores, np.float32(1e-30)))
        return Batch(x=x, labels=labels, teacher={"logits": scores}, indices=indices)


def _onnx_teacher(cache: CacheReader):
    from pathlib import Path

    from onnxkd.errors import CacheError
    from onnxkd.teacher.model import load_teacher
    from onnxkd.teacher.runner import TeacherRunner

    info = cache.manifest.teacher
    path = Path(info.path)
    if not path.exists():
        raise CacheError(f"online KD needs the cache's teacher at {path}, which is gone")
    teacher = load_teacher(path, info.output_used)
    if teacher.sha256 != info.sha256:
        raise CacheError(f"the teacher at {path} changed since it was cached (sha256 differs)")
    runner = TeacherRunner(teacher, cache.manifest.created_by.ep)
    return lambda x: runner.run(x)[teacher.output]
