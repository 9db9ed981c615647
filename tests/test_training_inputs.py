"""What the student trains on, recorded inside a real `distill` run: each batch row is the exact
input the teacher saw for the targets beside it (a mixed view's mixed pixels, not the sample's
own), and CRD's memory index is that row's dataset index, not its position in the batch.

Both were checked once by planting the bug (the clean image in `CachedBatches.load`; batch
positions as `sample_index`): each test below then fails.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import MODELS, SHARED_DATA

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.source import DataRef
from onnxkd.distill import objective
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.data import SAMPLE_INDEX
from onnxkd.distill.trainer import distill

CIFAR = np.load(SHARED_DATA / "cifar10" / "cifar10-subset.npz")
DIGITS_FEATURE = "/features/features.5/Relu_output_0"


@pytest.fixture
def recorded(monkeypatch):
    """Every training batch DistillModule sees: (input, teacher arrays), as numpy."""
    batches: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    forward = objective.DistillModule.forward

    def recording(self, x, teacher, labels):
        if self.training:
            batches.append(
                (x.detach().numpy().copy(), {k: v.numpy().copy() for k, v in teacher.items()})
            )
        return forward(self, x, teacher, labels)

    monkeypatch.setattr(objective.DistillModule, "forward", recording)
    return batches


def _run(cache, tmp_path, **kw) -> None:
    torch.set_num_threads(1)
    cfg = DistillConfig(
        student="small_cnn",
        cache=cache,
        workdir=tmp_path / "ws",
        out=tmp_path / "run",
        batch_size=32,
        threads=1,
        export=False,
        **kw,
    )
    distill(cfg, log=lambda s: None)


def test_the_student_sees_the_mixed_pixels_the_teacher_scored(tmp_path, recorded):
    np.savez(
        tmp_path / "data.npz",
        x_train=CIFAR["x_train"][:160],
        y_train=CIFAR["y_train"][:160],
        x_test=CIFAR["x_test"][:64],
        y_test=CIFAR["y_test"][:64],
    )
    teacher = MODELS / "cifar10_resnet.onnx"
    cache = cache_teacher(
        CacheConfig(
            teacher,
            DataRef(str(tmp_path / "data.npz")),
            workdir=tmp_path / "ws",
            views=2,
            augment="crop-flip",
            mix="mixup-cutmix",
            dtype="float32",
            threads=1,
        ),
        log=lambda s: None,
    ).path
    _run(cache, tmp_path, epochs=2)
    session = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    assert len(recorded) >= 8  # 2 epochs of 144 training samples in batches of 32
    for x, arrays in recorded:
        # the teacher, run again on exactly what the student got, gives the targets beside it
        np.testing.assert_allclose(session.run(None, {name: x})[0], arrays["logits"], atol=1e-4)
        assert (arrays["mix_lambda"] < 1).any()  # these rows are mixed images


def test_crd_indexes_its_memory_by_each_rows_dataset_index(tmp_path, recorded):
    cache = cache_teacher(
        CacheConfig(
            MODELS / "digits_cnn.onnx",
            DataRef("digits"),
            workdir=tmp_path / "ws",
            views=2,
            augment="crop",
            features=(DIGITS_FEATURE,),
            dtype="float32",
            threads=1,
        ),
        log=lambda s: None,
    ).path
    _run(cache, tmp_path, epochs=2, crd=f"embedding:{DIGITS_FEATURE}")
    reader = CacheReader(cache)
    section = reader.section("train")
    source = reader.open_data("train", None, 1)
    seen = []
    for epoch, batches in enumerate(_by_epoch(recorded, section.n)):
        for x, arrays in batches:
            idx = arrays[SAMPLE_INDEX].astype(np.int64)
            seen.append(idx)
            view = epoch % section.views
            np.testing.assert_array_equal(x, section.model_input(source, idx, view))
            np.testing.assert_array_equal(arrays["logits"], section.scores(idx, view))
    seen = np.concatenate(seen)
    # shuffled dataset indices, each once per epoch: batch positions would repeat 0..31
    assert len(np.unique(seen)) > 32 and not (seen[:32] == np.arange(32)).all()


def _by_epoch(recorded, n):
    """The recorded batches split into epochs: each epoch sees each training member once."""
    epochs, current, count = [], [], 0
    per_epoch = sum(len(a[SAMPLE_INDEX]) for _, a in recorded) // 2
    for x, arrays in recorded:
        current.append((x, arrays))
        count += len(arrays[SAMPLE_INDEX])
        if count >= per_epoch:
            epochs.append(current)
            current, count = [], 0
    assert per_epoch < n and len(epochs) == 2
    return epochs
