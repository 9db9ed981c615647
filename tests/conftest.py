"""Shared fixtures: the real data folder, the project root, and a CLI runner in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT / "data"
MODELS = ROOT / "models"


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `onnxkd ARGS` as a user would, in a fresh interpreter."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "onnxkd", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_torchrun(*args: str, cwd: Path, processes: int = 2, timeout: float = 600):
    """Run `torchrun --nproc-per-node N -m onnxkd ARGS` as a user would (one thread each)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    return subprocess.run(
        [*launcher, "-m", "onnxkd", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture
def cli(tmp_path):
    """`cli(*args)` runs onnxkd in tmp_path (so the workspace lands there)."""

    def invoke(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
        return run_cli(*args, cwd=cwd or tmp_path, timeout=timeout, env=env)

    return invoke
