"""Graph memory (weights by dtype, activation peak by liveness) against sums worked out by
hand on small fixed graphs, and on a real INT8 model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkd.bench.activations import graph_memory


def _save(tmp_path, nodes, inputs, outputs, initializers=(), name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _value(name, dims, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, dims)


def test_chain_peak_is_a_nodes_inputs_and_outputs_at_once(tmp_path):
    # x[b,16] -Relu-> r[b,16] -MatMul W[16,64]-> m[b,64] -Relu-> y[b,64] (float32):
    # while the last Relu runs, m and y are both live: 4*b*(64+64) bytes; every earlier
    # node holds less (x+r: 4*b*32, r+m: 4*b*80).
    w = numpy_helper.from_array(np.zeros((16, 64), np.float32), "W")
    path = _save(
        tmp_path,
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu1"),
            helper.make_node("MatMul", ["r", "W"], ["m"], name="mm"),
            helper.make_node("Relu", ["m"], ["y"], name="relu2"),
        ],
        [_value("x", ["batch", 16])],
        [_value("y", ["batch", 64])],
        [w],
    )
    for batch in (1, 2, 32):
        memory = graph_memory(path, batch)
        assert memory.peak_activation_bytes == 4 * batch * 128
        assert memory.peak_after_node == "relu2"
        assert memory.weights_bytes == 16 * 64 * 4
        assert memory.unknown_tensors == 0
    assert graph_memory(path, 1).dominated_by == "weights"  # 4096 B of weights vs 512 B
    assert graph_memory(path, 32).dominated_by == "activations"  # 16384 B


def test_a_skip_connection_keeps_its_input_alive(tmp_path):
    # y = x + Relu(Relu(x)): x stays live until the Add, so the peak is x + r1 + r2 while
    # the second Relu runs, and x + r2 + y at the Add (3 * 4*b*16 bytes), not 2 tensors.
    path = _save(
        tmp_path,
        [
            helper.make_node("Relu", ["x"], ["r1"], name="a"),
            helper.make_node("Relu", ["r1"], ["r2"], name="b"),
            helper.make_node("Add", ["x", "r2"], ["y"], name="add"),
        ],
        [_value("x", ["batch", 16])],
        [_value("y", ["batch", 16])],
    )
    memory = graph_memory(path, 4)
    assert memory.peak_activation_bytes == 3 * 4 * 4 * 16
    assert memory.peak_after_node == "b"


def test_a_weight_dequantized_in_the_graph_is_no_activation(tmp_path):
    # QDQ: W_float = DequantizeLinear(W_int8) is computed from weights alone (onnxruntime fuses
    # it into the MatMul): the peak is x + y, 4*b*(16+64) bytes, not W_float's 4096 more.
    path = _save(
        tmp_path,
        [
            helper.make_node("DequantizeLinear", ["Wq", "scale", "zero"], ["Wf"], name="dq"),
            helper.make_node("MatMul", ["x", "Wf"], ["y"], name="mm"),
        ],
        [_value("x", ["batch", 16])],
        [_value("y", ["batch", 64])],
        [
            numpy_helper.from_array(np.zeros((16, 64), np.int8), "Wq"),
            numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ],
    )
    memory = graph_memory(path, 2)
    assert memory.peak_activation_bytes == 4 * 2 * (16 + 64)
    assert memory.peak_after_node == "mm"
    assert memory.weights_by_dtype == {"int8": 16 * 64 + 1, "float32": 4}


def test_qdq_float_tensors_an_int8_kernel_replaces_are_not_counted(tmp_path):
    # x[b,16] f32 -Q-> xq u8 -DQ-> xf -MatMul(DQ(Wq))-> m f32 -Q-> y u8. onnxruntime runs
    # DQ-MatMul-Q as one QLinearMatMul from xq to y: xf and m never exist. The peak is x + xq
    # while the first Q runs (4*b*16 + b*16 bytes), not xf + m at the MatMul (4*b*(16+64)).
    qparams = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zu"),
        numpy_helper.from_array(np.array(0, np.int8), "zi"),
        numpy_helper.from_array(np.zeros((16, 64), np.int8), "Wq"),
    ]
    path = _save(
        tmp_path,
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zu"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "s", "zu"], ["xf"], name="dq_in"),
            helper.make_node("DequantizeLinear", ["Wq", "s", "zi"], ["Wf"], name="dq_w"),
            helper.make_node("MatMul", ["xf", "Wf"], ["m"], name="mm"),
            helper.make_node("QuantizeLinear", ["m", "s", "zu"], ["y"], name="q_out"),
        ],
        [_value("x", ["batch", 16])],
        [_value("y", ["batch", 64], TensorProto.UINT8)],
        qparams,
    )
    memory = graph_memory(path, 4)
    assert memory.peak_activation_bytes == 4 * 4 * 16 + 4 * 16
    assert memory.peak_after_node == "q_in"
    assert memory.unknown_tensors == 0


def test_weights_are_summed_per_dtype_with_constants(tmp_path):
    w16 = numpy_helper.from_array(np.zeros((8, 8), np.float16), "W16")
    w8 = numpy_helper.from_array(np.zeros((10,), np.int8), "W8")
    const = helper.make_node(
        "Constant",
        [],
        ["c"],
        value=numpy_helper.from_array(np.zeros((3,), np.float32)),
    )
    path = _save(
        tmp_path,
        [
            const,
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["x16", "W16"], ["y"]),
        ],
        [_value("x", ["batch", 8])],
        [_value("y", ["batch", 8], TensorProto.FLOAT16)],
        [w16, w8],
    )
    memory = graph_memory(path, 1)
    assert memory.weights_by_dtype == {"float16": 128, "int8": 10, "float32": 12}
    assert memory.weights_bytes == 150


def test_unknown_sizes_are_counted_and_never_claim_weights_dominate(tmp_path):
    # A second symbolic dimension the batch does not fix: no activation size is known.
    path = _save(
        tmp_path,
        [helper.make_node("Relu", ["x"], ["y"])],
        [_value("x", ["batch", "width"])],
        [_value("y", ["batch", "width"])],
        [numpy_helper.from_array(np.zeros(4, np.float32), "unused")],
    )
    memory = graph_memory(path, 2)
    assert memory.unknown_tensors == 2
    assert memory.peak_activation_bytes == 0
    assert memory.dominated_by is None
    assert memory.to_dict()["dominated_by"] is None


@pytest.mark.parametrize("batch", [1, 8])
def test_an_int8_model_has_int8_weights_and_known_shapes(tmp_path, batch):
    # Static INT8 by onnxruntime (QDQ and QOperator ops): its weights are int8, and the
    # activation estimate covers every tensor.
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "W")
    src = _save(
        tmp_path,
        [
            helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        [_value("x", ["batch", 1, 8, 8])],
        [_value("y", ["batch", 3, 8, 8])],
        [w],
        "float.onnx",
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)}] * 4

        def get_next(self):
            return self.left.pop() if self.left else None

    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        out = tmp_path / f"int8_{fmt.name}.onnx"
        quantize_static(str(src), str(out), Reader(), quant_format=fmt)
        memory = graph_memory(out, batch)
        assert memory.weights_by_dtype.get("int8", 0) >= 27
        assert memory.unknown_tensors == 0
        # At least the int8 or float input and output of one node: 64 + 192 values each.
        assert memory.peak_activation_bytes >= batch * (64 + 192)
