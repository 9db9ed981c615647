"""The zoo's teachers from other frameworks (scikit-learn, Keras, JAX), as their converters wrote
them: each card's own cache-teacher command caches the file, onnxkd's eval teacher accuracy is
the card's, and the card's sha256 is the file's.

The expected numbers are parsed from the cards (written by the training scripts), so a retrained
file with its regenerated card stays consistent without editing this test. Only onnxruntime is
needed: no converter is imported.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS

from onnxkd.cache.reader import CacheReader
from onnxkd.files import sha256_file

# file stem: the converter that wrote it (the ONNX producer_name)
ZOO = {
    "digits_sklearn_mlp": "skl2onnx",
    "digits_keras_cnn": "tf2onnx",
    "digits_jax_cnn": "jax2onnx",
}


def read_card(name: str) -> str:
    return (MODELS / f"{name}.md").read_text()


def card_row(text: str, key: str) -> str:
    match = re.search(rf"^\| {re.escape(key)} \| (.+) \|$", text, re.M)
    assert match, f"card has no {key!r} row"
    return match.group(1)


def card_accuracy(text: str) -> tuple[int, int]:
    """(correct, total) from the Summary's `| test accuracy | **0.9833** (353/359) |`."""
    match = re.fullmatch(r"\*\*[0-9.]+\*\* \((\d+)/(\d+)\)", card_row(text, "test accuracy"))
    assert match, "test accuracy row is not of the form **0.xxxx** (correct/total)"
    return int(match.group(1)), int(match.group(2))


def card_commands(text: str) -> list[str]:
    """The command lines of the fenced block under `## Cache with onnxkd`."""
    match = re.search(r"^## Cache with onnxkd\n\n```\n(.*?)\n```", text, re.M | re.S)
    assert match, "card has no command block under '## Cache with onnxkd'"
    return match.group(1).splitlines()


def run_card_setup(commands: list[str], cwd: Path) -> list[list[str]]:
    """Run the card's non-onnxkd lines (making the data) in `cwd`; return the onnxkd argvs."""
    onnxkd = []
    for line in commands:
        program, *rest = shlex.split(line)
        if program == "onnxkd":
            onnxkd.append(rest)
        else:
            assert program == "python", f"unexpected card command {line!r}"
            subprocess.run([sys.executable, *rest], cwd=cwd, check=True, timeout=120)
    return onnxkd


@pytest.mark.parametrize("name", ZOO)
def test_card_sha256_is_the_file(name):
    digest = card_row(read_card(name), "sha256").strip("`")
    assert sha256_file(MODELS / f"{name}.onnx") == digest


@pytest.mark.parametrize("name", ZOO)
def test_file_is_as_its_converter_wrote_it(name):
    """Small, loads in onnxruntime, no onnxkd metadata, IR and opsets as the card states."""
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 1024 * 1024
    proto = onnx.load(str(path))
    assert proto.producer_name == ZOO[name]
    assert not proto.metadata_props  # users' files carry no onnxkd.input_spec
    converter = card_row(read_card(name), "converter")
    assert f"IR {proto.ir_version}" in converter
    for opset in proto.opset_import:
        assert f"{opset.domain or 'ai.onnx'} {opset.version}" in converter
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ZOO)
def test_card_command_caches_with_card_accuracy(name, cli, tmp_path):
    text = read_card(name)
    (tmp_path / "models").symlink_to(MODELS)  # the card's commands say models/NAME.onnx
    cache_cmds = [
        argv for argv in run_card_setup(card_commands(text), tmp_path) if argv[0] == "cache-teacher"
    ]
    assert len(cache_cmds) == 1
    result = cli(*cache_cmds[0], "--workdir", "ws")
    assert result.returncode == 0, result.stderr

    state = json.loads((tmp_path / "ws" / "state.json").read_text())
    manifest = json.loads((Path(state["cache"]) / "manifest.json").read_text())
    correct, total = card_accuracy(text)
    evaluation = manifest["sections"]["eval"]
    assert evaluation["n"] == total == 359
    assert evaluation["teacher_accuracy"][0] == round(correct / total, 6)
    assert manifest["teacher"]["sha256"] == card_row(text, "sha256").strip("`")
    assert manifest["input_spec_origin"] != "teacher metadata"


def test_sklearn_card_caches_digits_flattened_as_fitted(cli, tmp_path):
    """The scikit-learn card caches onnxkd's digits images for its flat teacher: flattened
    exactly as `load_digits().data`, on which the model was fitted."""
    from sklearn.datasets import load_digits

    (tmp_path / "models").symlink_to(MODELS)
    (argv,) = run_card_setup(card_commands(read_card("digits_sklearn_mlp")), tmp_path)[:1]
    assert argv[0] == "cache-teacher" and argv[argv.index("--data") + 1] == "digits"
    result = cli(*argv, "--workdir", "ws")
    assert result.returncode == 0, result.stderr
    assert "flattened row-major (H, W, C)" in result.stderr + result.stdout
    state = json.loads((tmp_path / "ws" / "state.json").read_text())
    spec = CacheReader(state["cache"]).input_spec
    assert spec.flatten == (8, 8, 1)
    digits = load_digits()
    x = spec.apply(digits.images.astype(np.uint8)[..., None])
    np.testing.assert_array_equal(x, digits.data.astype(np.float32))
