"""Every registered student: forward, backward, feature hooks, ONNX export (both exporters) and
parity, any size.

The tests are parametrized over the registry, so a newly registered student is covered with
no new test code. Models are built at their default 10 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnxkd.data.spec import InputSpec
from onnxkd.distill.export import OPSET, export_student
from onnxkd.errors import SpecError
from onnxkd.metadata import EXPORTER, INPUT_SPEC, STUDENT, read_metadata
from onnxkd.registry import UnknownNameError
from onnxkd.students import STUDENTS, Student, create_student, student_names
from onnxkd.students.shufflenetv2 import ChannelShuffle

NAMES = student_names()
FLAT_FEATURES = 64  # D for students that take flat vectors (N, D)
FLAT = [n for n in NAMES if create_student(n, in_chans=FLAT_FEATURES).input_ndim == 2]
IMAGES = [n for n in NAMES if n not in FLAT]
TRANSFORMERS = ("deit", "cct")

# Loose ranges (millions of parameters at 10 classes) around the published counts: CIFAR
# ResNets from He et al. and RepDistiller (resnet8x4 1.23 M at 100 classes), MobileNetV2 and
# ShuffleNetV2 from their papers' ImageNet counts less 990 classifier rows.
PARAMS_M = {
    "resnet8": (0.07, 0.09),
    "resnet14": (0.16, 0.19),
    "resnet20": (0.26, 0.29),
    "resnet32": (0.45, 0.48),
    "resnet8x4": (1.15, 1.25),
    "mobilenetv2_w035": (0.35, 0.45),
    "mobilenetv2_w050": (0.6, 0.8),
    "mobilenetv2_w075": (1.3, 1.45),
    "mobilenetv2_w100": (2.15, 2.3),
    "mobilenetv2": (2.15, 2.3),
    "shufflenetv2": (1.2, 1.35),
    "shufflenetv2_w050": (0.3, 0.4),
    "small_cnn": (0.05, 0.2),
    "small_cnn_s": (0.01, 0.03),
    "mlp": (0.03, 0.07),
    # MobileNetV3 (Howard et al. Table 3), EfficientNet-Lite (TF-Lite's model cards), DeiT-Tiny
    # and CCT (their papers) less their classifier rows beyond 10 classes.
    "mobilenetv3_small": (1.45, 1.6),
    "mobilenetv3_small_w075": (0.95, 1.05),
    "mobilenetv3_large": (4.1, 4.3),
    "mobilenetv3_large_w075": (2.6, 2.75),
    "efficientnet_lite0": (3.3, 3.45),
    "efficientnet_lite1": (4.05, 4.2),
    "deit_tiny": (5.3, 5.45),
    "cct_4": (0.45, 0.5),
    "cct_7": (3.8, 3.9),
    "mlp_s": (0.004, 0.006),
}


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine has two shared cores; one thread per test is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, **kwargs) -> Student:
    torch.manual_seed(0)
    in_chans = kwargs.pop("in_chans", 3)
    if name in FLAT:
        in_chans = FLAT_FEATURES
    return create_student(name, in_chans=in_chans, **kwargs)


def batch(model: Student, n: int, size: int = 32, chans: int = 3) -> torch.Tensor:
    if model.input_ndim == 2:
        return torch.randn(n, FLAT_FEATURES)
    return torch.randn(n, chans, size, size)


def settle_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Give BatchNorm running statistics from data, so eval outputs look like a trained net's."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the passes below
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def test_names_are_sorted_and_cover_the_families():
    assert sorted(NAMES) == NAMES
    for name in ["mobilenetv2", "mobilenetv2_w050", "resnet8x4", "shufflenetv2", "mlp"]:
        assert name in NAMES
    assert set(PARAMS_M) == set(NAMES), "give every new student a parameter range"


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_finite_logits(name):
    model = build(name)
    logits = model(batch(model, 2))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model = build(name, num_classes=7)
    loss = nn.functional.cross_entropy(model(batch(model, 2)), torch.tensor([0, 6]))
    loss.backward()
    for path, param in model.named_parameters():
        assert param.grad is not None, path
        assert torch.isfinite(param.grad).all(), path


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name):
    low, high = PARAMS_M[name]
    count = sum(p.numel() for p in build(name).parameters()) / 1e6
    assert low <= count <= high


@pytest.mark.parametrize("name", NAMES)
def test_feature_modules_are_hookable(name):
    model = build(name).eval()
    modules = dict(model.named_modules())
    assert "embedding" in model.feature_modules
    captured: dict[str, torch.Tensor] = {}
    for key, path in model.feature_modules.items():
        assert path in modules, f"{key}: {path!r} is not a module of {name}"
        modules[path].register_forward_hook(
            lambda m, i, out, key=key: captured.__setitem__(key, out)
        )
    with torch.no_grad():
        model(batch(model, 2))
    assert captured["embedding"].shape == (2, model.num_features)
    for key, out in captured.items():
        if model.input_ndim == 4 and (key.startswith("stage") or key == "final"):
            assert out.dim() == 4, key


def spec_for(model: Student) -> InputSpec:
    if model.input_ndim == 2:
        return InputSpec(layout="flat", channels=FLAT_FEATURES)
    return InputSpec(layout="NCHW", size=(32, 32), channels=3)


def one_thread_session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`export_student`'s file for (student, exporter), each made once: a dynamo export takes
    seconds. "default" passes no exporter, as distill does."""
    made: dict[tuple[str, str], tuple[Student, Path]] = {}

    def get(name: str, exporter: str) -> tuple[Student, Path]:
        if (name, exporter) not in made:
            model = build(name)
            settle_batchnorm(model, batch(model, 8))
            folder = tmp_path_factory.mktemp(f"{name}-{exporter}")
            kwargs = {} if exporter == "default" else {"exporter": exporter}
            path = export_student(model, spec_for(model), folder / "student.onnx", name, **kwargs)
            assert [p.name for p in folder.iterdir()] == ["student.onnx"]  # the .tmp was renamed
            made[name, exporter] = model, path
        return made[name, exporter]

    return get


