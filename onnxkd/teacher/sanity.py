"""Does the teacher see the data the way it was trained to? Checked on a sample before caching.

The classic distillation bug is a teacher fed data scaled the wrong way (digits stored as 0..255
given to a teacher whose spec divides by 16): it scores near chance, the cache completes, and
the student learns noise. Two cheap checks catch it before anything is written: the raw values'
range against the range the spec's scale is meant for, and the teacher's accuracy on a few
hundred labeled samples against chance (and against the accuracy its metadata records).
Failing either is an error naming the spec and the likely fix; a teacher that is really this
weak passes with `--accept-low-accuracy`, as a warning recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxkd.data import values
from onnxkd.data.augment import Augmentation
from onnxkd.data.source import Source, is_labeled
from onnxkd.data.spec import InputSpec
from onnxkd.data.views import read_view
from onnxkd.errors import DataError
from onnxkd.teacher.runner import TeacherRunner

PROBE_SAMPLES = 256  # labeled samples the teacher is scored on: about ±3 points
FAR_BELOW = 0.15  # this much below the accuracy the teacher's metadata records is a mistake
AUGMENT_DROP = 0.15  # augmented views scoring this much below clean samples earn a warning
ACCEPT = "--accept-low-accuracy"


@dataclass(frozen=True)
class SanityReport:
    """What the probe found; recorded in the manifest under `input_checks`."""

    samples: int
    accuracy: float | None  # on clean (unaugmented) samples; None: unlabeled data
    chance: float | None  # the best a constant guess scores on these labels
    value_range: tuple[float, float]  # of the raw samples
    recorded_accuracy: float | None  # from the teacher's metadata or model card, if any
    augmented_accuracy: float | None  # on view 0 of the augmentation, when there is one
    problems: tuple[str, ...]  # accepted with --accept-low-accuracy; empty when all is well

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "teacher_accuracy": None if self.accuracy is None else round(self.accuracy, 6),
            "chance": None if self.chance is None else round(self.chance, 6),
            "value_range": [float(v) for v in self.value_range],
            "recorded_accuracy": self.recorded_accuracy,
            "augmented_accuracy": (
                None if self.augmented_accuracy is None else round(self.augmented_accuracy, 6)
            ),
            "accepted_problems": list(self.problems),
        }


def _check_unlabeled(
    raw: np.ndarray,
    spec: InputSpec,
    origin: str,
    samples: int,
    recorded_accuracy: float | None,
    accept: bool,
    log: Callable[[str], None],
) -> SanityReport:
    """Without labels the teacher cannot be scored: only the value range is checked."""
    problem = range_problem(raw, spec)
    if problem and not accept:
        raise DataError(
            f"{problem}; {describe_spec(spec, origin)}; likely fix: pass --scale "
            f"{suggested_scale(float(raw.max())):.6g}; pass {ACCEPT} if the teacher is meant to "
            "see this data as it is"
        )
    if problem:
        log(f"warning: {problem}; {describe_spec(spec, origin)} (accepted with {ACCEPT})")
    log("note: the data has no labels: the teacher's accuracy on it cannot be checked")
    return SanityReport(
        samples=samples,
        accuracy=None,
        chance=None,
        value_range=(float(raw.min()), float(raw.max())),
        recorded_accuracy=recorded_accuracy,
        augmented_accuracy=None,
        problems=(problem,) if problem else (),
    )


def probe_indices(n: int, k: int = PROBE_SAMPLES) -> np.ndarray:
    """`k` indices spread evenly over the split: sorted data (one class after another) still
    gives the probe every class."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def suggested_scale(raw_max: float) -> float:
    """The scale that maps raw values up to `raw_max` to 0..1, rounded to the usual ranges."""
    for top in (1.0, 255.0, 65535.0):
        if raw_max <= top:
            return 1.0 / top
    return 1.0 / raw_max


def range_problem(raw: np.ndarray, spec: InputSpec) -> str | None:
    """Why the raw values contradict the range the spec's scale is meant for, or None.

    A scale of 1/16 or 1/255 says what the largest raw value is; only image data is judged,
    since a feature's scale says nothing of its range.
    """
    if not spec.raw_is_image or spec.scale <= 0 or 1.0 / spec.scale < 2:
        return None
    meant, top = 1.0 / spec.scale, float(raw.max())
    if top > 1.5 * meant or (0 < top <= 1.0 and meant >= 8):
        return (
            f"the data's values go up to {top:g} while the input spec's scale {spec.scale:g} "
            f"is meant for values up to {meant:g}"
        )
    return None


