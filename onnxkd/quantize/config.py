"""The quantize stage's settings: one frozen dataclass, written into every quantization report."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from onnxkd.errors import QuantizeError
from onnxkd.quantize.calibration import CALIBRATIONS
from onnxkd.workspace import DEFAULT_WORKDIR

# Activation and weight types per target. onnxruntime's x86 kernels are fast for unsigned
# activations with signed weights (U8S8); ARM's for signed activations (S8S8).
TARGETS = {"x86": ("QUInt8", "QInt8"), "arm": ("QInt8", "QInt8")}
TARGET_CHOICES = ("auto", *TARGETS)
# x86 without VNNI (AVX2, AVX-512F) runs U8S8 products through pairwise int16 sums that
# saturate (255 * 127 * 2 > 32767), so a full-range INT8 model there disagrees with its float
# model. 7-bit weights (onnxruntime's reduce_range) keep every sum in range: 255 * 64 * 2 < 32767.
REDUCE_RANGE_CHOICES = ("auto", "yes", "no")


def host_target() -> str:
    """The preset for the machine we run on: `x86` for x86-64, `arm` for everything else."""
    machine = platform.machine().lower()
    return "x86" if machine in ("x86_64", "amd64", "i386", "i686", "x86") else "arm"


def host_lacks_vnni() -> bool:
    """Whether this is an x86 host whose int8 dot products saturate (no VNNI, or flags unknown)."""
    from onnxkd import cpu

    if host_target() != "x86":
        return False
    flags = cpu.cpu_flags()
    return flags is None or not any(f in flags for f in cpu.VNNI_FLAGS)


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything `onnxkd quantize` needs; defaults are the CLI's.

    `data` names the calibration/evaluation data when the model is not an onnxkd student whose
    cache says where its data is; `cache` points at that cache explicitly.
    """

    model: Path | None = None  # None: the workspace's latest student
    out: Path | None = None  # None: MODEL.int8.onnx beside the model
    workdir: Path = DEFAULT_WORKDIR
    cache: Path | None = None
    data: str | None = None
    target: str = "auto"
    calibration: str = "minmax"
    calib_samples: int = 512
    calib_batch: int = 32
    percentile: float = 99.999
    calib_memory_mb: int = 1024  # activations held at once by entropy/percentile calibration
    per_channel: bool = True
    reduce_range: str = "auto"  # 7-bit weights; auto: where this host is x86 without VNNI
    simplify: bool = True
    max_drop: float | None = None  # accuracy points; None: quantize everything once
    max_excluded: int = 16  # accuracy-aware mode gives up after excluding this many nodes
    eval_samples: int | None = None  # None: the whole test split
    threads: int | None = None
    workers: int | None = None  # photo decoding threads (calibration, accuracy); None: per core
    overwrite: bool = False  # replace an existing `out` (and its report) instead of refusing

    def __post_init__(self) -> None:
        checks = [
            (self.target in TARGET_CHOICES, f"--target must be one of {TARGET_CHOICES}"),
            (
                self.reduce_range in REDUCE_RANGE_CHOICES,
                f"--reduce-range must be one of {REDUCE_RANGE_CHOICES}",
            ),
            (
                self.calibration in CALIBRATIONS,
                f"--calibration must be one of {tuple(CALIBRATIONS.names())}",
            ),
            (self.calib_samples >= 1, f"--calib-samples must be >= 1, got {self.calib_samples}"),
            (self.calib_batch >= 1, f"--calib-batch must be >= 1, got {self.calib_batch}"),
            (
                0 < self.percentile <= 100,
                f"--percentile must be in (0, 100], got {self.percentile}",
            ),
            (self.max_drop is None or self.max_drop >= 0, "--max-drop must be >= 0"),
            (self.max_excluded >= 1, "--max-excluded must be >= 1"),
            (self.calib_memory_mb >= 1, "--calib-memory-mb must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise QuantizeError(message)

    @property
    def resolved_target(self) -> str:
        return host_target() if self.target == "auto" else self.target

    @property
    def resolved_reduce_range(self) -> bool:
        """7-bit weights: asked for, or `auto` on an x86 host without VNNI quantizing for x86."""
        if self.reduce_range != "auto":
            return self.reduce_range == "yes"
        return self.resolved_target == "x86" and host_lacks_vnni()

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = str(value)
        d["resolved_target"] = self.resolved_target
        d["resolved_reduce_range"] = self.resolved_reduce_range
        return d
