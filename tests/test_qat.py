"""`onnxkd distill --qat`: a float run continued with fake quantization exports a QDQ model that
onnxruntime runs with int8 kernels and that matches torch; resume; the CLI and its errors; the
graph passes; every registered student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec
from onnxkd.distill import bn_fold, fake_quant, qat
from onnxkd.distill.config import DistillConfig, DistillConfigError
from onnxkd.distill.qdq import count_int8_ops, integer_clip, optimized_op_types
from onnxkd.distill.trainer import distill
from onnxkd.quantize.config import host_lacks_vnni
from onnxkd.students import create_student, student_names

FLOAT_EPOCHS = 3
QAT_EPOCHS = 2


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one torch thread per test is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace with a digits cache and a finished float small_cnn run (its latest run)."""
    root = tmp_path_factory.mktemp("qat")
    ws = root / "onnxkd-out"
    cache_teacher(
        CacheConfig(
            MODELS / "digits_cnn.onnx",
            DataRef("digits"),
            workdir=ws,
            views=2,
            augment="crop",
            threads=1,
        ),
        log=lambda s: None,
    )
    cfg = DistillConfig(
        student="small_cnn",
        workdir=ws,
        epochs=FLOAT_EPOCHS,
        batch_size=64,
        threads=1,
        out=root / "float",
    )
    distill(cfg, log=lambda s: None)
    return root


def fresh(workspace: Path, tmp_path: Path) -> Path:
    """A copy of the module's workspace (its state still names the module's float run)."""
    shutil.copytree(workspace / "onnxkd-out", tmp_path / "onnxkd-out")
    return tmp_path


def qat_config(root: Path, **kw) -> DistillConfig:
    kw = {"epochs": QAT_EPOCHS, "out": root / "qat", **kw}
    return DistillConfig(qat=True, workdir=root / "onnxkd-out", batch_size=64, threads=1, **kw)


