"""The typed cache manifest: caches written by the previous release (tests/fixtures) parse,
round-trip to the same JSON, verify, and train; bad manifests are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnxkd.cache.manifest import SCORES, TOPK_ARRAYS, Manifest
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.data import CachedBatches
from onnxkd.distill.trainer import distill
from onnxkd.errors import CacheError

FIXTURES = Path(__file__).parent / "fixtures"
PREVIOUS = ["cache-v1-digits", "cache-v1-digits-topk"]


@pytest.fixture
def old_cache(tmp_path, request) -> Path:
    """A copy of a cache written by the previous release (0.1.0 at 7ed33fa)."""
    return Path(shutil.copytree(FIXTURES / request.param, tmp_path / request.param))


@pytest.mark.parametrize("name", PREVIOUS)
def test_previous_release_manifest_round_trips_to_the_same_json(name):
    raw = json.loads((FIXTURES / name / "manifest.json").read_text())
    manifest = Manifest.from_dict(raw)
    assert manifest.to_dict() == raw
    assert manifest.complete and manifest.num_classes == 10
    assert manifest.section("train").views == 2 and manifest.section("eval").views == 1
    assert manifest.eval_teacher_accuracy == raw["sections"]["eval"]["teacher_accuracy"][0]


@pytest.mark.parametrize("old_cache", PREVIOUS, indirect=True)
def test_previous_release_cache_opens_and_verifies(old_cache):
    cache = CacheReader(old_cache)
    assert cache.verify() == []
    train = cache.section("train")
    scores = train.scores(np.arange(4), view=1)
    assert scores.shape == (4, 10) and np.isfinite(scores).all()


@pytest.mark.parametrize("old_cache", ["cache-v1-digits-topk"], indirect=True)
def test_batches_load_exactly_the_arrays_asked_for(old_cache):
    cache = CacheReader(old_cache)
    assert cache.manifest.arrays() == (SCORES, *TOPK_ARRAYS, "/Flatten_output_0")
    source = open_source(DataRef("digits"))
    keys = ("topk_values", "/Flatten_output_0")
    batch = CachedBatches(cache.section("train"), source, keys).load(np.array([7, 2, 9]), 1)
    assert set(batch.teacher) == set(keys)
    assert batch.teacher["/Flatten_output_0"].shape == (3, 64)
    assert batch.teacher["topk_values"].shape == (3, 3)


@pytest.mark.parametrize("old_cache", PREVIOUS, indirect=True)
def test_previous_release_cache_trains(old_cache, tmp_path):
    topk = old_cache.name.endswith("topk")
    cfg = DistillConfig(
        student="small_cnn",
        cache=old_cache,
        loss="kd_topk" if topk else "kd",
        hints=("stage2:/Flatten_output_0",) if topk else (),
        epochs=2,
        batch_size=64,
        threads=1,
        workdir=tmp_path / "ws",
        out=tmp_path / "run",
    )
    result = distill(cfg, log=lambda s: None)
    assert [r["view"] for r in result.history] == [0, 1]
    assert result.export["onnxruntime_accuracy"] > 0.5


def test_missing_arrays_are_named_in_one_message():
    manifest = CacheReader(FIXTURES / "cache-v1-digits", check_arrays=False).manifest
    problem = manifest.missing_arrays(("logits", "residual", "/x"), "loss 'mine'", "C")
    assert "\n" not in problem  # both reasons in one line
    assert "loss 'mine' needs a top-k cache (residual); C stores every class" in problem
    assert "no teacher feature '/x'; cached features: []" in problem
    assert manifest.missing_arrays(("logits",), "loss 'kd'", "C") is None


def test_a_newer_format_version_is_refused(tmp_path):
    cache = Path(shutil.copytree(FIXTURES / "cache-v1-digits", tmp_path / "c"))
    raw = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**raw, "version": 99}))
    with pytest.raises(CacheError, match=r"has format onnxkd-cache v99; this onnxkd reads .*v1"):
        CacheReader(cache)


def test_a_manifest_missing_a_field_is_refused_naming_it(tmp_path):
    cache = Path(shutil.copytree(FIXTURES / "cache-v1-digits", tmp_path / "c"))
    raw = json.loads((cache / "manifest.json").read_text())
    del raw["targets"]
    (cache / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CacheError, match=r"is malformed \(KeyError: 'targets'\)"):
        CacheReader(cache)
