"""Every stage that reads a cache refuses one whose arrays differ from its manifest, through the
CLI; the check is cheap after the first read and catches a change made after it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from onnxkd.cache import integrity
from onnxkd.cache.integrity import VERIFIED, find_problems
from onnxkd.cache.reader import CacheReader
from tests.conftest import MODELS, ROOT, run_cli

ENV = {"ONNXKD_ONDEVICE_ENV": str(ROOT / ".venv-ondevice"), "OMP_NUM_THREADS": "1"}
PART = "train/part-0-of-1"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A digits cache, a one-epoch student distilled from it and its on-device artifacts."""
    root = tmp_path_factory.mktemp("integrity")
    cache, run = root / "cache", root / "run"
    teacher = MODELS / "digits_cnn.onnx"
    for step in [
        ("cache-teacher", teacher, "--data", "digits", "--views", "2", "-o", cache),
        ("distill", "--student", "small_cnn_s", "--epochs", "1", "-o", run, "--threads", "1"),
        ("ondevice", "artifacts", run / "student.onnx", "-o", root / "artifacts"),
    ]:
        result = run_cli(*step, cwd=root, env=ENV)
        assert result.returncode == 0, result.stderr
    return {"root": root, "cache": cache, "student": root / "run" / "student.onnx"}


def corrupt_copy(made, tmp_path, file: str, how: str) -> Path:
    cache = Path(shutil.copytree(made["cache"], tmp_path / "cache"))
    CacheReader(cache)  # verified once, so that the record exists and must not be trusted
    path = cache / PART / file
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[-3] ^= 0x5A
    elif how == "empty":
        data = bytearray()
    elif how == "truncate":
        data = data[: len(data) - 40]
    path.write_bytes(bytes(data))
    return cache


def reader_command(made, command: str, cache: Path, tmp_path: Path) -> tuple:
    return {
        "distill": ("distill", "--cache", cache, "--student", "small_cnn_s", "--epochs", "1"),
        "quantize": ("quantize", made["student"], "--cache", cache, "-o", tmp_path / "q.onnx"),
        "bench": ("bench", made["student"], "--cache", cache, "-o", tmp_path / "bench"),
        "ondevice": ("ondevice", "train", made["root"] / "artifacts", "--cache", cache),
    }[command]


@pytest.mark.parametrize(
    "file,how",
    [
        ("targets.npy", "flip"),
        ("labels.npy", "flip"),
        ("labels.npy", "empty"),
        ("targets.npy", "truncate"),
    ],
)
@pytest.mark.parametrize("command", ["distill", "quantize", "bench", "ondevice"])
def test_every_reader_refuses_a_corrupt_cache(made, tmp_path, command, file, how):
    cache = corrupt_copy(made, tmp_path, file, how)
    result = run_cli(*reader_command(made, command, cache, tmp_path), cwd=tmp_path, env=ENV)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cache {cache} is corrupt: {PART}/{file}" in result.stderr
    assert "--overwrite" in result.stderr  # the fix is named
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "bench").exists()


def test_run_refuses_an_up_to_date_cache_that_changed(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'name = "tiny"\nteacher = "{MODELS / "digits_cnn.onnx"}"\n[data]\ndata = "digits"\n'
        '[cache]\nviews = 1\n[distill]\nstudent = "small_cnn_s"\nepochs = 1\nthreads = 1\n'
    )
    first = run_cli("run", recipe, "--workdir", tmp_path / "ws", cwd=tmp_path, env=ENV)
    assert first.returncode == 0, first.stderr
    labels = next((tmp_path / "ws").rglob("train/part-0-of-1/labels.npy"))
    data = bytearray(labels.read_bytes())
    data[-1] ^= 0x01
    labels.write_bytes(bytes(data))
    again = run_cli("run", recipe, "--workdir", tmp_path / "ws", cwd=tmp_path, env=ENV)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "is corrupt: train/part-0-of-1/labels.npy does not match its checksum" in again.stderr


def test_a_verified_cache_is_not_hashed_again_until_a_file_changes(made, tmp_path, monkeypatch):
    cache = Path(shutil.copytree(made["cache"], tmp_path / "cache"))
    manifest = CacheReader(cache, check_arrays=False).manifest
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: hashed.append(p) or real(p))
    files = len(integrity.array_files(manifest))
    assert find_problems(cache, manifest) == [] and len(hashed) == files
    # Hashed within RACY_SECONDS of the copy: a same-tick write could hide, so hash again.
    hashed.clear()
    assert find_problems(cache, manifest) == [] and len(hashed) == files
    monkeypatch.setattr(integrity, "RACY_SECONDS", 0.0)
    find_problems(cache, manifest)
    hashed.clear()
    assert find_problems(cache, manifest) == [] and hashed == []
    record = json.loads((cache / VERIFIED).read_text())
    assert len(record["arrays"]) == files
    # A change keeping size and mtime is still seen: ctime moves and cannot be set back.
    target = cache / PART / "targets.npy"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-2] ^= 0xFF
    time.sleep(0.01)
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    problems = find_problems(cache, manifest)
    assert problems == [f"{PART}/targets.npy does not match its checksum (its bytes changed)"]
    assert [Path(p).name for p in hashed] == ["targets.npy"]


def test_cache_info_lists_every_problem_ignoring_the_record(made, tmp_path):
    cache = corrupt_copy(made, tmp_path, "targets.npy", "flip")
    (cache / "eval/part-0-of-1/labels.npy").write_bytes(b"")
    result = run_cli("cache-info", cache, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "targets.npy does not match its checksum" in result.stderr
    assert "eval/part-0-of-1/labels.npy is not a readable .npy array (0 bytes" in result.stderr


def test_a_header_that_disagrees_with_the_manifest_is_named(made, tmp_path):
    cache = Path(shutil.copytree(made["cache"], tmp_path / "cache"))
    labels = cache / PART / "labels.npy"
    np.save(labels, np.load(labels).astype(np.int32)[:-1])
    manifest = CacheReader(cache, check_arrays=False).manifest
    (problem,) = find_problems(cache, manifest)
    assert problem.startswith(f"{PART}/labels.npy is [") and "the manifest says" in problem
