"""The on-device stage's settings and the artifacts folder's layout, shared by both environments.

This module imports neither torch nor onnxruntime: the main environment and the
onnxruntime-training environment both read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from onnxkd.ondevice.errors import OnDeviceError
from onnxkd.ondevice.manifest import FORMAT, VERSION, ArtifactsManifest
from onnxkd.workspace import DEFAULT_WORKDIR

__all__ = ["FORMAT", "VERSION"]  # the artifacts' format, defined with their manifest
MANIFEST = "ondevice.json"
BASE_MODEL = "base_model.onnx"  # the student as the artifacts were built from it
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
REQUIRED = (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT)

# Names of the inputs the loss block adds to the student's graph.
LABELS_INPUT = "labels"
TEACHER_INPUT = "teacher_scores"
LOSS_OUTPUT = "kd_loss"

# onnxruntime-training 1.19.2, the last release, reads IR <= 10 and opsets <= 21. The loss block
# uses ReduceSum with axes as an input, which needs opset 13.
MAX_IR = 10
MAX_OPSET = 21
MIN_OPSET = 13

# A training run's folder.
RUN_CONFIG = "config.json"
# Settings a resumed run must share with the run it continues; epochs may grow.
RESUME_KEYS = ("artifacts_id", "cache_key", "batch_size", "lr", "schedule", "seed")

OPTIMIZERS = ("adamw", "sgd")
# For fine-tuning a trained student, the usual case on a device. The exported student has its
# BatchNorm folded into the convolutions, so nothing renormalizes the activations: at AdamW
# 2e-3 a distilled MobileNetV2 fell from 99.16% to 10.86% on digits within one epoch; at 1e-4
# it kept 99.16%. A weak student learns faster with more (--lr 5e-3 in the tests).
DEFAULT_LR = {"adamw": 1e-4, "sgd": 0.005}
SCHEDULES = ("cosine", "constant")


def _to_dict(obj) -> dict:
    d = asdict(obj)
    for key, value in d.items():
        if isinstance(value, Path):
            d[key] = str(value)
        elif isinstance(value, tuple):
            d[key] = list(value)
    return d


def _from_dict(cls, d: dict, paths: tuple[str, ...], tuples: tuple[str, ...] = ()):
    known = {f.name for f in fields(cls)}
    extra = set(d) - known
    if extra:
        raise OnDeviceError(f"unknown settings {sorted(extra)}; valid: {sorted(known)}")
    kw = dict(d)
    for key in paths:
        if kw.get(key) is not None:
            kw[key] = Path(kw[key])
    for key in tuples:
        if key in kw:
            kw[key] = tuple(kw[key])
    return cls(**kw)


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise OnDeviceError(message)


@dataclass(frozen=True)
class ArtifactsConfig:
    """What `onnxkd ondevice artifacts` needs; defaults are the CLI's.

    `freeze_prefix` freezes the first N parameters in graph order (the stem first) and
    `freeze` the parameters whose ONNX or module name starts with one of the given prefixes;
    every other parameter is trained.
    """

    student: Path | None = None  # None: the workspace's latest student
    out: Path | None = None  # None: an `ondevice` folder beside the student
    workdir: Path = DEFAULT_WORKDIR
    alpha: float = 0.9
    temperature: float = 4.0
    optimizer: str = "adamw"
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    freeze_prefix: int = 0
    freeze: tuple[str, ...] = ()
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check(
            [
                (0.0 <= self.alpha <= 1.0, f"--alpha must be in [0, 1], got {self.alpha}"),
                (self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
                (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}"),
                (self.weight_decay >= 0, "--weight-decay must be >= 0"),
                (
                    self.optimizer == "adamw" or self.weight_decay == 0,
                    "--weight-decay needs --optimizer adamw (onnxruntime's SGD has none)",
                ),
                (self.freeze_prefix >= 0, "--freeze-prefix must be >= 0"),
            ]
        )

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArtifactsConfig:
        return _from_dict(cls, d, ("student", "out", "workdir"), ("freeze",))


@dataclass(frozen=True)
class TrainConfig:
    """What `onnxkd ondevice train` needs; defaults are the CLI's.

    A rerun with the same `out` continues after the last finished epoch; `epochs` may be raised
    to train longer (the cosine schedule then stretches over the new count).
    """

    artifacts: Path
    cache: Path | None = None  # None: the workspace's latest cache
    data: str | None = None  # the cache's data, if it moved (checked by fingerprint)
    out: Path | None = None  # None: ARTIFACTS/run
    workdir: Path = DEFAULT_WORKDIR
    epochs: int = 5
    batch_size: int = 64
    lr: float | None = None  # None: 1e-4 for AdamW artifacts, 0.005 for SGD
    schedule: str = "cosine"
    seed: int = 0
    threads: int | None = None
    restart: bool = False

    def __post_init__(self) -> None:
        _check(
            [
                (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
                (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
                (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
                (self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}"),
                (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            ]
        )

    @property
    def run_dir(self) -> Path:
        return self.out if self.out is not None else self.artifacts / "run"

    def resolved_lr(self, optimizer: str) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[optimizer]

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _from_dict(cls, d, ("artifacts", "cache", "out", "workdir"))


def read_artifacts(path: Path) -> ArtifactsManifest:
    """The manifest of an artifacts folder, after checking that every file is there."""
    path = Path(path)
    hint = "make them with `onnxkd ondevice artifacts STUDENT.onnx`"
    if not path.is_dir():
        raise OnDeviceError(f"artifacts folder {path} does not exist; {hint}")
    if not (path / MANIFEST).is_file():
        raise OnDeviceError(f"{path} holds no onnxkd on-device artifacts (no {MANIFEST}); {hint}")
    try:
        raw = json.loads((path / MANIFEST).read_text())
    except ValueError as e:
        raise OnDeviceError(f"{path / MANIFEST} is corrupt ({e}); {hint} --overwrite") from e
    if not isinstance(raw, dict):
        raise OnDeviceError(f"{path / MANIFEST} is corrupt (not an object); {hint} --overwrite")
    try:
        manifest = ArtifactsManifest.from_dict(raw, where=str(path))
    except OnDeviceError as e:
        raise OnDeviceError(f"{e}; {hint} --overwrite") from e
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        raise OnDeviceError(
            f"artifacts folder {path} is missing {', '.join(missing)}; regenerate it with "
            f"`onnxkd ondevice artifacts {manifest.student.path} -o {path} --overwrite`"
        )
    return manifest


def check_cache_fits(manifest: ArtifactsManifest, cache) -> None:
    """Refuse a cache (a `CacheReader`) whose classes or preprocessing differ from the student's."""
    student = manifest.student
    if cache.num_classes != manifest.num_classes:
        raise OnDeviceError(
            f"the cache {cache.path} has {cache.num_classes} classes but the student "
            f"{student.file_name} outputs {manifest.num_classes}; use a cache made "
            "for this student's task"
        )
    if student.input_spec is not None and student.input_spec != cache.input_spec:
        raise OnDeviceError(
            f"the student {student.file_name} expects input "
            f"{student.input_spec.to_json()} but the cache {cache.path} was made with "
            f"{cache.input_spec.to_json()}: they must be the same preprocessing"
        )
    shape = list(student.input_shape[1:])
    expected = list(cache.input_spec.input_shape)
    if all(isinstance(d, int) for d in shape) and shape != expected:
        raise OnDeviceError(
            f"the student takes input {shape} per sample but the cache's input spec gives "
            f"{expected}; use a cache made for this student"
        )
    if "eval" not in cache.sections:
        raise OnDeviceError(
            f"cache {cache.path} has no eval section to measure accuracy on; recache without "
            "--no-eval"
        )


def run_settings(manifest: ArtifactsManifest, cache_key: str, cfg: TrainConfig) -> dict:
    """What a run's checkpoint depends on, besides its epoch count."""
    return {
        "artifacts_id": manifest.id,
        "cache_key": cache_key,
        "batch_size": cfg.batch_size,
        "lr": cfg.resolved_lr(manifest.optimizer),
        "schedule": cfg.schedule,
        "seed": cfg.seed,
    }


def check_resumable(cfg: TrainConfig, settings: dict) -> None:
    """Refuse to continue a run folder whose checkpoint was made with other settings."""
    run = cfg.run_dir
    if cfg.restart or not (run / CHECKPOINT).exists() or not (run / RUN_CONFIG).exists():
        return
    saved = json.loads((run / RUN_CONFIG).read_text()).get("settings", {})
    changed = [k for k in RESUME_KEYS if saved.get(k) != settings[k]]
    if changed:
        diff = ", ".join(f"{k} {saved.get(k)!r} -> {settings[k]!r}" for k in changed)
        raise OnDeviceError(
            f"{run} holds a run with other settings ({diff}); rerun with its settings to "
            "resume it, pass --restart to start it over, or -o another folder"
        )
