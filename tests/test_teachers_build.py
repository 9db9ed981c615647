"""The in-the-wild teachers in `teachers.py` really have the quirk each one promises.

The teacher runner's tests rely on these files; if a quirk silently disappeared (an exporter
update that makes the batch dynamic, drops the Softmax, renames an output), those tests would
keep passing while testing nothing. Each teacher is built once per session.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import teachers
from onnx import numpy_helper

ACCURACY_DIGITS = 256
SOFTMAX_ATOL = 1e-5

# name: (inputs, outputs, {domain: opset}, ir_version, op_type of the node making the last output)
# A shape entry "?" is any symbolic dim (tf2onnx and skl2onnx pick their own names or none).
SIGNATURES = {
    "fixed_batch": (
        [("input", "tensor(float)", [1, 1, 8, 8])],
        [("logits", "tensor(float)", [1, 10])],
        {"": 13},
        7,
        "Gemm",
    ),
    "fixed_batch_hard_reshape": (
        [("input", "tensor(float)", [1, 1, 8, 8])],
        [("logits", "tensor(float)", [1, 10])],
        {"": 13},
        7,
        "Gemm",
    ),
    "dynamic_nchw": (
        [("input", "tensor(float)", ["batch", 1, 8, 8])],
        [("logits", "tensor(float)", ["batch", 10])],
        {"": 13},
        7,
        "Gemm",
    ),
    "nhwc": (
        [("input", "tensor(float)", ["batch", 8, 8, 1])],
        [("logits", "tensor(float)", ["batch", 10])],
        {"": 13},
        7,
        "Gemm",
    ),
    "softmax_output": (
        [("input", "tensor(float)", ["batch", 1, 8, 8])],
        [("probabilities", "tensor(float)", ["batch", 10])],
        {"": 13},
        7,
        "Softmax",
    ),
    "log_softmax_output": (
        [("input", "tensor(float)", ["batch", 1, 8, 8])],
        [("log_probabilities", "tensor(float)", ["batch", 10])],
        {"": 13},
        7,
        "LogSoftmax",
    ),
    "multi_output": (
        [("input", "tensor(float)", ["batch", 1, 8, 8])],
        [
            ("embedding", "tensor(float)", ["batch", 16]),
            ("logits", "tensor(float)", ["batch", 10]),
        ],
        {"": 13},
        7,
        "Gemm",
    ),
    "old_opset": (
        [("input", "tensor(float)", ["batch", 1, 8, 8])],
        [("logits", "tensor(float)", ["batch", 10])],
        {"": 9},
        4,
        "Gemm",
    ),
    "double_input": (
        [("input", "tensor(double)", ["batch", 1, 8, 8])],
        [("logits", "tensor(double)", ["batch", 10])],
        {"": 13},
        7,
        "Gemm",
    ),
    "int_input": (
        [("input", "tensor(int64)", ["batch", 1, 8, 8])],
        [("logits", "tensor(float)", ["batch", 10])],
        {"": 13},
        7,
        "Gemm",
    ),
    "sklearn_zipmap": (
        [("X", "tensor(float)", ["?", 64])],
        [
            ("output_label", "tensor(int64)", ["?"]),
            ("output_probability", "seq(map(int64,tensor(float)))", []),
        ],
        {"": 9, "ai.onnx.ml": 1},
        10,
        "ZipMap",
    ),
    "sklearn_no_zipmap": (
        [("X", "tensor(float)", ["?", 64])],
        [("label", "tensor(int64)", ["?"]), ("probabilities", "tensor(float)", ["?", 10])],
        {"": 22, "ai.onnx.ml": 1},
        10,
        "Normalizer",
    ),
    "keras_nhwc": (
        [("input", "tensor(float)", ["?", 8, 8, 1])],
        [("Identity:0", "tensor(float)", ["?", 10])],
        {"": 13, "ai.onnx.ml": 2},
        7,
        "Softmax",
    ),
}

# Which output carries the class scores, and what kind of scores they are.
SCORES = {
    "softmax_output": ("probabilities", "probs"),
    "log_softmax_output": ("log_probabilities", "log_probs"),
    "sklearn_zipmap": ("output_probability", "zipmap"),
    "sklearn_no_zipmap": ("probabilities", "probs"),
    "keras_nhwc": ("Identity:0", "probs"),
}

NEEDS = {"sklearn_zipmap": "skl2onnx", "sklearn_no_zipmap": "skl2onnx", "keras_nhwc": "tf2onnx"}
FIXED_BATCH = {"fixed_batch", "fixed_batch_hard_reshape"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n == "keras_nhwc" else n for n in names]


@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory):
    """`teacher_path(name)` builds teacher `name` on first use and returns its file."""
    out_dir = tmp_path_factory.mktemp("teachers")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            pytest.skip(f"{NEEDS[name]} is not installed (pip install -e '.[sklearn,keras]')")
        if name not in built:
            built[name] = teachers.BUILDERS[name](out_dir)
        return built[name]

    return get


def _session(path: Path | bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tiny graphs; more threads only contend on a shared machine
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"]
    )


def _run(sess: ort.InferenceSession, name: str, images: np.ndarray) -> dict[str, object]:
    """All outputs of `sess` on `images`, fed in batches of 1 (fixed batch) or 8."""
    batch = 1 if name in FIXED_BATCH else 8
    input_name = sess.get_inputs()[0].name
    chunks = [
        sess.run(None, {input_name: teachers.teacher_input(name, images[i : i + batch])})
        for i in range(0, len(images), batch)
    ]
    out = {}
    for k, meta in enumerate(sess.get_outputs()):
        parts = [c[k] for c in chunks]
        out[meta.name] = sum(parts, []) if isinstance(parts[0], list) else np.concatenate(parts)
    return out


def _shape_matches(actual: list, expected: list) -> bool:
    if len(actual) != len(expected):
        return False
    return all(
        not isinstance(a, int) if e == "?" else a == e
        for a, e in zip(actual, expected, strict=True)
    )


def _last_op(model: onnx.ModelProto, output: str) -> str:
    return next(n.op_type for n in model.graph.node if output in n.output)


def _with_symbolic_batch(model: onnx.ModelProto) -> bytes:
    """The edit a runner makes to a fixed-batch teacher: dim 0 of inputs and outputs → "N"."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return model.SerializeToString()


