"""Whether a model's probabilities mean what they say: ECE, NLL, Brier, reliability curves, and
temperature scaling.

Distillation and quantization change more than top-1: a student trained on softened targets
and an INT8 model whose logits were rounded can rank classes the same and still be over- or
under-confident, which matters to anyone thresholding on the probability. These are the
standard figures (Guo et al., "On Calibration of Modern Neural Networks", 2017), in numpy so
that bench and quantize stay free of torch:

- ECE: the share-weighted mean |accuracy - confidence| over bins of the top-1 confidence.
  Equal-width bins ([0, 1/B), …) are the common definition; equal-mass bins (each holding
  about n/B samples, Nixon et al. 2019) are less sensitive to the many empty or near-empty
  bins of a confident model. Both are given, with their bin count.
- NLL: the mean -log p(label), probabilities clipped at 1e-12 so one zero is not infinite.
- Brier: the mean over samples of the squared distance between the probability vector and
  the one-hot label, summed over classes (0 is perfect, 2 the worst).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_BINS = 15
PROBABILITY_FLOOR = 1e-12
SCORE_KINDS = ("logits", "probs", "log_probs")


def as_probabilities(
    scores: np.ndarray, kind: str = "logits", temperature: float = 1.0
) -> np.ndarray:
    """Rows of class probabilities from a model's scores of the given kind.

    A temperature divides the logits (or log-probabilities, which differ from logits by a
    per-row constant) before the softmax; probabilities are taken to their log first.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; expected one of {', '.join(SCORE_KINDS)}")
    x = np.asarray(scores, dtype=np.float64)
    if kind == "probs":
        if temperature == 1.0:
            return x / x.sum(axis=1, keepdims=True)
        x = np.log(np.clip(x, PROBABILITY_FLOOR, None))
    x = x / temperature
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Reliability:
    """Per bin of top-1 confidence: its edges, sample count, mean confidence and accuracy."""

    scheme: str  # "width" or "mass"
    edges: tuple[float, ...]  # bins + 1 edges
    counts: tuple[int, ...]
    confidence: tuple[float | None, ...]  # None for an empty bin
    accuracy: tuple[float | None, ...]

    @property
    def ece(self) -> float:
        n = sum(self.counts)
        return float(
            sum(
                c * abs(a - f)
                for c, a, f in zip(self.counts, self.accuracy, self.confidence, strict=True)
                if c
            )
            / max(n, 1)
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS, scheme: str = "width"
) -> Reliability:
    """Bin samples by top-1 confidence: `width` bins split [0, 1] evenly (a confidence on an
    inner edge goes to the upper bin, 1.0 to the last); `mass` bins split the samples, sorted
    by confidence, into `bins` runs of as equal a size as possible."""
    if scheme not in ("width", "mass"):
        raise ValueError(f"unknown binning {scheme!r}; expected 'width' or 'mass'")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    if scheme == "width":
        edges = np.linspace(0.0, 1.0, bins + 1)
        index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
        groups = [np.flatnonzero(index == b) for b in range(bins)]
    else:
        order = np.argsort(confidence, kind="stable")
        groups = [g for g in np.array_split(order, bins)]
        edges = np.array(
            [0.0] + [float(confidence[g].max()) if len(g) else np.nan for g in groups[:-1]] + [1.0]
        )
    return Reliability(
        scheme=scheme,
        edges=tuple(float(e) for e in edges),
        counts=tuple(len(g) for g in groups),
        confidence=tuple(float(confidence[g].mean()) if len(g) else None for g in groups),
        accuracy=tuple(float(correct[g].mean()) if len(g) else None for g in groups),
    )


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS, scheme: str = "width"
) -> float:
    """ECE of top-1 confidence, over `bins` equal-width or equal-mass bins."""
    return reliability(probs, labels, bins, scheme).ece


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(label), with p floored at 1e-12."""
    p = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, PROBABILITY_FLOOR, None)).mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over samples of sum over classes of (p - onehot)^2."""
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


@dataclass(frozen=True)
class Calibration:
    """A model's calibration figures on one split (fractions; NLL in nats)."""

    samples: int
    bins: int
    accuracy: float
    mean_confidence: float
    ece_equal_width: float
    ece_equal_mass: float
    nll: float
    brier: float

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> Calibration:
    """Every calibration figure of `probs` (rows of class probabilities) against `labels`.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
        >>> round(calibration(p, np.array([0, 1]), bins=2).brier, 3)
        0.37
    """
    labels = np.asarray(labels)
    return Calibration(
        samples=len(labels),
        bins=bins,
        accuracy=float((probs.argmax(axis=1) == labels).mean()),
        mean_confidence=float(probs.max(axis=1).mean()),
        ece_equal_width=expected_calibration_error(probs, labels, bins, "width"),
        ece_equal_mass=expected_calibration_error(probs, labels, bins, "mass"),
        nll=negative_log_likelihood(probs, labels),
        brier=brier_score(probs, labels),
    )


def drift(reference: Calibration, model: Calibration) -> dict:
    """How each figure moved from `reference` (the float model) to `model` (its INT8 one)."""
    keys = ("accuracy", "mean_confidence", "ece_equal_width", "ece_equal_mass", "nll", "brier")
    return {k: round(getattr(model, k) - getattr(reference, k), 6) for k in keys}


def fit_temperature(scores: np.ndarray, labels: np.ndarray, kind: str = "logits") -> float:
    """The temperature T that minimises the NLL of softmax(scores / T) on these samples.

    One parameter, so a bounded scalar search over log T (T in [0.05, 20]) finds it; fit it on
    samples whose figures are not the ones reported, or the "after" figure flatters.
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        return negative_log_likelihood(as_probabilities(scores, kind, float(np.exp(log_t))), labels)

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))


def temperature_figures(scores: np.ndarray, kind: str, labels: np.ndarray, fitted: dict) -> dict:
    """With the fitted temperature, the calibration the model's scores do not show: with it
    applied ("temperature_scaled"), or, when the graph already applies it
    (`--apply-temperature`), without it ("without_temperature", the scores times T)."""
    t = fitted["temperature"]
    if fitted.get("applied"):
        before = as_probabilities(scores, kind, 1.0 / t)
        return {
            "without_temperature": {
                **fitted,
                "calibration": calibration(before, labels).to_dict(),
            }
        }
    scaled = as_probabilities(scores, kind, t)
    return {"temperature_scaled": {**fitted, "calibration": calibration(scaled, labels).to_dict()}}
