"""Calibration: activation ranges from the student's own training data, in bounded memory.

onnxruntime's histogram calibrators (Entropy, Percentile) keep every intermediate activation
of every sample they are fed in memory before building histograms: about 62 MB per sample for
MobileNetV2 at 224x224. Histograms merge across calls, so we feed the calibrator in chunks
sized from a measured per-sample footprint and a memory budget. The ranges are saved to a
calibration cache file, which `quantize_static` then reads, so re-quantizing with other nodes
excluded (accuracy-aware mode) never calibrates twice.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from onnxkd.registry import Registry

CALIBRATIONS: Registry = Registry("calibration method")


@CALIBRATIONS.register("minmax")
def minmax(percentile: float) -> tuple[str, dict]:
    return "MinMax", {}


@CALIBRATIONS.register("entropy")
def entropy(percentile: float) -> tuple[str, dict]:
    return "Entropy", {"num_bins": 128, "num_quantized_bins": 128}


@CALIBRATIONS.register("percentile")
def percentile(percentile: float) -> tuple[str, dict]:
    # Asymmetric: a symmetric range would waste half of uint8's codes on post-ReLU activations.
    return "Percentile", {"num_bins": 2048, "percentile": percentile, "symmetric": False}


def calibration_method(name: str):
    """onnxruntime's `CalibrationMethod` member for a registered method name."""
    from onnxruntime.quantization import CalibrationMethod

    member, _ = CALIBRATIONS.get(name)(100.0)
    return getattr(CalibrationMethod, member)


class _Chunk:
    """A `CalibrationDataReader` over a list of input batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.feeds = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def calibrate(
    model: Path,
    cache_file: Path,
    method: str,
    batches: Iterator[np.ndarray],
    total: int,
    memory_mb: int,
    percentile_value: float = 99.999,
    log: Callable[[str], None] = print,
) -> dict:
    """Collect ranges for every activation of `model` over `batches` into `cache_file`.

    Returns facts for the report: samples used, measured activation bytes per sample and the
    chunk size the memory budget allowed.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    member, options = CALIBRATIONS.get(method)(percentile_value)
    # onnxruntime's calibrators print progress to stdout, which belongs to our results.
    with (
        tempfile.TemporaryDirectory(prefix="onnxkd-calib-") as tmp,
        contextlib.redirect_stdout(sys.stderr),
    ):
        calibrator = create_calibrator(
            model,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibration_method(method),
            extra_options=options,
        )
        input_name = calibrator.infer_session.get_inputs()[0].name
        first = next(batches)
        per_sample = _activation_bytes(calibrator.infer_session, input_name, first)
        chunk_samples = max(1, (memory_mb << 20) // max(per_sample, 1))
        estimate_mb = per_sample * total / 2**20
        if member != "MinMax" and estimate_mb > memory_mb:
            log(
                f"{method} calibration holds every activation: {estimate_mb:.0f} MB for {total} "
                f"samples; feeding it {chunk_samples} samples at a time to stay under "
                f"{memory_mb} MB"
            )
        pending, pending_n, seen = [first], len(first), 0
        for batch in batches:
            if pending_n + len(batch) > chunk_samples:
                calibrator.collect_data(_Chunk(input_name, pending))
                seen += pending_n
                log(f"calibrated {seen}/{total} samples")
                pending, pending_n = [], 0
            pending.append(batch)
            pending_n += len(batch)
        calibrator.collect_data(_Chunk(input_name, pending))
        seen += pending_n
        ranges = calibrator.compute_data()
        del calibrator  # its session holds the augmented model open
    save_tensors_data(ranges, cache_file)
    return {
        "samples": seen,
        "activation_bytes_per_sample": per_sample,
        "chunk_samples": min(chunk_samples, seen),
    }


def _activation_bytes(session, input_name: str, batch: np.ndarray) -> int:
    """Bytes of all intermediate outputs per sample, measured on one batch."""
    outputs = session.run(None, {input_name: batch})
    return int(sum(o.nbytes for o in outputs) // max(len(batch), 1))
