"""`onnxkd bench` and `onnxkd quantize` never give a silent wrong result (issue 14): a file that
is no model gets one line naming it, non-finite weights are refused (quantize) or warned about
(bench), nothing a user made is overwritten without `--overwrite`, an interrupted write leaves
nothing that looks complete, throughput comes from the median and peak memory is per model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

from onnxkd.cli import main

DIGITS = MODELS / "digits_cnn.onnx"
FAST = ("--rounds", "1", "--runs", "5", "--min-seconds", "0", "--warmup", "1")
QUANTIZE_FAST = ("--data", "digits", "--calib-samples", "64", "--threads", "1")
BIG_MB = 256  # what the big model's one intermediate tensor takes at batch 1


def onnxkd(*args) -> tuple[int, str]:
    """Run the CLI in this process; the exit code and everything it printed. A user mistake
    must end in SystemExit (an `error:` line), never in an exception escaping the command."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert isinstance(result.exception, (SystemExit, type(None))), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def with_non_finite_weights(path: Path) -> Path:
    """digits_cnn with 3 NaN in its classifier weights and one Inf in a conv weight."""
    model = onnx.load(str(DIGITS))
    for tensor, bad in zip(model.graph.initializer[::2][:2], (np.nan, np.inf), strict=True):
        values = numpy_helper.to_array(tensor).copy()
        values.flat[: 3 if np.isnan(bad) else 1] = bad
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(path))
    return path


