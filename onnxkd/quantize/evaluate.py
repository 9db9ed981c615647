"""Float vs INT8 on the validation split: accuracy of each, top-1 agreement, size, latency."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from onnxkd.bench.timing import interleaved_p50
from onnxkd.errors import QuantizeError
from onnxkd.runtime import ort_session


def session(path: Path, threads: int | None = None):
    return ort_session(path, "cpu", threads, error=QuantizeError)


def predictions(sessions: dict, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Top-1 class of every validation sample for each session, plus the labels, in one pass
    over the data."""
    preds: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    labels = []
    for x, y in batches:
        for name, s in sessions.items():
            out = s.run(None, {s.get_inputs()[0].name: x})[0]
            preds[name].append(np.asarray(out).reshape(len(x), -1).argmax(axis=1))
        labels.append(np.asarray(y))
    result = {name: np.concatenate(p) for name, p in preds.items()}
    result["labels"] = np.concatenate(labels)
    return result


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
