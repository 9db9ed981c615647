"""Exporting a trained student to ONNX that carries its own preprocessing, and checking it."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxkd import __version__
from onnxkd.data.spec import InputSpec
from onnxkd.metadata import INPUT_SPEC, STUDENT, VERSION, write_metadata
from onnxkd.runtime import ort_session

OPSET = 17


def export_student(
    model: torch.nn.Module,
    spec: InputSpec,
    path: Path,
    student_name: str,
    extra_metadata: dict[str, str] | None = None,
    opset: int = OPSET,
    passes: Sequence[Callable[[onnx.ModelProto], bool]] = (),
) -> Path:
    """Write `model` as ONNX with a dynamic batch and the input spec in `metadata_props`.

    `passes` edit the exported graph in place, in order, before it is checked and saved (QAT
    uses them to store int8 weights). The file is written beside the target and renamed into
    place, so a crash never leaves a half-written `student.onnx` that looks complete.
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
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(tmp))
    for graph_pass in passes:
        graph_pass(proto)
    meta = {
        INPUT_SPEC: spec.to_json(),
        STUDENT: student_name,
        VERSION: __version__,
        **(extra_metadata or {}),
    }
    write_metadata(proto, meta)
    proto.producer_name = "onnxkd"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def check_export(
    model: torch.nn.Module,
    path: Path,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
) -> dict:
    """onnxruntime vs torch over (input, label) batches: max abs difference and accuracies.

    Batches are streamed, so the validation split never has to fit in memory at once.
    """
    session = ort_session(path)
    model = model.eval().to("cpu")
    max_diff = 0.0
    n = ort_hits = torch_hits = agree = 0
    with torch.inference_mode():
        for inputs, labels in batches:
            x = inputs.astype(np.float32, copy=False)
            ours = session.run(None, {"input": x})[0]
            ref = model(torch.from_numpy(x)).numpy()
            max_diff = max(max_diff, float(np.abs(ours - ref).max()))
            ort_hits += int((ours.argmax(1) == labels).sum())
            torch_hits += int((ref.argmax(1) == labels).sum())
            agree += int((ours.argmax(1) == ref.argmax(1)).sum())
            n += len(labels)
    n = max(n, 1)
    return {
        "onnx": str(path),
        "max_abs_diff": max_diff,
        "onnxruntime_accuracy": ort_hits / n,
        "torch_accuracy": torch_hits / n,
        "top1_agreement": agree / n,
        "samples": n,
    }
