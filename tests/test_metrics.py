"""onnxkd.metrics against independent implementations (torchmetrics, scikit-learn, scipy, a
plain loop) on fixed inputs, and against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion
from torchmetrics.functional.classification import multiclass_calibration_error

from onnxkd.metrics import calibration as cal
from onnxkd.metrics import per_class

CLASSES = 10


@pytest.fixture(scope="module")
def scored():
    """Fixed logits of an overconfident ten-class model (about 60% accurate), and their labels."""
    rng = np.random.default_rng(20261202)
    labels = rng.integers(0, CLASSES, 2000)
    logits = rng.normal(0, 1.5, (2000, CLASSES))
    right = rng.random(2000) < 0.7
    logits[np.arange(2000), np.where(right, labels, (labels + 1) % CLASSES)] += 4.0
    return logits, labels


def test_probabilities_of_every_kind_agree(scored):
    logits, _ = scored
    probs = cal.as_probabilities(logits)
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-10)
    np.testing.assert_allclose(cal.as_probabilities(probs, "probs"), probs, rtol=1e-10)
    np.testing.assert_allclose(cal.as_probabilities(np.log(probs), "log_probs"), probs, rtol=1e-9)
    warmer = torch.softmax(torch.from_numpy(logits) / 2.5, dim=1).numpy()
    np.testing.assert_allclose(cal.as_probabilities(probs, "probs", 2.5), warmer, rtol=1e-8)
    with pytest.raises(ValueError, match="unknown score kind"):
        cal.as_probabilities(logits, "odds")


@pytest.mark.parametrize("bins", [5, 15])
def test_equal_width_ece_matches_torchmetrics(scored, bins):
    logits, labels = scored
    probs = cal.as_probabilities(logits)
    theirs = multiclass_calibration_error(
        torch.from_numpy(probs), torch.from_numpy(labels), CLASSES, n_bins=bins, norm="l1"
    ).item()
    assert cal.expected_calibration_error(probs, labels, bins, "width") == pytest.approx(
        theirs, abs=1e-6
    )


def test_equal_mass_ece_matches_a_plain_loop(scored):
    logits, labels = scored
    probs = cal.as_probabilities(logits)
    confidence, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for b in range(15):  # 2000 samples into 15 runs: the first 5 get 134, the rest 133
        start = b * 133 + min(b, 5)
        members = order[start : start + 133 + (b < 5)]
        total += len(members) * abs(right[members].mean() - confidence[members].mean())
    curve = cal.reliability(probs, labels, 15, "mass")
    assert curve.counts == (134,) * 5 + (133,) * 10
    assert cal.expected_calibration_error(probs, labels, 15, "mass") == pytest.approx(
        total / 2000, abs=1e-12
    )


def test_nll_and_brier_match_scikit_learn(scored):
    logits, labels = scored
    probs = cal.as_probabilities(logits)
    figures = cal.calibration(probs, labels)
    assert figures.nll == pytest.approx(log_loss(labels, probs, labels=range(CLASSES)), rel=1e-9)
    assert figures.brier == pytest.approx(
        brier_score_loss(labels, probs, labels=list(range(CLASSES))), rel=1e-9
    )
    assert figures.accuracy == (logits.argmax(axis=1) == labels).mean()
    assert figures.samples == 2000 and figures.bins == 15


def test_hand_computed_figures():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    figures = cal.calibration(probs, labels, bins=2)
    # bin [0.5, 1]: all four, confidence 0.7125, accuracy 3/4
    assert figures.ece_equal_width == pytest.approx(abs(0.75 - 0.7125))
    # two of two: (0.55, 0.6) accuracy 1/2, (0.8, 0.9) accuracy 1
    assert figures.ece_equal_mass == pytest.approx((2 * abs(0.5 - 0.575) + 2 * 0.15) / 4)
    assert figures.brier == pytest.approx((0.02 + 0.72 + 0.08 + 0.405) / 4)
    assert figures.nll == pytest.approx(-np.log([0.9, 0.4, 0.8, 0.55]).mean())


def test_a_confidence_on_an_edge_goes_to_the_upper_bin_and_one_to_the_last():
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]])
    curve = cal.reliability(probs, np.array([0, 0, 1]), bins=4)
    assert curve.counts == (0, 0, 1, 2)
    assert curve.confidence[0] is None and curve.accuracy[0] is None


def test_temperature_fit_matches_a_brute_force_search(scored):
    logits, labels = scored
    fitted = cal.fit_temperature(logits, labels)
    grid = np.linspace(0.3, 5.0, 941)
    nlls = [
        cal.negative_log_likelihood(cal.as_probabilities(logits, "logits", t), labels) for t in grid
    ]
    assert fitted == pytest.approx(grid[int(np.argmin(nlls))], abs=0.01)
    # overconfident logits want T > 1, and the fit lowers the NLL it was fitted on
    assert fitted > 1.0
    before = cal.calibration(cal.as_probabilities(logits), labels)
    after = cal.calibration(cal.as_probabilities(logits, "logits", fitted), labels)
    assert after.nll < before.nll and after.accuracy == before.accuracy


def test_drift_is_model_minus_reference(scored):
    logits, labels = scored
    a = cal.calibration(cal.as_probabilities(logits), labels)
    b = cal.calibration(cal.as_probabilities(logits, "logits", 2.0), labels)
    moved = cal.drift(a, b)
    assert moved["nll"] == pytest.approx(b.nll - a.nll, abs=1e-6)
    assert moved["accuracy"] == 0.0
    assert cal.Calibration.from_dict(a.to_dict()).nll == pytest.approx(a.nll, abs=1e-6)


def test_confusion_and_per_class_accuracy_match_scikit_learn(scored):
    logits, labels = scored
    predicted = logits.argmax(axis=1)
    counts = per_class.confusion_matrix(labels, predicted, CLASSES)
    np.testing.assert_array_equal(counts, sk_confusion(labels, predicted, labels=range(CLASSES)))
    np.testing.assert_allclose(
        per_class.per_class_accuracy(counts), recall_score(labels, predicted, average=None)
    )


def test_a_class_that_alone_lost_far_more_is_flagged_and_noise_is_not():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(5), 100)
    reference = labels.copy()
    model = labels.copy()
    noisy = rng.choice(500, 20, replace=False)  # 4% wrong, spread over classes
    model[noisy] = (labels[noisy] + 1) % 5
    broken = np.flatnonzero(labels == 3)[:40]  # class 3 loses 40 points more
    model[broken] = 0
    losses = per_class.class_losses(labels, reference, model, ["a", "b", "c", "d", "e"])
    assert losses[0].name == "d" and losses[0].flagged
    assert losses[0].lost_points >= 40
    assert not any(c.flagged for c in losses[1:])
    # the same model against itself: nothing lost, nothing flagged
    same = per_class.class_losses(labels, model, model, ["a", "b", "c", "d", "e"])
    assert all(c.lost_points == 0 and not c.flagged for c in same)


def test_class_names_fall_back_to_indices():
    assert per_class.class_names(["cat", "dog"], 2) == ["cat", "dog"]
    assert per_class.class_names(None, 3) == ["0", "1", "2"]
    assert per_class.class_names(["cat"], 2) == ["0", "1"]
