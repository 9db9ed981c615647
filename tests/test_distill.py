"""`onnxkd distill`: exact pixels and targets, run folder contents, export parity, kill and
--resume, torchrun with 2 processes, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import MODELS

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.data import CachedBatches
from onnxkd.distill.trainer import distill

DIGITS_TEACHER = MODELS / "digits_cnn.onnx"
FAST = ("--student", "small_cnn", "--batch-size", "64", "--threads", "1")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace holding a digits cache with 3 views and a pooled-free teacher feature."""
    root = tmp_path_factory.mktemp("ws")
    cfg = CacheConfig(
        DIGITS_TEACHER,
        DataRef("digits"),
        workdir=root / "onnxkd-out",
        views=3,
        augment="crop",
        features=("/features/features.5/Relu_output_0",),
        threads=1,
    )
    cache_teacher(cfg, log=lambda s: None)
    return root


def fresh(workspace: Path, tmp_path: Path) -> Path:
    """A copy of the module's workspace, so each test's runs stay its own."""
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_batches_hold_exactly_what_the_teacher_saw(workspace):
    state = json.loads((workspace / "onnxkd-out" / "state.json").read_text())
    cache = CacheReader(state["cache"])
    section = cache.section("train")
    source = open_source(DataRef("digits"))
    batches = CachedBatches(section, source)
    idx = np.array([5, 900, 17, 3])
    for epoch in range(5):
        view = batches.view_for_epoch(epoch)
        assert view == epoch % 3
        batch = batches.load(idx, view)
        np.testing.assert_array_equal(batch.x, section.model_input(source, idx, view))
        np.testing.assert_array_equal(batch.teacher["logits"], section.scores(idx, view))
        np.testing.assert_array_equal(batch.labels, source.read(idx)[1])
    # Every sample appears once per epoch, in an order that depends on the epoch only.
    seen = np.concatenate([b.indices for b in batches.epoch(2, 100, seed=1)])
    assert sorted(seen.tolist()) == list(range(section.n))
    again = np.concatenate([b.indices for b in batches.epoch(2, 100, seed=1)])
    np.testing.assert_array_equal(seen, again)


