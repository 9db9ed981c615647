"""Exporting a trained student to ONNX that carries its own preprocessing, and checking it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxkd import __version__
from onnxkd.data.spec import METADATA_KEY, InputSpec
from onnxkd.teacher.cache_files import write_json_atomic

OPSET = 17


def export_student(
    model: torch.nn.Module,
    spec: InputSpec,
    path: Path,
    student_name: str,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write `model` as ONNX with a dynamic batch and the input spec in `metadata_props`.

    The file is written beside the target and renamed into place, so a crash never leaves a
    half-written `student.onnx` that looks complete.
    """
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    dummy = torch.zeros((2, *spec.input_shape), dtype=torch.float32)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            dummy,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(tmp))
    meta = {
        METADATA_KEY: spec.to_json(),
        "onnxkd.student": student_name,
        "onnxkd.version": __version__,
        **(extra_metadata or {}),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "onnxkd"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def check_export(
    model: torch.nn.Module,
    path: Path,
    inputs: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 256,
) -> dict:
    """onnxruntime vs torch on the validation inputs: max abs difference and both accuracies."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.eval().to("cpu")
    max_diff = 0.0
    ort_hits = torch_hits = agree = 0
    with torch.inference_mode():
        for lo in range(0, len(inputs), batch_size):
            x = inputs[lo : lo + batch_size].astype(np.float32)
            ours = session.run(None, {"input": x})[0]
            ref = model(torch.from_numpy(x)).numpy()
            max_diff = max(max_diff, float(np.abs(ours - ref).max()))
            y = labels[lo : lo + batch_size]
            ort_hits += int((ours.argmax(1) == y).sum())
            torch_hits += int((ref.argmax(1) == y).sum())
            agree += int((ours.argmax(1) == ref.argmax(1)).sum())
    n = max(len(inputs), 1)
    return {
        "onnx": str(path),
        "max_abs_diff": max_diff,
        "onnxruntime_accuracy": ort_hits / n,
        "torch_accuracy": torch_hits / n,
        "top1_agreement": agree / n,
        "samples": len(inputs),
    }


def write_export_report(path: Path, report: dict) -> None:
    write_json_atomic(path, report)
