"""`onnxkd sweep`: trials from a list and a grid, the Pareto front and the budget's choice on
fixed numbers, a real sweep on the digits cache from the workspace, kill -9 and resume with
worker processes, and the inputs it refuses."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MODELS

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.errors import OnnxkdError
from onnxkd.sweep import leaderboard
from onnxkd.sweep.config import SweepConfig


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace holding a digits cache and nothing else."""
    root = tmp_path_factory.mktemp("sweep")
    cache_teacher(
        CacheConfig(
            MODELS / "digits_cnn.onnx",
            DataRef("digits"),
            workdir=root / "onnxkd-out",
            views=2,
            threads=1,
        ),
        log=lambda s: None,
    )
    return root


def fresh(workspace: Path, tmp_path: Path) -> Path:
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    return tmp_path


def state_of(root: Path) -> dict:
    return json.loads((root / "onnxkd-out" / "state.json").read_text())


def test_trials_are_the_list_times_the_grid_named_by_what_differs():
    cfg = SweepConfig(
        trials=({"student": "resnet8"}, {"student": "small_cnn", "alpha": 0.5}),
        grid={"temperature": [2.0, 4.0], "prune": ["none", "params=0.5"]},
        base={"epochs": 3},
    )
    trials = cfg.expand()
    assert len(trials) == 2 * 2 * 2
    assert all(t.settings["epochs"] == 3 for t in trials)
    names = [t.name for t in trials]
    assert len(set(names)) == len(names) and len({t.slug for t in trials}) == len(trials)
    # epochs is the same everywhere, so it is not in the names; what differs is.
    assert "resnet8 temperature=2.0 prune:params=0.5" in names
    assert "small_cnn alpha=0.5 temperature=4.0" in names
    assert {t.prune for t in trials} == {None, "params=0.5"}
    # The same trial listed twice runs once.
    twice = SweepConfig(trials=({"student": "resnet8"}, {"student": "resnet8"}))
    assert len(twice.expand()) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"grid": {"student": ["resnet9"]}}, "unknown student 'resnet9'"),
        ({"grid": {"loss": ["kdd"]}}, "unknown loss 'kdd'"),
        ({"grid": {"alpha": [0.5, 1.5]}}, "--alpha must be in [0, 1]"),
        ({"grid": {"prune": ["params=2"]}}, "in (0, 1) exclusive"),
        ({"grid": {"student": ["shufflenetv2"], "prune": ["params=0.5"]}}, "cannot be pruned"),
        ({"trials": ({"epoch": 3},)}, "trial setting epoch is not a distill setting"),
        ({"grid": {"alpha": []}}, "give a list of values"),
        ({"seeds": (0, 0)}, "repeats a seed"),
        ({"budget_ms": 0}, "--budget-ms must be > 0"),
    ],
)
def test_bad_trials_are_refused_before_anything_runs(settings, message):
    with pytest.raises(OnnxkdError, match=re.escape(message)):
        SweepConfig(**settings)


def _candidate(trial, precision, val, ms, mb, test=None):
    return {
        "trial": trial,
        "name": trial,
        "precision": precision,
        "seeds": 3,
        "val_mean": val,
        "val_std": 0.01,
        "test_mean": val if test is None else test,
        "test_std": 0.01,
        "latency_ms": ms,
        "mb": mb,
        "params": 1e5,
    }


FIXED = [
    _candidate("big", "fp32", 0.70, 2.0, 8.0),
    _candidate("big", "int8", 0.69, 1.0, 2.0),
    _candidate("mid", "fp32", 0.66, 1.2, 3.0),  # slower and worse than big int8: dominated
    _candidate("mid", "int8", 0.65, 0.5, 0.8),
    _candidate("small", "fp32", 0.60, 0.6, 1.0),  # slower and worse than mid int8: dominated
    _candidate("small", "int8", 0.58, 0.3, 0.3),
]


def test_the_front_holds_exactly_the_undominated_models():
    front = leaderboard.pareto_front(FIXED)

    def dominated(c):  # by brute force, independently of the implementation's loop
        return any(
            d["latency_ms"] <= c["latency_ms"]
            and d["val_mean"] >= c["val_mean"]
            and (d["latency_ms"], d["val_mean"]) != (c["latency_ms"], c["val_mean"])
            for d in FIXED
        )

    expected = sorted((c for c in FIXED if not dominated(c)), key=lambda c: c["latency_ms"])
    assert front == expected
    assert [(c["trial"], c["precision"]) for c in front] == [
        ("small", "int8"),
        ("mid", "int8"),
        ("big", "int8"),
        ("big", "fp32"),
    ]


