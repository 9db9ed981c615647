"""Float vs INT8 on the test split (the cache's eval section): accuracy of each, top-1
agreement, size, latency."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from onnxkd.bench.timing import interleaved_p50
from onnxkd.errors import QuantizeError
from onnxkd.runtime import ort_session


def session(path: Path, threads: int | None = None):
    return ort_session(path, "cpu", threads, error=QuantizeError)


def scores(sessions: dict, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Every test-split sample's scores for each session, plus the labels, in one pass over
    the data."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    labels = []
    for x, y in batches:
        for name, s in sessions.items():
            result = s.run(None, {s.get_inputs()[0].name: x})[0]
            out[name].append(np.asarray(result).reshape(len(x), -1))
        labels.append(np.asarray(y))
    result = {name: np.concatenate(p) for name, p in out.items()}
    result["labels"] = np.concatenate(labels)
    return result


def predictions(sessions: dict, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Top-1 class of every test-split sample for each session, plus the labels."""
    return top1(scores(sessions, batches))


def top1(scored: dict) -> dict:
    """`scores`' result with each model's scores replaced by its top-1 classes."""
    return {k: v if k == "labels" else v.argmax(axis=1) for k, v in scored.items()}


def quality_report(scored: dict, names: list[str] | None, temperature: dict | None) -> dict:
    """Calibration of the float and INT8 models and its drift, per-class accuracy, and the
    classes INT8 lost most (flagged when one lost far more than the average)."""
    from onnxkd.metrics import calibration as cal
    from onnxkd.metrics import per_class
    from onnxkd.teacher.model import numeric_kind

    labels = scored["labels"]
    report: dict = {}
    for name in ("float", "int8"):
        kind = numeric_kind(scored[name])
        figures = cal.calibration(cal.as_probabilities(scored[name], kind), labels)
        report[name] = {"score_kind": kind, "calibration": figures.to_dict()}
        if temperature:
            for key, figures in cal.temperature_figures(
                scored[name], kind, labels, temperature
            ).items():
                report[name][key] = figures["calibration"]
    report["calibration_drift"] = cal.drift(
        cal.Calibration.from_dict(report["float"]["calibration"]),
        cal.Calibration.from_dict(report["int8"]["calibration"]),
    )
    classes = scored["float"].shape[1]
    class_names = per_class.class_names(names, classes)
    predicted = top1(scored)
    for name in ("float", "int8"):
        counts = per_class.confusion_matrix(labels, predicted[name], classes)
        report[name]["per_class_accuracy"] = [
            None if np.isnan(a) else round(float(a), 5)
            for a in per_class.per_class_accuracy(counts)
        ]
    losses = per_class.class_losses(labels, predicted["float"], predicted["int8"], class_names)
    report["class_names"] = class_names
    report["worst_classes"] = [c.to_dict() for c in losses[:5]]
    report["flagged_classes"] = [c.to_dict() for c in losses if c.flagged]
    if temperature:
        report["temperature"] = temperature
    return report


def accuracy_report(preds: dict, reference: str = "float") -> dict:
    """Accuracy of every model and its top-1 agreement with `reference` (fractions)."""
    labels = preds["labels"]
    report = {"samples": int(len(labels))}
    for name, p in preds.items():
        if name == "labels":
            continue
        report[f"{name}_accuracy"] = float((p == labels).mean())
        if name != reference:
            report[f"{name}_agreement"] = float((p == preds[reference]).mean())
    return report


def latency_report(paths: dict[str, Path], example: np.ndarray, threads: int | None) -> dict:
    """Batch-1 median latency (ms) of each model, measured interleaved, with ratios to float."""
    sessions = {name: session(p, threads) for name, p in paths.items()}
    feeds = {sessions["float"].get_inputs()[0].name: example[:1]}
    p50 = interleaved_p50(sessions, feeds)
    return {
        "batch1_p50_ms": {k: round(v, 4) for k, v in p50.items()},
        "speedup_vs_float": {k: round(p50["float"] / v, 3) for k, v in p50.items() if v > 0},
    }


MEMORY_BATCHES = (1, 32)


def memory_report(paths: dict[str, Path]) -> dict:
    """Per model, its weights by dtype and activation peak read from its graph at batch 1 and
    32 (bench adds the measured peak beside them), or why it could not be read."""
    from onnxkd.bench.activations import graph_memories

    report = {}
    for name, path in paths.items():
        try:
            report[name] = [m.to_dict() for m in graph_memories(path, MEMORY_BATCHES)]
        except Exception as e:  # an unreadable shape must not cost the user the INT8 model
            report[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    return report
