"""Semi-supervised KD: caches whose samples train on the teacher's targets alone.

`distill --cache LABELED --unlabeled MORE` trains on LABELED's training samples with their
labels and on every sample of MORE without them (KD's α is 1 on those rows); the validation
split is carved from LABELED alone and the test split is LABELED's, so the figures mean what
they mean without --unlabeled. Each further cache must come from the same teacher with the
same input spec: the student learns one mapping from one kind of input.
"""

from __future__ import annotations

from pathlib import Path

from onnxkd.cache.reader import CacheReader
from onnxkd.distill.config import DistillConfig, DistillConfigError
from onnxkd.distill.data import CachedBatches, cached_keys
from onnxkd.distill.losses import CompositeLoss
from onnxkd.errors import CacheError


def check_labeled(cache: CacheReader, cache_path: Path) -> None:
    """The main cache must hold labels: validation and test are scored on them."""
    if not cache.section("train").labeled:
        raise DistillConfigError(
            f"cache {cache_path} holds no labels: pass it as --unlabeled beside a --cache of "
            "labeled data, whose validation and test splits score the student"
        )


def open_caches(cfg: DistillConfig, cache: CacheReader) -> list[CacheReader]:
    """The --unlabeled caches, each checked against the labeled one."""
    readers = []
    main = cache.manifest
    for path in cfg.unlabeled:
        other = CacheReader(path)
        theirs = other.manifest
        if theirs.key == main.key:
            raise DistillConfigError(f"--unlabeled {path} is the --cache itself; pass another")
        problems = []
        if theirs.teacher.sha256 != main.teacher.sha256:
            problems.append("another teacher (sha256 differs)")
        if theirs.targets.num_classes != main.targets.num_classes:
            problems.append(f"{theirs.targets.num_classes} classes, not {main.targets.num_classes}")
        if theirs.input_spec.to_dict() != main.input_spec.to_dict():
            problems.append("another input spec (the student would learn two preprocessings)")
        if problems:
            raise DistillConfigError(
                f"--unlabeled {path} does not match --cache {cfg.cache or 'latest'}: "
                f"{'; '.join(problems)}; cache that data with the same teacher and settings"
            )
        readers.append(other)
    return readers


def check_resumed(record, readers: list[CacheReader], run_dir: Path) -> None:
    """A resumed run continues on the --unlabeled caches it started with."""
    keys = tuple(r.key for r in readers)
    if keys != tuple(record.unlabeled_keys):
        raise CacheError(
            f"the --unlabeled caches are not the ones {run_dir} trained on (their keys differ "
            "from config.json's); start a new run with --overwrite or a new -o"
        )


def check_objective(objective: CompositeLoss) -> None:
    """Refuse losses that need a label on every sample (cross-entropy, DKD)."""
    needing = objective.lacking("takes_unlabeled")
    if needing:
        raise DistillConfigError(
            f"--unlabeled samples have no labels, and loss {', '.join(needing)} needs one on "
            "every sample; use --loss kd (α is 1 on the unlabeled samples) or kd_topk"
        )


def batches(
    readers: list[CacheReader], teacher_keys: tuple[str, ...], workers: int | None
) -> list[CachedBatches]:
    """One `CachedBatches` over every training sample of each --unlabeled cache."""
    parts = []
    for reader in readers:
        keys = cached_keys(teacher_keys)
        missing = reader.manifest.missing_arrays(keys, "the objective", str(reader.path))
        if missing:
            raise DistillConfigError(missing)
        source = reader.open_data("train", None, workers)
        parts.append(CachedBatches(reader.section("train"), source, teacher_keys))
    return parts
