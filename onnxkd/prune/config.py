"""The prune stage's settings and its target, parsed once into typed values."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from onnxkd.errors import OnnxkdError
from onnxkd.workspace import DEFAULT_WORKDIR

IMPORTANCES = ("l2", "l1", "bn")
TARGET_KINDS = ("params", "macs", "latency")
# Fine-tuning starts from trained weights: a fifth of a fresh run's learning rate.
FINETUNE_LR_SCALE = 0.2
DEFAULT_EPOCHS = 10


class PruneConfigError(OnnxkdError):
    """A prune setting or target is out of range."""


@dataclass(frozen=True)
class PruneTarget:
    """What the pruned student must reach: at most `value` of the unpruned student's
    parameters or MACs (a ratio in (0, 1)), or a measured onnxruntime batch-1 latency in ms."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> PruneTarget:
        """`params=0.3`, `macs=0.5` or `latency=1.2ms`."""
        m = re.fullmatch(r"\s*(\w+)\s*=\s*([0-9.eE+-]+)\s*(ms)?\s*", str(text))
        if not m or m.group(1) not in TARGET_KINDS:
            raise PruneConfigError(
                f"--target {text!r}: give params=RATIO, macs=RATIO (the share of the unpruned "
                "student's to keep, e.g. params=0.3) or latency=MS (batch-1 onnxruntime "
                "latency, e.g. latency=1.5ms)"
            )
        kind, unit = m.group(1), m.group(3)
        try:
            value = float(m.group(2))
        except ValueError:
            raise PruneConfigError(f"--target {text!r}: {m.group(2)!r} is not a number") from None
        if kind == "latency":
            if not value > 0:
                raise PruneConfigError(f"--target {text!r}: a latency must be > 0 ms")
        elif unit or not 0 < value < 1:
            raise PruneConfigError(
                f"--target {text!r}: a {kind} ratio is the share to keep, in (0, 1) exclusive"
            )
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}" + ("ms" if self.kind == "latency" else "")


@dataclass(frozen=True)
class PruneConfig:
    """Everything `onnxkd prune` needs; defaults are the CLI's.

    The student, cache, loss and its settings come from the distill run being pruned (`init`),
    so the fine-tuning distils from the same cached teacher targets it was trained on.
    """

    target: str = ""
    init: Path | None = None  # the finished distill run to prune; None: the workspace's latest
    steps: int = 1
    epochs: int = DEFAULT_EPOCHS  # KD fine-tuning epochs after each step
    importance: str = "l2"  # channel importance: L2 / L1 weight magnitude, or BN scale
    round_to: int | None = 8  # channel counts kept multiples of this (fast kernels); None: any
    global_pruning: bool = False  # rank channels across layers instead of a ratio per layer
    lr: float | None = None  # None: the run's own learning rate x 0.2
    batch_size: int | None = None  # None: the run's
    seed: int | None = None  # None: the run's
    latency_threads: int = 1  # onnxruntime threads for latency targets (the deployed setting)
    # None: fine-tune from the run's own cache. Given: another teacher's cache of the same
    # samples, e.g. the unpruned student's own outputs (`cache-teacher RUN/student.onnx`), so
    # the pruned network learns from the network it was cut from.
    teacher_cache: Path | None = None
    workdir: Path = DEFAULT_WORKDIR
    out: Path | None = None  # None: a new folder under the workspace's runs/
    resume: bool = False
    overwrite: bool = False
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.importance in IMPORTANCES, f"--importance must be one of {IMPORTANCES}"),
            (
                self.round_to is None or self.round_to >= 1,
                f"--round-to must be >= 1, got {self.round_to}",
            ),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.latency_threads >= 1, "--latency-threads must be >= 1"),
            (not (self.resume and self.overwrite), "pass --resume or --overwrite, not both"),
            (bool(self.target) or self.resume, "--target is required (e.g. params=0.3)"),
        ]
        for ok, message in checks:
            if not ok:
                raise PruneConfigError(message)
        if self.target:
            PruneTarget.parse(self.target)

    @property
    def parsed_target(self) -> PruneTarget:
        return PruneTarget.parse(self.target)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> PruneConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("init", "workdir", "out", "teacher_cache"):
            if kw.get(key) is not None:
                kw[key] = Path(kw[key])
        return cls(**kw)
