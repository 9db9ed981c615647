"""On-device artifacts and training runs in a few lines for the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from onnxkd.ondevice.manifest import ArtifactsManifest


def summarize_artifacts(path: Path, manifest: ArtifactsManifest) -> str:
    """The artifacts folder, the student it trains, the loss, and what is frozen."""
    frozen = manifest.frozen
    return "\n".join(
        [
            f"artifacts: {path}",
            f"student:   {manifest.student.path} (opset {manifest.opset}, IR "
            f"{manifest.ir_version}; {manifest.num_classes} classes)",
            f"loss:      kd, alpha {manifest.alpha}, T {manifest.temperature}; "
            f"optimizer {manifest.optimizer}",
            f"params:    {len(manifest.trainable)} trained, {len(frozen)} frozen"
            + (f" ({', '.join(p.module for p in frozen)})" if frozen else ""),
        ]
    )


def summarize_training(report: Mapping) -> str:
    """The exported student, its accuracy before and after, and where the report is."""
    before, after, export = report["before"], report["after"], report["export"]
    return "\n".join(
        [
            f"student:  {export['onnx']}",
            f"accuracy: {100 * before['val_accuracy']:.2f}% -> "
            f"{100 * after['val_accuracy']:.2f}% after {len(report['epochs'])} epochs "
            f"(teacher {100 * report['teacher_accuracy']:.2f}%)",
            f"report:   {Path(export['onnx']).parent / 'report.json'}",
        ]
    )