def test_the_budget_picks_the_most_accurate_model_within_it_and_says_why():
    choice = leaderboard.choose(FIXED, budget_ms=1.0, budget_mb=None)
    assert (choice["chosen"]["trial"], choice["chosen"]["precision"]) == ("big", "int8")
    assert "within 1 ms" in choice["why"] and "over it, the best big (FP32)" in choice["why"]
    # Both limits: big int8 is 2 MB, so mid int8 (0.8 MB, 0.5 ms) wins.
    both = leaderboard.choose(FIXED, budget_ms=1.0, budget_mb=1.0)
    assert (both["chosen"]["trial"], both["chosen"]["precision"]) == ("mid", "int8")
    assert "3 of 6 models within 1 ms and 1 MB" in both["why"]
    # Every candidate against every budget: the choice is the best fitting one by brute force.
    for ms, mb in itertools.product([0.2, 0.4, 0.7, 1.5, 3.0], [0.2, 0.5, 1.0, 5.0, None]):
        fitting = [c for c in FIXED if c["latency_ms"] <= ms and (mb is None or c["mb"] <= mb)]
        got = leaderboard.choose(FIXED, ms, mb)["chosen"]
        assert got == (max(fitting, key=lambda c: c["val_mean"]) if fitting else None)
    none = leaderboard.choose(FIXED, budget_ms=0.1, budget_mb=None)
    assert none["chosen"] is None
    assert "no model of the 6 meets 0.1 ms; the fastest is small (INT8) at 0.300 ms" in none["why"]


def test_the_choice_uses_validation_and_never_the_test_split():
    # A model whose test accuracy is the best but whose validation accuracy is not.
    lucky = _candidate("lucky", "fp32", 0.50, 0.1, 0.1, test=0.99)
    honest = _candidate("honest", "fp32", 0.60, 0.1, 0.1, test=0.55)
    assert leaderboard.choose([lucky, honest], None, None)["chosen"]["trial"] == "honest"


def test_sweep_from_the_workspace_with_no_paths(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    # A list of trials: small_cnn_s as it is, resnet8 and resnet8 pruned to half (one distill
    # run per seed shared by the two resnet8 trials).
    args = ["sweep", "--trial", "student=small_cnn_s", "--trial", "student=resnet8"]
    args += ["--trial", "student=resnet8 prune=params=0.5", "--set", "epochs=4"]
    args += ["--prune-epochs", "2", "--seeds", "0,1", "--budget-mb", "0.05"]
    result = cli(*args, "--threads", "1", cwd=root, timeout=600)
    assert result.returncode == 0, result.stderr
    out = Path(state_of(root)["sweep"])
    assert out.parent == (root / "onnxkd-out" / "sweeps").resolve()
    report = json.loads((out / "sweep.json").read_text())
    # 3 trials x 2 seeds, each evaluated in FP32 and INT8, all timed.
    assert len(report["entries"]) == 6 and not report["failures"]
    assert len(report["candidates"]) == 6
    assert len(list(out.glob("runs/distill-*"))) == 4  # 2 students x 2 seeds
    assert len(list(out.glob("runs/prune-*"))) == 2
    assert all(c["seeds"] == 2 and c["latency_ms"] > 0 for c in report["candidates"])
    for entry in report["entries"]:
        models = entry["eval"]["models"]
        assert models["int8"]["bytes"] < models["fp32"]["bytes"]
        assert 0.25 < models["fp32"]["test_accuracy"] <= 1.0  # well above chance (10%)
    pruned = [c for c in report["candidates"] if "prune:params=0.5" in c["name"]]
    unpruned = {c["name"]: c for c in report["candidates"] if c not in pruned}
    for c in pruned:  # half the parameters (within the rounding of channel counts to 8)
        ratio = c["params"] / unpruned[c["name"].removesuffix(" prune:params=0.5")]["params"]
        assert 0.3 < ratio <= 0.55
    chosen = report["choice"]["chosen"]
    assert chosen["mb"] <= 0.05
    fitting = [c for c in report["candidates"] if c["mb"] <= 0.05]
    assert chosen["val_mean"] == max(c["val_mean"] for c in fitting)
    assert "within 0.05 MB" in result.stdout and "| trial |" in result.stdout
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "**Chosen:**" in (out / "leaderboard.md").read_text()
    # The choice is the workspace's student now: `quantize` and `bench` take it with no paths.
    shipped = report["choice"]["shipped"]
    assert state_of(root)["student"] == str(Path(shipped["student"]).resolve())
    assert state_of(root)["run"] == str(Path(shipped["run"]).resolve())
    # Rerunning into the used folder needs a word; --resume finds nothing left to do.
    refused = cli("sweep", "-o", str(out), cwd=root)
    assert refused.returncode == 1 and "pass --resume" in refused.stderr
    changed = cli("sweep", "--resume", "--grid", "alpha=0.5", cwd=root)
    assert changed.returncode == 1 and "drop --trial, --grid and --set" in changed.stderr
    resumed = cli("sweep", "--resume", cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert "[1/" not in resumed.stderr  # no job ran again, and no model was timed again
    assert "timing" not in resumed.stderr
    assert json.loads((out / "sweep.json").read_text())["choice"]["chosen"] == chosen


def test_a_budget_nothing_meets_is_one_line_after_the_leaderboard(cli, workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    args = ["sweep", "--set", "student=small_cnn_s", "--set", "epochs=1", "--no-quantize"]
    result = cli(*args, "--budget-mb", "0.001", "--threads", "1", cwd=root, timeout=600)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [lines[0]] and "no model of the 1 meets 0.001 MB" in lines[0]
    assert "Traceback" not in result.stderr
    assert "| small_cnn_s |" in result.stdout  # the leaderboard is still there to read


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "student=resnet9"], "unknown student 'resnet9'"),
        (["--grid", "prune=params=1.5"], "in (0, 1) exclusive"),
        (["--trial", "student"], "is not KEY=VALUE"),
        (["--seeds", "0,x"], "comma-separated list of int"),
        (["--jobs", "0"], "--jobs"),
        (["--cache", "nowhere"], "nowhere"),
        (["--ep", "tensorrt"], "execution provider 'tensorrt'"),
    ],
)
def test_bad_inputs_get_one_line(cli, workspace, tmp_path, args, message):
    root = fresh(workspace, tmp_path)
    result = cli("sweep", *args, cwd=root)
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr and message in result.stderr
    assert not (root / "onnxkd-out" / "sweeps").exists()  # nothing half-made


