"""Unlabeled data: sources without labels (an .npz of samples alone, a folder of photos
without class folders, a file list of paths), their caches, KD's α = 1 on unlabeled rows, and
semi-supervised distillation (`distill --cache LABELED --unlabeled MORE`) on real CIFAR images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MODELS, SHARED_DATA
from PIL import Image

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import UNLABELED, DataRef, is_labeled
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.data import CachedBatches, JoinedBatches
from onnxkd.distill.losses import build_loss
from onnxkd.distill.trainer import distill
from onnxkd.errors import DataError, MissingSplitError, OnnxkdError

TEACHER = MODELS / "cifar10_resnet.onnx"
CIFAR = np.load(SHARED_DATA / "cifar10" / "cifar10-subset.npz")


def _cache(tmp: Path, data: Path, name: str, **kw) -> Path:
    out = tmp / name
    cfg = CacheConfig(TEACHER, DataRef(str(data)), out=out, workdir=tmp / "ws", threads=1, **kw)
    cache_teacher(cfg, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    """300 labeled CIFAR training images (with the test split) and 400 more without labels."""
    tmp = tmp_path_factory.mktemp("unlabeled")
    np.savez(
        tmp / "labeled.npz",
        x_train=CIFAR["x_train"][:300],
        y_train=CIFAR["y_train"][:300],
        x_test=CIFAR["x_test"][:200],
        y_test=CIFAR["y_test"][:200],
    )
    np.savez(tmp / "more.npz", x=CIFAR["x_train"][300:700])
    views = {"views": 2, "augment": "crop-flip"}
    return {
        "tmp": tmp,
        "labeled": _cache(tmp, tmp / "labeled.npz", "labeled", **views),
        "more": _cache(tmp, tmp / "more.npz", "more", **views),
    }


def test_an_npz_of_samples_alone_is_an_unlabeled_train_split(tmp_path):
    np.savez(tmp_path / "x.npz", images=CIFAR["x_train"][:5])
    source = open_source(DataRef(str(tmp_path / "x.npz")))
    assert not is_labeled(source) and len(source) == 5  # no holdout: every sample trains
    assert (source.read(np.arange(5))[1] == UNLABELED).all()
    with pytest.raises(MissingSplitError, match="a test split needs labels"):
        open_source(DataRef(str(tmp_path / "x.npz"), split="test"))
    np.savez(tmp_path / "native.npz", x_train=CIFAR["x_train"][:3])
    assert not is_labeled(open_source(DataRef(str(tmp_path / "native.npz"))))


def test_a_folder_of_photos_without_class_folders_and_a_list_of_paths(tmp_path):
    for i in range(4):
        Image.fromarray(CIFAR["x_train"][i]).save(tmp_path / f"p{i}.png")
    source = open_source(DataRef(str(tmp_path)))
    assert not is_labeled(source) and len(source) == 4
    assert (source.read(np.arange(4))[1] == UNLABELED).all()
    with pytest.raises(MissingSplitError, match="unlabeled"):
        open_source(DataRef(str(tmp_path), split="test"))
    listing = tmp_path / "list.csv"
    listing.write_text("path\np0.png\np1.png\np2.png\n")
    listed = open_source(DataRef(str(listing)))
    assert not is_labeled(listed) and len(listed) == 3
    listing.write_text("p0.png,cat\np1.png\n")
    with pytest.raises(DataError, match="some rows have a label and some do not"):
        open_source(DataRef(str(listing)))


def test_an_unlabeled_cache_has_no_accuracy_and_no_eval_section(caches):
    cache = CacheReader(caches["more"])
    assert cache.sections == ["train"] and not cache.section("train").labeled
    assert cache.manifest.section("train").teacher_accuracy == ()
    assert (cache.section("train").labels(np.arange(400)) == UNLABELED).all()


def test_a_topk_cache_of_unlabeled_data_rebuilds_as_one_without_labels(caches, tmp_path):
    """The writer keeps the top-1 class's value for an unlabeled sample, so the rebuilt
    log-probs are exact at the top k and spread the rest over the other C - k classes."""
    data = caches["tmp"] / "more.npz"
    topk = CacheReader(_cache(tmp_path, data, "topk", topk=3, dtype="float32"))
    full = CacheReader(_cache(tmp_path, data, "full", dtype="float32"))
    idx = np.arange(0, 400, 7)
    rebuilt = topk.section("train").scores(idx, 0)
    exact = full.section("train").log_probs(idx, 0)
    top = np.argsort(-exact, axis=1)[:, :3]
    np.testing.assert_allclose(
        np.take_along_axis(rebuilt, top, 1), np.take_along_axis(exact, top, 1), atol=1e-5
    )
    np.testing.assert_allclose(np.exp(rebuilt).sum(axis=1), 1.0, atol=1e-5)
    values, classes, residual = topk.section("train").topk(idx, 0)
    rest = 1 - np.exp(np.take_along_axis(exact, top, 1)).sum(axis=1)
    np.testing.assert_allclose(residual, rest, atol=1e-5)


def test_kd_takes_the_teachers_targets_alone_on_unlabeled_rows():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.tensor([3, UNLABELED, 1, UNLABELED, 0, 9])
    kd = build_loss("kd", alpha=0.7, temperature=2.0)
    p = F.log_softmax(t / 2, 1)
    kl = (p.exp() * (p - F.log_softmax(s / 2, 1))).sum(1) * 4
    ce = F.cross_entropy(s, y.clamp_min(0), reduction="none")
    alpha = torch.tensor([0.7, 1, 0.7, 1, 0.7, 0.7])
    expected = ((1 - alpha) * ce + alpha * kl).mean()
    got = kd({"logits": s}, {"logits": t}, y)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    labeled = y >= 0  # all-labeled batches are classic KD
    plain = kd({"logits": s[labeled]}, {"logits": t[labeled]}, y[labeled])
    assert float(plain) == pytest.approx(float(((0.3 * ce + 0.7 * kl)[labeled]).mean()), rel=1e-6)


def test_joined_batches_shuffle_both_caches_and_hide_the_extra_labels(caches):
    labeled, more = CacheReader(caches["labeled"]), CacheReader(caches["more"])
    parts = [
        CachedBatches(
            labeled.section("train"),
            labeled.open_data("train", None, 1),
            members=np.arange(0, 300, 2),
        ),
        CachedBatches(more.section("train"), more.open_data("train", None, 1)),
    ]
    joined = JoinedBatches(parts)
    assert len(joined) == 150 + 400 and joined.total == 700
    seen = np.concatenate([b.indices for b in joined.epoch(1, 64, seed=3)])
    assert sorted(seen.tolist()) == sorted([*range(0, 300, 2), *range(300, 700)])
    batch = joined.load(np.array([302, 4, 699]), 1)
    assert batch.labels.tolist() == [UNLABELED, int(CIFAR["y_train"][4]), UNLABELED]
    direct = parts[1].load(np.array([2, 399]), 1)
    np.testing.assert_array_equal(batch.x[[0, 2]], direct.x)
    np.testing.assert_array_equal(batch.teacher["logits"][[0, 2]], direct.teacher["logits"])


def test_semi_supervised_distill_validates_on_labeled_data_only(caches, tmp_path):
    cfg = DistillConfig(
        student="small_cnn",
        cache=caches["labeled"],
        unlabeled=(caches["more"],),
        epochs=1,
        batch_size=64,
        threads=1,
        out=tmp_path / "run",
        workdir=caches["tmp"] / "ws",
        export=False,
    )
    result = distill(cfg, log=lambda s: None)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["unlabeled"] == [str(caches["more"])]
    assert record["validation"]["count"] == 30  # 10% of the 300 labeled samples
    assert np.isfinite(result.history[-1]["train_loss"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cache": "more"}, "holds no labels: pass it as --unlabeled"),
        ({"unlabeled": ("labeled",)}, "is the --cache itself"),
        ({"unlabeled": ("more",), "loss": "dkd"}, "loss dkd needs one on every sample"),
        ({"unlabeled": ("more",), "loss": "ce"}, "loss ce needs one on every sample"),
    ],
)
def test_unusable_unlabeled_settings_are_refused_in_one_line(caches, tmp_path, settings, message):
    named = {
        k: caches[v] if isinstance(v, str) and k == "cache" else v for k, v in settings.items()
    }
    if "unlabeled" in named:
        named["unlabeled"] = tuple(caches[n] for n in named["unlabeled"])
    cfg = DistillConfig(
        **{"student": "small_cnn", "cache": caches["labeled"], **named},
        epochs=1,
        threads=1,
        out=tmp_path / "run",
        workdir=caches["tmp"] / "ws",
    )
    with pytest.raises(OnnxkdError, match=message):
        distill(cfg, log=lambda s: None)


def test_a_resumed_semi_supervised_run_keeps_its_unlabeled_caches(caches, tmp_path):
    common = {
        "student": "small_cnn",
        "cache": caches["labeled"],
        "batch_size": 64,
        "threads": 1,
        "out": tmp_path / "run",
        "workdir": caches["tmp"] / "ws",
        "export": False,
    }
    distill(DistillConfig(**common, unlabeled=(caches["more"],), epochs=1), log=lambda s: None)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["unlabeled_keys"] == [CacheReader(caches["more"]).key]
    resumed = distill(DistillConfig(**common, epochs=2, resume=True), log=lambda s: None)
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    record["unlabeled_keys"] = ["0" * 64]
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    with pytest.raises(OnnxkdError, match="--unlabeled caches are not the ones"):
        distill(DistillConfig(**common, epochs=3, resume=True), log=lambda s: None)


def test_the_cli_takes_unlabeled_caches_and_refuses_an_unlabeled_main_cache(cli, caches):
    common = ("--student", "small_cnn", "--threads", "1", "--epochs", "1", "--no-export")
    where = ("--workdir", str(caches["tmp"] / "cli-ws"))
    refused = cli("distill", "--cache", str(caches["more"]), *common, *where)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "holds no labels: pass it as --unlabeled" in refused.stderr
    done = cli(
        "distill",
        "--cache",
        str(caches["labeled"]),
        "--unlabeled",
        str(caches["more"]),
        *common,
        *where,
        "--batch-size",
        "64",
    )
    assert done.returncode == 0, done.stderr
    assert "plus every sample of 1 unlabeled cache(s), without labels" in done.stdout + done.stderr
