"""CoreML and NNAPI on a host that has neither: onnxruntime's usability checker read as data,
the ORT-format conversion, and the notes on what stays unknown, for the digits teacher and INT8
QDQ versions of it (U8S8 and S8S8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS

from onnxkd.bench.mobile import MOBILE_EPS, mobile_analysis, quantization_of
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec
from onnxkd.errors import ProviderError
from onnxkd.metadata import INPUT_SPEC

TEACHER = MODELS / "digits_cnn.onnx"
KEYS = {
    "ep",
    "model",
    "timed",
    "verdict",
    "supported_nodes",
    "total_nodes",
    "partitions",
    "unsupported_ops",
    "ort_model",
    "required_operators",
    "notes",
    "quantization",
}


def digits_batch(count: int, split: str = "test") -> np.ndarray:
    """`count` digits images preprocessed by the teacher's own input spec."""
    meta = {
        p.key: p.value for p in onnx.load(str(TEACHER), load_external_data=False).metadata_props
    }
    spec = InputSpec.from_json(meta[INPUT_SPEC])
    raw, _ = open_source(DataRef("digits", split=split)).read(np.arange(count))
    return spec.apply(raw)


@pytest.fixture(scope="module")
def qdq_models(tmp_path_factory) -> dict[str, Path]:
    """The digits teacher quantized to QDQ U8S8 (the x86 target) and S8S8 (the arm target)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calib = digits_batch(64, split="train")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i : i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.batches, None)

    root = tmp_path_factory.mktemp("qdq")
    out = {}
    for name, activations in [("u8s8", QuantType.QUInt8), ("s8s8", QuantType.QInt8)]:
        out[name] = root / f"digits_cnn.{name}.onnx"
        quantize_static(
            str(TEACHER),
            str(out[name]),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=activations,
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return out


def basic_optimized_node_count(model: Path, tmp_path: Path) -> int:
    """Nodes left after onnxruntime's basic optimization, what the checker and converter see."""
    from onnxruntime.tools.onnx_model_utils import optimize_model

    dst = tmp_path / "basic" / model.name
    dst.parent.mkdir()
    optimize_model(model, dst)
    return len(onnx.load(str(dst)).graph.node)


@pytest.mark.parametrize("ep", MOBILE_EPS)
def test_float_teacher(ep, tmp_path):
    r = mobile_analysis(TEACHER, ep, tmp_path / "out")

    assert set(r) >= KEYS
    json.dumps(r)  # the bench report stores it as is
    assert r["ep"] == ep and r["timed"] is False and r["quantization"] == "float"
    assert r["verdict"] in ("YES", "MAYBE", "NO")
    assert 0 <= r["supported_nodes"] <= r["total_nodes"]
    # the teacher is plain Conv/Relu/MaxPool/GAP/Flatten/Gemm: basic optimization keeps all 10
    assert r["total_nodes"] == basic_optimized_node_count(TEACHER, tmp_path) == 10
    assert r["unsupported_ops"] == sorted(r["unsupported_ops"])
    assert sum(r["partition_sizes"]) == r["supported_nodes"]
    assert len(r["partition_sizes"]) == r["partitions"]
    # Its batch dimension is dynamic: as is, no node qualifies; the verdict assumes it fixed.
    assert r["dynamic_inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8]}]
    assert r["assumes_fixed_shapes"] is True
    assert any("--dim_param batch --dim_value 1" in n for n in r["notes"])
    # What onnxruntime 1.32's op lists say about this model.
    assert (r["verdict"], r["supported_nodes"], r["partitions"], r["unsupported_ops"]) == (
        "YES",
        10,
        1,
        [],
    )
    assert any(n.startswith("Nothing was timed") for n in r["notes"])
    assert any("op types only" in n for n in r["notes"])
    if ep == "nnapi":
        assert any("deprecated from Android 15" in n for n in r["notes"])
        assert any("QUInt8" in n for n in r["notes"])
    else:
        assert r["coreml_format"] == "NeuralNetwork"
        mlprogram = r["coreml_formats"]["MLProgram"]
        assert (mlprogram["verdict"], mlprogram["supported_nodes"], mlprogram["partitions"]) == (
            "MAYBE",
            9,
            2,
        )
        assert mlprogram["unsupported_ops"] == ["Flatten"]
        assert any("ModelFormat=MLProgram" in n for n in r["notes"])


def test_ort_model_matches_onnx(tmp_path, capfd):
    import onnxruntime as ort

    r = mobile_analysis(TEACHER, "nnapi", tmp_path / "out")
    assert capfd.readouterr() == ("", "")  # the checker's and converter's chatter stays quiet
    ort_model, config = Path(r["ort_model"]), Path(r["required_operators"])
    assert ort_model.suffix == ".ort" and ort_model.parent == tmp_path / "out"
    assert "Conv" in config.read_text()
    # nothing else is left behind: no staging folder, no scratch copies
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [ort_model.name, config.name]
    )
    x = digits_batch(64)
    cpu = ["CPUExecutionProvider"]
    expected = ort.InferenceSession(str(TEACHER), providers=cpu).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(ort_model), providers=cpu).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_quantization_is_read_from_the_graph(qdq_models):
    assert quantization_of(onnx.load(str(TEACHER)))["scheme"] == "float"
    u8 = quantization_of(onnx.load(str(qdq_models["u8s8"])))
    s8 = quantization_of(onnx.load(str(qdq_models["s8s8"])))
    assert (u8["scheme"], s8["scheme"]) == ("u8s8", "s8s8")
    assert u8["qdq"] > 0 and u8["per_channel"]


