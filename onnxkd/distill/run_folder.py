"""A distill run folder as a typed object: where each file is, and its two JSON records.

    RUN/config.json         RunRecord: the resolved settings, the cache (path and key), versions
    RUN/checkpoints/last.pt the last finished epoch (resume); checkpoints/best.pt the best one
    RUN/best.pt             the best epoch's student weights
    RUN/metrics.jsonl       one row per epoch; RUN/curves.png drawn from it
    RUN/student.onnx        the exported student (QAT: student.int8.onnx)
    RUN/export.json         ExportReport: the export's parity check, best epoch, accuracies

A folder that already holds a run is never written into by a new run unless asked to replace
it (`claim`), and an unrelated folder is never emptied.

Stages that read a run (quantize, bench, the pipeline, QAT's --init) go through `RunFolder`,
so a renamed file or key is changed here only. This module imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnxkd.distill.config import DistillConfig, DistillConfigError
from onnxkd.errors import OnnxkdError
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
# Everything a run writes (with the ".tmp" files a killed write leaves): what --overwrite removes.
RUN_ENTRIES = (CONFIG, EXPORT, METRICS, CURVES, STUDENT_ONNX, QAT_ONNX, CHECKPOINTS, BEST)


class RunFolderError(OnnxkdError):
    """A run folder cannot be used as asked (it holds a run, or something else)."""


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
    # The split the best epoch is chosen on: {"split": "train", "fraction", "seed", "count"}
    # for samples held back from the train section, {"split": "eval"} for the test split.
    validation: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    unlabeled_keys: tuple[str, ...] = ()  # the --unlabeled caches' keys, in order
    # A custom student's source as the user named it, with its hash (students.custom.pin);
    # `config.student` then names the run's own copy.
    student_origin: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Mapping, where: str = CONFIG) -> RunRecord:
        try:
            config = dict(d["config"])
            # A run recorded before validation splits existed chose its epoch on the test split.
            config.setdefault("val_fraction", 0.0)
            return cls(
                config=DistillConfig.from_dict(config),
                cache=Path(d["cache"]),
                cache_key=d["cache_key"],
                versions=MappingProxyType(dict(d.get("versions", {}))),
                world_size=int(d.get("world_size", 1)),
                device=str(d.get("device", "cpu")),
                student_parameters=int(d.get("student_parameters", 0)),
                validation=MappingProxyType(dict(d.get("validation") or {"split": "eval"})),
                unlabeled_keys=tuple(d.get("unlabeled_keys", ())),
                student_origin=d.get("student_origin"),
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
            "validation": dict(self.validation),
            **({"unlabeled_keys": list(self.unlabeled_keys)} if self.unlabeled_keys else {}),
            **({"student_origin": dict(self.student_origin)} if self.student_origin else {}),
        }


@dataclass(frozen=True)
class ExportReport:
    """`export.json`: the exported model checked against torch on the test split, and the
    epoch it holds with the accuracy that chose it.

    `val_accuracy` is the best epoch's accuracy on the split it was chosen on (`selected_on`):
    "validation", samples held back from training, or "test", the eval split itself, where the
    figure is a selected maximum. `test_accuracy` is onnxruntime's on the test split, measured
    once on the chosen model. Reports written before the split existed (`best_val_accuracy`,
    chosen on the test split) still load.
    """

    onnx: Path
    max_abs_diff: float
    onnxruntime_accuracy: float
    torch_accuracy: float
    top1_agreement: float
    samples: int
    best_epoch: int
    val_accuracy: float
    test_accuracy: float
    teacher_accuracy: float | None
    selected_on: str = "test"
    epochs: int | None = None  # how many epochs the best was chosen from (None: not recorded)
    val_samples: int | None = None
    int8_ops: int | None = None  # QAT: ops that onnxruntime runs on int8 kernels
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = EXPORT) -> ExportReport:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"} | {"best_val_accuracy"}
        try:
            return cls(
                onnx=Path(d["onnx"]),
                max_abs_diff=float(d["max_abs_diff"]),
                onnxruntime_accuracy=float(d["onnxruntime_accuracy"]),
                torch_accuracy=float(d["torch_accuracy"]),
                top1_agreement=float(d["top1_agreement"]),
                samples=int(d["samples"]),
                best_epoch=int(d["best_epoch"]),
                val_accuracy=float(
                    d["val_accuracy"] if "val_accuracy" in d else d["best_val_accuracy"]
                ),
                # Older reports measured onnxruntime on the test split only, as this does.
                test_accuracy=float(d.get("test_accuracy", d["onnxruntime_accuracy"])),
                teacher_accuracy=d.get("teacher_accuracy"),
                selected_on=str(d.get("selected_on", "test")),
                epochs=d.get("epochs"),
                val_samples=d.get("val_samples"),
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
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "teacher_accuracy": self.teacher_accuracy,
            "selected_on": self.selected_on,
            "epochs": self.epochs,
            "val_samples": self.val_samples,
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

    @property
    def is_run(self) -> bool:
        """Holds a distill run: its record or its checkpoints (a run killed early has both)."""
        return self.config_path.exists() or self.checkpoints.is_dir()

    def check_new(self, overwrite: bool = False) -> bool:
        """Whether a new run may start here, refusing anything that is there already.

        A missing or empty folder is taken as it is. A run is replaced only with `overwrite`;
        any other non-empty folder is refused, with or without it. Returns True when there is
        a run to remove first (`remove_run`); nothing is changed here.
        """
        if not self.path.exists():
            return False
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file; the run folder (-o) must be a folder")
        entries = sorted(e.name for e in self.path.iterdir())
        if not entries:
            return False
        if not self.is_run:
            shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
            raise RunFolderError(
                f"{self.path} is not empty ({shown}) and holds no distill run; pass a new or "
                "empty folder with -o (--overwrite replaces only a run's folder)"
            )
        if not overwrite:
            what = "a finished distill run" if self.finished else "a distill run"
            raise RunFolderError(
                f"{self.path} already holds {what}; pass --resume to continue it, --overwrite "
                "to replace it, or a new folder with -o"
            )
        return True

    def remove_run(self) -> str:
        """Remove the run's own files (what --overwrite replaces), keeping anything else;
        returns what was done, to be said."""
        entries = sorted(self.path.iterdir())
        own = [e for e in entries if _is_run_entry(e.name)]
        for entry in own:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        kept = [e.name for e in entries if e not in own]
        return f"--overwrite: removed the previous run's {len(own)} files from {self.path}" + (
            f" (kept {', '.join(kept)}, which the run did not write)" if kept else ""
        )

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


def _is_run_entry(name: str) -> bool:
    """A file or folder a run writes, or the temporary file of an interrupted write."""
    base = name.removesuffix(".tmp").replace(".tmp.", ".")  # curves.tmp.png, last.pt.tmp
    return base in RUN_ENTRIES
