"""`onnxkd quantize` on real data (the digits set): the workspace flow, calibration methods and
memory bounds, target presets, the accuracy-aware mode, and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from conftest import MODELS
from onnx import numpy_helper

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.trainer import distill
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize
from onnxkd.quantize.sensitivity import search_exclusions

QUIET = {"log": lambda s: None}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace with a digits cache and a resnet8 student distilled for a few epochs."""
    root = tmp_path_factory.mktemp("qws")
    work = root / "onnxkd-out"
    cache_teacher(
        CacheConfig(
            MODELS / "digits_cnn.onnx",
            DataRef("digits"),
            workdir=work,
            views=4,
            augment="crop",
            threads=1,
        ),
        **QUIET,
    )
    distill(DistillConfig(student="resnet8", workdir=work, epochs=4, threads=1), **QUIET)
    return root


def student_of(root: Path) -> Path:
    return Path(json.loads((root / "onnxkd-out" / "state.json").read_text())["student"])


def copy_student(workspace: Path, tmp_path: Path) -> Path:
    """The student beside its run's config.json in tmp_path, so outputs stay per test."""
    run = tmp_path / "run"
    run.mkdir()
    src = student_of(workspace)
    shutil.copy(src, run / "student.onnx")
    shutil.copy(src.parent / "config.json", run / "config.json")
    return run / "student.onnx"


def with_outlier_channel(
    model: onnx.ModelProto, producer: str, consumer: str, scale: float
) -> onnx.ModelProto:
    """The same function with one channel between two convolutions scaled up by `scale`.

    ReLU commutes with a positive scale, so multiplying the producer's output channel (weights
    and bias) and dividing the consumer's matching input weights leaves the outputs unchanged,
    while that channel now dominates its tensor's per-tensor quantization range: the classic
    outlier channel that ruins post-training quantization.
    """
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}

    def rescale(name: str, index, factor: float) -> None:
        array = numpy_helper.to_array(inits[name]).copy()
        array[index] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    rescale(nodes[producer].input[1], 0, scale)
    rescale(nodes[producer].input[2], 0, scale)
    rescale(nodes[consumer].input[1], (slice(None), 0), 1 / scale)
    return model


def test_quantize_from_the_workspace_with_no_arguments(cli, workspace, tmp_path):
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    result = cli("quantize")
    assert result.returncode == 0, result.stderr
    student = student_of(workspace)
    int8 = student.with_name("student.int8.onnx")
    report = json.loads(int8.with_suffix(".json").read_text())
    assert f"int8:   {int8}" in result.stdout and "accuracy" in result.stdout
    assert report["activation_type"] == "QUInt8" and report["weight_type"] == "QInt8"
    assert report["samples"] == 359  # the digits holdout, all of it
    assert abs(report["drop_points"]) <= 2.0
    assert report["int8_agreement"] >= 0.95
    assert report["size_ratio"] < 0.4
    assert report["calibration"]["samples"] == 512
    # Beyond top-1: calibration of both models and its drift, per-class accuracy, memory.
    quality = report["quality"]
    for model in ("float", "int8"):
        assert quality[model]["calibration"]["nll"] > 0
        assert len(quality[model]["per_class_accuracy"]) == 10
    assert set(quality["calibration_drift"]) >= {
        "ece_equal_width",
        "ece_equal_mass",
        "nll",
        "brier",
    }
    assert len(quality["worst_classes"]) == 5
    memory = report["memory"]
    assert [m["batch"] for m in memory["int8"]] == [1, 32]
    assert memory["int8"][0]["weights_mb"] < memory["float"][0]["weights_mb"]
    assert memory["int8"][0]["weights_mb_by_dtype"]["int8"] > 0
    for row in ("ECE (15 bins)", "NLL", "Brier", "weights", "activations@1"):
        assert row in result.stdout
    state = json.loads((tmp_path / "onnxkd-out" / "state.json").read_text())
    assert state["quantized"] == str(int8)
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert meta["onnxkd.quantized"] == "ptq-minmax-x86"
    assert "onnxkd.input_spec" in meta  # the INT8 model still carries its preprocessing
    # A rerun does not replace the INT8 model silently; told to, it reuses the calibration
    # ranges instead of calibrating again.
    refused = cli("quantize")
    assert refused.returncode == 1 and "pass --overwrite" in refused.stderr
    again = cli("quantize", "--overwrite")
    assert again.returncode == 0 and "calibration: reusing" in again.stderr


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_is_fed_in_chunks_that_fit_the_budget(workspace, tmp_path, method):
    model = copy_student(workspace, tmp_path)
    messages = []
    cfg = QuantizeConfig(
        model=model,
        workdir=workspace / "onnxkd-out",
        calibration=method,
        calib_samples=256,
        calib_memory_mb=1,
    )
    report = quantize(cfg, log=messages.append).report
    facts = report["calibration"]
    per_sample = facts["activation_bytes_per_sample"]
    assert per_sample > 0
    # The chunk is what 1 MB of activations allows, and smaller than the whole calibration set.
    assert facts["chunk_samples"] * per_sample <= 1 << 20
    assert facts["chunk_samples"] < facts["samples"] == 256
    assert any("feeding it" in m for m in messages)
    assert abs(report["drop_points"]) <= 2.0