def test_distill_from_the_workspace_with_no_options(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    result = cli("distill", *FAST, "--epochs", "3", cwd=root)
    assert result.returncode == 0, result.stderr
    state = json.loads((root / "onnxkd-out" / "state.json").read_text())
    run = Path(state["run"])
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["student"] == "small_cnn"
    assert {"torch", "onnxruntime", "onnxkd"} <= set(config["versions"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["view"] for r in rows] == [0, 1, 2]
    assert {"val_accuracy", "val_agreement", "val_kl", "epoch_seconds"} <= set(rows[0])
    assert (run / "curves.png").stat().st_size > 10_000
    for name in ("last.pt", "best.pt"):
        torch.load(run / "checkpoints" / name, weights_only=True)
    export = json.loads((run / "export.json").read_text())
    assert export["max_abs_diff"] < 1e-4
    assert export["onnxruntime_accuracy"] == export["torch_accuracy"]
    assert export["onnxruntime_accuracy"] > 0.8
    model = onnx.load(state["student"])
    meta = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(meta["onnxkd.input_spec"])
    assert spec["scale"] == pytest.approx(1 / 16) and spec["label_names"][3] == "3"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # dynamic batch
    assert "student:" in result.stdout and "test accuracy" in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_run_resumes_without_losing_epochs(cli, workspace, tmp_path, sig):
    """kill -9 of a run in a named folder, or Ctrl-C of one in the workspace's runs/: a bare
    `distill --resume` finds the interrupted run (not the last finished one)."""
    root = fresh(workspace, tmp_path)
    whole = cli("distill", *FAST, "--epochs", "4", "-o", root / "whole", cwd=root)
    assert whole.returncode == 0, whole.stderr
    named = ("-o", str(root / "killed")) if sig == signal.SIGKILL else ()
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxkd", "distill", *FAST, "--epochs", "4", *named],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = root / "onnxkd-out" / "state.json"
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        # without -o: the run's folder once the workspace records it (until then, "whole")
        run = Path(named[1]) if named else Path(json.loads(state.read_text())["training"])
        metrics = run / "metrics.jsonl"
        if run.name != "whole" and metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr[-3000:]
        assert "`onnxkd distill --resume` continues the run" in stderr
    done_before = metrics.read_text().splitlines()
    resumed = cli("distill", "--resume", *named, cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {metrics.parent}" in resumed.stderr
    after = metrics.read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in after] == [0, 1, 2, 3]
    assert after[: len(done_before)] == done_before  # finished epochs are kept as they were
    reference = (root / "whole" / "metrics.jsonl").read_text().splitlines()
    for ours, theirs in zip(after, reference, strict=True):
        a, b = json.loads(ours), json.loads(theirs)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "onnxkd",
            "distill",
            *FAST,
            "--epochs",
            "2",
            "-o",
            str(root / "ddp"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((root / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    rows = (root / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[-1])["val_accuracy"] > 0.5
    assert (root / "ddp" / "student.onnx").exists()


FEATURE = "/features/features.5/Relu_output_0"
# Each method's accuracy floor after 3 epochs on digits (the clean test split), about 3 points
# under the lowest of seeds 0, 1 and 2 measured here. A method whose targets are misaligned
# with its inputs misses every floor: with the teacher's rows permuted within each batch (planted
# by hand once) the 3-seed accuracies were 8-29%. A broken feature term alone is not caught
# this way (with permuted teacher features, hints, RKD and CRD trained as well as intact:
# KD carries them); test_training_inputs.py checks what those terms are fed.
METHOD_FLOORS = {
    "kd": ({}, 0.91),  # measured 0.942-0.958; scratch, the no-teacher bound, 0.911-0.914
    "dkd": ({"loss": "dkd"}, 0.80),  # 0.841-0.869: its lr 0.01 default learns slower early
    "scratch": ({"loss": "ce"}, 0.88),  # 0.911-0.914
    "fitnets": ({"hints": (f"stage2:{FEATURE}",)}, 0.91),  # 0.950-0.964
    "attention": ({"attention": (f"stage2:{FEATURE}",)}, 0.84),  # 0.875-0.905
    "online": ({"online": True}, 0.91),  # 0.944-0.958
    "rkd": ({"rkd": f"embedding:{FEATURE}"}, 0.93),  # 0.967-0.975
    "bf16-channels-last-adamw": (
        {"bf16": True, "channels_last": True, "optimizer": "adamw"},
        0.79,  # 0.830-0.850
    ),
    "crd": ({"crd": f"embedding:{FEATURE}"}, 0.91),  # 0.950-0.958
}


@pytest.mark.parametrize("method", list(METHOD_FLOORS))
def test_each_method_reaches_its_accuracy_floor(workspace, tmp_path, method):
    extra, floor = METHOD_FLOORS[method]
    root = fresh(workspace, tmp_path)
    cfg = DistillConfig(
        student="small_cnn",
        workdir=root / "onnxkd-out",
        epochs=3,
        batch_size=64,
        threads=1,
        export=False,
        out=root / "run",
        # scored on the clean test split: the held-back samples' first view is a random crop
        # (selection on them is tested in test_distill_safety.py)
        val_fraction=0.0,
        **extra,
    )
    result = distill(cfg, log=lambda s: None)
    row = result.history[-1]
    assert np.isfinite(row["train_loss"])
    assert row["val_accuracy"] >= floor, f"{method}: {row['val_accuracy']:.4f} < {floor}"


def test_bf16_on_a_cpu_without_bf16_arithmetic_trains_in_float32(workspace, tmp_path, monkeypatch):
    import onnxkd.distill.trainer

    monkeypatch.setattr(onnxkd.distill.trainer, "lacks_native_bf16", lambda: True)
    root = fresh(workspace, tmp_path)
    cfg = DistillConfig(
        student="small_cnn_s",
        workdir=root / "onnxkd-out",
        epochs=1,
        threads=1,
        export=False,
        out=root / "run",
        bf16=True,
        device="cpu",
    )
    messages = []
    distill(cfg, log=messages.append)
    assert any("no bf16 arithmetic" in m and "float32" in m for m in messages)
    # The run's record says what it trained in.
    assert json.loads((root / "run" / "config.json").read_text())["config"]["bf16"] is False


BAD = [
    (("--student", "mobilenetv2_w05"), "unknown student 'mobilenetv2_w05'; did you mean"),
    (("--student", "small_cnn", "--cache", "nowhere"), "does not exist"),
    (("--student", "small_cnn", "--hint", "stage2"), "must be STUDENT:TEACHER"),
    (
        ("--student", "small_cnn", "--hint", "stage2:nope", "--epochs", "1"),
        "no teacher feature 'nope'",
    ),
    (
        (
            "--student",
            "small_cnn",
            "--hint",
            "stage9:/features/features.5/Relu_output_0",
            "--epochs",
            "1",
        ),
        "student has no module 'stage9'",
    ),
    (("--student", "small_cnn", "--data", "data/mnist"), "fingerprints differ"),
    (("--student", "small_cnn", "--loss", "kd_topk"), "needs a top-k cache"),
    (("--student", "small_cnn", "--alpha-end", "0.5"), "needs a linear or cosine schedule"),
    (("--student", "small_cnn", "--crd", "embedding"), "must be STUDENT:TEACHER"),
    (
        ("--student", "small_cnn", "--crd", "embedding:nope", "--epochs", "1"),
        "no teacher feature 'nope'",
    ),
    (
        ("--student", "small_cnn", "--loss", "dkd", "--alpha-schedule", "linear"),
        "--alpha-schedule: a linear schedule needs an end value",
    ),
    (
        (
            "--student",
            "small_cnn",
            "--loss",
            "ce",
            "--temperature-end",
            "1",
            "--temperature-schedule",
            "linear",
        ),
        "loss 'ce' does not take --temperature-end",
    ),
    (
        (
            "--student",
            "small_cnn",
            "--online",
            "--hint",
            "stage2:/features/features.5/Relu_output_0",
        ),
        "drop --online",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_distill_input_gives_one_clear_line(cli, workspace, tmp_path, args, message):
    root = fresh(workspace, tmp_path)
    if "--data" in args:
        args = tuple(str(MODELS.parent / a) if a.startswith("data/") else a for a in args)
    result = cli("distill", *args, cwd=root)
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_alpha_and_temperature_schedules_are_recorded_per_epoch(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    schedule = ("--alpha", "0.3", "--alpha-end", "0.9", "--alpha-schedule", "linear")
    schedule += ("--temperature-end", "1", "--temperature-schedule", "cosine")
    result = cli("distill", *FAST, "--epochs", "3", "--no-export", *schedule, cwd=root)
    assert result.returncode == 0, result.stderr
    run = Path(json.loads((root / "onnxkd-out" / "state.json").read_text())["run"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the values in force at each epoch's last step: 1/3, 2/3 and all of the schedule done
    assert [r["alpha"] for r in rows] == pytest.approx([0.5, 0.7, 0.9])
    assert [r["temperature"] for r in rows] == pytest.approx([3.25, 1.75, 1.0])
    loss = json.loads((run / "config.json").read_text())["config"]
    assert (loss["alpha_schedule"], loss["temperature_end"]) == ("linear", 1.0)


def test_no_cache_in_the_workspace_says_what_to_run(cli, tmp_path):
    result = cli("distill", "--student", "small_cnn")
    assert result.returncode == 1
    assert "has no cache yet; run `onnxkd cache-teacher" in result.stderr


def test_students_command_lists_the_registry(cli):
    result = cli("students")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"mobilenetv2_w050", "resnet8x4", "shufflenetv2", "small_cnn", "mlp"} <= set(names)


def test_kd_from_a_topk_cache(tmp_path):
    cfg = CacheConfig(
        DIGITS_TEACHER,
        DataRef("digits"),
        out=tmp_path / "topk",
        topk=3,
        views=2,
        augment="crop",
        threads=1,
        workdir=tmp_path / "ws",
    )
    cache_teacher(cfg, log=lambda s: None)
    run = DistillConfig(
        student="small_cnn",
        cache=tmp_path / "topk",
        loss="kd_topk",
        epochs=2,
        batch_size=64,
        threads=1,
        workdir=tmp_path / "ws",
        out=tmp_path / "run",
    )
    result = distill(run, log=lambda s: None)
    assert [r["view"] for r in result.history] == [0, 1]
    assert result.export["onnxruntime_accuracy"] > 0.5