@pytest.mark.parametrize("exporter", ["default", "legacy"])
@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_onnxruntime(name, exporter, exported):
    model, path = exported(name, exporter)
    session = one_thread_session(path)
    # The traced batch size, another, and 1 (torch.export must not specialize the batch to 1).
    for x in (batch(model, 2), batch(model, 5), batch(model, 1)):
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_default_export_is_dynamo_with_a_dynamic_batch(name, exported):
    model, path = exported(name, "default")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = read_metadata(proto)
    assert meta[EXPORTER] == "dynamo"
    assert meta[STUDENT] == name
    assert InputSpec.from_json(meta[INPUT_SPEC]) == spec_for(model)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [OPSET]
    assert proto.ir_version <= 10  # what onnxruntime-training 1.19 (onnxkd ondevice) reads
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value, value.name
        assert all(d.dim_value for d in dims[1:]), value.name
    assert not any(node.metadata_props for node in proto.graph.node)  # no stack traces shipped


def test_legacy_export_says_so(exported):
    _, path = exported("mlp_s", "legacy")
    assert read_metadata(path)[EXPORTER] == "legacy"


def test_dynamo_export_refuses_an_opset_it_cannot_write(tmp_path):
    model = build("mlp_s")
    with pytest.raises(ValueError, match="opset 18 or newer, not 13; pass opset>=18 or exporter"):
        export_student(model, spec_for(model), tmp_path / "s.onnx", "mlp_s", opset=13)
    assert not list(tmp_path.iterdir())


