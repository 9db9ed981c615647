"""`distill --fit-temperature`: a temperature fitted on the held-back samples, stored in the
student's metadata, carried into the INT8 model, and reported before/after by quantize and
bench; refused when there are no held-back samples to fit on."""

from __future__ import annotations

import json

import numpy as np
import onnx
from conftest import MODELS
from onnx import numpy_helper

from onnxkd.metadata import TEMPERATURE, read_metadata

FAST = ("--rounds", "2", "--runs", "10", "--min-seconds", "0.05", "--warmup", "2")


def test_fitted_temperature_travels_from_distill_to_bench(cli, tmp_path):
    steps = [
        ("cache-teacher", MODELS / "digits_cnn.onnx", "--data", "digits"),
        ("distill", "--student", "small_cnn", "--epochs", "3", "--threads", "1",
         "--val-fraction", "0.2", "--fit-temperature"),
        ("quantize", "--threads", "1"),
        ("bench", "--ep", "cpu", "--batch", "1", *FAST),
    ]  # fmt: skip
    outputs = {}
    for step in steps:
        result = cli(*step)
        assert result.returncode == 0, f"{step[0]}: {result.stderr}"
        outputs[step[0]] = result.stdout + result.stderr
    ws = tmp_path / "onnxkd-out"
    state = json.loads((ws / "state.json").read_text())
    student = state["student"]
    fitted = json.loads(read_metadata(student)[TEMPERATURE])
    assert 0.05 < fitted["temperature"] < 20
    assert fitted["nll_after"] <= fitted["nll_before"]  # the fit minimises that NLL
    assert "validation samples" in fitted["fitted_on"]
    assert f"temperature {fitted['temperature']:.3f} fitted on" in outputs["distill"]
    # The export report records the same fit.
    run = state["run"]
    export = json.loads(next((tmp_path / run).glob("export*.json")).read_text())
    assert export["temperature"] == fitted

    # The INT8 model keeps the temperature; quantize reports both models with it applied.
    assert json.loads(read_metadata(state["quantized"])[TEMPERATURE]) == fitted
    quantize_report = json.loads(next(ws.glob("**/*.int8.json")).read_text())
    quality = quantize_report["quality"]
    assert quality["temperature"] == fitted
    for model in ("float", "int8"):
        scaled = quality[model]["temperature_scaled"]
        assert scaled["nll"] > 0 and 0 <= scaled["ece_equal_width"] <= 1

    document = json.loads((ws / "bench" / "cpu" / "bench.json").read_text())
    qualities = next(iter(document["quality"].values()))
    assert qualities["student"]["temperature_scaled"]["temperature"] == fitted["temperature"]
    assert "temperature_scaled" not in qualities["teacher"]
    markdown = (ws / "bench" / "cpu" / "bench.md").read_text()
    assert f"student, T = {fitted['temperature']:.3f}" in markdown


def test_fit_temperature_without_held_back_samples_is_refused(cli, tmp_path):
    result = cli("cache-teacher", MODELS / "digits_cnn.onnx", "--data", "digits")
    assert result.returncode == 0, result.stderr
    result = cli("distill", "--epochs", "1", "--val-fraction", "0", "--fit-temperature")
    assert result.returncode != 0
    assert "--fit-temperature and --apply-temperature fit on the samples held back" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    result = cli("distill", "--epochs", "1", "--qat", "--apply-temperature")
    assert result.returncode != 0 and "--apply-temperature is for float runs" in result.stderr


def test_applied_temperature_divides_the_exported_logits(cli, tmp_path):
    steps = [
        ("cache-teacher", MODELS / "digits_cnn.onnx", "--data", "digits"),
        ("distill", "--student", "small_cnn", "--epochs", "2", "--threads", "1",
         "--apply-temperature"),
        ("bench", "--ep", "cpu", "--batch", "1", *FAST),
    ]  # fmt: skip
    for step in steps:
        result = cli(*step)
        assert result.returncode == 0, f"{step[0]}: {result.stderr}"
    ws = tmp_path / "onnxkd-out"
    state = json.loads((ws / "state.json").read_text())
    fitted = json.loads(read_metadata(state["student"])[TEMPERATURE])
    assert fitted["applied"] is True
    # The graph ends in a division by the fitted temperature, and onnxruntime agrees with
    # torch's scaled model (export.json's check).
    graph = onnx.load(state["student"]).graph
    last = next(n for n in reversed(graph.node) if graph.output[0].name in n.output)
    assert last.op_type == "Div"
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants |= {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant"
    }
    divisor = constants[last.input[1]]
    np.testing.assert_allclose(divisor, fitted["temperature"], rtol=1e-4)
    export = json.loads(next((tmp_path / state["run"]).glob("export*.json")).read_text())
    assert export["max_abs_diff"] < 1e-3
    # bench reports it as exported (with T) and, beside it, before it.
    document = json.loads((ws / "bench" / "cpu" / "bench.json").read_text())
    student = document["quality"]["cpu"]["student"]
    assert "without_temperature" in student and "temperature_scaled" not in student
    markdown = (ws / "bench" / "cpu" / "bench.md").read_text()
    assert "| student, without T |" in markdown and "is applied in its graph" in markdown
