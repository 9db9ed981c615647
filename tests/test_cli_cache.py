"""`onnxkd cache-teacher` as a user types it: the zoo teacher, kill and resume, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import MODELS, SHARED_DATA, run_torchrun

from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef

DIGITS_TEACHER = MODELS / "digits_cnn.onnx"


def test_help_imports_neither_torch_nor_onnxruntime():
    commands = ["", "cache-teacher", "cache-info", "cache-merge", "distill", "students"]
    code = (
        "import sys\n"
        "from onnxkd.cli import main\n"
        f"for cmd in {commands!r}:\n"
        "    try:\n"
        "        main([*cmd.split(), '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (cmd, e.code)\n"
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: " in out.stdout and "--views" in out.stdout and "--verify" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_zoo_digits_teacher_cache_agrees_with_the_teacher(cli, tmp_path):
    result = cli("cache-teacher", DIGITS_TEACHER, "--data", "digits")
    assert result.returncode == 0, result.stderr
    assert "teacher accuracy" in result.stdout
    state = json.loads((tmp_path / "onnxkd-out" / "state.json").read_text())
    cache = CacheReader(state["cache"])
    sess = ort.InferenceSession(str(DIGITS_TEACHER), providers=["CPUExecutionProvider"])
    # The default for a teacher of images: 10 crop views, so distill's 30 default epochs
    # replay each view 3 times instead of one view 30 times.
    train = cache.manifest.section("train")
    assert (train.views, train.augmentation["policy"]) == (10, "crop")
    for section, split in (("train", "train"), ("eval", "test")):
        part = cache.section(section)
        source = open_source(DataRef("digits", split=split))
        idx = np.arange(part.n)
        for view in (0, part.views - 1):
            direct = sess.run(None, {"input": part.model_input(source, idx, view)})[0]
            assert (part.argmax(idx, view) == direct.argmax(1)).all()  # 100% agreement
    assert cache.manifest.to_dict()["input_spec_origin"] == "teacher metadata"
    info = cli("cache-info")
    assert info.returncode == 0, info.stderr
    assert "integrity: every array matches" in info.stdout


# A job of a few seconds, so there is time to interrupt it after a few chunks.
LONG_JOB = ["cache-teacher", str(DIGITS_TEACHER), "--data", "digits", "--views", "48",
            "--augment", "crop", "--batch-size", "32", "--dtype", "float32"]  # fmt: skip


def _start(out: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "onnxkd", *LONG_JOB, "-o", str(out)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt_midway(proc: subprocess.Popen, out: Path, sig: int) -> None:
    progress = out / "train" / "part-0-of-1" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text())["chunks_done"] >= 3:
            break
        assert proc.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)


def _arrays(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_resumes_to_an_identical_cache(cli, tmp_path, sig):
    reference = cli(*LONG_JOB, "-o", tmp_path / "whole")
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "resumed"
    proc = _start(out, tmp_path)
    _interrupt_midway(proc, out, sig)
    if sig == signal.SIGINT:
        stderr = proc.stderr.read()
        assert proc.returncode == 130, stderr
        assert "interrupted; rerun the same command to resume" in stderr
    assert not (out / "manifest.json").exists()
    info = cli("cache-info", out)
    assert info.returncode == 1 and "is incomplete" in info.stderr
    assert "Traceback" not in info.stderr
    resumed = cli(*LONG_JOB, "-o", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert _arrays(out) == _arrays(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    again = json.loads((out / "manifest.json").read_text())
    assert (
        whole["sections"]["train"]["teacher_accuracy"]
        == again["sections"]["train"]["teacher_accuracy"]
    )


def test_torchrun_ranks_each_write_a_slice_and_the_last_completes_it(cli, tmp_path):
    out = tmp_path / "c"
    args = ("cache-teacher", DIGITS_TEACHER, "--data", "digits", "-o", out)
    first = cli(*args, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert first.returncode == 0, first.stderr
    assert "the cache completes when every shard is" in first.stderr
    assert not (out / "manifest.json").exists()
    second = cli(*args, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert second.returncode == 0, second.stderr
    cache = CacheReader(out)
    assert cache.manifest.to_dict()["shards"] == 2 and cache.verify() == []
    merged = cli("cache-merge", out)
    assert merged.returncode == 0 and "teacher accuracy" in merged.stdout


def test_torchrun_two_processes_write_the_single_process_cache_bit_for_bit(cli, tmp_path):
    args = ["cache-teacher", str(DIGITS_TEACHER), "--data", "digits", "--views", "2"]
    args += ["--workdir", str(tmp_path / "ws")]
    launched = run_torchrun(*args, "-o", tmp_path / "sharded", cwd=tmp_path, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    whole = cli(*args, "-o", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    sharded, single = CacheReader(tmp_path / "sharded"), CacheReader(tmp_path / "whole")
    assert sharded.manifest.shards == 2 and single.manifest.shards == 1
    assert sharded.verify() == []
    for name in ("train", "eval"):
        a, b = sharded.section(name), single.section(name)
        idx = np.arange(a.n)
        assert a.n == b.n and a.views == b.views
        np.testing.assert_array_equal(a.labels(idx), b.labels(idx))
        for view in range(a.views):
            assert a.scores(idx, view).tobytes() == b.scores(idx, view).tobytes()
            np.testing.assert_array_equal(a.aug_params(idx, view), b.aug_params(idx, view))


def test_a_shard_that_never_finished_is_named(cli, tmp_path):
    out = tmp_path / "c"
    args = ("cache-teacher", DIGITS_TEACHER, "--data", "digits", "-o", out)
    first = cli(
        *args,
        env={
            "SLURM_ARRAY_TASK_ID": "1",
            "SLURM_ARRAY_TASK_COUNT": "2",
            "SLURM_ARRAY_TASK_MIN": "1",
        },
    )
    assert first.returncode == 0, first.stderr
    assert "shard 0/2 done" in first.stderr
    merged = cli("cache-merge", out)
    assert merged.returncode == 1 and "Traceback" not in merged.stderr
    named = "shards not yet written: eval 1/2, train 1/2 (failed, stopped or never started"
    assert named in merged.stderr


@pytest.mark.parametrize(
    ("env", "shard"),
    [
        ({}, (0, 1)),
        ({"RANK": "1", "WORLD_SIZE": "3"}, (1, 3)),
        ({"WORLD_SIZE": "1", "RANK": "0"}, (0, 1)),
        (
            {
                "SLURM_ARRAY_TASK_ID": "7",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "4",
            },
            (3, 4),
        ),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
        # torchrun inside a Slurm array job: torchrun's ranks decide
        (
            {
                "RANK": "0",
                "WORLD_SIZE": "2",
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            (0, 2),
        ),
        # a batch script's one process of --ntasks 4 is not a shard
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, (0, 1)),
    ],
)
def test_the_launcher_decides_the_shard(env, shard):
    from onnxkd.cache.shards import launcher_shard

    assert launcher_shard(env) == shard


def test_a_shard_outside_the_array_is_refused():
    from onnxkd.cache.shards import launcher_shard
    from onnxkd.errors import CacheError

    with pytest.raises(CacheError, match="SLURM_ARRAY_TASK_ID=9 is outside"):
        launcher_shard({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})


BAD_INPUTS = [
    (["missing.onnx", "--data", "digits"], "does not exist"),
    (["NOT_ONNX", "--data", "digits"], "is not a readable ONNX model"),
    (["DIGITS", "--data", "no/such/data"], "no/such/data"),
    (["DIGITS", "--data", "digits", "--ep", "cuda"], "available: cpu"),
    (["DIGITS", "--data", "digits", "--ep", "warp-drive"], "unknown execution provider"),
    (["DIGITS", "--data", "digits", "--topk", "10"], "keeps every class"),
    # --scale overrides the teacher's metadata spec, but 0.5 contradicts the digits' 0..16.
    (["DIGITS", "--data", "digits", "--scale", "0.5"], "is meant for values up to 2"),
    (["DIGITS", "--data", "CIFAR"], "needs raw samples of shape (8, 8, 1)"),
    (["DIGITS", "--data", "digits", "--features", "nope"], "no tensor named 'nope'"),
    (["DIGITS", "--data", "digits", "--teacher-output", "probs"], "no output 'probs'"),
    (["DIGITS", "--data", "digits", "--augment", "crop", "--pad", "-1"], "Invalid value"),
    (["DIGITS", "--data", "digits", "--shard", "3/2"], "0 <= i < n"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gives_one_clear_line(cli, tmp_path, args, message):
    (tmp_path / "NOT_ONNX").write_text("this is a text file, not a model")
    subst = {
        "DIGITS": str(DIGITS_TEACHER),
        "CIFAR": str(SHARED_DATA / "cifar10" / "cifar10-subset.npz"),
    }
    result = cli("cache-teacher", *[subst.get(a, a) for a in args])
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "onnxkd-out" / "state.json").exists()


def test_config_file_fills_defaults_and_flags_override(cli, tmp_path):
    config = tmp_path / "onnxkd.toml"
    config.write_text('[cache-teacher]\nviews = 3\naugment = "crop"\ndata = "digits"\n')
    out = tmp_path / "c"
    result = cli("--config", config, "cache-teacher", DIGITS_TEACHER, "--views", "2", "-o", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sections"]["train"]["views"] == 2  # the flag wins
    assert manifest["sections"]["train"]["augmentation"]["policy"] == "crop"  # from the file
    config.write_text("[cache-teacher]\nvues = 3\n")
    bad = cli("--config", config, "cache-teacher", DIGITS_TEACHER)
    assert bad.returncode == 2 and "unknown options ['vues']" in bad.stderr
    config.write_text("[distil]\nepochs = 3\n")
    bad = cli("--config", config, "students")
    assert bad.returncode == 2 and "[distil] is not a command table" in bad.stderr


def test_split_options_reach_the_manifest(cli, tmp_path):
    out = tmp_path / "c"
    result = cli(
        "cache-teacher",
        DIGITS_TEACHER,
        "--data",
        "digits",
        "--split",
        "test",
        "--holdout",
        "0.3",
        "--split-seed",
        "2",
        "--no-eval",
        "--topk",
        "3",
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["sections"]) == ["train"]  # the cached split; no eval section
    info = manifest["sections"]["train"]["split_info"]
    assert (info["split"], info["fraction"], info["seed"]) == ("test", 0.3, 2)
    assert manifest["sections"]["train"]["n"] == round(0.3 * 1797)
    assert manifest["targets"]["storage"] == "topk" and manifest["targets"]["k"] == 3
