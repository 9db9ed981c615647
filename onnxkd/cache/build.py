"""`cache_teacher`: run a teacher once over a data set (and replayable augmented views of it)
and store its soft targets in a resumable, memory-mapped cache."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from onnxkd import __version__
from onnxkd.cache.files import MANIFEST, PART_DONE, PENDING, part_dir, safe_name
from onnxkd.cache.manifest import (
    CreatedBy,
    Feature,
    Manifest,
    PartRecord,
    Section,
    Targets,
    TeacherInfo,
)
from onnxkd.cache.writer import PartJob, TargetLayout, describe_section, write_part
from onnxkd.data import values
from onnxkd.data.augment import RESIZED_CROP, Augmentation
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef, Source, is_labeled
from onnxkd.data.spec import (
    InputSpec,
    SpecOptions,
    describe_overrides,
    fit_source,
    resolve_input_spec,
)
from onnxkd.data.workers import check_workers
from onnxkd.errors import CacheError, DataError, MissingSplitError, TeacherError
from onnxkd.files import read_json, write_json_atomic
from onnxkd.interrupt import checkpoints
from onnxkd.teacher.model import load_teacher, numeric_kind, output_kind
from onnxkd.teacher.runner import TeacherRunner
from onnxkd.teacher.sanity import SanityReport, check_teacher_input
from onnxkd.workspace import DEFAULT_WORKDIR, Workspace

BIG_FEATURES = 1 << 30  # above 1 GiB of features, suggest pooling them
# Augmented views of images by default: distill trains 30 epochs, and replaying one view that
# often is known to teach less than no teacher at all.
DEFAULT_IMAGE_VIEWS = 10


@dataclass(frozen=True)
class CacheConfig:
    """Everything `cache-teacher` needs; defaults are the CLI's."""

    teacher: Path
    data: DataRef
    out: Path | None = None  # None: a folder in the workspace named after the inputs
    workdir: Path = DEFAULT_WORKDIR
    eval_split: bool = True  # also cache the other split (one clean view) for validation
    # None: resolved against the teacher by `with_view_defaults`.
    views: int | None = None  # DEFAULT_IMAGE_VIEWS for a teacher of images, else 1
    augment: str | None = None  # none for one view, crop for more
    pad: int | None = None  # None: an eighth of the image side
    seed: int = 0
    # MixUp/CutMix views: the teacher sees each mixed image (see Augmentation's mix fields)
    mix: str = "none"
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    topk: int | None = None  # None: store every class
    dtype: str = "float16"
    teacher_output: str | None = None
    features: tuple[str, ...] = ()
    feature_pool: str = "none"
    spec: SpecOptions = field(default_factory=SpecOptions)
    ep: str = "cpu"
    threads: int | None = None
    batch_size: int = 256
    shard: tuple[int, int] | None = None  # None: the launcher's rank (torchrun, Slurm), or (0, 1)
    overwrite: bool = False
    accept_low_accuracy: bool = False  # cache even when the teacher seems fed the wrong input
    workers: int | None = None  # photo decoding threads; None: one per core (at most 8)
    skip_bad: bool = False  # leave out images that do not decode (counted in the manifest)
    # Rehash every photo instead of trusting the workspace's data record where a file's stat
    # is unchanged (onnxkd.data.records)
    verify_data: bool = False

    def __post_init__(self) -> None:
        if self.views is not None and self.views < 1:
            raise CacheError(f"--views must be at least 1, got {self.views}")
        # Defaults that depend on the launcher, resolved once here so that the CLI, recipes
        # and library callers get the same (views and augment depend on the teacher too).
        if self.shard is None:
            from onnxkd.cache.shards import launcher_shard

            object.__setattr__(self, "shard", launcher_shard())
        if self.batch_size < 1:
            raise CacheError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in ("float16", "float32"):
            raise CacheError(f"--dtype must be float16 or float32, got {self.dtype}")
        if self.topk is not None and self.topk < 1:
            raise CacheError(f"--topk must be at least 1, got {self.topk}")
        if self.feature_pool not in ("none", "avg"):
            raise CacheError(f"--feature-pool must be none or avg, got {self.feature_pool}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise CacheError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
        check_workers(self.workers)


def with_view_defaults(cfg: CacheConfig, spec: InputSpec) -> CacheConfig:
    """`cfg` with `views` and `augment` set where they were left to the default.

    A teacher of images gets DEFAULT_IMAGE_VIEWS crop views (random-resized-crop for photos
    decoded through a photo transform) unless augmentation is turned off;
    a teacher of feature vectors (flattened images included) one clean view, unless an
    augmentation is asked for. More than one view means crop, unless another policy is asked.
    """
    views = cfg.views
    if views is None:
        augmented = cfg.augment != "none" if cfg.augment is not None else spec.is_image
        views = DEFAULT_IMAGE_VIEWS if augmented else 1
    # Photos get the ImageNet recipe's views: boxes cut from the full photo (FKD's caching).
    augmented_policy = RESIZED_CROP if spec.photo_transform is not None else "crop"
    augment = cfg.augment or ("none" if views == 1 else augmented_policy)
    return replace(cfg, views=views, augment=augment)


@dataclass
class CacheResult:
    path: Path
    complete: bool
    resumed: bool
    manifest: Manifest  # the draft (no parts yet) while other shards are missing
    seconds: float


class _Plan:
    """The resolved inputs of a cache run: teacher, sources, spec, layout and the run key."""

    def __init__(self, cfg: CacheConfig, log: Callable[[str], None], source: Source | None) -> None:
        # Settings resolved against the teacher and the data; use this, not the argument.
        self.cfg: CacheConfig = cfg
        self.teacher = load_teacher(cfg.teacher, cfg.teacher_output, list(cfg.features))
        self.sources: dict[str, Source] = {"train": source or open_source(cfg.data)}
        if cfg.eval_split and source is None:
            other = "test" if cfg.data.split == "train" else "train"
            # A split that is not there at all is only noted (nothing to validate on); one that
            # is there but truncated or malformed is refused like any broken input.
            try:
                self.sources["eval"] = open_source(cfg.data.with_split(other))
            except MissingSplitError as e:
                log(f"note: no {other} split to cache for validation ({e})")
        # The record first: resolving the spec reads every photo's header, which the record
        # keeps (read before it, they would be probed again on every rerun).
        for src in self.sources.values():
            _use_record(src, cfg, log)
        self.spec, self.spec_origin, self.spec_overrides = resolve_input_spec(
            self.teacher, self.sources["train"], cfg.spec
        )
        for src in self.sources.values():
            fit_source(src, self.spec, cfg.workers)
        if cfg.skip_bad:
            self.sources = {
                n: _skip_bad(src, self.spec, cfg, log) for n, src in self.sources.items()
            }
        for note in getattr(self.teacher.preprocessing, "notes", ()):
            log(f"note: {note}")
        if self.spec_overrides:
            log(
                "note: the options given override the teacher's metadata spec: "
                f"{describe_overrides(self.spec_overrides)}"
            )
        # Views the user chose are theirs; default views the teacher scores badly on are warned of.
        self.augment_chosen = cfg.augment is not None
        self.cfg = cfg = with_view_defaults(cfg, self.spec)
        # In-memory data is checked whole now, before anything is written; the rest as it
        # streams. NaN samples must not reach the batching probe below either.
        for name, src in self.sources.items():
            values.check_source_samples(src, describe_section(name, src))
        train = self.sources["train"]
        if self.spec.flatten is not None:
            h, w, c = self.spec.flatten
            log(
                f"note: the teacher takes {self.spec.channels} flat features and the data holds "
                f"{h}x{w}x{c} images: each is flattened row-major (H, W, C), the order of "
                "scikit-learn's load_digits().data (recorded as `flatten` in the input spec)"
            )
        # Augmentation works on raw images, so flattened images can be augmented too.
        if cfg.augment != "none" and not self.spec.raw_is_image:
            raise DataError(
                f"--augment {cfg.augment} needs images; this data holds feature vectors"
            )
        if cfg.augment == RESIZED_CROP and self.spec.photo_transform is None:
            raise DataError(
                f"--augment {RESIZED_CROP} cuts views from photos of any size; this data is "
                "read at one fixed size (use crop, crop-flip or strong)"
            )
        pad = (
            cfg.pad
            if cfg.pad is not None
            else (Augmentation.default_pad(self.spec.raw_size) if self.spec.raw_is_image else 0)
        )
        pad = 0 if cfg.augment in ("none", RESIZED_CROP) else pad
        self.augmentations = {
            "train": Augmentation(
                cfg.augment,
                pad,
                cfg.seed,
                mix=cfg.mix,
                mixup_alpha=cfg.mixup_alpha,
                cutmix_alpha=cfg.cutmix_alpha,
                mix_prob=cfg.mix_prob,
                switch_prob=cfg.mix_switch_prob,
            ),
            "eval": Augmentation("none"),
        }
        if cfg.views > 1 and cfg.augment == "none":
            log(f"note: --views {cfg.views} with --augment none stores {cfg.views} equal views")
        self.runner = TeacherRunner(self.teacher, cfg.ep, cfg.threads)
        probe_raw, _ = train.read(np.arange(min(len(train), 16)))
        probe = self.spec.apply(probe_raw)
        if len(probe) < 2:
            raise DataError(f"{cfg.data.data}: the split has {len(train)} sample(s); need 2+")
        self.runner.prepare(probe)
        outputs = self.runner.run(probe)
        self.layout = self._layout(cfg, outputs)
        values.check_outputs(
            self.layout.output, outputs[self.layout.output], 0, describe_section("train", train)
        )
        self.input_checks = self._check_input(cfg, log)
        self.fingerprints = {name: src.fingerprint() for name, src in self.sources.items()}
        self.key_material = {
            "teacher_sha256": self.teacher.sha256,
            "teacher_output": self.teacher.output,
            "data": {
                name: {"ref": src.ref.to_dict(), "fingerprint": self.fingerprints[name]}
                for name, src in self.sources.items()
            },
            "input_spec": self.spec.to_dict(),
            "views": cfg.views,
            "augmentation": self.augmentations["train"].to_dict(),
            "topk": cfg.topk,
            # Top-k caches keep the label's entry (label_value.npy) since this format; an older
            # unfinished one must not be resumed into it.
            **({"topk_keeps_label": True} if cfg.topk is not None else {}),
            "dtype": cfg.dtype,
            "features": list(cfg.features),
            "feature_pool": cfg.feature_pool,
            "ep": cfg.ep,
            "batch_size": cfg.batch_size,
            "shards": cfg.shard[1],
        }
        blob = json.dumps(self.key_material, sort_keys=True).encode()
        self.key = hashlib.sha256(blob).hexdigest()

    def _check_input(self, cfg: CacheConfig, log: Callable[[str], None]) -> SanityReport:
        """Labels of in-memory data (the rest stream), then the teacher on a labeled sample:
        both before anything is written, so a refusal leaves no cache behind."""
        for name, src in self.sources.items():
            values.check_source_labels(src, self.layout.num_classes, describe_section(name, src))
        return check_teacher_input(
            self.sources["train"],
            self.spec,
            self.spec_origin,
            self.runner,
            self.layout.output,
            self.layout.num_classes,
            self.augmentations["train"],
            warn_views=not self.augment_chosen,
            recorded_accuracy=self.teacher.recorded_accuracy,
            recorded_by=self.teacher.accuracy_recorded_by or "its metadata",
            accept=cfg.accept_low_accuracy,
            batch_size=cfg.batch_size,
            log=log,
        )

    def _layout(self, cfg: CacheConfig, outputs: dict[str, np.ndarray]) -> TargetLayout:
        scores = outputs[self.teacher.output]
        if scores.ndim != 2:
            raise TeacherError(
                f"teacher output {self.teacher.output!r} has shape {list(scores.shape)} for a "
                "batch; expected [batch, classes] (pass --teacher-output to pick another)"
            )
        num_classes = scores.shape[1]
        names = self.spec.label_names
        if names and len(names) != num_classes:
            raise TeacherError(
                f"teacher output {self.teacher.output!r} has {num_classes} classes, the data "
                f"{len(names)} ({', '.join(names[:12])})"
            )
        if cfg.topk is not None and cfg.topk >= num_classes:
            raise CacheError(
                f"--topk {cfg.topk} keeps every class of a {num_classes}-class teacher; "
                "drop --topk to store all of them"
            )
        self.source_kind = output_kind(self.teacher.model, self.teacher.output)
        self.kind_detected_by = "graph (final op)"
        if self.source_kind is None:
            self.source_kind = numeric_kind(scores)
            self.kind_detected_by = "values"
        features = {}
        for name in cfg.features:
            value = outputs[name]
            if value.ndim < 2 or value.shape[0] != len(scores):
                raise TeacherError(f"feature {name!r} has shape {list(value.shape)}, no batch axis")
            pooled = (
                value.mean(axis=tuple(range(2, value.ndim)))
                if (cfg.feature_pool == "avg" and value.ndim > 2)
                else value
            )
            features[name] = tuple(int(d) for d in pooled.shape[1:])
        return TargetLayout(
            output=self.teacher.output,
            kind="logits" if self.source_kind == "logits" else "log_probs",
            from_probs=self.source_kind == "probs",
            num_classes=num_classes,
            topk=cfg.topk,
            dtype=cfg.dtype,
            features=features,
            feature_pool=cfg.feature_pool,
        )

    def views(self, section: str, cfg: CacheConfig) -> int:
        return cfg.views if section == "train" else 1

    def data_changes(self) -> str:
        return _data_changes(self.sources)

    def bytes_needed(self, cfg: CacheConfig) -> tuple[int, int]:
        """(all arrays, features alone) in bytes, over every section and shard."""
        total = features = 0
        for section, src in self.sources.items():
            arrays = self.layout.arrays(len(src), self.views(section, cfg))
            for name, (shape, dtype) in arrays.items():
                size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                total += size
                features += size if name.startswith("features/") else 0
        return total, features


def _data_changes(sources: dict[str, Source]) -> str:
    """What the data records found changed in the sources' files, in one line ("" if none)."""
    parts = []
    for name, src in sources.items():
        changes = getattr(src, "data_changes", None)
        if changes:
            parts.append(f"{name}: {changes.describe()}")
    return "; ".join(parts)


def _use_record(source: Source, cfg: CacheConfig, log: Callable[[str], None]) -> None:
    """Photo sources keep their file facts in the workspace's data record; what changed since
    it was written is named (the fingerprint then differs, and a cache made before says so)."""
    from onnxkd.data.records import use_data_record

    changes = use_data_record(source, cfg.workdir, verify=cfg.verify_data, workers=cfg.workers)
    if changes:
        log(
            f"note: {source.ref.split} data changed since this workspace last read it: "
            f"{changes.describe()}"
        )


def _skip_bad(
    source: Source, spec: InputSpec, cfg: CacheConfig, log: Callable[[str], None]
) -> Source:
    """`source` without the images that do not decode (each fully decoded once per workspace,
    the verdicts kept in its data record), reopened so that its ref records them and every
    later stage leaves them out too."""
    if not hasattr(source, "paths"):
        return source
    from onnxkd.data.loaders.image_folder import scan_bad_images

    bad = scan_bad_images(source)
    if not bad:
        return source
    shown = "; ".join(f"{path} ({why})" for path, why in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    log(f"note: --skip-bad leaves out {len(bad)} image(s) of {source.ref.split}: {shown}{more}")
    ref = replace(source.ref, exclude=tuple(sorted({*source.ref.exclude, *(p for p, _ in bad)})))
    reopened = open_source(ref)
    fit_source(reopened, spec, source.workers)
    _use_record(reopened, cfg, log)
    return reopened


def _default_out(cfg: CacheConfig, plan: _Plan) -> Path:
    data_name = Path(cfg.data.data).stem or "data"
    return cfg.workdir / "caches" / f"{cfg.teacher.stem}-{data_name}-{plan.key[:10]}"


def _claim(out: Path, key: str, overwrite: bool, material: dict, data_changes: str = "") -> str:
    """'complete', 'resume' or 'new'; refuses to clobber anything that is not ours to replace."""
    for name, state in ((MANIFEST, "complete"), (PENDING, "resume")):
        path = out / name
        if not path.exists():
            continue
        found = read_json(path)
        if found.get("key") == key:
            return state
        if overwrite:
            shutil.rmtree(out)
            return "new"
        differs = sorted(k for k in material if found.get("config", {}).get(k) != material[k])
        what = "a complete cache" if state == "complete" else "an unfinished cache"
        changed = f" (files {data_changes})" if data_changes and "data" in differs else ""
        raise CacheError(
            f"{out} holds {what} made with other inputs (differs in: {', '.join(differs)})"
            f"{changed}; pass --overwrite to replace it, or -o another folder"
        )
    if out.exists() and any(out.iterdir()):
        raise CacheError(f"{out} exists and is not an onnxkd cache; refusing to write into it")
    return "new"


def _jobs(cfg: CacheConfig, plan: _Plan, out: Path) -> list[PartJob]:
    shard, shards = cfg.shard
    jobs = []
    for section, src in plan.sources.items():
        bounds = np.linspace(0, len(src), shards + 1).astype(int)
        for i in range(shards):
            jobs.append(
                PartJob(
                    root=out,
                    dirname=part_dir(section, i, shards),
                    source=src,
                    start=int(bounds[i]),
                    stop=int(bounds[i + 1]),
                    views=plan.views(section, cfg),
                    augmentation=plan.augmentations[section],
                    batch_size=cfg.batch_size,
                )
            )
    return jobs


def cache_teacher(
    cfg: CacheConfig,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
    source: Source | None = None,
) -> CacheResult:
    """Cache a teacher's soft targets over a data set.

    Args:
        cfg: what to cache and where.
        log: receives one-line notes (plan, sizes, decisions).
        progress: given (total, done) sample-views, returns a callback taking increments.
        source: a data source of your own (any object with the `Source` interface) to cache
            instead of opening `cfg.data`; no eval section is cached then.

    Returns:
        Where the cache is and its manifest; `complete` is False when other shards are missing.

    Example:
        >>> cfg = CacheConfig(Path("models/digits_cnn.onnx"), DataRef("digits"))  # doctest: +SKIP
        >>> cache_teacher(cfg).manifest.section("train").teacher_accuracy  # doctest: +SKIP
    """
    started = time.perf_counter()
    plan = _Plan(cfg, log, source)
    cfg = plan.cfg
    out = Path(cfg.out) if cfg.out else _default_out(cfg, plan)
    state = _claim(out, plan.key, cfg.overwrite, plan.key_material, plan.data_changes())
    if state == "complete":
        log(f"cache {out} is already complete for these inputs; nothing to do")
        manifest = Manifest.from_dict(read_json(out / MANIFEST), where=str(out))
        return CacheResult(out, True, False, manifest, 0.0)
    total_bytes, feature_bytes = plan.bytes_needed(cfg)
    if feature_bytes:
        hint = (
            " (--feature-pool avg keeps one value per channel)"
            if (feature_bytes > BIG_FEATURES and cfg.feature_pool == "none")
            else ""
        )
        log(f"features will take {feature_bytes / 2**20:.1f} MiB on disk{hint}")
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if state == "new" and total_bytes > free:
        raise CacheError(
            f"the cache needs {total_bytes / 2**30:.2f} GiB and {out} has "
            f"{free / 2**30:.2f} GiB free; use --topk, --feature-pool avg or another -o"
        )
    draft = _draft_manifest(cfg, plan)
    if state == "new":
        write_json_atomic(out / PENDING, draft.to_dict())
    log(_plan_line(cfg, plan, out, total_bytes, resumed=state == "resume"))
    jobs = [
        j
        for j in _jobs(cfg, plan, out)
        if j.dirname.endswith(f"part-{cfg.shard[0]}-of-{cfg.shard[1]}")
    ]
    total = sum(j.n * j.views for j in jobs)
    done = sum(min(j.chunks_done() * j.batch_size, j.n) * j.views for j in jobs)
    done = total if all(j.is_done() for j in jobs) else done
    tick = progress(total, done) if progress else (lambda n: None)
    with checkpoints() as check:

        def on_chunk(n: int) -> None:  # a chunk's arrays and progress are on disk here
            tick(n)
            check()

        for job in jobs:
            write_part(job, plan.spec, plan.runner, plan.layout, on_chunk=on_chunk)
    manifest = finalize(out)
    seconds = time.perf_counter() - started
    if manifest is not None:
        Workspace(cfg.workdir).record(teacher=cfg.teacher, cache=out)
        return CacheResult(out, True, state == "resume", manifest, seconds)
    log(f"shard {cfg.shard[0]}/{cfg.shard[1]} done; the cache completes when every shard is")
    return CacheResult(out, False, state == "resume", draft, seconds)


def _plan_line(cfg: CacheConfig, plan: _Plan, out: Path, size: int, resumed: bool) -> str:
    parts = ", ".join(
        f"{name} {len(src)} x {plan.views(name, cfg)} view(s)" for name, src in plan.sources.items()
    )
    verb = "resuming" if resumed else "caching"
    return (
        f"{verb} {plan.teacher.path.name} -> {out} ({parts}; {plan.layout.num_classes} classes "
        f"as {plan.layout.kind}, {'top-' + str(cfg.topk) if cfg.topk else 'all'}, "
        f"{cfg.dtype}; {size / 2**20:.1f} MiB; batching: {plan.runner.batching})"
    )


def _draft_manifest(cfg: CacheConfig, plan: _Plan) -> Manifest:
    import onnxruntime as ort

    sections = {
        name: Section(
            name=name,
            n=len(src),
            views=plan.views(name, cfg),
            augmentation=plan.augmentations[name].to_dict(),
            data_ref=src.ref,
            split_info=src.split_info,
            fingerprint=plan.fingerprints[name],
            sample_shape=tuple(src.sample_shape),
            sample_dtype=str(src.dtype),
            labeled=is_labeled(src),
        )
        for name, src in plan.sources.items()
    }
    layout = plan.layout
    return Manifest(
        key=plan.key,
        config=plan.key_material,
        created_by=CreatedBy(
            onnxkd=__version__,
            onnxruntime=ort.__version__,
            ep=cfg.ep,
            providers=tuple(plan.runner.providers),
            threads=cfg.threads,
            batching=plan.runner.batching,
        ),
        teacher=TeacherInfo.from_dict(plan.teacher.describe()),
        input_spec=plan.spec,
        input_spec_origin=plan.spec_origin,
        targets=Targets(
            output=layout.output,
            kind=layout.kind,
            teacher_output_kind=plan.source_kind,
            detected_by=plan.kind_detected_by,
            storage="full" if layout.topk is None else "topk",
            k=layout.topk,
            dtype=layout.dtype,
            num_classes=layout.num_classes,
        ),
        features={
            name: Feature(
                name, f"features/{safe_name(name)}.npy", tuple(shape), layout.feature_pool
            )
            for name, shape in layout.features.items()
        },
        shards=cfg.shard[1],
        sections=sections,
        # Not part of the key: what the checks found and what overrode the teacher's spec.
        extra={
            "input_checks": plan.input_checks.to_dict(),
            "spec_overrides": {
                key: [_plain(old), _plain(new)] for key, (old, new) in plan.spec_overrides.items()
            },
        },
    )


def _plain(value):
    """A spec field's value as JSON holds it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def finalize(out: Path) -> Manifest | None:
    """Write `manifest.json` once every part of every shard is done; None while some are not.

    Safe to call from several shards at once: each writes the same manifest atomically.
    """
    if (out / MANIFEST).exists():
        return Manifest.from_dict(read_json(out / MANIFEST), where=str(out))
    pending = out / PENDING
    if not pending.exists():
        raise CacheError(f"{out} is not an onnxkd cache (no {MANIFEST} or {PENDING})")
    draft = Manifest.from_dict(read_json(pending), where=str(pending))
    parts: dict[str, list[PartRecord]] = {}
    for name in draft.sections:
        parts[name] = []
        for i in range(draft.shards):
            done = out / part_dir(name, i, draft.shards) / PART_DONE
            if not done.exists():
                return None
            parts[name].append(PartRecord.from_dict(read_json(done)))
    manifest = draft.completed(parts)
    write_json_atomic(out / MANIFEST, manifest.to_dict())
    # Another shard may have finalized at the same moment and removed it already.
    pending.unlink(missing_ok=True)
    return manifest
