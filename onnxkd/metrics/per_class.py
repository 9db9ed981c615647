"""Which classes compression hurt: per-class accuracy, the classes that lost most, and a flag
when one class lost far more than the others.

Top-1 over all samples can hide a quantization or distillation failure confined to one class
(an INT8 activation range clipped for the features of one class, a teacher's dark knowledge
missing for another): the mean drop is small, the class is broken. A class's accuracy on a
small test set is noisy (about 85 images per class in the CIFAR subset: ±5 points), so a class
is flagged only when its loss beyond the average is both large and well outside that noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# A class is flagged when it lost at least this many points more than the average class …
FLAG_MIN_EXCESS_POINTS = 5.0
# … and that excess is this many standard errors of a paired per-class difference.
FLAG_STANDARD_ERRORS = 2.0


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j]: samples of class i predicted as j."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    return counts


def per_class_accuracy(counts: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class with no samples)."""
    totals = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(counts) / np.maximum(totals, 1), np.nan)


@dataclass(frozen=True)
class ClassLoss:
    """One class's accuracy under the reference and the model, and whether it is flagged."""

    index: int
    name: str
    samples: int
    reference: float
    model: float
    lost_points: float  # reference - model, in points
    excess_points: float  # lost_points - the mean over classes
    standard_error_points: float  # of the paired difference on this class's samples
    flagged: bool

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def class_losses(
    labels: np.ndarray,
    reference_predicted: np.ndarray,
    model_predicted: np.ndarray,
    names: list[str],
) -> list[ClassLoss]:
    """Per class, what `model` lost against `reference` on the same samples, worst first.

    The standard error of a class's paired accuracy difference comes from the samples where
    the two disagree on being right (as in McNemar's test): b right only under the reference,
    c right only under the model, n samples: sqrt(b + c - (b - c)^2 / n) / n.
    """
    labels = np.asarray(labels)
    ref_right = np.asarray(reference_predicted) == labels
    model_right = np.asarray(model_predicted) == labels
    rows = []
    for k, name in enumerate(names):
        mask = labels == k
        n = int(mask.sum())
        if n == 0:
            continue
        b = int((ref_right & ~model_right & mask).sum())
        c = int((~ref_right & model_right & mask).sum())
        se = float(np.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n)
        rows.append(
            (k, name, n, float(ref_right[mask].mean()), float(model_right[mask].mean()), se)
        )
    mean_lost = float(np.mean([100 * (r - m) for _, _, _, r, m, _ in rows])) if rows else 0.0
    losses = []
    for k, name, n, ref, mod, se in rows:
        lost = 100 * (ref - mod)
        excess = lost - mean_lost
        flagged = excess >= FLAG_MIN_EXCESS_POINTS and excess >= FLAG_STANDARD_ERRORS * 100 * se
        losses.append(ClassLoss(k, name, n, ref, mod, lost, excess, 100 * se, flagged))
    return sorted(losses, key=lambda c: (-c.lost_points, c.index))


def class_names(names: list[str] | None, classes: int) -> list[str]:
    """The data's label names, or the class indices as text when it has none."""
    if names and len(names) == classes:
        return [str(n) for n in names]
    return [str(k) for k in range(classes)]