def test_arm_target_quantizes_activations_signed(workspace, tmp_path):
    model = copy_student(workspace, tmp_path)
    cfg = QuantizeConfig(model=model, workdir=workspace / "onnxkd-out", target="arm")
    result = quantize(cfg, **QUIET)
    proto = onnx.load(str(result.model))
    inits = {t.name: t for t in proto.graph.initializer}
    activation_zero_points = [
        inits[n.input[2]].data_type for n in proto.graph.node if n.op_type == "QuantizeLinear"
    ]
    assert activation_zero_points and set(activation_zero_points) == {onnx.TensorProto.INT8}
    assert result.report["activation_type"] == "QInt8"


def test_reduce_range_stores_7_bit_weights(workspace, tmp_path):
    model = copy_student(workspace, tmp_path)
    cfg = QuantizeConfig(model=model, workdir=workspace / "onnxkd-out", reduce_range="yes")
    result = quantize(cfg, **QUIET)
    proto = onnx.load(str(result.model))
    weights = [
        numpy_helper.to_array(t)
        for t in proto.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1
    ]
    # Every stored weight fits 7 bits, so u8 x s8 pair sums stay inside int16 without VNNI.
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64
    assert result.report["weight_bits"] == 7
    assert abs(result.report["drop_points"]) <= 2.0


@pytest.mark.parametrize(
    "machine, flags, target, reduced",
    [
        ("x86_64", {"avx2", "fma"}, "auto", True),  # AVX2 only: products saturate
        ("x86_64", {"avx512f", "avx512_vnni"}, "auto", False),
        ("x86_64", {"avx2", "avx_vnni"}, "x86", False),
        ("x86_64", None, "auto", True),  # flags unknown: the safe choice
        ("aarch64", {"asimd"}, "auto", False),  # ARM's S8S8 kernels do not saturate
    ],
)
def test_reduce_range_auto_follows_the_host(monkeypatch, machine, flags, target, reduced):
    import onnxkd.cpu
    import onnxkd.quantize.config

    monkeypatch.setattr(onnxkd.quantize.config.platform, "machine", lambda: machine)
    monkeypatch.setattr(onnxkd.cpu, "cpu_flags", lambda: flags)
    assert QuantizeConfig(target=target).resolved_reduce_range is reduced
    assert QuantizeConfig(target=target, reduce_range="no").resolved_reduce_range is False


def test_accuracy_aware_mode_keeps_the_outlier_channel_float(workspace, tmp_path):
    model = copy_student(workspace, tmp_path)
    producer = "/stage1/stage1.0/conv1/conv1.0/Conv"
    consumer = "/stage1/stage1.0/conv2/conv2.0/Conv"
    onnx.save(with_outlier_channel(onnx.load(str(model)), producer, consumer, 300.0), str(model))
    base = dict(model=model, workdir=workspace / "onnxkd-out")
    plain = quantize(QuantizeConfig(**base), **QUIET).report
    assert plain["drop_points"] > 5.0  # the outlier really ruins plain PTQ
    aware = quantize(QuantizeConfig(**base, max_drop=0.5, overwrite=True), **QUIET).report
    assert aware["drop_points"] <= 0.5
    assert aware["accuracy_aware"]["met"]
    assert {producer, consumer} <= set(aware["excluded_nodes"])
    assert len(aware["excluded_nodes"]) <= 4
    assert aware["batch1_p50_ms"]["int8_all_nodes"] > 0  # the speed cost is reported
    # chosen on the run's own validation split, not on the test split it reports
    assert aware["accuracy_aware"]["chosen_on"].startswith("the run's validation split (")


def test_accuracy_aware_mode_never_chooses_on_the_test_split(workspace, tmp_path, monkeypatch):
    """Every sample the exclusion search scores is a training sample (the run's validation
    split): the test split is scored only for the report."""
    from onnxkd.cache.for_model import resolve_model_data
    from onnxkd.metadata import read_metadata
    from onnxkd.quantize import evaluate

    model = copy_student(workspace, tmp_path)
    producer = "/stage1/stage1.0/conv1/conv1.0/Conv"
    consumer = "/stage1/stage1.0/conv2/conv2.0/Conv"
    onnx.save(with_outlier_channel(onnx.load(str(model)), producer, consumer, 300.0), str(model))
    seen = []
    predictions = evaluate.predictions

    def recording(sessions, batches):
        seen.extend(x for x, _ in batches)
        return predictions(sessions, batches)

    monkeypatch.setattr(evaluate, "predictions", recording)
    cfg = QuantizeConfig(model=model, workdir=workspace / "onnxkd-out", max_drop=0.5)
    report = quantize(cfg, **QUIET).report
    assert report["excluded_nodes"] and seen  # the search ran and scored candidates
    data = resolve_model_data(model, read_metadata(model), workspace / "onnxkd-out")
    test_rows = {row.tobytes() for x, _ in data.batches(data.eval, 256) for row in x}
    scored_rows = {row.tobytes() for x in seen for row in x}
    assert not scored_rows & test_rows
    train_rows = {row.tobytes() for x, _ in data.batches(data.train, 256) for row in x}
    assert scored_rows <= train_rows