def test_s8s8_on_nnapi_says_uint8(qdq_models, tmp_path):
    s8 = mobile_analysis(qdq_models["s8s8"], "nnapi", tmp_path / "s8")
    u8 = mobile_analysis(qdq_models["u8s8"], "nnapi", tmp_path / "u8")

    assert s8["quantization"] == "s8s8" and s8["timed"] is False
    note = [n for n in s8["notes"] if "activations are int8 (S8S8)" in n]
    assert note and "--target x86" in note[0] and "uint8" in note[0]
    assert not any("activations are int8" in n for n in u8["notes"])
    # NNAPI's op list has QuantizeLinear/DequantizeLinear: the op-type check alone cannot tell
    # S8S8 from U8S8, which is why the note exists.
    assert s8["verdict"] == u8["verdict"] == "YES"
    assert s8["supported_nodes"] == s8["total_nodes"]


def test_qdq_on_coreml_reports_the_limitation(qdq_models, tmp_path):
    r = mobile_analysis(qdq_models["u8s8"], "coreml", tmp_path / "out")

    assert r["quantization"] == "u8s8"
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(r["unsupported_ops"])
    # Only the 7 float nodes qualify, each alone between Q/DQ pairs: 7 one-node partitions.
    assert (r["verdict"], r["supported_nodes"], r["partitions"]) == ("NO", 7, 7)
    assert r["assumes_fixed_shapes"] is True
    assert r["total_nodes"] == basic_optimized_node_count(qdq_models["u8s8"], tmp_path)
    assert any("QDQ-quantized (U8S8" in n and "float model" in n for n in r["notes"])
    assert Path(r["ort_model"]).is_file()


def test_not_onnx_is_a_clear_error(tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_text("this is not a model\n")
    with pytest.raises(ProviderError, match=r"model\.onnx is not a readable ONNX model"):
        mobile_analysis(junk, "coreml", tmp_path / "out")
    with pytest.raises(ProviderError, match="no such file"):
        mobile_analysis(tmp_path / "missing.onnx", "nnapi", tmp_path / "out")
    with pytest.raises(ProviderError, match="covers coreml, nnapi, not 'cuda'"):
        mobile_analysis(TEACHER, "cuda", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_model_onnxruntime_cannot_load_leaves_nothing(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Mystery", ["x"], ["y"], domain="example.custom")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ProviderError, match=r"onnxruntime cannot load .*custom\.onnx: ") as e:
        mobile_analysis(path, "nnapi", tmp_path / "out")
    assert "\n" not in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []
