"""What a distill run produced, in a few lines for the terminal (no torch, no onnxruntime).

Reads the run's export check (the exported model, its best epoch and how onnxruntime's outputs
agree with torch's), so `onnxkd distill` and `onnxkd run` say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from onnxkd.distill.run_folder import ExportReport

if TYPE_CHECKING:
    from onnxkd.distill.trainer import RunResult


def summarize(result: RunResult) -> str:
    """The run folder and, when it was exported, the model with its checked accuracy."""
    lines = [f"run:     {result.run_dir}"]
    e = result.export
    if not e:
        return "\n".join(lines)
    if isinstance(e, Mapping):
        e = ExportReport.from_dict(e)
    quantized = e.int8_ops is not None  # a QAT run, also when resumed without --qat
    label = "int8:   " if quantized else "student:"
    teacher = f", teacher {100 * e.teacher_accuracy:.2f}%" if e.teacher_accuracy is not None else ""
    lines.append(
        f"{label} {e.onnx} ({_accuracy(e)}{teacher}; max |onnx - torch| {e.max_abs_diff:.1e})"
    )
    if quantized:
        lines.append(
            f"         {e.int8_ops} ops on onnxruntime int8 kernels; top-1 agreement "
            f"with torch fake quantization {100 * e.top1_agreement:.2f}%"
        )
    return "\n".join(lines)


def _accuracy(e: ExportReport) -> str:
    """The exported epoch's test accuracy, and how that epoch was chosen: a figure chosen on
    the split it is measured on is a maximum over the epochs, and is labelled so."""
    if e.selected_on == "validation":
        of = f" of {e.epochs}" if e.epochs is not None else ""
        return (
            f"epoch {e.best_epoch + 1}{of}, chosen by validation accuracy "
            f"{100 * e.val_accuracy:.2f}% on {e.val_samples} held-back training samples; "
            f"test accuracy {100 * e.test_accuracy:.2f}% (onnxruntime, held out)"
        )
    epochs = {None: "its epochs", 1: "1 epoch"}.get(e.epochs, f"{e.epochs} epochs")
    return (
        f"epoch {e.best_epoch + 1}, best of {epochs} on the test split (selected maximum): "
        f"onnxruntime accuracy {100 * e.test_accuracy:.2f}%"
    )
