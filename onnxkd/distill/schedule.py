"""Loss settings that change over training (KD's α and T): a start value, an end value and a
shape, read at the fraction of training done.

    >>> Schedule(0.5, 0.9, "linear").at(0.5)
    0.7
    >>> round(Schedule(4.0, 1.0, "cosine").at(0.25), 4)
    3.5607
    >>> Schedule(0.9).at(0.3)
    0.9
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnxkd.errors import OnnxkdError

SHAPES = ("constant", "linear", "cosine")


class ScheduleError(OnnxkdError):
    """A schedule's shape is unknown or its end value is missing or not wanted."""


@dataclass(frozen=True)
class Schedule:
    """`start` at the beginning of training, `end` at its end, `shape` in between.

    Linear moves at a constant rate; cosine follows half a cosine (slow at both ends), as
    cosine learning-rate schedules do. Constant holds `start` and takes no `end`: an end value
    with a constant shape would be a setting that silently does nothing.
    """

    start: float
    end: float | None = None
    shape: str = "constant"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ScheduleError(f"schedule must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.shape == "constant" and self.end is not None:
            raise ScheduleError(
                f"an end value ({self.end}) needs a linear or cosine schedule to reach it"
            )
        if self.shape != "constant" and self.end is None:
            raise ScheduleError(f"a {self.shape} schedule needs an end value")

    def at(self, fraction: float) -> float:
        """The value once `fraction` (clipped to [0, 1]) of training is done."""
        if self.end is None:
            return self.start
        f = min(max(fraction, 0.0), 1.0)
        weight = f if self.shape == "linear" else (1.0 - math.cos(math.pi * f)) / 2.0
        return self.start + (self.end - self.start) * weight

    def describe(self) -> str:
        if self.end is None:
            return f"{self.start:g}"
        return f"{self.start:g} -> {self.end:g} ({self.shape})"
