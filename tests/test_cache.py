"""The cache: contents equal the teacher run directly, top-k, views, sharding, integrity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from teachers import build_dynamic_nchw

from onnxkd.cache.build import CacheConfig, cache_teacher, finalize
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.spec import SpecOptions
from onnxkd.errors import CacheError

DIGITS_SPEC = SpecOptions(scale=1 / 16)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return build_dynamic_nchw(tmp_path_factory.mktemp("teacher"))


def make(teacher: Path, out: Path, **kw) -> CacheReader:
    cfg = CacheConfig(
        teacher, DataRef("digits"), out=out, spec=DIGITS_SPEC, workdir=out.parent / "ws", **kw
    )
    cache_teacher(cfg, log=lambda s: None)
    return CacheReader(out)


def direct(teacher: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_full_targets_equal_the_teacher_on_every_view(teacher, tmp_path):
    cache = make(teacher, tmp_path / "c", views=3, augment="crop", dtype="float32", batch_size=100)
    train = cache.section("train")
    source = open_source(DataRef("digits"))
    cache.check_data(source)
    idx = np.arange(train.n)
    labels = source.read(idx)[1]
    accs = cache.manifest.to_dict()["sections"]["train"]["teacher_accuracy"]
    for view in range(3):
        expected = direct(teacher, train.model_input(source, idx, view))
        np.testing.assert_allclose(train.scores(idx, view), expected, rtol=1e-5, atol=1e-5)
        assert (train.argmax(idx, view) == expected.argmax(1)).all()
        assert accs[view] == pytest.approx((expected.argmax(1) == labels).mean(), abs=1e-6)
    assert not np.array_equal(train.aug_params(idx, 1), train.aug_params(idx, 2))
    np.testing.assert_array_equal(train.labels(), source.read(idx)[1])
    manifest = cache.manifest.to_dict()
    assert manifest["sections"]["eval"]["views"] == 1
    assert manifest["sections"]["eval"]["augmentation"]["policy"] == "none"
    assert manifest["sections"]["eval"]["teacher_accuracy"][0] > 0.8


def test_float16_default_is_close_and_smaller(teacher, tmp_path):
    full = make(teacher, tmp_path / "f32", dtype="float32").section("train")
    half = make(teacher, tmp_path / "f16").section("train")
    idx = np.arange(full.n)
    np.testing.assert_allclose(half.scores(idx, 0), full.scores(idx, 0), rtol=2e-3, atol=2e-2)
    assert half.meta.to_dict()["parts"][0]["files"]["targets.npy"]["dtype"] == "float16"


def test_topk_keeps_the_top_classes_and_the_residual_mass(teacher, tmp_path):
    full = make(teacher, tmp_path / "full", dtype="float32").section("train")
    top = make(teacher, tmp_path / "top", dtype="float32", topk=3).section("train")
    idx = np.arange(200)
    exact = full.log_probs(idx, 0)
    values, classes, residual = top.topk(idx, 0)
    np.testing.assert_array_equal(classes, np.argsort(-exact, axis=1)[:, :3])
    np.testing.assert_allclose(values, np.take_along_axis(exact, classes, 1), atol=1e-5)
    outside = 1 - np.exp(np.take_along_axis(exact, classes, 1)).sum(1)
    np.testing.assert_allclose(residual, outside, atol=1e-5)
    for temperature in (1.0, 4.0):
        rebuilt = np.exp(top.log_probs(idx, 0, temperature))
        np.testing.assert_allclose(rebuilt.sum(1), 1.0, atol=1e-5)
        assert (rebuilt.argmax(1) == exact.argmax(1)).all()
    # At T=1 the reconstruction keeps the top-k probabilities exactly.
    np.testing.assert_allclose(
        np.take_along_axis(np.exp(top.log_probs(idx, 0)), classes, 1),
        np.exp(values),
        atol=1e-5,
    )


def test_sharded_cache_equals_the_unsharded_one(teacher, tmp_path):
    whole = make(teacher, tmp_path / "whole", views=2, augment="crop", batch_size=64)
    out = tmp_path / "sharded"
    for i in range(3):
        cfg = CacheConfig(
            teacher,
            DataRef("digits"),
            out=out,
            spec=DIGITS_SPEC,
            views=2,
            augment="crop",
            batch_size=64,
            shard=(i, 3),
            workdir=tmp_path / "ws",
        )
        result = cache_teacher(cfg, log=lambda s: None)
        assert result.complete == (i == 2)
        if i < 2:
            with pytest.raises(CacheError, match="incomplete"):
                CacheReader(out)
    sharded = CacheReader(out)
    assert sharded.verify() == []
    for section in ("train", "eval"):
        a, b = whole.section(section), sharded.section(section)
        idx = np.random.default_rng(0).permutation(a.n)
        for view in range(a.views):
            np.testing.assert_array_equal(a.scores(idx, view), b.scores(idx, view))
            np.testing.assert_array_equal(a.aug_params(idx, view), b.aug_params(idx, view))
    assert finalize(out) == sharded.manifest


def test_rerun_is_a_no_op_and_other_inputs_are_refused(teacher, tmp_path):
    out = tmp_path / "c"
    make(teacher, out)
    before = (out / "manifest.json").read_text()
    make(teacher, out)
    assert (out / "manifest.json").read_text() == before
    with pytest.raises(CacheError, match="other inputs.*differs in: .*views"):
        make(teacher, out, views=2)
    replaced = make(teacher, out, views=2, augment="crop", overwrite=True)
    assert replaced.section("train").views == 2 and replaced.verify() == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(CacheError, match="not an onnxkd cache; refusing"):
        make(teacher, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_verify_finds_a_corrupted_array(teacher, tmp_path):
    cache = make(teacher, tmp_path / "c")
    path = tmp_path / "c" / "train" / "part-0-of-1" / "targets.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    unchecked = CacheReader(tmp_path / "c", check_arrays=False)  # as cache-info opens it
    assert any("checksum" in p for p in unchecked.verify())
    assert cache.section("train").n > 0
    with pytest.raises(CacheError, match="targets.npy does not match its checksum"):
        CacheReader(tmp_path / "c")  # every reader of arrays refuses it


def test_data_that_differs_from_the_cache_is_refused(teacher, tmp_path):
    cache = make(teacher, tmp_path / "c")
    other = open_source(DataRef("digits", split_seed=1))
    with pytest.raises(CacheError, match="fingerprints differ"):
        cache.check_data(other)


def test_features_are_cached_pooled(teacher, tmp_path):
    import onnx

    model = onnx.load(str(teacher))
    relu = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    notes = []
    cfg = CacheConfig(
        teacher,
        DataRef("digits"),
        out=tmp_path / "c",
        spec=DIGITS_SPEC,
        workdir=tmp_path / "ws",
        features=(relu,),
        feature_pool="avg",
    )
    cache_teacher(cfg, log=notes.append)
    assert any(n.startswith("features will take") and "MiB on disk" in n for n in notes)
    cache = CacheReader(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    shape = manifest["features"][relu]["shape"]
    assert len(shape) == 1  # pooled to one value per channel
    feats = cache.section("train").features(relu, np.arange(5), 0)
    assert feats.shape == (5, shape[0]) and np.isfinite(feats).all()