def big_activation_model(path: Path) -> Path:
    """A tiny file whose run holds one BIG_MB tensor: a [1, 1] input expanded, then summed."""
    n = BIG_MB * 2**20 // 4
    shape = numpy_helper.from_array(np.array([1, n], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Expand", ["x", "shape"], ["wide"]),
            helper.make_node("ReduceSum", ["wide"], ["y"], keepdims=1),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        initializer=[shape],
    )
    return save(graph, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Files a user might pass for a model, each wrong in its own way, and what the error says."""
    root = tmp_path_factory.mktemp("bad")
    (root / "notes.onnx").write_text("my notes about the model\n")
    (root / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    np.savez(root / "weights.npz", w=np.zeros(3))
    real = DIGITS.read_bytes()
    (root / "half.onnx").write_bytes(real[: len(real) // 2])
    (root / "empty.onnx").write_bytes(b"")
    constant = helper.make_node(
        "Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1, 2], [1, 2])
    )
    save(
        helper.make_graph(
            [constant], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])]
        ),
        root / "no_inputs.onnx",
    )
    onnx.save(
        onnx.load(str(DIGITS)),
        str(root / "external.onnx"),
        save_as_external_data=True,
        location="external.data",
        size_threshold=0,
    )
    (root / "external.data").unlink()  # the weights were not copied along
    (root / "folder.onnx").mkdir()
    (root / "a_file").write_text("in the way")
    shutil.copy(DIGITS, root / "digits.onnx")
    with_non_finite_weights(root / "nan.onnx")
    big_activation_model(root / "big.onnx")
    return {p.name: p for p in root.iterdir()}


BAD_MODELS = [
    ("notes.onnx", "is not a readable ONNX model: it is a text file starting 'my notes"),
    ("random.onnx", "is not a readable ONNX model: it is binary data that is not ONNX, 4096"),
    ("weights.npz", "is not a readable ONNX model: it is a zip archive (a NumPy .npz"),
    ("half.onnx", "starts like an ONNX model but is truncated or damaged (113929 bytes)"),
    ("empty.onnx", "is empty (0 bytes), not an ONNX model"),
    ("no_inputs.onnx", "has no graph inputs (outputs ['y'])"),
    ("external.onnx", "keeps its weights in external data files that cannot be read"),
]


@pytest.mark.parametrize("command", ["bench", "quantize"])
@pytest.mark.parametrize(("name", "message"), BAD_MODELS, ids=[n for n, _ in BAD_MODELS])
def test_a_file_that_is_no_model_gets_one_line_naming_it(files, tmp_path, command, name, message):
    path = files["digits.onnx"].with_name(name)
    out = tmp_path / ("bench" if command == "bench" else "q.int8.onnx")
    extra = FAST if command == "bench" else QUANTIZE_FAST
    code, output = onnxkd(command, path, "-o", out, "--workdir", tmp_path / "ws", *extra)
    assert code == 1
    (line,) = output.strip().splitlines()
    assert line.startswith(f"error: {path}") and message in line
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("command", ["bench", "quantize"])
def test_a_folder_or_a_missing_path_for_a_model_is_a_usage_error(files, tmp_path, command):
    code, output = onnxkd(command, files["folder.onnx"], "--workdir", tmp_path)
    assert code == 2 and "folder.onnx' is a directory" in output
    code, output = onnxkd(command, tmp_path / "missing.onnx", "--workdir", tmp_path)
    assert code == 2 and "missing.onnx' does not exist" in output


def test_a_missing_model_through_a_real_process_has_no_traceback(cli, files, tmp_path):
    for command in ("bench", "quantize"):
        result = cli(command, files["half.onnx"], "-o", tmp_path / "out")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"error: {files['half.onnx']} is not a readable ONNX")
        assert not (tmp_path / "out").exists()


def test_quantize_refuses_non_finite_weights_naming_the_first_tensor(files, tmp_path):
    out = tmp_path / "nan.int8.onnx"
    code, output = onnxkd("quantize", files["nan.onnx"], "-o", out, *QUANTIZE_FAST)
    assert code == 1
    assert "has non-finite weights: tensor 'classifier.weight' holds 3 NaN/Inf of its 640" in output
    assert "1 more tensor(s) too" in output
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_bench_warns_when_outputs_are_not_finite(files, tmp_path):
    code, output = onnxkd(
        "bench", files["nan.onnx"], "--data", "digits", "--batch", "1", "-o", tmp_path / "a", *FAST
    )
    assert code == 0
    assert "warning: nan on cpu gives NaN/Inf outputs for 359 of 359 validation samples" in output
    (row,) = json.loads((tmp_path / "a" / "bench.json").read_text())["rows"]
    assert row["non_finite_outputs"] == 359
    # With no data to score it, the timed inputs (seeded noise) still show it.
    code, output = onnxkd(
        "bench", files["nan.onnx"], "--no-accuracy", "--batch", "1", "-o", tmp_path / "b", *FAST
    )
    assert code == 0 and "gives NaN/Inf outputs on the timed inputs" in output
    code, output = onnxkd("bench", DIGITS, "--no-accuracy", "--batch", "1", "-o", tmp_path / "c")
    assert code == 0 and "NaN" not in output


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, files) -> Path:
    """digits_cnn quantized once into a folder of its own."""
    root = tmp_path_factory.mktemp("quantized")
    out = root / "digits.int8.onnx"
    code, output = onnxkd("quantize", DIGITS, "-o", out, "--workdir", root / "ws", *QUANTIZE_FAST)
    assert code == 0, output
    return out


def test_quantize_onto_an_existing_model_refuses_unless_told(quantized):
    before = quantized.read_bytes(), quantized.with_suffix(".json").read_bytes()
    workdir = quantized.parent / "ws"
    code, output = onnxkd("quantize", DIGITS, "-o", quantized, "--workdir", workdir, *QUANTIZE_FAST)
    assert code == 1
    assert f"{quantized} (and digits.int8.json) already exists" in output
    assert "pass --overwrite to replace it, or -o another path" in output
    assert (quantized.read_bytes(), quantized.with_suffix(".json").read_bytes()) == before
    code, output = onnxkd(
        "quantize", DIGITS, "-o", quantized, "--workdir", workdir, "--overwrite", *QUANTIZE_FAST
    )
    assert code == 0 and "calibration: reusing" in output
    report = json.loads(quantized.with_suffix(".json").read_text())
    assert report["int8_bytes"] == quantized.stat().st_size
    assert not list(quantized.parent.glob("*.tmp*"))


def test_the_default_output_name_is_never_replaced_silently(files, tmp_path):
    model = tmp_path / "student.onnx"
    shutil.copy(DIGITS, model)
    kept = tmp_path / "student.int8.onnx"
    kept.write_text("an INT8 model the user kept")
    code, output = onnxkd("quantize", model, "--workdir", tmp_path / "ws", *QUANTIZE_FAST)
    assert code == 1 and f"{kept} already exists" in output and "--overwrite" in output
    assert kept.read_text() == "an INT8 model the user kept"


def test_quantize_never_writes_over_its_own_float_model(files, tmp_path):
    model = tmp_path / "student.onnx"
    shutil.copy(DIGITS, model)
    code, output = onnxkd("quantize", model, "-o", model, "--overwrite", *QUANTIZE_FAST)
    assert code == 1 and "would replace the float model" in output
    assert model.read_bytes() == DIGITS.read_bytes()


def test_an_interrupted_quantize_leaves_no_model_that_looks_complete(tmp_path, monkeypatch):
    """Ctrl-C while the INT8 file is being saved: neither it nor a report is left."""
    from onnxkd.quantize import ptq
    from onnxkd.quantize.config import QuantizeConfig

    real_save = onnx.save

    def save_half_then_interrupt(model, path, *args, **kwargs):
        if ".int8.onnx.tmp" not in str(path):
            return real_save(model, path, *args, **kwargs)
        Path(path).write_bytes(model.SerializeToString()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save", save_half_then_interrupt)
    out = tmp_path / "digits.int8.onnx"
    cfg = QuantizeConfig(
        model=DIGITS, out=out, data="digits", calib_samples=64, workdir=tmp_path / "ws"
    )
    with pytest.raises(KeyboardInterrupt):
        ptq.quantize(cfg, log=lambda s: None)
    assert list(tmp_path.glob("digits.int8*")) == []


def test_bench_onto_an_earlier_result_refuses_unless_told(tmp_path):
    out = tmp_path / "bench"
    args = ("bench", DIGITS, "--no-accuracy", "--batch", "1", "--workdir", tmp_path, *FAST)
    assert onnxkd(*args, "-o", out)[0] == 0
    before = (out / "bench.json").read_bytes()
    code, output = onnxkd(*args, "-o", out)
    listed = f"{out / 'bench.json'} (and bench.md, pareto.png, memory.png) already exists"
    assert code == 1 and listed in output
    assert "pass --overwrite to replace it, or -o another folder" in output
    assert (out / "bench.json").read_bytes() == before
    # The default folder (WORKDIR/bench/EPS) is guarded the same way.
    assert onnxkd(*args)[0] == 0
    code, output = onnxkd(*args)
    assert code == 1 and "--overwrite" in output
    code, output = onnxkd(*args, "-o", out, "--overwrite")
    assert code == 0 and (out / "bench.json").read_bytes() != before


def test_an_interrupted_bench_overwrite_leaves_no_complete_looking_result(tmp_path, monkeypatch):
    """bench.json marks a finished result: an overwrite removes the old one first and writes
    the new one last, so a run stopped in between leaves none."""
    from onnxkd.bench import report

    out = tmp_path / "bench"
    args = ("bench", DIGITS, "--no-accuracy", "--batch", "1", "-o", out, *FAST)
    assert onnxkd(*args)[0] == 0

    def interrupted(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_json_atomic", interrupted)
    result = CliRunner().invoke(main, [str(a) for a in (*args, "--overwrite")])
    assert result.exit_code == 130
    assert not (out / "bench.json").exists()


@pytest.mark.parametrize("command", ["bench", "quantize"])
def test_an_output_under_a_file_is_refused_before_any_work(files, tmp_path, command):
    target = files["a_file"] / "out"
    extra = FAST if command == "bench" else QUANTIZE_FAST
    code, output = onnxkd(command, DIGITS, "-o", target, "--workdir", tmp_path, *extra)
    assert code == 1
    assert (
        f"cannot write {'bench results to' if command == 'bench' else 'the INT8 model'}" in output
    )
    assert f"{files['a_file']} is a file, not a folder" in output


def test_quantize_with_a_workdir_under_a_file_is_refused(files, tmp_path):
    code, output = onnxkd(
        "quantize", DIGITS, "-o", tmp_path / "q.onnx", "--workdir", files["a_file"] / "ws"
    )
    assert code == 1 and "pass --workdir a folder you can write" in output


@pytest.mark.parametrize("command", ["bench", "quantize"])
def test_a_read_only_output_folder_is_refused(tmp_path, monkeypatch, command):
    """Tests run as root, for whom chmod changes nothing: onnxkd asks `os.access`, which also
    says no on a read-only file system, so this one says no to the folder."""
    import os

    from onnxkd.bench import output_path

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        output_path.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode)
    )
    extra = FAST if command == "bench" else QUANTIZE_FAST
    code, output = onnxkd(command, DIGITS, "-o", locked / "out", "--workdir", tmp_path, *extra)
    assert code == 1 and f"{locked} is not writable" in output
    assert list(locked.iterdir()) == []


def test_peak_memory_is_each_models_own(files, tmp_path):
    """A small model benched after a big one gets its own peak, not the big one's: each is
    measured in a process of its own. Throughput is the batch over the median latency."""
    out = tmp_path / "bench"
    code, output = onnxkd(
        "bench", files["big.onnx"], DIGITS, "--no-accuracy", "--batch", "1", "-o", out, *FAST
    )
    assert code == 0, output
    assert "own peak MB" in output
    rows = {r["model"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    big, small = rows["big"]["peak_rss_added_mb"], rows["digits_cnn"]["peak_rss_added_mb"]
    assert big > 0.8 * BIG_MB
    assert 0 < small < 20
    for row in rows.values():
        assert row["throughput"] == pytest.approx(1e3 / row["p50_ms"], rel=1e-3)
    assert "Own peak MB: the resident memory a fresh process adds" in (out / "bench.md").read_text()