def logits_step(path: Path) -> float:
    """The scale of the quantized logits: one step of the model's output grid."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.output[0] == "logits")
    assert dq.op_type == "DequantizeLinear"
    return float(numpy_helper.to_array(inits[dq.input[1]]))


def _host_has_vnni() -> bool:
    return not host_lacks_vnni()


def test_qat_exports_an_int8_model_that_matches_torch(workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    result = distill(qat_config(root), log=lambda s: None)
    run, float_run = root / "qat", workspace / "float"
    path = run / "student.int8.onnx"
    report = json.loads((run / "export.json").read_text())
    assert report == result.export and report["onnx"] == str(path)
    # onnxruntime runs it with integer kernels: QLinearConv for the convs, QGemm for the head.
    assert count_int8_ops(path) == report["int8_ops"] >= 5
    ops = optimized_op_types(path)
    assert ops["QLinearConv"] == 4 and ops["QGemm"] == 1
    assert not {"Conv", "Gemm", "MatMul"} & set(ops)
    # ... and agrees with torch's fake quantization on the eval split.
    assert report["samples"] == 359
    # x86 without VNNI runs U8S8 products through AVX2's pairwise int16 adds, which saturate
    # (onnxruntime's quantization docs): 8 of 359 digits disagree there, none with VNNI.
    vnni = _host_has_vnni()
    assert report["top1_agreement"] >= (0.99 if vnni else 0.97)
    assert abs(report["onnxruntime_accuracy"] - report["torch_accuracy"]) <= (
        0.01 if vnni else 0.03
    )
    if not vnni:  # saturated products are off by far more than a step: not a bound to check
        pytest.skip(f"no VNNI on this host: max |diff| {report['max_abs_diff']:.3f} unchecked")
    assert report["max_abs_diff"] <= 2 * logits_step(path) + 1e-6
    # QAT keeps the float student's accuracy within a couple of points.
    float_report = json.loads((float_run / "export.json").read_text())
    assert report["onnxruntime_accuracy"] >= float_report["onnxruntime_accuracy"] - 0.02
    assert report["onnxruntime_accuracy"] > 0.9
    # int8 weights: no float weight is quantized at load time, and the file shrinks.
    model = onnx.load(str(path))
    assert not any(
        n.op_type == "QuantizeLinear" and n.input[0].endswith("weight") for n in model.graph.node
    )
    assert path.stat().st_size < 0.35 * (float_run / "student.onnx").stat().st_size
    # It carries its preprocessing like the float student, and says what it is.
    meta = {p.key: p.value for p in model.metadata_props}
    float_meta = {p.key: p.value for p in onnx.load(str(float_run / "student.onnx")).metadata_props}
    assert meta["onnxkd.quantized"] == "qat"
    assert meta["onnxkd.input_spec"] == float_meta["onnxkd.input_spec"]
    assert meta["onnxkd.student"] == "small_cnn"
    assert meta["onnxkd.cache_key"] == float_meta["onnxkd.cache_key"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    # The run took its student and cache from the float run, at a tenth of its learning rate.
    saved = json.loads((run / "config.json").read_text())
    float_saved = json.loads((float_run / "config.json").read_text())
    assert saved["config"]["qat"] and saved["config"]["init"] == str(float_run.resolve())
    assert saved["config"]["student"] == "small_cnn"
    assert saved["cache"] == float_saved["cache"]
    assert saved["config"]["resolved_lr"] == pytest.approx(
        0.1 * float_saved["config"]["resolved_lr"]
    )
    assert [r["epoch"] for r in result.history] == list(range(QAT_EPOCHS))
    # The workspace records it as the quantized model; the float student stays the student.
    state = json.loads((root / "onnxkd-out" / "state.json").read_text())
    assert state["quantized"] == str(path.resolve())
    assert state["student"] == str((float_run / "student.onnx").resolve())
    assert state["run"] == str(run.resolve())


def test_qat_resumes_after_a_finished_epoch(workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    whole = distill(qat_config(root, out=root / "whole", export=False), log=lambda s: None)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise Stop

    with pytest.raises(Stop):
        distill(qat_config(root, out=root / "cut"), log=stop_after_first_epoch)
    assert not (root / "cut" / "student.int8.onnx").exists()
    lines: list[str] = []
    resumed = distill(
        DistillConfig(resume=True, out=root / "cut", workdir=root / "onnxkd-out"), log=lines.append
    )
    assert any(line.startswith("resuming") for line in lines)
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    # Weights, optimizer and observer ranges all came back: the epochs are the same numbers.
    for ours, theirs in zip(resumed.history, whole.history, strict=True):
        assert ours["val_accuracy"] == pytest.approx(theirs["val_accuracy"], abs=1e-9)
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    assert resumed.export["int8_ops"] > 0
    assert resumed.export["top1_agreement"] >= (0.99 if _host_has_vnni() else 0.97)


def test_cli_qat_after_a_float_distill_needs_no_options(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    single_thread = {"OMP_NUM_THREADS": "1"}
    result = cli("distill", "--qat", cwd=root, env=single_thread)
    assert result.returncode == 0, result.stderr
    state = json.loads((root / "onnxkd-out" / "state.json").read_text())
    run = Path(state["run"])
    assert run.parent == (root / "onnxkd-out" / "runs").resolve()
    assert run.name.startswith("small_cnn-qat-kd-")
    assert Path(state["quantized"]) == run / "student.int8.onnx"
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 5  # QAT's default epochs
    assert "int8:" in result.stdout and "ops on onnxruntime int8 kernels" in result.stdout
    # A second QAT run starts again from the float run, not from the QAT run now latest.
    again = cli("distill", "--qat", "--epochs", "1", cwd=root, env=single_thread)
    assert again.returncode == 0, again.stderr
    state = json.loads((root / "onnxkd-out" / "state.json").read_text())
    saved = json.loads((Path(state["run"]) / "config.json").read_text())
    assert saved["config"]["init"] == str((workspace / "float").resolve())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--qat",), "--qat continues a float run, and the workspace onnxkd-out has none"),
        (("--qat", "--init", "empty"), "empty has no best.pt: --init needs a float distill run"),
        (("--init", "empty"), "empty holds no best.pt: --init RUN needs a distill run"),
    ],
    ids=["no-float-run", "init-without-best", "float-init-without-best"],
)
def test_cli_qat_errors_are_one_line(cli, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    result = cli("distill", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]


def test_qat_refuses_feature_terms_and_bf16():
    with pytest.raises(DistillConfigError, match="--qat distils from logits only"):
        DistillConfig(qat=True, hints=("stage2:feat",))
    with pytest.raises(DistillConfigError, match="drop --bf16"):
        DistillConfig(qat=True, bf16=True)


def test_integer_clip_is_exact():
    """DequantizeLinear -> Clip(0, 6) -> QuantizeLinear (ReLU6) equals a Clip on the integers."""
    scale, zero_point = np.float32(0.05), np.uint8(40)
    inits = [
        numpy_helper.from_array(np.array(scale), "s"),
        numpy_helper.from_array(np.array(zero_point), "z"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"]),
        helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "relu6",
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [256])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, [256])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    q = np.arange(256, dtype=np.uint8)

    def run(m: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"q": q})[0]

    before = run(model)
    assert integer_clip(model)
    assert [n.op_type for n in model.graph.node] == ["Clip"]
    np.testing.assert_array_equal(run(model), before)
    assert before.min() == 40 and before.max() == 40 + 120  # 0 and 6 on the grid


@pytest.mark.parametrize("name", student_names())
def test_every_student_exports_to_int8_kernels(name, tmp_path):
    """BN folding, fake quantization and the QDQ export work for each registered student, and
    onnxruntime runs every conv and linear layer of it with integer kernels."""
    torch.manual_seed(0)
    student = create_student(name, num_classes=10, in_chans=3, input_size=16)
    if student.input_ndim == 2:  # flat feature vectors
        spec = InputSpec("flat", channels=64)
        student = create_student(name, num_classes=10, in_chans=64)
    else:
        spec = InputSpec("NCHW", (16, 16), 3)
    model = qat.build(student, spec, init=None)
    with torch.no_grad():  # training mode: the observers see a few batches
        for _ in range(2):
            model(torch.randn(16, *spec.input_shape))
    path = qat.export_qat(model, spec, tmp_path / "m.int8.onnx", name)
    ops = optimized_op_types(path)
    assert count_int8_ops(path) > 0
    assert not {"Conv", "Gemm", "MatMul"} & set(ops), ops
    x = torch.randn(8, *spec.input_shape)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x.numpy()})[0].shape == ref.shape


def test_relu6_after_a_layer_is_fused_and_clamped_by_its_fixed_range():
    """Each ReLU6 that follows a conv (+ BN) becomes the fused layer's ReLU with a fixed [0, 6]
    uint8 range, so the export needs no float Clip; the model's input keeps an observed range
    (normalized pixels are negative too)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 4, 1),
        torch.nn.ReLU6(),
    ).eval()
    with torch.no_grad():
        net[3].weight.mul_(4)  # so that the last ReLU6 clamps too
    _, relu6_layers = qat.fold_batchnorm(net)
    assert relu6_layers == ["0", "3"]
    model = qat.prepare(net, torch.randn(2, 3, 8, 8))
    x = 4 * torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        model(x)  # training mode: the observers learn the ranges
        fake, ref = model.eval()(x), net(x)
    assert ref.max() == 6.0 and ref.min() == 0.0  # the ReLU6s do clamp on this input
    assert fake.max() <= 6.0 and fake.min() >= 0.0
    # A clamped input quantizer would wreck the output; quantization noise stays small.
    assert (fake - ref).abs().mean() < 0.05


