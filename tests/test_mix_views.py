"""MixUp and CutMix as cached views: the teacher sees each mixed image, partner, λ and box are
stored per view and replayable, a cached view's pixels rebuild exactly and the teacher's target
matches the cache, and the label term mixes by the same λ (real CIFAR images)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import MODELS, SHARED_DATA

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.augment import CUTMIX, MIXUP, NO_MIX, Augmentation, mix_pixels
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.data import MIX_LABEL, MIX_LAMBDA, CachedBatches
from onnxkd.distill.losses import build_loss
from onnxkd.distill.trainer import distill
from onnxkd.errors import DataError, OnnxkdError

TEACHER = MODELS / "cifar10_resnet.onnx"
CIFAR = np.load(SHARED_DATA / "cifar10" / "cifar10-subset.npz")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    np.savez(
        tmp / "data.npz",
        x_train=CIFAR["x_train"][:200],
        y_train=CIFAR["y_train"][:200],
        x_test=CIFAR["x_test"][:100],
        y_test=CIFAR["y_test"][:100],
    )
    cfg = CacheConfig(
        TEACHER,
        DataRef(str(tmp / "data.npz")),
        out=tmp / "cache",
        workdir=tmp / "ws",
        views=3,
        augment="crop-flip",
        mix="mixup-cutmix",
        dtype="float32",
        threads=1,
    )
    cache_teacher(cfg, log=lambda s: None)
    return tmp, CacheReader(tmp / "cache")


def test_mix_parameters_are_replayable_and_follow_timm():
    aug = Augmentation("crop-flip", pad=4, seed=3, mix="mixup-cutmix")
    idx = np.arange(4000)
    p = aug.params(idx, 2, size=(32, 32), n=4000)
    np.testing.assert_array_equal(p, aug.params(idx, 2, size=(32, 32), n=4000))
    assert not np.array_equal(p["partner"], aug.params(idx, 3, size=(32, 32), n=4000)["partner"])
    assert (p["partner"] != idx).all() and (p["partner"] < 4000).all()
    cut, up = p["mix"] == CUTMIX, p["mix"] == MIXUP
    assert abs(cut.mean() - 0.5) < 0.03 and (cut | up).all()  # switch_prob 0.5, mix_prob 1
    # CutMix's λ is the share of own pixels the clipped box leaves (timm's correct_lam)
    np.testing.assert_allclose(p["lam"][cut], 1 - p["bh"][cut] * p["bw"][cut] / 1024, atol=1e-6)
    # MixUp's λ ~ Beta(0.8, 0.8): mean 1/2, variance 1/(4 (2α + 1)) = 0.0962
    assert abs(p["lam"][up].mean() - 0.5) < 0.03 and abs(p["lam"][up].var() - 0.0962) < 0.01
    half = Augmentation("crop", pad=2, mix="mixup", mix_prob=0.5).params(idx, 0, (8, 8), n=4000)
    unmixed = half["mix"] == NO_MIX
    assert abs(unmixed.mean() - 0.5) < 0.03
    assert (half["lam"][unmixed] == 1).all() and (half["partner"][unmixed] == idx[unmixed]).all()


def test_mix_pixels_against_a_loop():
    rng = np.random.default_rng(0)
    own, other = rng.integers(0, 256, (2, 5, 6, 7, 3), dtype=np.uint8)
    p = np.zeros(5, Augmentation(mix="mixup").param_dtype)
    p["mix"] = [NO_MIX, MIXUP, CUTMIX, CUTMIX, MIXUP]
    p["lam"] = [1.0, 0.3, 0.5, 1.0, 0.9]
    p["by"], p["bx"], p["bh"], p["bw"] = (
        [0, 0, 1, 0, 0],
        [0, 0, 2, 0, 0],
        [0, 0, 3, 0, 0],
        [0, 0, 4, 0, 0],
    )
    got = mix_pixels(own, other, p)
    for i in range(5):
        want = own[i].astype(np.float32)
        if p["mix"][i] == MIXUP:
            want = p["lam"][i] * want + (1 - p["lam"][i]) * other[i]
        elif p["mix"][i] == CUTMIX:
            y, x, h, w = p["by"][i], p["bx"][i], p["bh"][i], p["bw"][i]
            want[y : y + h, x : x + w] = other[i, y : y + h, x : x + w]
        np.testing.assert_allclose(got[i], want, rtol=1e-6)


def test_a_cached_mixed_view_rebuilds_exactly_and_the_teacher_agrees(mixed):
    """Pixels rebuilt from the stored partner, λ and box (and each sample's own stored crop
    and flip) are the teacher's input: run again, it gives the cached scores."""
    _, cache = mixed
    section = cache.section("train")
    source = cache.open_data("train", None, 1)
    session = ort.InferenceSession(str(TEACHER), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    idx = np.array([0, 17, 63, 150, 199])
    base = Augmentation("crop-flip", pad=4)
    for view in range(3):
        p = section.aug_params(idx, view)
        partner = section.aug_params(p["partner"], view)
        raw = CIFAR["x_train"][:200]
        want = mix_pixels(base.apply(raw[idx], p), base.apply(raw[p["partner"]], partner), p)
        rebuilt = section.raw_view(source, idx, view)
        np.testing.assert_array_equal(rebuilt, want)
        scores = session.run(None, {name: cache.input_spec.apply(rebuilt)})[0]
        np.testing.assert_allclose(scores, section.scores(idx, view), atol=1e-4)
        # and the parameters are those drawn afresh for (index, view, seed)
        drawn = section.augmentation.params(idx, view, size=(32, 32), n=200)
        np.testing.assert_array_equal(drawn, p)
    assert set(section.aug_params(np.arange(200), 0)["mix"]) == {MIXUP, CUTMIX}


def test_distill_batches_carry_the_partners_label_and_lambda(mixed):
    _, cache = mixed
    section = cache.section("train")
    batches = CachedBatches(section, cache.open_data("train", None, 1))
    idx = np.array([5, 3, 120])
    batch = batches.load(idx, 1)
    p = section.aug_params(idx, 1)
    np.testing.assert_array_equal(batch.teacher[MIX_LABEL], CIFAR["y_train"][p["partner"]])
    np.testing.assert_array_equal(batch.teacher[MIX_LAMBDA], p["lam"])
    # KD's label term: λ·CE(y) + (1 − λ)·CE(y'), the same λ as the pixels
    s = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    teacher = {k: torch.from_numpy(v) for k, v in batch.teacher.items()}
    y = torch.from_numpy(batch.labels)
    lam = teacher[MIX_LAMBDA]
    ce = lam * F.cross_entropy(s, y, reduction="none")
    ce += (1 - lam) * F.cross_entropy(s, teacher[MIX_LABEL], reduction="none")
    p_t = F.log_softmax(teacher["logits"] / 4, 1)
    kl = (p_t.exp() * (p_t - F.log_softmax(s / 4, 1))).sum(1).mean()
    expected = 0.1 * ce.mean() + 0.9 * 16 * kl
    assert float(build_loss("kd")({"logits": s}, teacher, y)) == pytest.approx(float(expected))


def test_kd_trains_on_mixed_views_and_dkd_online_are_refused(mixed, tmp_path):
    tmp, _ = mixed
    common = {
        "student": "small_cnn",
        "cache": tmp / "cache",
        "epochs": 1,
        "batch_size": 32,
        "threads": 1,
        "workdir": tmp / "ws",
        "export": False,
    }
    result = distill(DistillConfig(**common, out=tmp_path / "kd"), log=lambda s: None)
    assert np.isfinite(result.history[-1]["train_loss"])
    for extra, message in (
        ({"loss": "dkd"}, "decouples at one label per sample"),
        ({"online": True}, "drop --online"),
    ):
        with pytest.raises(OnnxkdError, match=message):
            distill(DistillConfig(**common, **extra, out=tmp_path / "x"), log=lambda s: None)
        assert not (tmp_path / "x").exists()  # refused before any run folder is made


def test_bad_mix_settings_are_refused():
    with pytest.raises(DataError, match="not one of none, mixup"):
        Augmentation("crop", mix="mixdown")
    with pytest.raises(DataError, match="must be > 0"):
        Augmentation("crop", mix="mixup", mixup_alpha=0)
    with pytest.raises(DataError, match="number of samples"):
        Augmentation("crop", mix="cutmix").params(np.arange(3), 0, (8, 8))


def test_cache_teacher_mixes_views_from_the_cli_and_refuses_a_bad_mix(cli, mixed, tmp_path):
    tmp, _ = mixed
    args = ("cache-teacher", str(TEACHER), "--data", str(tmp / "data.npz"), "--views", "2")
    bad = cli(*args, "--mix", "mixdown", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "mixdown" in bad.stderr
    assert not (tmp_path / "bad").exists()
    done = cli(*args, "--augment", "crop-flip", "--mix", "cutmix", "-o", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    assert "augment crop-flip + cutmix (mixup α 0.8, cutmix α 1.0, p 1.0)" in done.stdout
    section = CacheReader(tmp_path / "c").section("train")
    assert set(section.aug_params(np.arange(200), 1)["mix"]) == {CUTMIX}


def test_the_policy_alone_cannot_be_applied_to_mixed_views():
    aug = Augmentation("crop", pad=2, mix="mixup")
    with pytest.raises(DataError, match="read with their partners"):
        aug.view(np.zeros((2, 8, 8, 1), np.uint8), np.arange(2), 0)
