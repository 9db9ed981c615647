"""Replayable augmentation, the input spec, execution providers and the workspace."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from conftest import SHARED_DATA

from onnxkd.data.augment import Augmentation
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec, check_spec_fits, detect_layout
from onnxkd.errors import ProviderError, SpecError, WorkspaceError
from onnxkd.providers import resolve_provider
from onnxkd.workspace import Workspace


@pytest.fixture(scope="module")
def cifar():
    src = open_source(DataRef(str(SHARED_DATA / "cifar10" / "cifar10-subset.npz")))
    return src.read(np.arange(64))[0]


@pytest.mark.parametrize("policy", ["crop", "crop-flip", "strong"])
def test_a_view_is_a_pure_function_of_index_view_and_seed(cifar, policy):
    aug = Augmentation(policy, pad=4, seed=7)
    idx = np.arange(64)
    whole, params = aug.view(cifar, idx, view=3)
    # The same samples in another order and in pieces give the same pixels and parameters.
    order = np.random.default_rng(0).permutation(64)
    shuffled, p_shuffled = aug.view(cifar[order], idx[order], view=3)
    np.testing.assert_array_equal(shuffled, whole[order])
    np.testing.assert_array_equal(p_shuffled, params[order])
    first, _ = aug.view(cifar[:5], idx[:5], view=3)
    np.testing.assert_array_equal(first, whole[:5])
    # Stored parameters rebuild the pixels exactly.
    np.testing.assert_array_equal(aug.apply(cifar, params), whole)
    # Other views and other seeds differ.
    assert not np.array_equal(aug.view(cifar, idx, view=4)[0], whole)
    assert not np.array_equal(Augmentation(policy, pad=4, seed=8).view(cifar, idx, 3)[0], whole)


def test_crop_moves_pixels_within_the_padding(cifar):
    aug = Augmentation("crop", pad=4, seed=0)
    out, p = aug.view(cifar, np.arange(64), view=0)
    assert np.abs(p["dy"]).max() <= 4 and np.abs(p["dx"]).max() <= 4
    assert len(set(zip(p["dy"], p["dx"], strict=True))) > 10
    i = (
        int(np.flatnonzero((p["dy"] == 0) & (p["dx"] == 0))[0])
        if ((p["dy"] == 0) & (p["dx"] == 0)).any()
        else None
    )
    if i is not None:
        np.testing.assert_array_equal(out[i], cifar[i])
    j = int(np.flatnonzero(p["dy"] == 2)[0])
    dx = int(p["dx"][j])
    # Shifted down by 2: the crop's row r is the source row r + 2.
    src_cols = slice(max(dx, 0), 32 + min(dx, 0))
    dst_cols = slice(max(-dx, 0), 32 - max(dx, 0))
    np.testing.assert_array_equal(out[j, :30, dst_cols], cifar[j, 2:, src_cols])


def test_flip_rate_and_strong_changes_values(cifar):
    p = Augmentation("crop-flip", pad=4).params(np.arange(10_000), view=1)
    assert 0.47 < p["flip"].mean() < 0.53
    strong, _ = Augmentation("strong", pad=4).view(cifar, np.arange(64), 0)
    assert strong.dtype == np.float32 and strong.min() >= 0 and strong.max() <= 255
    assert (strong == 0).mean() > (cifar == 0).mean()  # cutout


def test_feature_vectors_cannot_be_cropped():
    with pytest.raises(Exception, match="feature vectors"):
        Augmentation("crop", pad=1).view(np.zeros((4, 64)), np.arange(4), 0)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        (["N", 3, 32, 32], "NCHW"),
        ([1, 32, 32, 3], "NHWC"),
        (["N", 1, 28, 28], "NCHW"),
        (["N", 28, 28, 1], "NHWC"),
        (["N", 28, 28], "NHW"),
        (["N", 64], "flat"),
        (["N", 3, 3, 3], None),
    ],
)
def test_layout_detection(shape, layout):
    assert detect_layout(shape) == layout


def test_spec_apply_matches_the_formula():
    spec = InputSpec("NCHW", (2, 2), 3, scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.1))
    raw = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
    x = spec.apply(raw)
    want = ((raw / 255 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.2, 0.1])).transpose(
        0, 3, 1, 2
    )
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)
    assert x.dtype == np.float32 and x.shape == (2, 3, 2, 2)
    assert InputSpec.from_json(spec.to_json()) == spec


def test_spec_errors_are_clear():
    with pytest.raises(SpecError, match="mean has 2 values; give 1 or one per channel"):
        InputSpec("NCHW", (8, 8), 3, mean=(0.1, 0.2))
    with pytest.raises(SpecError, match="unknown input-spec keys"):
        InputSpec.from_dict({"layout": "flat", "channels": 4, "colour": "red"})
    spec = InputSpec("NCHW", (8, 8), 1)
    with pytest.raises(SpecError, match="takes input"):
        check_spec_fits(spec, ["N", 1, 28, 28], "the teacher")
    with pytest.raises(SpecError, match="raw samples have shape"):
        spec.apply(np.zeros((1, 28, 28, 1)))


def test_unavailable_provider_names_the_package_and_what_exists():
    with pytest.raises(
        ProviderError,
        match="not in this onnxruntime build; available: cpu; install onnxruntime-gpu",
    ):
        resolve_provider("cuda")
    with mock.patch(
        "onnxruntime.get_available_providers",
        return_value=["CUDAExecutionProvider", "CPUExecutionProvider"],
    ):
        assert resolve_provider("CUDA").ort_name == "CUDAExecutionProvider"
    with pytest.raises(ProviderError, match="unknown execution provider 'gpu'"):
        resolve_provider("gpu")


def test_workspace_records_and_explains_what_is_missing(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="has no cache yet; run `onnxkd cache-teacher"):
        ws.latest("cache")
    (tmp_path / "c").mkdir()
    ws.record(cache=tmp_path / "c")
    assert ws.latest("cache") == (tmp_path / "c").resolve()
    (tmp_path / "c").rmdir()
    with pytest.raises(WorkspaceError, match="no longer exists"):
        ws.latest("cache")