def test_mobilenetv2_exports_without_float_clips(tmp_path):
    torch.manual_seed(0)
    student = create_student("mobilenetv2_w050", num_classes=10, in_chans=3, input_size=16)
    spec = InputSpec("NCHW", (16, 16), 3)
    model = qat.build(student, spec, init=None)
    with torch.no_grad():
        model(torch.randn(8, *spec.input_shape))
    path = qat.export_qat(model, spec, tmp_path / "m.int8.onnx", "mobilenetv2_w050")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Clip" not in ops and ops.count("Relu") == 35


def test_batchnorm_folds_into_the_layer_before_it():
    """A folded conv (or linear) layer computes BN(layer(x)) with the running statistics; a
    layer without its own bias gets a frozen one, as QAT has always trained."""
    torch.manual_seed(0)
    pairs = [
        (torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), (4, 3, 9, 9)),
        (torch.nn.Conv2d(3, 8, 3, groups=1), torch.nn.BatchNorm2d(8), (4, 3, 9, 9)),
        (torch.nn.Conv1d(4, 6, 3, bias=False), torch.nn.BatchNorm1d(6), (4, 4, 9)),
        (torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), (4, 5)),
    ]
    for layer, norm, shape in pairs:
        with torch.no_grad():
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
        norm.eval()
        before = {k: v.clone() for k, v in {**layer.state_dict(), **norm.state_dict()}.items()}
        folded = bn_fold.fold(layer, norm)
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), norm(layer(x)), atol=1e-5, rtol=1e-5)
        assert folded.bias.requires_grad == (layer.bias is not None)
        assert folded.weight.requires_grad
        after = {**layer.state_dict(), **norm.state_dict()}
        assert all(torch.equal(before[k], after[k]) for k in before)  # both left as they were
    assert not bn_fold.can_fold(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm1d(8))
    assert not bn_fold.can_fold(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(4))