def test_builders_cover_every_signature():
    assert set(teachers.BUILDERS) == set(SIGNATURES)


def test_digits_batch_is_raw_uint8_nhwc():
    images, labels = teachers.digits_batch(5)
    assert images.shape == (5, 8, 8, 1)
    assert images.dtype == np.uint8
    assert images.max() == 16
    assert labels.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", _params(SIGNATURES))
def test_signature(teacher_path, name):
    inputs, outputs, opsets, ir_version, last_op = SIGNATURES[name]
    path = teacher_path(name)
    model = onnx.load(str(path))
    sess = _session(path)

    for metas, expected in [(sess.get_inputs(), inputs), (sess.get_outputs(), outputs)]:
        found = [(m.name, m.type, m.shape) for m in metas]
        assert [(n, t) for n, t, _ in found] == [(n, t) for n, t, _ in expected], found
        for (_, _, shape), (_, _, want) in zip(found, expected, strict=True):
            assert _shape_matches(shape, want), (found, expected)
    assert {o.domain: o.version for o in model.opset_import} == opsets
    assert model.ir_version == ir_version
    assert _last_op(model, outputs[-1][0]) == last_op


@pytest.mark.parametrize("name", _params(SIGNATURES))
def test_accuracy(teacher_path, name):
    images, labels = teachers.digits_batch(ACCURACY_DIGITS)
    outputs = _run(_session(teacher_path(name)), name, images)
    scores_name, kind = SCORES.get(name, ("logits", "logits"))
    scores = outputs[scores_name]
    if kind == "zipmap":
        scores = np.array([[row[c] for c in range(10)] for row in scores])
    assert scores.shape == (ACCURACY_DIGITS, 10)
    accuracy = float((scores.argmax(axis=1) == labels).mean())
    assert accuracy > 0.8, f"{name}: accuracy {accuracy:.3f}"

    if kind in ("probs", "zipmap"):
        assert scores.min() >= 0
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=SOFTMAX_ATOL)
    elif kind == "log_probs":
        assert scores.max() <= 0
        np.testing.assert_allclose(np.exp(scores).sum(axis=1), 1.0, atol=SOFTMAX_ATOL)
    else:
        # Logits, not probabilities in disguise: rows do not sum to 1.
        assert not np.allclose(scores.sum(axis=1), 1.0, atol=1e-2)


def test_fixed_batch_works_once_batch_is_made_dynamic(teacher_path):
    model = onnx.load(str(teacher_path("fixed_batch")))
    assert not any(d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim)
    assert "Reshape" not in {n.op_type for n in model.graph.node}

    images, _ = teachers.digits_batch(2)
    x = teachers.teacher_input("fixed_batch", images)
    one = [
        _session(model.SerializeToString()).run(None, {"input": x[i : i + 1]})[0] for i in (0, 1)
    ]
    (two,) = _session(_with_symbolic_batch(model)).run(None, {"input": x})
    np.testing.assert_allclose(two, np.concatenate(one), rtol=1e-5, atol=1e-5)