def test_killed_sweep_resumes_with_its_worker_processes(workspace, tmp_path):
    root = fresh(workspace, tmp_path)
    out = root / "sw"
    command = [sys.executable, "-m", "onnxkd", "sweep", "-o", str(out), "--jobs", "2"]
    command += ["--grid", "student=small_cnn_s,resnet8", "--set", "epochs=3", "--threads", "2"]
    command += ["--seeds", "0,1", "--no-quantize"]
    proc = subprocess.Popen(
        command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    finished = []
    while time.time() < deadline and not finished:  # kill once the first run has finished
        finished = sorted(out.glob("runs/distill-*/export.json"))
        time.sleep(0.2)
    assert finished, "no distill run finished in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The workers notice their parent is gone and stop (within a second of Python running:
    # one still loading torch's libraries holds the interpreter a few seconds), leaving
    # resumable folders.
    for _ in range(30):
        time.sleep(0.5)
        workers = subprocess.run(["pgrep", "-f", f"onnxkd.sweep.worker {out}"], capture_output=True)
        if not workers.stdout.strip():
            break
    assert workers.stdout.strip() == b""
    done_before = {p: p.stat().st_mtime_ns for p in finished}
    assert not (out / "sweep.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "onnxkd", "sweep", "--resume", "-o", str(out), "--jobs", "2"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "sweep.json").read_text())
    assert len(report["entries"]) == 4 and not report["failures"]
    # A run that had finished was not trained again.
    assert {p: p.stat().st_mtime_ns for p in finished} == done_before
    assert all(len(json.loads(p.read_text())) > 0 for p in out.glob("runs/*/export.json"))


def test_a_config_file_sweep_table_fills_the_grid_and_the_trials(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import onnxkd.sweep.runner
    from onnxkd.cli import main

    seen = {}

    def fake_sweep(cfg, log):
        seen["cfg"] = cfg
        raise OnnxkdError("stopped here")

    monkeypatch.setattr(onnxkd.sweep.runner, "sweep", fake_sweep)
    config = tmp_path / "sweep.toml"
    config.write_text(
        "[sweep]\nseeds = [0, 1]\nbudget_ms = 0.5\n"
        '[sweep.grid]\nstudent = ["resnet8", "small_cnn"]\nalpha = [0.5, 0.9]\n'
        '[[sweep.trials]]\nloss = "kd"\n[[sweep.trials]]\nloss = "dkd"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(config), "sweep", "--set", "epochs=3"])
    assert "stopped here" in result.output
    cfg = seen["cfg"]
    assert cfg.seeds == (0, 1) and cfg.budget_ms == 0.5 and cfg.base == {"epochs": 3}
    assert cfg.grid == {"student": ("resnet8", "small_cnn"), "alpha": (0.5, 0.9)}
    assert [t["loss"] for t in cfg.trials] == ["kd", "dkd"]
    assert len(cfg.expand()) == 8
    # The same from flags.
    flags = ["sweep", "--grid", "student=resnet8,small_cnn", "--grid", "alpha=0.5,0.9"]
    flags += ["--trial", "loss=kd", "--trial", "loss=dkd", "--seeds", "0,1"]
    CliRunner().invoke(main, flags)
    assert seen["cfg"].grid == cfg.grid and seen["cfg"].trials == cfg.trials
