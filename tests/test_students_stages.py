"""Every registered image student through the stages after distill: static INT8 quantization
by `onnxkd quantize` on real CIFAR images, and structured pruning by Torch-Pruning (replayed
from its history, as `onnxkd prune` stores it) or a one-line refusal that says why.

Export parity (both exporters) and QAT are tested per student in test_students.py and
test_qat.py; this file adds the rest, parametrized over the registry as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxkd.data.spec import InputSpec
from onnxkd.distill.export import export_student
from onnxkd.distill.qdq import count_int8_ops, optimized_op_types
from onnxkd.prune.config import PruneConfig
from onnxkd.prune.search import prune_once
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize
from onnxkd.students import create_student, student_names
from onnxkd.students.pruned import (
    UNPRUNABLE,
    PrunedArchitecture,
    PrunedArchitectureError,
    check_prunable,
)

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "data" / "cifar10" / "cifar10-subset.npz"
SPEC = InputSpec(layout="NCHW", size=(32, 32), channels=3)
IMAGES = [n for n in student_names() if create_student(n, in_chans=64).input_ndim == 4]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cifar_images(n: int) -> np.ndarray:
    """The first `n` CIFAR-subset test images, normalized as the student's spec does."""
    with np.load(CIFAR) as data:
        key = "x_test" if "x_test" in data else sorted(k for k in data if k.startswith("x"))[0]
        x = data[key][:n].astype(np.float32) / 255.0
    if x.shape[-1] == 3:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def settled(name: str) -> torch.nn.Module:
    """The student with BatchNorm statistics from real images, as a trained one has."""
    torch.manual_seed(0)
    model = create_student(name, 10, 3, 32)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(cifar_images(64)))
    return model.eval()


@pytest.mark.parametrize("name", IMAGES)
def test_static_int8_follows_the_float_student(name, tmp_path):
    model = settled(name)
    fp32 = export_student(model, SPEC, tmp_path / "student.onnx", name)
    int8 = tmp_path / "student.int8.onnx"
    quantize(
        QuantizeConfig(
            model=fp32,
            out=int8,
            data=str(CIFAR),
            workdir=tmp_path / "ws",
            calib_samples=64,
            eval_samples=64,
            threads=1,
        ),
        log=lambda _: None,
    )
    x = cifar_images(8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x})[0]
    assert out.shape == (8, 10) and np.isfinite(out).all()
    # Every conv and linear layer runs with an int8 kernel (untrained logits have no accuracy
    # to compare: QAT's and quantize's own tests measure that on trained students).
    ops = optimized_op_types(int8)
    assert count_int8_ops(int8) > 0
    assert not {"Conv", "Gemm"} & set(ops), ops
    assert int8.stat().st_size < 0.45 * fp32.stat().st_size


@pytest.mark.parametrize("name", IMAGES)
def test_prunes_or_refuses_in_one_line(name):
    if any(name.startswith(family) for family in UNPRUNABLE):
        with pytest.raises(PrunedArchitectureError) as e:
            check_prunable(name)
        assert "\n" not in str(e.value) and "cannot be pruned: its" in str(e.value)
        return
    check_prunable(name)
    model = settled(name)
    pruned, removals = prune_once(model, SPEC, 10, 0.3, PruneConfig(target="params=0.5"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pruned) < 0.85 * count(model)
    rebuilt = PrunedArchitecture(name).then(removals).build(SPEC, 10)
    assert count(rebuilt) == count(pruned)
    with torch.no_grad():
        assert rebuilt.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
