"""`onnxkd prune`: targets, the pruned architecture rebuilt from data, the run folder it leaves,
kill -9 and resume, and the inputs it refuses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import MODELS

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.trainer import distill
from onnxkd.prune.config import PruneConfig, PruneConfigError, PruneTarget
from onnxkd.prune.search import measure, prune_once
from onnxkd.students import create_student
from onnxkd.students.pruned import PrunedArchitecture, PrunedArchitectureError, check_prunable

CIFAR_SPEC = InputSpec(layout="NCHW", size=(32, 32), channels=3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A digits cache and a finished resnet8 run (the workspace's latest run)."""
    root = tmp_path_factory.mktemp("prune")
    ws = root / "onnxkd-out"
    cache_teacher(
        CacheConfig(MODELS / "digits_cnn.onnx", DataRef("digits"), workdir=ws, views=2, threads=1),
        log=lambda s: None,
    )
    distill(
        DistillConfig(student="resnet8", epochs=2, batch_size=64, threads=1, workdir=ws),
        log=lambda s: None,
    )
    return root


def fresh(workspace: Path, tmp_path: Path) -> Path:
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_targets_parse_or_are_refused():
    assert PruneTarget.parse("params=0.3") == PruneTarget("params", 0.3)
    assert PruneTarget.parse(" macs = 0.5 ") == PruneTarget("macs", 0.5)
    assert PruneTarget.parse("latency=1.5ms") == PruneTarget("latency", 1.5)
    assert str(PruneTarget.parse("latency=2")) == "latency=2ms"
    for bad in ("params=1.5", "params=0", "macs=-0.2", "flops=0.5", "params", "latency=0ms", ""):
        with pytest.raises(PruneConfigError):
            PruneTarget.parse(bad)
    with pytest.raises(PruneConfigError, match="--target is required"):
        PruneConfig()


def test_architecture_rebuilds_the_pruned_network_from_json():
    """MobileNetV2 w1.0 pruned to about w0.5's parameters, stored as JSON, rebuilt on a fresh
    registry student: same shapes, and with the pruned weights, the same outputs."""
    torch.manual_seed(0)
    wide = create_student("mobilenetv2_w100", 10, 3, 32).eval()
    narrow = measure(create_student("mobilenetv2_w050", 10, 3, 32), CIFAR_SPEC).params
    pruned, removals = prune_once(wide, CIFAR_SPEC, 10, 0.44, PruneConfig(target="params=0.3"))
    size = measure(pruned, CIFAR_SPEC)
    assert abs(size.params - narrow) / narrow < 0.05
    assert size.params < measure(wide, CIFAR_SPEC).params / 3
    stored = json.loads(json.dumps(PrunedArchitecture("mobilenetv2_w100").then(removals).to_dict()))
    rebuilt = PrunedArchitecture.from_dict(stored).build(CIFAR_SPEC, 10).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), pruned(x), rtol=0, atol=0)
    with pytest.raises(PrunedArchitectureError, match="malformed"):
        PrunedArchitecture.from_dict({"format": 99, "base": "resnet8", "steps": []})


def test_shufflenetv2_is_refused_with_the_reason():
    with pytest.raises(PrunedArchitectureError, match="channel shuffle"):
        check_prunable("shufflenetv2_w050")
    check_prunable("mobilenetv2_w100")  # no error


