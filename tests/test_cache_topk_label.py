"""Top-k caches keep the label class's teacher log-prob: encoding on fixed scores, the
reconstruction of the other classes, and a small cache built from a teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from teachers import build_dynamic_nchw

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.manifest import LABEL_VALUE, SCORES, TOPK_ARRAYS, Manifest
from onnxkd.cache.reader import CacheReader, rebuild_log_probs
from onnxkd.cache.writer import TargetLayout
from onnxkd.data.source import DataRef
from onnxkd.data.spec import SpecOptions
from onnxkd.errors import CacheError

FIXTURES = Path(__file__).parent / "fixtures"

# Two samples over 6 classes, as probabilities; top 2 of the first: classes 2, 0; of the
# second: classes 1, 4.
PROBS = np.array(
    [[0.20, 0.05, 0.50, 0.10, 0.10, 0.05], [0.02, 0.60, 0.08, 0.10, 0.15, 0.05]],
    dtype=np.float32,
)
LOGITS = np.log(PROBS) + np.array([[3.0], [-1.0]], dtype=np.float32)  # softmax: PROBS


def layout(k: int = 2, num_classes: int = 6) -> TargetLayout:
    return TargetLayout(
        output="logits",
        kind="logits",
        from_probs=False,
        num_classes=num_classes,
        topk=k,
        dtype="float32",
        features={},
        feature_pool="none",
    )


def encode_and_rebuild(labels: list[int], k: int = 2) -> tuple[dict, np.ndarray]:
    labels = np.array(labels)
    enc = layout(k).encode(LOGITS, labels)
    lp = rebuild_log_probs(
        enc["topk_values.npy"],
        enc["topk_indices.npy"],
        enc["residual.npy"],
        6,
        labels,
        enc["label_value.npy"],
    )
    return enc, lp


def test_label_outside_the_top_k_is_kept_and_left_out_of_the_residual():
    enc, lp = encode_and_rebuild([3, 0])  # neither label is in its sample's top 2
    np.testing.assert_array_equal(enc["topk_indices.npy"], [[2, 0], [1, 4]])
    np.testing.assert_allclose(enc["label_value.npy"], np.log([0.10, 0.02]), rtol=1e-6)
    # 1 − top 2 − label: 1 − .7 − .1 and 1 − .75 − .02
    np.testing.assert_allclose(enc["residual.npy"], [0.20, 0.23], rtol=1e-5)
    # The residual is spread over the C − k − 1 = 3 classes neither stored nor the label.
    expected = np.array(
        [
            [0.20, 0.20 / 3, 0.50, 0.10, 0.20 / 3, 0.20 / 3],
            [0.02, 0.60, 0.23 / 3, 0.23 / 3, 0.15, 0.23 / 3],
        ]
    )
    np.testing.assert_allclose(np.exp(lp), expected, rtol=1e-5)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-6)


def test_label_inside_the_top_k_leaves_the_residual_to_the_other_classes():
    enc, lp = encode_and_rebuild([2, 4])  # each label is in its sample's top 2
    np.testing.assert_allclose(enc["label_value.npy"], np.log([0.50, 0.15]), rtol=1e-6)
    np.testing.assert_allclose(enc["residual.npy"], [0.30, 0.25], rtol=1e-5)
    # Spread over the C − k = 4 classes outside the top 2, as without a label.
    expected = np.array(
        [
            [0.20, 0.30 / 4, 0.50, 0.30 / 4, 0.30 / 4, 0.30 / 4],
            [0.25 / 4, 0.60, 0.25 / 4, 0.25 / 4, 0.15, 0.25 / 4],
        ]
    )
    np.testing.assert_allclose(np.exp(lp), expected, rtol=1e-5)


@pytest.mark.parametrize("labels", [[3, 0], [2, 4], [0, 5], [5, 1]])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_reconstruction_is_exact_at_the_top_k_and_the_label_and_sums_to_one(labels, k):
    labels = np.array(labels)
    enc = layout(k).encode(LOGITS, labels)
    values, classes = enc["topk_values.npy"], enc["topk_indices.npy"]
    top = np.take_along_axis(PROBS, classes, axis=1).sum(axis=1)
    label_p = PROBS[np.arange(2), labels]
    outside = (classes != labels[:, None]).all(axis=1)
    np.testing.assert_allclose(
        top + np.where(outside, label_p, 0) + enc["residual.npy"], 1.0, rtol=1e-6
    )
    lp = rebuild_log_probs(values, classes, enc["residual.npy"], 6, labels, enc["label_value.npy"])
    exact = np.log(PROBS)
    np.testing.assert_allclose(np.take_along_axis(lp, classes, 1), values, rtol=0, atol=0)
    np.testing.assert_allclose(np.take_along_axis(lp, classes, 1), exact[[[0], [1]], classes], 1e-5)
    np.testing.assert_allclose(lp[np.arange(2), labels], exact[np.arange(2), labels], rtol=1e-5)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-6)
    # The rest hold equal shares of the residual (none left where k = C − 1, label outside).
    rest = np.ones_like(PROBS, dtype=bool)
    np.put_along_axis(rest, classes, False, axis=1)
    rest[np.arange(2), labels] = False
    for row in range(2):
        if rest[row].any():
            share = enc["residual.npy"][row] / rest[row].sum()
            np.testing.assert_allclose(np.exp(lp[row, rest[row]]), share, rtol=1e-5)


def test_probability_teachers_store_the_label_log_prob():
    probs_layout = TargetLayout("p", "log_probs", True, 6, 2, "float32", {}, "none")
    enc = probs_layout.encode(PROBS, np.array([3, 1]))
    np.testing.assert_allclose(enc["label_value.npy"], np.log([0.10, 0.60]), rtol=1e-5)


def test_a_topk_layout_has_a_label_value_array_per_view_and_sample():
    arrays = layout().arrays(n=7, views=3)
    assert arrays["label_value.npy"] == ((3, 7), np.dtype(np.float32))
    full = TargetLayout("logits", "logits", False, 6, None, "float32", {}, "none")
    assert "label_value.npy" not in full.arrays(n=7, views=3)


def test_an_old_topk_manifest_reads_without_the_label_and_round_trips():
    raw = json.loads((FIXTURES / "cache-v1-digits-topk" / "manifest.json").read_text())
    manifest = Manifest.from_dict(raw)
    assert not manifest.targets.keeps_label
    assert LABEL_VALUE not in manifest.arrays()
    assert manifest.to_dict() == raw
    problem = manifest.missing_arrays((LABEL_VALUE,), "loss 'mine'", "C")
    assert problem == (
        "loss 'mine' needs the label's teacher score (label_value); C is a top-k cache written "
        "before top-k caches kept it (write a new one with cache-teacher -o another folder)"
    )
    full = Manifest.from_dict(
        json.loads((FIXTURES / "cache-v1-digits" / "manifest.json").read_text())
    )
    assert "needs a top-k cache (label_value)" in full.missing_arrays((LABEL_VALUE,), "x", "C")


def test_an_old_topk_cache_keeps_the_old_reconstruction(tmp_path):
    path = shutil.copytree(FIXTURES / "cache-v1-digits-topk", tmp_path / "old")
    train = CacheReader(path).section("train")
    idx = np.arange(50)
    values, classes, residual = train.topk(idx, 0)
    np.testing.assert_array_equal(
        train.scores(idx, 0), rebuild_log_probs(values, classes, residual, 10)
    )
    with pytest.raises(CacheError, match="only a top-k cache keeps label_value"):
        train.label_value(idx, 0)


@pytest.fixture(scope="module")
def topk_cache(tmp_path_factory) -> CacheReader:
    """Top-1 (so that the label is outside it wherever the teacher is wrong), two views."""
    tmp = tmp_path_factory.mktemp("topk-label")
    teacher = build_dynamic_nchw(tmp)
    cfg = CacheConfig(
        teacher,
        DataRef("digits"),
        out=tmp / "cache",
        spec=SpecOptions(scale=1 / 16),
        topk=1,
        views=2,
        augment="crop",
        dtype="float32",
        threads=1,
        workdir=tmp / "ws",
    )
    cache_teacher(cfg, log=lambda s: None)
    cache = CacheReader(tmp / "cache")
    cache.teacher_path = teacher
    return cache


def _teacher_log_probs(teacher: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    z = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_a_topk_cache_keeps_the_teachers_label_log_prob_on_every_view(topk_cache):
    assert topk_cache.manifest.targets.keeps_label
    assert topk_cache.manifest.to_dict()["targets"]["keeps_label"] is True
    assert topk_cache.manifest.arrays() == (SCORES, *TOPK_ARRAYS, LABEL_VALUE)
    for name in topk_cache.sections:
        section, source = topk_cache.section(name), topk_cache.open_data(name)
        idx = np.arange(section.n)
        labels = section.labels(idx)
        for view in range(section.views):
            exact = _teacher_log_probs(
                topk_cache.teacher_path, section.model_input(source, idx, view)
            )
            arrays = section.teacher_arrays((SCORES, *TOPK_ARRAYS, LABEL_VALUE), idx, view)
            np.testing.assert_allclose(
                arrays[LABEL_VALUE], exact[idx, labels], rtol=1e-5, atol=1e-5
            )
            # Served as before: the residual is the mass outside the top k, label included.
            top = np.take_along_axis(exact, arrays["topk_indices"], 1)
            np.testing.assert_allclose(arrays["residual"], 1 - np.exp(top).sum(1), atol=1e-5)
            rebuilt = arrays[SCORES]
            np.testing.assert_allclose(rebuilt[idx, labels], exact[idx, labels], atol=1e-5)
            np.testing.assert_allclose(np.exp(rebuilt).sum(1), 1.0, atol=1e-5)
    # The cache holds samples with the label inside the top 1 and outside it.
    train = topk_cache.section("train")
    wrong = train.argmax(np.arange(train.n), 1) != train.labels()
    assert 0 < wrong.sum() < train.n