def test_dynamo_passes_keep_layer_names_and_global_pooling(exported):
    # onnxkd ondevice names parameters by initializer name; --freeze stem must find the bias.
    _, path = exported("small_cnn_s", "default")
    proto = onnx.load(str(path))
    names = {i.name for i in proto.graph.initializer}
    assert {"stem.0.weight", "stem.0.bias", "stage1.0.weight", "stage1.0.bias"} <= names
    assert not any(n.endswith(".weight_bias") for n in names)
    ops = {node.op_type for node in proto.graph.node}
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops


def _final_side(name: str, size: int, chans: int) -> int:
    model = build(name, in_chans=chans, input_size=size).eval()
    final = dict(model.named_modules())[model.feature_modules["final"]]
    shapes: list[torch.Size] = []
    final.register_forward_hook(lambda m, i, out: shapes.append(out.shape))
    with torch.no_grad():
        logits = model(torch.randn(1, chans, size, size))
    assert logits.shape == (1, 10)
    assert torch.isfinite(logits).all()
    return min(shapes[0][-2:])


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32, 224])
@pytest.mark.parametrize("name", IMAGES)
def test_any_input_size(name, size, chans):
    side = _final_side(name, size, chans)
    # The final map keeps at least 2×2 pixels however small the input; above 64 px every
    # family uses its ImageNet design, with total stride 32 (transformers: 16 px tokens).
    if size == 224:
        assert side == (14 if name.startswith(TRANSFORMERS) else 7)
    else:
        assert side >= 2


def test_cifar_design_at_32_pixels():
    # RepDistiller's CIFAR ResNets end on 8×8 maps; the other families stride 8 at 32 px.
    assert _final_side("resnet8", 32, 3) == 8
    assert _final_side("mobilenetv2_w050", 32, 3) == 4
    assert _final_side("shufflenetv2", 32, 3) == 4
    assert _final_side("mobilenetv3_small", 32, 3) == 4
    assert _final_side("efficientnet_lite0", 32, 3) == 4
    # Transformers: 4 px patches (DeiT) or two stride-2 pools (CCT) make 8×8 tokens.
    assert _final_side("deit_tiny", 32, 3) == 8
    assert _final_side("cct_4", 32, 3) == 8


def test_non_square_input():
    model = build("resnet8", input_size=(8, 40)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 40)).shape == (1, 10)


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="did you mean .*mobilenetv2_w050"):
        create_student("mobilenetv2_w05")


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 0}, {"in_chans": 0}, {"input_size": 0}, {"input_size": (32, 0)}]
)
def test_bad_arguments_are_spec_errors(kwargs):
    with pytest.raises(SpecError, match="positive"):
        create_student("resnet8", **kwargs)


def test_mobilenetv2_is_width_one():
    def count(name: str) -> int:
        return sum(p.numel() for p in create_student(name).parameters())

    assert len(STUDENTS) == len(NAMES)
    assert count("mobilenetv2") == count("mobilenetv2_w100")


def test_channel_shuffle_is_the_papers_reshape_transpose():
    x = torch.randn(2, 6, 3, 3)
    expected = x.reshape(2, 2, 3, 3, 3).transpose(1, 2).reshape(2, 6, 3, 3)
    torch.testing.assert_close(ChannelShuffle(6, 2)(x), expected)
    assert ChannelShuffle(6, 2).perm.tolist() == [0, 3, 1, 4, 2, 5]
    assert "perm" not in ChannelShuffle(6, 2).state_dict()  # checkpoints hold weights only


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith(("resnet", "mobilenet"))])
def test_dynamo_node_names_are_the_legacy_exporters_module_paths(name, exported):
    """quantize reports and excludes nodes by name: they say where in the network they sit."""
    _, dynamo = exported(name, "default")
    _, legacy = exported(name, "legacy")

    def conv_names(path: Path) -> list[str]:
        return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm")]

    assert conv_names(dynamo) == conv_names(legacy)
    assert all(n.startswith("/") and not n.startswith("/node_") for n in conv_names(dynamo))