def test_prune_from_the_workspace_with_no_paths(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    result = cli("prune", "--target", "params=0.5", "--steps", "2", "--epochs", "1",
                 "--threads", "1", cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    state = json.loads((root / "onnxkd-out" / "state.json").read_text())
    out = Path(state["run"])
    assert state["student"] == str(out / "student.onnx")
    record = json.loads((out / "prune.json").read_text())
    assert record["finished"] and [s["step"] for s in record["steps"]] == [1, 2]
    unpruned = record["unpruned"]["params"]
    # step 1 aims at sqrt(0.5) of the parameters, step 2 at 0.5
    assert record["steps"][0]["params"] <= 0.5**0.5 * unpruned
    assert record["steps"][1]["params"] <= 0.5 * unpruned
    run = RunFolder(out)
    report = run.export_report()
    assert report.max_abs_diff < 1e-4
    assert (root / report.onnx).resolve() == (out / "student.onnx").resolve()
    assert report.test_accuracy == record["steps"][1]["test_accuracy"]
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [(r["epoch"], r["prune_step"]) for r in rows] == [(0, 1), (1, 2)]
    # the run folder's record names the architecture it trained, so it can be rebuilt
    assert run.record().config.architecture is not None
    quantized = cli("quantize", "--threads", "1", "--calib-samples", "64", cwd=root)
    assert quantized.returncode == 0, quantized.stderr


def test_killed_prune_resumes_without_redoing_a_step(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    out = root / "pruned"
    args = ("--target", "params=0.5", "--steps", "2", "--epochs", "2", "--threads", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxkd", "prune", *args, "-o", str(out)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    step2 = out / "steps" / "2" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not step2.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the prune run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    step1 = out / "steps" / "1" / "checkpoints" / "last.pt"
    before = step1.stat().st_mtime_ns
    assert not (out / "export.json").exists()
    resumed = cli("prune", "--resume", "-o", out, cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming the prune run in {out}" in resumed.stderr
    assert step1.stat().st_mtime_ns == before  # step 1 was not trained again
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["prune_step"]) for r in rows] == [(0, 1), (1, 1), (2, 2), (3, 2)]
    assert RunFolder(out).export_report().max_abs_diff < 1e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (("--target", "params=2"), "share to keep, in (0, 1)"),
        ((), "--target is required"),
        (("--target", "latency=0.00001ms", "--epochs", "1"), "cannot be reached"),
        (("--target", "params=0.5", "onnxkd-out"), "not a finished distill run"),
        (("--target", "params=0.5", "--teacher-cache", "nowhere"), "nowhere does not exist"),
    ],
    ids=["ratio-above-1", "no-target", "unreachable", "not-a-run", "no-teacher-cache"],
)
def test_bad_inputs_get_one_line(cli, workspace, tmp_path, args, message):
    root = fresh(workspace, tmp_path)
    result = cli("prune", *args, "--threads", "1", cwd=root)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_a_used_folder_is_not_overwritten_without_asking(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep me")
    result = cli("prune", "--target", "params=0.5", "-o", root / "mine", cwd=root)
    assert result.returncode == 1 and "holds no prune run" in result.stderr
    assert (root / "mine" / "notes.txt").read_text() == "keep me"


def test_pruned_student_learns_from_the_unpruned_one(cli, workspace, tmp_path):
    """--teacher-cache: the fine-tuning distils from the unpruned student's own outputs,
    cached with cache-teacher; a cache of other samples is refused in one line."""
    root = fresh(workspace, tmp_path)
    state = json.loads((root / "onnxkd-out" / "state.json").read_text())
    unpruned = Path(state["run"]) / "student.onnx"
    student_cache = root / "student-cache"
    cached = cli("cache-teacher", unpruned, "--data", "digits", "--views", "2",
                 "--threads", "1", "-o", student_cache, cwd=root)  # fmt: skip
    assert cached.returncode == 0, cached.stderr
    out = root / "pruned"
    args = ("--target", "params=0.5", "--epochs", "1", "--threads", "1")
    result = cli("prune", *args, "--teacher-cache", student_cache, "-o", out, cwd=root)
    assert result.returncode == 0, result.stderr
    step = RunFolder(out / "steps" / "1").record()
    assert step.cache.resolve() == student_cache.resolve()
    record = json.loads((out / "prune.json").read_text())
    assert Path(record["config"]["teacher_cache"]).resolve() == student_cache.resolve()

    other = root / "other-samples"
    cached = cli("cache-teacher", unpruned, "--data", "digits", "--holdout", "0.3",
                 "--views", "1", "--threads", "1", "-o", other, cwd=root)  # fmt: skip
    assert cached.returncode == 0, cached.stderr
    refused = cli("prune", *args, "--teacher-cache", other, "-o", root / "p2", cwd=root)
    assert refused.returncode == 1, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training samples do not match" in errors[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (root / "p2").exists()  # refused before a prune folder was started
