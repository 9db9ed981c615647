"""`onnxkd bench`: the four-command workspace session, honesty of the timings (a model that
sleeps a known time), EPs that are missing or silently dropped, and the output files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import TensorProto, helper

from onnxkd.bench.config import BenchConfig
from onnxkd.bench.runner import bench
from onnxkd.errors import ProviderError

QUIET = {"log": lambda s: None}
FAST = ("--rounds", "2", "--runs", "10", "--min-seconds", "0.05", "--warmup", "2")
SLEEP_SECONDS = 0.02


def test_four_command_session_from_a_clean_folder(cli, tmp_path):
    steps = [
        ("cache-teacher", MODELS / "digits_cnn.onnx", "--data", "digits", "--views", "2"),
        ("distill", "--student", "resnet8", "--epochs", "2", "--threads", "1"),
        ("quantize",),
        ("bench", "--ep", "cpu", "--batch", "1,8", *FAST),
    ]
    for step in steps:
        result = cli(*step)
        assert result.returncode == 0, f"{step[0]}: {result.stderr}"
    table = result.stdout.splitlines()
    assert table[0].split()[:6] == ["model", "EP", "batch", "acc", "%", "p50"]
    rows = [
        line.split() for line in table[1:] if line.split()[0] in ("teacher", "student", "quantized")
    ]
    assert [r[0] for r in rows] == ["teacher", "student", "quantized"] * 2
    document = json.loads((tmp_path / "onnxkd-out" / "bench" / "cpu" / "bench.json").read_text())
    by_model = {(r["model"], r["batch"]): r for r in document["rows"]}
    for role in ("teacher", "student", "quantized"):
        row = by_model[role, 1]
        assert row["status"] == "ok" and row["ep"] == "cpu"
        assert 0.5 < row["accuracy"] <= 1.0  # scored on the digits holdout
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
        assert row["throughput"] > 0 and row["peak_rss_added_mb"] > 0
        assert row["placement"]["share_on_ep"] == 1.0
        assert len(row["round_p50_ms"]) == 2
    assert by_model["teacher", 1]["accuracy"] == pytest.approx(0.9916, abs=1e-3)
    assert by_model["quantized", 1]["size_bytes"] < by_model["student", 1]["size_bytes"]
    assert document["host"]["isa_flags"] and document["host"]["onnxruntime"]
    out = tmp_path / "onnxkd-out" / "bench" / "cpu"
    for picture in ("pareto.png", "reliability.png", "confusion.png", "memory.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "bench.md").read_text()
    assert "| teacher | cpu | 1 |" in markdown
    # Beyond top-1: calibration and its drift, per-class accuracy, memory, energy.
    qualities = document["quality"]["cpu"]
    assert document["shipped"] == "quantized"
    for role in ("teacher", "student", "quantized"):
        cal = qualities[role]["calibration"]
        assert 0 <= cal["ece_equal_width"] <= 1 and 0 <= cal["ece_equal_mass"] <= 1
        assert cal["nll"] > 0 and 0 <= cal["brier"] <= 2
        assert len(qualities[role]["per_class_accuracy"]) == 10
    assert qualities["quantized"]["against"]["reference"] == "student"
    assert "ece_equal_width" in qualities["quantized"]["against"]["calibration_drift"]
    assert qualities["student"]["against"]["reference"] == "teacher"
    for heading in ("## Calibration", "## Per-class accuracy", "## Memory while running"):
        assert heading in markdown
    memory = document["graph_memory"]
    assert [m["batch"] for m in memory["quantized"]] == [1, 8]
    assert memory["quantized"][0]["weights_mb_by_dtype"]["int8"] > 0
    assert memory["student"][1]["peak_activations_mb"] > memory["student"][0]["peak_activations_mb"]
    assert {m["dominated_by"] for r in memory.values() for m in r} <= {"weights", "activations"}
    energy = document["energy"]["cpu"]
    if not energy["available"]:  # this host or CI has no counters: the reason, no figure
        assert energy["reason"].startswith("not available here")
        assert f"- cpu: {energy['reason']}" in markdown


def sleeping_model(path):
    """A model whose only node sleeps SLEEP_SECONDS (a Python custom op of
    onnxruntime-extensions): the true latency is known."""
    node = helper.make_node("SleepFixed", ["x"], ["y"], domain="ai.onnx.contrib")
    graph = helper.make_graph(
        [node],
        "sleep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_reported_p50_of_a_model_that_sleeps_a_known_time(tmp_path, monkeypatch):
    ortx = pytest.importorskip("onnxruntime_extensions")

    @ortx.onnx_op(
        op_type="SleepFixed",
        inputs=[ortx.PyCustomOpDef.dt_float],
        outputs=[ortx.PyCustomOpDef.dt_float],
    )
    def sleep_fixed(x):
        time.sleep(SLEEP_SECONDS)
        return x

    import onnxruntime as ort

    real_options = ort.SessionOptions

    def options_with_extensions():
        options = real_options()
        options.register_custom_ops_library(ortx.get_library_path())
        return options

    monkeypatch.setattr(ort, "SessionOptions", options_with_extensions)
    cfg = BenchConfig(
        models=(sleeping_model(tmp_path / "sleep.onnx"),),
        batches=(1,),
        runs=20,
        rounds=2,
        warmup=2,
        min_seconds=0,
        out=tmp_path / "out",
        accuracy=False,
    )
    (row,) = bench(cfg, **QUIET).rows
    # time.sleep never returns early; the overhead of a Python op call is well under 2 ms.
    assert SLEEP_SECONDS <= row["p50_ms"] / 1e3 < SLEEP_SECONDS + 0.002
    assert row["throughput"] == pytest.approx(1 / (row["p50_ms"] / 1e3), rel=1e-3)


def _bench_digits_cnn(tmp_path, **settings) -> dict:
    """bench.json of a short timing-only bench of the digits teacher."""
    fast = dict(runs=5, rounds=1, warmup=1, min_seconds=0, accuracy=False)
    out = tmp_path / "out"
    bench(BenchConfig(models=(MODELS / "digits_cnn.onnx",), out=out, **fast, **settings), **QUIET)
    return json.loads((out / "bench.json").read_text())


def test_energy_per_inference_from_a_counter_of_known_power(tmp_path, monkeypatch):
    # A counter that draws a constant 7 W: the report must give 7 W running and idle, and
    # joules per inference equal to that power over the samples run per second.
    from onnxkd.bench import energy as energy_module

    counter = energy_module.EnergyCounter(
        "rapl", "fake-package", lambda: 7.0 * time.perf_counter(), None, "the whole fake package"
    )
    monkeypatch.setattr(energy_module, "energy_counters", lambda ep: ([counter], None))
    document = _bench_digits_cnn(tmp_path, batches=(2, 4), energy_seconds=0.3)
    found = document["energy"]["cpu"]
    assert found["available"]
    measured = found["models"]["digits_cnn"]
    assert measured["batch"] == 2  # the smallest batch
    # This checks the wiring on the real clock (the arithmetic is exact in
    # test_bench_energy.py): the counter is read between two clock readings, and on a loaded
    # machine the process can be scheduled out for milliseconds in between, so 2% of 0.3 s.
    assert measured["watts"] == pytest.approx(7.0, rel=0.02)
    assert measured["idle_watts"] == pytest.approx(7.0, rel=0.02)
    samples_per_second = measured["runs"] * measured["batch"] / measured["seconds"]
    assert measured["joules_per_inference"] == pytest.approx(7.0 / samples_per_second, rel=0.02)
    assert (
        abs(measured["joules_per_inference_above_idle"]) < 0.04 * measured["joules_per_inference"]
    )
    assert "the whole fake package" in measured["limits"]
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "| digits_cnn | 2 |" in markdown and "Limits: the whole fake package" in markdown


def test_no_energy_figure_when_skipped(tmp_path):
    document = _bench_digits_cnn(tmp_path, batches=(1,), energy_seconds=0)
    assert document["energy"]["cpu"] == {
        "available": False,
        "reason": "not measured: --energy-seconds 0",
    }


def test_an_unavailable_ep_alone_is_an_error_naming_the_package(cli, tmp_path):
    result = cli("bench", MODELS / "digits_cnn.onnx", "--ep", "cuda", "--no-accuracy")
    assert result.returncode == 1
    assert "onnxruntime-gpu" in result.stderr and "Traceback" not in result.stderr
    result = cli("bench", MODELS / "digits_cnn.onnx", "--ep", "warp-drive")
    assert result.returncode == 1 and "unknown execution provider" in result.stderr


def test_in_a_sweep_an_unavailable_ep_is_an_error_row_with_no_timings(tmp_path):
    cfg = BenchConfig(
        models=(MODELS / "digits_cnn.onnx",),
        eps=("cpu", "cuda", "openvino"),
        batches=(1,),
        runs=5,
        rounds=1,
        warmup=1,
        min_seconds=0,
        out=tmp_path,
        accuracy=False,
    )
    rows = bench(cfg, **QUIET).rows
    by_ep = {r["ep"]: r for r in rows}
    assert by_ep["cpu"]["status"] == "ok" and by_ep["cpu"]["p50_ms"] > 0
    for ep, package in (("cuda", "onnxruntime-gpu"), ("openvino", "onnxruntime-openvino")):
        assert by_ep[ep]["status"] == "error" and package in by_ep[ep]["error"]
        assert not {"p50_ms", "mean_ms", "throughput"} & set(by_ep[ep])


def test_an_ep_onnxruntime_silently_drops_is_never_timed(tmp_path, monkeypatch):
    """onnxruntime falls back to CPU when a listed provider fails to load; pretend this build
    has CUDA, so the session is created but without it."""
    import onnxruntime as ort

    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real(), "CUDAExecutionProvider"])
    cfg = BenchConfig(
        models=(MODELS / "digits_cnn.onnx",),
        eps=("cpu", "cuda"),
        batches=(1,),
        runs=5,
        rounds=1,
        warmup=1,
        min_seconds=0,
        out=tmp_path,
        accuracy=False,
    )
    rows = {r["ep"]: r for r in bench(cfg, **QUIET).rows}
    assert rows["cpu"]["status"] == "ok"
    assert rows["cuda"]["status"] == "error" and "nothing was timed" in rows["cuda"]["error"]
    assert "p50_ms" not in rows["cuda"]
    with pytest.raises(ProviderError, match="fell back"):
        bench(
            BenchConfig(
                models=(MODELS / "digits_cnn.onnx",),
                eps=("cuda",),
                batches=(1,),
                out=tmp_path / "alone",
                accuracy=False,
            ),
            **QUIET,
        )


def test_models_given_by_path_are_scored_on_data_given(cli, tmp_path):
    result = cli("bench", MODELS / "digits_cnn.onnx", "--data", "digits", "--batch", "4", *FAST)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((tmp_path / "onnxkd-out" / "bench" / "cpu" / "bench.json").read_text())[
        "rows"
    ]
    assert row["model"] == "digits_cnn" and row["accuracy"] == pytest.approx(0.9916, abs=1e-3)
    assert row["batch"] == 4 and np.isfinite(row["p99_ms"])


def test_bad_bench_inputs(cli, tmp_path):
    result = cli("bench", "--batch", "1,x")
    assert result.returncode == 2 and "comma-separated list of int" in result.stderr
    result = cli("bench")
    assert result.returncode == 1 and "holds no teacher" in result.stderr
    missing = cli("bench", tmp_path / "nope.onnx")
    assert missing.returncode == 2 and "nope.onnx' does not exist" in missing.stderr
    model = MODELS / "digits_cnn.onnx"
    result = cli("bench", model, "--made-from", "digits_cnn")
    assert result.returncode == 2 and "'digits_cnn' is not MODEL=SOURCE" in result.stderr
    result = cli("bench", model, "--made-from", "digits_cnn=big", "--no-accuracy")
    assert result.returncode == 1 and "--made-from names 'big', which is not a benched" in (
        result.stderr
    )


def test_made_from_sets_the_model_each_is_compared_with(cli, tmp_path):
    # Three copies of a model that carries its input spec, so --data scores all three.
    models = [tmp_path / f"{name}.onnx" for name in "abc"]
    for path in models:
        path.write_bytes((MODELS / "digits_cnn.onnx").read_bytes())
    labels = ("--label", "a", "--label", "b", "--label", "c")
    result = cli(
        "bench", *models, *labels, "--made-from", "c=b", "--data", "digits", "--batch", "1", *FAST
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(next(tmp_path.glob("onnxkd-out/bench/*/bench.json")).read_text())
    qualities = document["quality"]["cpu"]
    assert qualities["b"]["against"]["reference"] == "a"  # by default: the first model
    assert qualities["c"]["against"]["reference"] == "b"
    assert "against" not in qualities["a"]


def test_coreml_and_nnapi_give_static_analysis_and_ort_files_not_timings(cli, tmp_path):
    result = cli("bench", MODELS / "digits_cnn.onnx", "--ep", "coreml,nnapi", "--no-accuracy")
    assert result.returncode == 0, result.stderr
    assert "not timed" in result.stdout
    out = tmp_path / "onnxkd-out" / "bench" / "coreml-nnapi"
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert {r["ep"] for r in rows} == {"coreml", "nnapi"}
    for row in rows:
        assert row["status"] == "not timed" and "p50_ms" not in row
        analysis = row["mobile"]
        assert analysis["timed"] is False and analysis["verdict"] in ("YES", "MAYBE", "NO")
        assert Path(analysis["ort_model"]).is_file()
        assert Path(analysis["ort_model"]).is_relative_to(out)
    markdown = (out / "bench.md").read_text()
    assert "nothing was timed" in markdown and "op types only" in markdown