def test_hard_reshape_breaks_once_batch_is_made_dynamic(teacher_path):
    model = onnx.load(str(teacher_path("fixed_batch_hard_reshape")))
    constants = {
        **{i.name: numpy_helper.to_array(i) for i in model.graph.initializer},
        **{
            n.output[0]: numpy_helper.to_array(n.attribute[0].t)
            for n in model.graph.node
            if n.op_type == "Constant"
        },
    }
    shapes = [constants[n.input[1]] for n in model.graph.node if n.op_type == "Reshape"]
    assert [s.tolist() for s in shapes] == [[1, -1]]

    images, _ = teachers.digits_batch(2)
    x = teachers.teacher_input("fixed_batch_hard_reshape", images)
    sess = _session(_with_symbolic_batch(model))
    try:
        (out,) = sess.run(None, {"input": x})
    except Exception:  # onnxruntime raises its own Fail/InvalidArgument types
        return
    assert out.shape != (2, 10), "batch 1 baked into the Reshape should break batch 2"


def test_nhwc_transposes_inside_to_the_same_network(teacher_path):
    model = onnx.load(str(teacher_path("nhwc")))
    first = model.graph.node[0]
    assert first.op_type == "Transpose"
    assert list(onnx.helper.get_attribute_value(first.attribute[0])) == [0, 3, 1, 2]

    images, _ = teachers.digits_batch(8)
    nhwc = _run(_session(teacher_path("nhwc")), "nhwc", images)["logits"]
    nchw = _run(_session(teacher_path("dynamic_nchw")), "dynamic_nchw", images)["logits"]
    np.testing.assert_allclose(nhwc, nchw, rtol=1e-5, atol=1e-5)


def test_int_input_scales_raw_values_inside(teacher_path):
    model = onnx.load(str(teacher_path("int_input")))
    assert model.graph.node[0].op_type == "Cast"

    images, _ = teachers.digits_batch(8)
    x = teachers.teacher_input("int_input", images)
    assert x.dtype == np.int64 and x.max() > 1  # raw 0..16, not x/16
    raw = _run(_session(teacher_path("int_input")), "int_input", images)["logits"]
    scaled = _run(_session(teacher_path("dynamic_nchw")), "dynamic_nchw", images)["logits"]
    np.testing.assert_allclose(raw, scaled, rtol=1e-5, atol=1e-5)


def test_double_input_has_double_weights(teacher_path):
    model = onnx.load(str(teacher_path("double_input")))
    assert model.graph.initializer
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.DOUBLE}


def test_multi_output_embedding_is_the_penultimate_relu(teacher_path):
    model = onnx.load(str(teacher_path("multi_output")))
    assert _last_op(model, "embedding") == "Relu"
    images, _ = teachers.digits_batch(8)
    out = _run(_session(teacher_path("multi_output")), "multi_output", images)
    assert out["embedding"].shape == (8, 16) and out["embedding"].min() >= 0


def test_old_opset_passes_the_checker(teacher_path):
    model = onnx.load(str(teacher_path("old_opset")))
    onnx.checker.check_model(model)
    assert {n.op_type for n in model.graph.node} <= {"Conv", "Relu", "Flatten", "Gemm"}


def test_sklearn_zipmap_is_a_sequence_of_maps(teacher_path):
    images, labels = teachers.digits_batch(8)
    out = _run(_session(teacher_path("sklearn_zipmap")), "sklearn_zipmap", images)
    probs = out["output_probability"]
    assert isinstance(probs, list) and len(probs) == 8
    assert all(isinstance(row, dict) and sorted(row) == list(range(10)) for row in probs)
    assert out["output_label"].dtype == np.int64
    assert (out["output_label"] == labels).mean() > 0.8


def test_builders_are_deterministic(tmp_path, teacher_path):
    again = teachers.build_dynamic_nchw(tmp_path)
    assert again.read_bytes() == teacher_path("dynamic_nchw").read_bytes()


def test_ci_installs_the_exporters_so_nothing_above_is_skipped():
    """CI must really build the scikit-learn and Keras teachers, not skip them."""
    if not os.environ.get("CI"):
        pytest.skip("only enforced in CI")
    import skl2onnx  # noqa: F401
    import tf2onnx  # noqa: F401