def hand_fake_quant(x, lo, hi, quant_min, quant_max, symmetric, axis=None):
    """Quantize then dequantize by the formulas, in float32: the range always includes 0; a
    symmetric range has zero point 0 and the scale of its larger side."""
    x, lo, hi = (np.asarray(v, np.float32) for v in (x, lo, hi))
    lo, hi = np.minimum(lo, np.float32(0)), np.maximum(hi, np.float32(0))
    steps = np.float32(quant_max - quant_min)
    if symmetric:
        scale = np.maximum(-lo, hi) / (steps / np.float32(2))
        zero_point = np.zeros_like(scale)
    else:
        scale = (hi - lo) / steps
        zero_point = np.clip(quant_min - np.rint(lo / scale), quant_min, quant_max)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = np.clip(np.rint(x * (np.float32(1) / scale)) + zero_point, quant_min, quant_max)
    return ((q - zero_point) * scale).astype(np.float32), scale, zero_point


def test_fake_quant_matches_the_quantize_dequantize_formula():
    """Activations: uint8 affine per tensor on a moving-average range; weights: int8 symmetric
    per output channel. Ranges move in training mode only."""
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(64, generator=g) * 3 + 1, torch.randn(64, generator=g) * 2
    act = fake_quant.activation_quant().train()
    y1 = act(x1)
    lo, hi = x1.min().numpy(), x1.max().numpy()
    np.testing.assert_allclose(y1.numpy(), hand_fake_quant(x1, lo, hi, 0, 255, False)[0], atol=1e-6)
    y2 = act(x2)  # the range moves 1% of the way to the new batch's
    lo = lo + np.float32(0.01) * (x2.min().numpy() - lo)
    hi = hi + np.float32(0.01) * (x2.max().numpy() - hi)
    expected, scale, zero_point = hand_fake_quant(x2, lo, hi, 0, 255, False)
    np.testing.assert_allclose(y2.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(act.scale.numpy(), scale.reshape(1), rtol=1e-6)
    assert act.zero_point.tolist() == zero_point.reshape(1).astype(int).tolist()
    frozen = act.state_dict()
    act.eval()(10 * x1)  # eval mode: the range stays
    assert all(torch.equal(v, act.state_dict()[k]) for k, v in frozen.items())

    w = torch.randn(6, 4, 3, 3, generator=g)
    weights = fake_quant.weight_quant().train()
    per_channel = w.reshape(6, -1)
    lo, hi = per_channel.min(1).values.numpy(), per_channel.max(1).values.numpy()
    expected, scale, _ = hand_fake_quant(w, lo, hi, -128, 127, True, axis=0)
    np.testing.assert_allclose(weights(w).numpy(), expected, atol=1e-6)
    assert weights.zero_point.tolist() == [0] * 6
    # A fresh quantizer takes a checkpoint's per-channel shapes (a resumed QAT run).
    fresh = fake_quant.weight_quant()
    fresh.load_state_dict(weights.state_dict())
    torch.testing.assert_close(fresh.eval()(w), weights.eval()(w), atol=0, rtol=0)

    relu6 = fake_quant.relu6_quant()
    out = relu6(torch.tensor([-1.0, 0.0, 3.0, 6.0, 9.0]))
    assert out.tolist() == pytest.approx([0.0, 0.0, 3.0, 6.0, 6.0], abs=fake_quant.RELU6_SCALE)


def test_qat_layer_is_the_folded_conv_with_fake_quantized_weights():
    """In eval mode a fused conv + BN + ReLU is ReLU(conv(x, fq(W'), b')) of the folded W', b'."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
    ).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    graph, relu6_layers = qat.fold_batchnorm(net)
    assert relu6_layers == []
    layers = [m for m in graph.modules() if isinstance(m, fake_quant.QATLayer)]
    assert len(layers) == 1 and layers[0].relu
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.ReLU) for m in graph.modules())
    folded = bn_fold.fold(net[0], net[1])
    w = folded.weight.detach().reshape(8, -1)
    weight, _, _ = hand_fake_quant(
        folded.weight.detach(), w.min(1).values, w.max(1).values, -128, 127, True, 0
    )
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = torch.relu(F.conv2d(x, torch.from_numpy(weight), folded.bias))
        torch.testing.assert_close(graph.eval()(x), expected, atol=1e-5, rtol=1e-5)
        # ... which is the float block up to the weights' rounding
        assert (graph(x) - net(x)).abs().max() < 0.05


def test_concat_inputs_and_shape_ops_share_one_quantizer():
    """torch.cat's inputs and output share one range, and so do ops that cannot leave their
    input's grid (Identity, pooling), so that onnxruntime drops the Q/DQ pair around them."""
    torch.manual_seed(0)
    student = create_student("shufflenetv2_w050", 10, 3, 16)
    model = qat.build(student, InputSpec("NCHW", (16, 16), 3), init=None)
    graph = model.model.graph
    quant = {n for n in graph.nodes if n.op == "call_module" and "fake_quant" in n.target}
    cats = [n for n in graph.nodes if n.target is torch.cat]
    assert cats
    for cat in cats:
        (inputs,) = cat.args
        (after,) = cat.users
        assert all(i in quant for i in inputs) and after in quant
        assert {i.target for i in inputs} == {after.target}
    pool = next(n for n in graph.nodes if n.target == "head.pool")
    (after,) = pool.users
    assert after.target == pool.args[0].target


def test_qat_imports_nothing_from_torch_ao():
    """torch.ao.quantization is deprecated upstream: no module of onnxkd imports it."""
    import ast

    import onnxkd

    offenders = []
    for path in Path(onnxkd.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and node.attr == "ao":
                names = ["torch.ao"] if getattr(node.value, "id", None) == "torch" else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("torch.ao")]
    assert offenders == []