def chance_level(labels: np.ndarray) -> float:
    """The accuracy of always guessing the most common label."""
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else 0.0


def near_chance(accuracy: float, chance: float) -> bool:
    """At most twice chance, and within a tenth of the way from chance to perfect (so that a
    two-class or imbalanced task is not held to "twice chance", which it cannot beat). Data of
    one class says nothing: every guess of that class is right."""
    if chance >= 1.0:
        return False
    return accuracy <= min(2 * chance, chance + 0.1 * (1 - chance))


def _accuracy(
    runner: TeacherRunner,
    output: str,
    x: np.ndarray,
    y: np.ndarray,
    indices: np.ndarray,
    batch: int,
    where: str,
) -> float:
    """Top-1 accuracy of the teacher on model input `x`, refusing NaN or Inf scores."""
    hits = 0
    for i in range(0, len(x), batch):
        scores = runner.run(x[i : i + batch])[output]
        values.check_outputs(output, scores, indices[i : i + batch], where)
        hits += int((scores.argmax(axis=1) == y[i : i + batch]).sum())
    return hits / len(x)


def describe_spec(spec: InputSpec, origin: str) -> str:
    return (
        f"input spec: {spec.layout}, scale {spec.scale:g}, mean {list(spec.mean)}, "
        f"std {list(spec.std)} (from {origin})"
    )


def check_teacher_input(
    source: Source,
    spec: InputSpec,
    origin: str,
    runner: TeacherRunner,
    output: str,
    num_classes: int,
    augmentation: Augmentation,
    warn_views: bool = True,
    recorded_accuracy: float | None = None,
    recorded_by: str = "its metadata",
    accept: bool = False,
    batch_size: int = 256,
    log: Callable[[str], None] = print,
) -> SanityReport:
    """Score the teacher on a spread of labeled samples and check the data's value range.

    The teacher is scored on view 0 of `augmentation` too; with `warn_views` (the user did not
    choose the augmentation), a large drop there is a warning.

    Raises:
        DataError: the teacher scores near chance or far below its recorded accuracy, or the
            values contradict the spec, and `accept` is False.
    """
    indices = probe_indices(len(source))
    raw, labels = source.read(indices)
    # A lazy source is checked as it streams; these few samples are checked now.
    split = f"the {source.ref.split} split of {source.ref.data}"
    values.check_samples(raw, indices, split)
    if not is_labeled(source):
        return _check_unlabeled(raw, spec, origin, len(indices), recorded_accuracy, accept, log)
    values.check_labels(labels, num_classes, indices, split)
    accuracy = _accuracy(runner, output, spec.apply(raw), labels, indices, batch_size, split)
    chance = chance_level(labels)
    where = f"on {len(indices)} labeled {source.ref.split} samples"
    problems = []
    if near_chance(accuracy, chance):
        problems.append(f"the teacher scores {accuracy:.1%} {where}, near chance ({chance:.1%})")
    elif recorded_accuracy is not None and accuracy < recorded_accuracy - FAR_BELOW:
        problems.append(
            f"the teacher scores {accuracy:.1%} {where}, far below the {recorded_accuracy:.1%} "
            f"{recorded_by} records"
        )
    wrong_range = range_problem(raw, spec)
    if wrong_range:
        problems.append(wrong_range)
    if problems:
        fix = (
            f"pass --scale {suggested_scale(float(raw.max())):.6g}"
            if wrong_range
            else "check --scale, --mean, --std and --layout against the teacher's training"
        )
        found = "; ".join(problems)
        if not accept:
            raise DataError(
                f"{found}; {describe_spec(spec, origin)}; likely fix: {fix}; pass {ACCEPT} "
                "if the teacher is meant to see this data as it is"
            )
        log(f"warning: {found}; {describe_spec(spec, origin)} (accepted with {ACCEPT})")
    augmented = None
    if not augmentation.is_identity:
        views = read_view(source, augmentation, indices, 0)[0]
        augmented = _accuracy(runner, output, spec.apply(views), labels, indices, batch_size, split)
        if warn_views and augmented < accuracy - AUGMENT_DROP:
            log(
                f"warning: the teacher scores {augmented:.1%} on the default {augmentation.policy} "
                f"views against {accuracy:.1%} on clean samples, so its targets on them teach "
                "little; if it was trained without augmentation, pass --augment none --views 1 "
                "(or a smaller --pad)"
            )
    return SanityReport(
        samples=len(indices),
        accuracy=accuracy,
        chance=chance,
        value_range=(float(raw.min()), float(raw.max())),
        recorded_accuracy=recorded_accuracy,
        augmented_accuracy=augmented,
        problems=tuple(problems),
    )
