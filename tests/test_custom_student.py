"""Students from anywhere: `--student FILE.py:FACTORY`, `package.module:FACTORY` and
`timm:NAME`. A file student is trained, resumed, quantized and continued with QAT as a user
would (the CLI, in a fresh interpreter), rebuilt from the run's own copy of the file, and a
resume is refused once the user's file changes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from conftest import MODELS

from onnxkd.data.spec import InputSpec
from onnxkd.distill.qdq import count_int8_ops
from onnxkd.students.custom import (
    CODE_DIR,
    TIMM_MISSING,
    StudentCodeError,
    check_origin,
    parse_custom,
    pin,
    sha256,
)
from onnxkd.students.for_spec import create_student_for_spec
from onnxkd.students.taps import feature_taps

DIGITS = InputSpec(layout="NCHW", size=(8, 8), channels=1)
STUDENT = textwrap.dedent(
    """
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self, num_classes, in_chans):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))


    def build(num_classes, in_chans, input_size):
        return Tiny(num_classes, in_chans)
    """
)


def write_student(folder: Path, text: str = STUDENT, name: str = "tiny_student.py") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def one_line_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_file_student_trains_resumes_quantizes_prunes_and_refuses_a_changed_file(cli, tmp_path):
    source = write_student(tmp_path)
    spec = f"{source}:build"
    assert cli("cache-teacher", MODELS / "digits_cnn.onnx", "--data", "digits").returncode == 0
    run = tmp_path / "run"
    common = ("--batch-size", "64", "--threads", "1", "-o", run)
    trained = cli("distill", "--student", spec, "--epochs", "2", *common)
    assert trained.returncode == 0, trained.stderr

    # The run holds a copy of the file named by its hash, and trains from it from now on.
    record = json.loads((run / "config.json").read_text())
    copy = run / CODE_DIR / f"tiny_student-{sha256(STUDENT)[:8]}.py"
    assert copy.read_text() == STUDENT
    assert record["config"]["student"] == f"{copy}:build"
    assert record["student_origin"] == {"file": str(source.resolve()), "sha256": sha256(STUDENT)}

    resumed = cli("distill", "--resume", "--student", spec, "--epochs", "3", *common)
    assert resumed.returncode == 0, resumed.stderr
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # digits: 10 classes (chance 10%); three short epochs of a 5k-parameter CNN (38% here)
    assert max(h["val_accuracy"] for h in history) > 0.25

    quantized = cli("quantize", run / "student.onnx")
    assert quantized.returncode == 0, quantized.stderr
    int8 = onnx.load(run / "student.int8.onnx")
    assert count_int8_ops(int8) > 0

    # The user edits the file: the run still rebuilds what it trained (QAT and prune read the
    # copy) ...
    source.write_text(STUDENT.replace("16", "24"))
    qat = cli("distill", "--qat", "--init", run, "--epochs", "1", "--batch-size", "64",
              "--threads", "1", "-o", tmp_path / "qat")  # fmt: skip
    assert qat.returncode == 0, qat.stderr
    assert (tmp_path / "qat" / "student.int8.onnx").exists()
    pruned = cli("prune", run, "--target", "params=0.6", "--epochs", "1", "--threads", "1",
                 "-o", tmp_path / "pruned")  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    architecture = json.loads((tmp_path / "pruned" / "architecture.json").read_text())
    assert architecture["base"] == f"{copy}:build" and architecture["steps"]
    # ... and refuses to resume training on a file that is no longer the one it began with.
    refused = cli("distill", "--resume", "--epochs", "4", *common)
    line = one_line_error(refused)
    assert "has changed since" in line and str(source.resolve()) in line
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # nothing trained


def test_file_student_copy_edited_in_the_run_is_refused(tmp_path):
    source = write_student(tmp_path)
    pinned = pin(f"{source}:build", tmp_path / "run")
    pinned.write_copy()
    copy = Path(pinned.spec.rpartition(":")[0])
    assert create_student_for_spec(pinned.spec, DIGITS, 10)(torch.zeros(2, 1, 8, 8)).shape == (
        2,
        10,
    )
    copy.write_text(STUDENT + "\n# edited\n")
    with pytest.raises(StudentCodeError, match="was edited after its run copied it"):
        create_student_for_spec(pinned.spec, DIGITS, 10)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "def other(num_classes, in_chans, input_size): pass\n",
            "has no function build; its functions: other",
        ),
        ("def build(classes): pass\n", "must take num_classes=, in_chans= and input_size="),
        (
            "def build(num_classes, in_chans, input_size):\n    return 3\n",
            "returned int, not a torch.nn.Module",
        ),
        ("import not_a_module_anywhere\n", "failed to run: ModuleNotFoundError"),
        (
            "def build(num_classes, in_chans, input_size):\n    raise ValueError('no 8 px')\n",
            "build(...) raised ValueError: no 8 px",
        ),
    ],
)  # fmt: skip
def test_bad_factories_fail_in_one_line_at_the_cli(cli, tmp_path, code, expected):
    source = write_student(tmp_path, code, name="bad.py")
    assert cli("cache-teacher", MODELS / "digits_cnn.onnx", "--data", "digits").returncode == 0
    line = one_line_error(cli("distill", "--student", f"{source}:build", "--epochs", "1"))
    assert expected in line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nofile.py:build", "there is no file nofile.py"),
        ("tiny.py:not-a-name", "is not a function name"),
        ("some/dir:build", "neither a .py file nor a dotted module name"),
    ],
)
def test_malformed_specs_are_usage_errors(cli, spec, expected):
    result = cli("distill", "--student", spec)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


def test_module_student_records_its_file_hash_and_refuses_a_change(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_student(package, name="nets.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    pinned = pin("userpkg.nets:build", tmp_path / "run")
    assert pinned.spec == "userpkg.nets:build" and pinned.text is None
    assert pinned.origin["sha256"] == sha256(STUDENT)
    model = create_student_for_spec(pinned.spec, DIGITS, 10)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert check_origin(pinned.origin, tmp_path / "run") is None
    (package / "nets.py").write_text(STUDENT + "\n# changed\n")
    with pytest.raises(StudentCodeError, match="has changed since"):
        check_origin(pinned.origin, tmp_path / "run")


def test_feature_taps_are_the_modules_dotted_paths(tmp_path, cli):
    source = write_student(tmp_path)
    taps = {t.name: t for t in feature_taps(f"{source}:build", size=8, channels=1, num_classes=10)}
    assert taps["features.3"].shape == (1, 32, 4, 4)
    assert taps["pool"].shape == (1, 32, 1, 1) and taps["fc"].shape == (1, 10)
    assert "net" not in taps  # the wrapper is not a tap: its output is the logits
    student = create_student_for_spec(f"{source}:build", DIGITS, 10)
    assert student.feature_modules["features.3"] == "net.features.3"
    assert student.num_features == 32
    listed = cli("students", "--taps", f"{source}:build", "--size", "8", "--channels", "1")
    assert (
        listed.returncode == 0
        and "features.3" in listed.stdout
        and "(1, 32, 4, 4)" in listed.stdout
    )


def test_parse_custom_kinds():
    assert parse_custom("mobilenetv2_w050") is None
    assert parse_custom("timm:resnet18").kind == "timm"
    assert parse_custom("pkg.mod:make").kind == "module"
    assert parse_custom("a/b.py:make").label == "b-make"


def _timm_or_reason():
    try:
        import timm
    except Exception as e:  # ModuleNotFoundError, or torchvision's RuntimeError at import
        return None, f"{TIMM_MISSING}: {type(e).__name__}: {str(e).splitlines()[0]}"
    return timm, None


TIMM, TIMM_SKIP = _timm_or_reason()


@pytest.mark.skipif(TIMM is None, reason=TIMM_SKIP or "")
def test_timm_student_builds_and_exports_at_parity(tmp_path):
    import numpy as np

    from onnxkd.distill.export import export_student
    from onnxkd.runtime import ort_session

    spec = InputSpec(layout="NCHW", size=(32, 32), channels=3)
    student = create_student_for_spec("timm:resnet10t", spec, 10).eval()
    path = export_student(student, spec, tmp_path / "timm.onnx", "timm:resnet10t")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = ort_session(path, "cpu", 1).run(None, {"input": x})[0]
    theirs = student(torch.from_numpy(x)).detach().numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_timm_missing_is_one_line(cli):
    if TIMM is not None:
        pytest.skip("timm imports here: the missing-timm message cannot show")
    result = cli("distill", "--student", "timm:resnet10t")
    assert result.returncode == 2 and "pip install onnxkd[timm]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_recipes_file_student_is_relative_to_the_recipe(tmp_path):
    from onnxkd.pipeline.recipe import RecipeError, load_recipe

    (tmp_path / "nets").mkdir()
    source = write_student(tmp_path / "nets")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "r"\nteacher = "{MODELS / "digits_cnn.onnx"}"\n[data]\ndata = "digits"\n'
        '[distill]\nstudent = "nets/tiny_student.py:build"\nepochs = 1\n'
    )
    assert load_recipe(recipe).distill["student"] == f"{source.resolve()}:build"
    recipe.write_text(recipe.read_text().replace("tiny_student.py", "missing.py"))
    with pytest.raises(RecipeError, match="there is no file"):
        load_recipe(recipe)