def test_exclusion_search_finds_the_fewest_units():
    units = [{"nodes": [f"n{i}"]} for i in range(10)]
    calls = []

    def drop_with(nodes):  # the budget holds from 5 nodes on
        calls.append(len(nodes))
        return 0.0 if len(nodes) >= 5 else 3.0

    chosen, attempts = search_exclusions(units, drop_with, 0.5, 16, **QUIET)
    assert chosen == ["n0", "n1", "n2", "n3", "n4"]
    assert calls == [1, 2, 4, 8, 6, 5]  # doubling, then bisection
    chosen, attempts = search_exclusions(units, lambda n: 3.0 - 0.1 * len(n), 0.5, 3, **QUIET)
    assert chosen == ["n0", "n1", "n2"] and attempts[-1]["drop_points"] > 0.5


def test_quantize_bad_inputs_give_one_clear_line(cli, workspace, tmp_path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    result = cli("quantize", not_onnx)
    assert result.returncode == 1 and "is not a readable ONNX model" in result.stderr
    assert "Traceback" not in result.stderr

    # A student away from its run folder and workspace: nowhere to find calibration data.
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(student_of(workspace), lonely)
    result = cli("quantize", lonely)
    assert result.returncode == 1 and "no data known" in result.stderr
    assert "--cache" in result.stderr and "Traceback" not in result.stderr

    # An op onnxruntime has no kernel for.
    node = onnx.helper.make_node("Mystery", ["x"], ["y"], domain="example.custom")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    custom = tmp_path / "custom.onnx"
    opsets = [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("example.custom", 1)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opsets), str(custom))
    result = cli("quantize", custom)
    assert result.returncode == 1 and "onnxruntime cannot run custom.onnx" in result.stderr
    assert "Mystery" in result.stderr

    result = cli("quantize", "--calibration", "kmeans")
    assert result.returncode == 2 and "kmeans" in result.stderr


def test_nothing_to_quantize_is_an_error(workspace, tmp_path):
    model = copy_student(workspace, tmp_path)
    proto = onnx.load(str(model))
    # Keep the metadata (so data is found) but make the graph a bare Flatten of the input.
    x = proto.graph.input[0]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", [x.name], ["flat"])],
        "g",
        [x],
        [onnx.helper.make_tensor_value_info("flat", onnx.TensorProto.FLOAT, None)],
    )
    bare = onnx.helper.make_model(graph, opset_imports=proto.opset_import)
    bare.metadata_props.extend(proto.metadata_props)
    onnx.save(bare, str(model))
    from onnxkd.errors import QuantizeError

    with pytest.raises(QuantizeError, match="quantized no node of this model: it has Flatten"):
        quantize(QuantizeConfig(model=model, workdir=workspace / "onnxkd-out"), **QUIET)
    assert not model.with_name("student.int8.onnx").exists()


def test_zero_points_of_symmetric_weights_are_dropped_without_changing_the_model(
    workspace, tmp_path, monkeypatch
):
    """The INT8 file leaves out the all-zero zero points of its conv weights and biases: the
    same outputs, the same integer kernels in onnxruntime, a smaller file."""
    import numpy as np
    import onnxruntime as ort

    from onnxkd.distill.qdq import optimized_op_types
    from onnxkd.quantize import passes

    model = copy_student(workspace, tmp_path)
    base = dict(model=model, workdir=workspace / "onnxkd-out")
    dropped = quantize(QuantizeConfig(**base, out=tmp_path / "dropped.onnx"), **QUIET).model
    real = passes.drop_zero_zero_points
    monkeypatch.setattr(passes, "drop_zero_zero_points", lambda m: None)
    kept = quantize(QuantizeConfig(**base, out=tmp_path / "kept.onnx"), **QUIET).model
    monkeypatch.setattr(passes, "drop_zero_zero_points", real)
    assert dropped.stat().st_size < kept.stat().st_size
    assert optimized_op_types(dropped) == optimized_op_types(kept)
    graph = onnx.load(str(dropped)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    conv_constants = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and readers[n.output[0]] == {"Conv"}
    ]
    assert conv_constants and all(len(n.input) == 2 for n in conv_constants)
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]

    np.testing.assert_array_equal(run(dropped), run(kept))
