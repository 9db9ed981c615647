"""No command writes where the user stands (issue 29): every command, run from an empty
read-only current directory with its outputs and workspace elsewhere, leaves that directory
as it found it and leaves nothing in the temp directory either."""

from __future__ import annotations

import getpass
import os
import stat
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from onnxkd.bench.activations import _infer_shapes
from tests.conftest import MODELS, ROOT, run_cli

pytestmark = pytest.mark.slow


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` (hidden ones too) with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def steps(out: Path, ws: Path) -> list[tuple]:
    """Each command once, in an order where each finds what it reads."""
    teacher, cache, run = MODELS / "digits_cnn.onnx", out / "cache", out / "run"
    where, one = ("--workdir", ws), ("--threads", "1")
    return [
        ("students",),
        ("losses",),
        ("cache-teacher", teacher, "--data", "digits", "--views", "2", "-o", cache, *where),
        ("cache-info", cache, *where),
        *[
            (
                "cache-teacher",
                teacher,
                "--data",
                "digits",
                "--shard",
                f"{i}/2",
                "-o",
                out / "sharded",
                *where,
            )
            for i in (0, 1)
        ],  # fmt: skip
        ("cache-merge", out / "sharded"),
        (
            "distill",
            "--cache",
            cache,
            "--student",
            "small_cnn_s",
            "--epochs",
            "1",
            "-o",
            run,
            *one,
            *where,
        ),  # fmt: skip
        ("quantize", run / "student.onnx", "--cache", cache, "-o", out / "q.onnx", *where),
        (
            "bench",
            run / "student.onnx",
            out / "q.onnx",
            "--cache",
            cache,
            "-o",
            out / "bench",
            *where,
        ),  # fmt: skip
        (
            "prune",
            run,
            "--target",
            "params=0.5",
            "--epochs",
            "1",
            "-o",
            out / "pruned",
            *one,
            *where,
        ),  # fmt: skip
        (
            "sweep",
            "--cache",
            cache,
            "--trial",
            "student=small_cnn_s",
            "--set",
            "epochs=1",
            "--seeds",
            "0",
            "-o",
            out / "sweep",
            *one,
            *where,
        ),  # fmt: skip
        ("ondevice", "artifacts", run / "student.onnx", "-o", out / "artifacts", *where),
        ("ondevice", "train", out / "artifacts", "--cache", cache, "--epochs", "1", *where),
        ("run", ROOT / "pipelines" / "digits.toml", *where),
    ]


# What the libraries themselves leave in TMPDIR, not a command: `import onnxruntime` writes a
# session id into .ses (one small file, rewritten on every import, never accumulating), and
# torch's first optimizer step creates its (here empty) inductor cache folder.
LIBRARY_LEFTOVERS = {".ses", f"torchinductor_{getpass.getuser()}"}


def test_no_command_writes_into_the_current_or_the_temp_directory(tmp_path):
    here, out, ws, tmp = (tmp_path / name for name in ("here", "out", "ws", "tmp"))
    for folder in (here, out, tmp):
        folder.mkdir()
    env = {
        "ONNXKD_ONDEVICE_ENV": str(ROOT / ".venv-ondevice"),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp),  # the system temp directory, for these commands
    }
    here.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only (root writes anyway: hence the snapshot)
    try:
        for step in steps(out, ws):
            result = run_cli(*step, cwd=here, env=env, timeout=600)
            assert result.returncode == 0, f"{step[0]}: {result.stderr[-2000:]}"
            assert snapshot(here) == {}, f"{step[0]} wrote into the current directory"
            left = sorted(set(snapshot(tmp)) - LIBRARY_LEFTOVERS)
            assert left == [], f"{step[0]} left {left} in the temp directory"
    finally:
        here.chmod(0o755)
    assert os.listdir(ws), "the workspace was not used: the commands did not run where meant"


def test_shape_inference_that_fails_leaves_no_file_in_the_current_directory(tmp_path, monkeypatch):
    # onnxruntime's symbolic shape inference saves the half-inferred model as
    # sym_shape_infer_temp.onnx in the cwd when an op is unknown to it (a custom op here).
    node = helper.make_node("SleepFixed", ["x"], ["y"], domain="ai.onnx.contrib")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    monkeypatch.chdir(tmp_path)
    _, note = _infer_shapes(model)
    assert note and "onnxruntime's failed" in note  # the failing path did run
    assert list(tmp_path.iterdir()) == []
    assert os.getcwd() == str(tmp_path)
