"""Beyond top-1: each scored model's calibration, per-class accuracy and confusion matrix, and
what it lost against the model it was made from (the student against the teacher, the INT8
model against the student).

Figures come from the same validation pass that gives bench's accuracy. A model's scores are
read as logits, probabilities or log-probabilities by their values (a teacher may end in a
softmax); a model whose metadata carries a fitted temperature (`distill --fit-temperature`) is
also scored with it applied, so the report shows before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onnxkd.bench.measure import Score
from onnxkd.metadata import TEMPERATURE, read_metadata
from onnxkd.metrics import calibration as cal
from onnxkd.metrics import per_class
from onnxkd.teacher.model import numeric_kind

# Store a model's confusion matrix only up to this many classes (1000 classes: a million cells).
CONFUSION_MAX_CLASSES = 100
SHOWN_LOSSES = 5
# The model each workspace role is compared with: what it was distilled or quantized from.
MADE_FROM = {"student": "teacher", "quantized": "student"}


def model_quality(score: Score, path: Path, names: list[str] | None) -> dict:
    """Calibration (as exported, and temperature-scaled where fitted), per-class accuracy and
    the confusion matrix of one model's validation scores."""
    scores, labels = score.scores, score.labels
    classes = scores.shape[1]
    kind = numeric_kind(scores)
    probs = cal.as_probabilities(scores, kind)
    counts = per_class.confusion_matrix(labels, probs.argmax(axis=1), classes)
    result = {
        "score_kind": kind,
        "calibration": cal.calibration(probs, labels).to_dict(),
        "reliability": {
            s: cal.reliability(probs, labels, cal.DEFAULT_BINS, s).to_dict()
            for s in ("width", "mass")
        },
        "class_names": per_class.class_names(names, classes),
        "per_class_accuracy": [
            None if np.isnan(a) else round(float(a), 5)
            for a in per_class.per_class_accuracy(counts)
        ],
        "predicted": probs.argmax(axis=1),  # dropped before writing; for the comparisons
        "labels": labels,
    }
    if classes <= CONFUSION_MAX_CLASSES:
        result["confusion"] = counts.tolist()
    fitted = temperature_of(path)
    if fitted:
        result.update(cal.temperature_figures(scores, kind, labels, fitted))
    return result


def temperature_of(path: Path) -> dict | None:
    """The temperature fitted for a model and where, from its metadata (None if none)."""
    value = read_metadata(path).get(TEMPERATURE)
    return json.loads(value) if value else None


def compare(
    qualities: dict[str, dict], order: list[str], made_from: dict[str, str] | None = None
) -> None:
    """Per model, its calibration drift and class losses against the model it was made from
    (`made_from`, else workspace roles), or else against the first model scored, added in
    place."""
    known = {**MADE_FROM, **(made_from or {})}
    for label in order:
        reference = known.get(label) if label in known else (order[0] if order else None)
        if reference not in qualities or reference == label or label not in qualities:
            continue
        ref, model = qualities[reference], qualities[label]
        if len(ref["labels"]) != len(model["labels"]) or not np.array_equal(
            ref["labels"], model["labels"]
        ):
            model["against"] = {"reference": reference, "note": "scored on different samples"}
            continue
        losses = per_class.class_losses(
            model["labels"], ref["predicted"], model["predicted"], model["class_names"]
        )
        model["against"] = {
            "reference": reference,
            "calibration_drift": cal.drift(
                cal.Calibration.from_dict(ref["calibration"]),
                cal.Calibration.from_dict(model["calibration"]),
            ),
            "mean_lost_points": round(
                float(np.mean([c.lost_points for c in losses])) if losses else 0.0, 4
            ),
            "worst_classes": [c.to_dict() for c in losses[:SHOWN_LOSSES]],
            "flagged_classes": [c.to_dict() for c in losses if c.flagged],
        }


def for_json(qualities: dict[str, dict]) -> dict[str, dict]:
    """The figures without the per-sample arrays kept for the comparisons."""
    return {
        label: {k: v for k, v in q.items() if k not in ("predicted", "labels")}
        for label, q in qualities.items()
    }


def shipped_model(labels: list[str]) -> str | None:
    """The model a user would ship: the workspace's INT8 one, else the last benched (bench
    takes the workspace's and a pipeline's models in the order they were made)."""
    if "quantized" in labels:
        return "quantized"
    return labels[-1] if labels else None
