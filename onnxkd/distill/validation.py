"""The validation split: training samples held back to choose the best epoch on.

Choosing the best epoch on the test split and reporting that split's accuracy reports a
selected maximum, higher than what a fresh sample would give. A seeded share of the train
section is held back instead (never trained on, scored on the first cached view's targets), and
the chosen model meets the test split once, at export.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxkd.cache.reader import CacheSection
from onnxkd.distill.config import DistillConfigError

# Mixed into the seed so the held-back samples do not follow any epoch's shuffle order, which
# is drawn from (seed, epoch).
VALIDATION_STREAM = 0x76616C


@dataclass(frozen=True)
class Split:
    """Train-section sample indices to train on, and those held back (None: select on the test
    split)."""

    train: np.ndarray
    val: np.ndarray | None
    fraction: float
    seed: int

    @property
    def selected_on(self) -> str:
        return "test" if self.val is None else "validation"

    def record(self) -> dict:
        """What `config.json` records of it."""
        if self.val is None:
            return {"split": "eval"}
        return {
            "split": "train",
            "fraction": self.fraction,
            "seed": self.seed,
            "count": len(self.val),
        }


def carve(n: int, fraction: float, seed: int) -> Split:
    """Hold back round(n * fraction) of the train section's n samples (at least one).

    Example:
        >>> split = carve(100, 0.1, seed=0)
        >>> len(split.train), len(split.val)
        (90, 10)
    """
    if fraction == 0:
        return Split(np.arange(n), None, fraction, seed)
    count = max(1, round(n * fraction))
    if count >= n:
        raise DistillConfigError(
            f"--val-fraction {fraction} of the cache's {n} training samples leaves none to "
            "train on; pass a smaller --val-fraction (0 selects on the test split)"
        )
    order = np.random.default_rng([VALIDATION_STREAM, seed]).permutation(n)
    return Split(np.sort(order[count:]), np.sort(order[:count]), fraction, seed)


def teacher_accuracy(section: CacheSection, indices: np.ndarray) -> float:
    """The teacher's accuracy on these samples' first cached view."""
    hits = section.argmax(indices, 0) == section.labels(indices)
    return float(hits.mean()) if len(indices) else 0.0
