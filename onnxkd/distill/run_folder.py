"""A distill run folder as a typed object: where each file is, and its two JSON records.

    RUN/config.json         RunRecord: the resolved settings, the cache (path and key), versions
    RUN/checkpoints/last.pt the last finished epoch (resume); checkpoints/best.pt the best one
    RUN/best.pt             the best epoch's student weights
    RUN/metrics.jsonl       one row per epoch; RUN/curves.png drawn from it
    RUN/student.onnx        the exported student (QAT: student.int8.onnx)
    RUN/export.json         ExportReport: the export's parity check, best epoch, accuracies

Stages that read a run (quantize, bench, the pipeline, QAT's --init) go through `RunFolder`,
so a renamed file or key is changed here only. This module imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnxkd.distill.config import DistillConfig, DistillConfigError
from onnxkd.files import read_json, write_json_atomic

CONFIG = "config.json"
EXPORT = "export.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
STUDENT_ONNX = "student.onnx"
QAT_ONNX = "student.int8.onnx"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class RunRecord:
    """`config.json`: what a run was started with, written before its first epoch."""

    config: DistillConfig
    cache: Path  # the cache it trains on, resolved
    cache_key: str
    versions: Mapping[str, Any]
    world_size: int
    device: str
    student_parameters: int

    @classmethod
    def from_dict(cls, d: Mapping, where: str = CONFIG) -> RunRecord:
        try:
            return cls(
                config=DistillConfig.from_dict(d["config"]),
                cache=Path(d["cache"]),
                cache_key=d["cache_key"],
                versions=MappingProxyType(dict(d.get("versions", {}))),
                world_size=int(d.get("world_size", 1)),
                device=str(d.get("device", "cpu")),
                student_parameters=int(d.get("student_parameters", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DistillConfigError(f"{where} is malformed ({type(e).__name__}: {e})") from e

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "cache": str(self.cache),
            "cache_key": self.cache_key,
            "versions": dict(self.versions),
            "world_size": self.world_size,
            "device": self.device,
            "student_parameters": self.student_parameters,
        }


@dataclass(frozen=True)
class ExportReport:
    """`export.json`: the exported model checked against torch on the validation split."""

    onnx: Path
    max_abs_diff: float
    onnxruntime_accuracy: float
    torch_accuracy: float
    top1_agreement: float
    samples: int
    best_epoch: int
    best_val_accuracy: float
    teacher_accuracy: float | None
    int8_ops: int | None = None  # QAT: ops that onnxruntime runs on int8 kernels
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = EXPORT) -> ExportReport:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        try:
            return cls(
                onnx=Path(d["onnx"]),
                max_abs_diff=float(d["max_abs_diff"]),
                onnxruntime_accuracy=float(d["onnxruntime_accuracy"]),
                torch_accuracy=float(d["torch_accuracy"]),
                top1_agreement=float(d["top1_agreement"]),
                samples=int(d["samples"]),
                best_epoch=int(d["best_epoch"]),
                best_val_accuracy=float(d["best_val_accuracy"]),
                teacher_accuracy=d.get("teacher_accuracy"),
                int8_ops=d.get("int8_ops"),
                extra=MappingProxyType({k: v for k, v in d.items() if k not in known}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DistillConfigError(f"{where} is malformed ({type(e).__name__}: {e})") from e

    def to_dict(self) -> dict:
        d = {
            **dict(self.extra),
            "onnx": str(self.onnx),
            "max_abs_diff": self.max_abs_diff,
            "onnxruntime_accuracy": self.onnxruntime_accuracy,
            "torch_accuracy": self.torch_accuracy,
            "top1_agreement": self.top1_agreement,
            "samples": self.samples,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "teacher_accuracy": self.teacher_accuracy,
        }
        if self.int8_ops is not None:
            d["int8_ops"] = self.int8_ops
        return d


@dataclass(frozen=True)
class RunFolder:
    """The files of one distill run.

    Example:
        >>> run = RunFolder(Path("onnxkd-out/runs/small_cnn-0001"))  # doctest: +SKIP
        >>> run.record().cache, run.export_report().onnxruntime_accuracy  # doctest: +SKIP
    """

    path: Path

    @classmethod
    def of_model(cls, model: Path) -> RunFolder | None:
        """The run folder a model file sits in, if it sits in one."""
        run = cls(Path(model).parent)
        return run if run.config_path.exists() else None

    @classmethod
    def cache_hints(cls, model: Path) -> list[Path]:
        """The cache recorded by the run folder `model` sits in: where to look first for the
        cache its metadata names (an unreadable record gives no hint, not an error)."""
        run = cls.of_model(model)
        try:
            return [run.record().cache] if run else []
        except DistillConfigError:
            return []

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def export_path(self) -> Path:
        return self.path / EXPORT

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best_weights(self) -> Path:
        return self.path / BEST

    def student_path(self, qat: bool = False) -> Path:
        return self.path / (QAT_ONNX if qat else STUDENT_ONNX)

    @property
    def started(self) -> bool:
        return self.config_path.exists()

    @property
    def finished(self) -> bool:
        """Exported: training ended and the student passed its parity check."""
        return self.export_path.exists()

    def record(self) -> RunRecord:
        if not self.config_path.exists():
            raise DistillConfigError(f"{self.path} has no {CONFIG}: nothing to resume there")
        try:
            raw = read_json(self.config_path)
        except ValueError as e:
            raise DistillConfigError(f"{self.config_path} is corrupt: {e}") from e
        return RunRecord.from_dict(raw, where=str(self.config_path))

    def write_record(self, record: RunRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config_path, record.to_dict())

    def export_report(self) -> ExportReport | None:
        if not self.export_path.exists():
            return None
        return ExportReport.from_dict(read_json(self.export_path), where=str(self.export_path))

    def write_export_report(self, report: ExportReport) -> None:
        write_json_atomic(self.export_path, report.to_dict())
