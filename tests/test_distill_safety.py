"""`onnxkd distill` never gives a silently wrong result: run folders are not overwritten or
changed unasked, --resume applies or refuses every setting it is given, a diverging run stops
with where and why, a non-finite student is never exported, the header compares the student
with its teacher, and the best epoch is chosen on held-back training samples, not on the test
split it reports.

The commands run in this process through click's runner on one small digits cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onnxkd.cli import main
from onnxkd.distill.run_folder import ExportReport, RunRecord
from onnxkd.distill.summary import summarize
from onnxkd.distill.trainer import RunResult
from onnxkd.distill.validation import carve
from tests.conftest import MODELS

TINY = ("--student", "small_cnn_s", "--threads", "1")


def distill(root: Path, *args) -> tuple[int, str, str]:
    """`onnxkd distill ARGS` in the workspace under `root`: exit code, stdout, stderr."""
    result = CliRunner().invoke(
        main, ["distill", "--workdir", str(root / "ws"), *map(str, args)], catch_exceptions=True
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug, not a user mistake: show its traceback
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """A workspace with a one-view digits cache, and a finished 2-epoch run made in it."""
    root = tmp_path_factory.mktemp("safety")
    cached = CliRunner().invoke(
        main,
        [
            "cache-teacher",
            str(MODELS / "digits_cnn.onnx"),
            "--data",
            "digits",
            "--views",
            "1",
            "--workdir",
            str(root / "ws"),
        ],
    )
    assert cached.exit_code == 0, cached.output
    code, out, err = distill(root, *TINY, "--epochs", "2", "-o", root / "run")
    assert code == 0, err
    return {"root": root, "run": root / "run", "stdout": out, "stderr": err}


def copy_run(shared: dict, tmp_path: Path) -> Path:
    """A copy of the finished run, for a test that changes it."""
    return Path(shutil.copytree(shared["run"], tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder with its bytes, to show it was left exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_error_line(code: int, err: str, *parts: str) -> str:
    """The refusal: exit 1, no traceback, one `error:` line naming every part."""
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


# Item 4: run folders --------------------------------------------------------------------------


def test_a_new_run_refuses_a_folder_holding_a_run(shared):
    before = snapshot(shared["run"])
    code, _, err = distill(shared["root"], *TINY, "--epochs", "1", "-o", shared["run"])
    one_error_line(
        code, err, "already holds a finished distill run", "--resume", "--overwrite", "new folder"
    )
    assert snapshot(shared["run"]) == before


def test_a_run_killed_before_its_first_epoch_is_still_a_run(shared, tmp_path):
    run = copy_run(shared, tmp_path)
    shutil.rmtree(run / "checkpoints")
    for name in ("best.pt", "metrics.jsonl", "curves.png", "export.json", "student.onnx"):
        (run / name).unlink()
    code, _, err = distill(shared["root"], *TINY, "--epochs", "1", "-o", run)
    one_error_line(code, err, "already holds a distill run", "--resume")
    # --resume starts it from its first epoch with its own settings
    code, _, err = distill(shared["root"], "--resume", "-o", run, "--no-export")
    assert code == 0, err
    assert "resuming" in err and "after epoch 0 of 2" in err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_an_unrelated_folder_is_never_written_into_or_emptied(shared, tmp_path, overwrite):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    args = ("--overwrite",) if overwrite else ()
    code, _, err = distill(shared["root"], *TINY, "--epochs", "1", "-o", folder, *args)
    one_error_line(code, err, "is not empty (notes.txt) and holds no distill run")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_the_run_and_keeps_what_it_did_not_write(shared, tmp_path):
    run = copy_run(shared, tmp_path)
    (run / "README.txt").write_text("about this run")
    code, _, err = distill(
        shared["root"], *TINY, "--epochs", "1", "--no-export", "-o", run, "--overwrite"
    )
    assert code == 0, err
    assert "--overwrite: removed the previous run's" in err and "kept README.txt" in err
    assert (run / "README.txt").read_text() == "about this run"
    # nothing of the old run is left to look like this one's
    assert not (run / "export.json").exists() and not (run / "student.onnx").exists()
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_an_empty_folder_is_used_as_it_is(shared, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = distill(
        shared["root"], *TINY, "--epochs", "1", "--no-export", "-o", tmp_path / "empty"
    )
    assert code == 0, err
    assert (tmp_path / "empty" / "config.json").exists()


def test_resume_and_overwrite_together_are_refused(shared):
    code, _, err = distill(shared["root"], "--resume", "--overwrite", "-o", shared["run"])
    one_error_line(code, err, "--resume", "--overwrite", "pass one")


REFUSED = [
    (("--lr", "0.5"), "--lr 0.05 -> 0.5"),
    (("--batch-size", "32"), "--batch-size 128 -> 32"),
    (("--optimizer", "adamw"), "--optimizer sgd -> adamw"),
    (("--weight-decay", "0.1"), "--weight-decay 0.0005 -> 0.1"),
    (("--loss", "dkd"), "--loss kd -> dkd"),
    (("--loss-arg", "beta=2"), "--loss-arg (none) -> beta=2"),
    (("--alpha", "0.5"), "--alpha 0.9 -> 0.5"),
    (("-T", "2"), "--temperature 4.0 -> 2.0"),
    (("--student", "small_cnn"), "--student small_cnn_s -> small_cnn"),
    (("--seed", "3"), "--seed 0 -> 3"),
    (("--val-fraction", "0.2"), "--val-fraction 0.1 -> 0.2"),
    (("--warmup-epochs", "0"), "--warmup-epochs 1.0 -> 0.0"),
]


@pytest.mark.parametrize(("args", "change"), REFUSED, ids=[a[0] for a, _ in REFUSED])
def test_resume_refuses_a_setting_it_cannot_apply(shared, args, change):
    before = snapshot(shared["run"])
    code, _, err = distill(shared["root"], "--resume", "-o", shared["run"], *args)
    one_error_line(
        code, err, f"--resume cannot change what {shared['run']} was trained with", change
    )
    assert "--overwrite" in err and "new -o" in err
    assert snapshot(shared["run"]) == before


def test_resume_refuses_a_different_cache(shared, tmp_path):
    other = tmp_path / "other-cache"
    cached = CliRunner().invoke(
        main,
        ["cache-teacher", str(MODELS / "digits_cnn.onnx"), "--data", "digits", "--views", "2"]
        + ["--augment", "crop", "-o", str(other), "--workdir", str(tmp_path / "ws")],
    )
    assert cached.exit_code == 0, cached.output
    code, _, err = distill(shared["root"], "--resume", "-o", shared["run"], "--cache", other)
    one_error_line(code, err, "--cache", str(other))


def test_resume_with_more_epochs_continues_and_records_them(shared, tmp_path):
    run = copy_run(shared, tmp_path)
    code, out, err = distill(shared["root"], "--resume", "-o", run, "--epochs", "3")
    assert code == 0, err
    assert "resume: --epochs 2 -> 3" in err and "after epoch 2 of 3" in err
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 3
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    export = json.loads((run / "export.json").read_text())
    assert export["epochs"] == 3
    assert "of 3, chosen by validation accuracy" in out


def test_resume_applies_execution_settings_and_says_so(shared, tmp_path):
    run = copy_run(shared, tmp_path)
    code, _, err = distill(shared["root"], "--resume", "-o", run, "--threads", "2", "--no-export")
    assert code == 0, err
    assert "resume: --threads 1 -> 2 applies to the remaining epochs" in err
    assert "resume: --export True -> False" in err
    assert json.loads((run / "config.json").read_text())["config"]["threads"] == 2


def test_resume_refuses_fewer_epochs_than_finished(shared):
    before = snapshot(shared["run"])
    code, _, err = distill(shared["root"], "--resume", "-o", shared["run"], "--epochs", "1")
    one_error_line(code, err, "--epochs 1", "already finished 2 of its 2 epochs")
    assert snapshot(shared["run"]) == before


def test_resume_of_a_run_recorded_before_validation_splits(shared, tmp_path):
    """An older run (no val_fraction in its record) chose on the test split; resuming it with
    the default --val-fraction is no change, and its summary says how it chose."""
    run = copy_run(shared, tmp_path)
    record = json.loads((run / "config.json").read_text())
    del record["config"]["val_fraction"], record["validation"]
    (run / "config.json").write_text(json.dumps(record))
    code, out, err = distill(shared["root"], "--resume", "-o", run)
    assert code == 0, err
    assert "on the test split (selected maximum)" in out


# Item 2: divergence ---------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_with_where_and_why(shared, tmp_path):
    run = tmp_path / "diverged"
    code, _, err = distill(shared["root"], *TINY, "--epochs", "2", "--lr", "1e6", "-o", run)
    one_error_line(
        code,
        err,
        "training diverged at epoch 1, batch ",
        "the loss is nan",
        "peak 1e+06",
        "learning rate too high",
        "cache-info",
        "no epoch had finished",
        "--overwrite and a lower --lr (e.g. 1e+05)",
    )
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing looks complete


def test_divergence_keeps_the_last_good_checkpoint(shared, tmp_path):
    """lr 100 reached over 3 warm-up epochs: epoch 1 ends with finite (if wild) weights, and
    epoch 2 leaves BatchNorm statistics infinite."""
    run = tmp_path / "diverged"
    args = ("--epochs", "3", "--lr", "100", "--warmup-epochs", "3", "-o", run)
    code, _, err = distill(shared["root"], *TINY, *args)
    one_error_line(code, err, "not finite", "epoch 1, the last finished one, is kept in")
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in last["module"].values() if t.is_floating_point())
    assert not (run / "export.json").exists() and not (run / "student.onnx").exists()


def test_a_student_with_non_finite_weights_is_never_exported(shared, tmp_path):
    run = copy_run(shared, tmp_path)
    for name in ("export.json", "student.onnx"):  # as a run trained with --no-export
        (run / name).unlink()
    weights = torch.load(run / "best.pt", weights_only=True)
    next(t for t in weights.values() if t.is_floating_point()).view(-1)[0] = float("nan")
    torch.save(weights, run / "best.pt")
    code, _, err = distill(shared["root"], "--resume", "-o", run)
    one_error_line(code, err, "weights are not finite in", "best.pt", "refusing to export")
    assert not (run / "student.onnx").exists() and not (run / "export.json").exists()


# Item 6: the header ---------------------------------------------------------------------------


def test_the_header_compares_a_larger_student_with_its_teacher(shared, tmp_path):
    # 99% held back: one step of mobilenetv2 is enough to see the header
    args = ("--student", "mobilenetv2", "--epochs", "1", "--batch-size", "8")
    args += ("--val-fraction", "0.99", "--no-export", "--threads", "1", "-o", tmp_path / "big")
    code, _, err = distill(shared["root"], *args)
    assert code == 0, err
    lines = err.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("distill: mobilenetv2"))
    assert header < next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1"))
    assert "on cpu; 1 epoch, batch 8, loss kd" in lines[header]
    assert "1 train view(s)" in lines[header]
    student = next(line for line in lines if line.strip().startswith("student "))
    teacher = next(line for line in lines if line.strip().startswith("teacher "))
    assert "2,236,106" in student and "ms (onnxruntime)" in student and "ms (torch)" in student
    assert "56,394" in teacher and "ms (onnxruntime)" in teacher
    assert "warning: the student mobilenetv2 has 2,236,106 parameters, 39.7x the teacher's" in err
    assert "slower than the teacher at batch 1" in err


def test_a_smaller_student_gets_no_size_warning(shared):
    err = shared["stderr"]
    assert err.startswith("distill: small_cnn_s on cpu; 2 epochs, batch 128, loss kd")
    assert "16,794" in err and "not smaller" not in err
    assert "replay" not in err  # 2 epochs on 1 view is within the limit


def test_epochs_far_beyond_the_views_warn(shared, tmp_path):
    args = ("--epochs", "4", "--val-fraction", "0.9", "--no-export", "-o", tmp_path / "long")
    code, _, err = distill(shared["root"], *TINY, *args)
    assert code == 0, err
    assert "warning: 4 epochs replay the cache's 1 train view(s) 4 times each" in err
    assert "cache-teacher … --views 2 --augment crop" in err


# Item 7: model selection ----------------------------------------------------------------------


def test_the_best_epoch_is_chosen_on_held_back_training_samples(shared):
    run = shared["run"]
    record = json.loads((run / "config.json").read_text())
    assert record["validation"] == {"split": "train", "fraction": 0.1, "seed": 0, "count": 144}
    export = json.loads((run / "export.json").read_text())
    assert export["selected_on"] == "validation" and export["val_samples"] == 144
    assert export["test_accuracy"] == export["onnxruntime_accuracy"]
    assert export["samples"] == 359  # the whole test split, measured once at export
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert export["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert "train view(s) of 1294 samples, 144 held back" in shared["stderr"]
    assert "chosen by validation accuracy" in shared["stdout"]
    assert "on 144 held-back training samples; test accuracy" in shared["stdout"]


def test_the_validation_split_is_seeded_and_disjoint_from_training():
    split = carve(1438, 0.1, seed=0)
    assert len(split.val) == 144 and len(split.train) == 1294
    assert not set(split.val) & set(split.train)
    assert sorted([*split.val, *split.train]) == list(range(1438))
    np.testing.assert_array_equal(carve(1438, 0.1, seed=0).val, split.val)
    assert not np.array_equal(carve(1438, 0.1, seed=1).val, split.val)


def test_val_fraction_zero_labels_the_figure_a_selected_maximum(shared, tmp_path):
    run = tmp_path / "on-test"
    code, out, err = distill(
        shared["root"], *TINY, "--epochs", "1", "--val-fraction", "0", "-o", run
    )
    assert code == 0, err
    assert "best of 1 epoch on the test split (selected maximum)" in out
    assert "test acc" in err  # the epoch lines say which split they score
    assert json.loads((run / "config.json").read_text())["validation"] == {"split": "eval"}
    assert json.loads((run / "export.json").read_text())["selected_on"] == "test"


def test_an_export_report_written_before_the_split_still_loads():
    old = {
        "onnx": "run/student.onnx",
        "max_abs_diff": 1e-6,
        "onnxruntime_accuracy": 0.9,
        "torch_accuracy": 0.9,
        "top1_agreement": 1.0,
        "samples": 359,
        "best_epoch": 4,
        "best_val_accuracy": 0.9,
        "teacher_accuracy": 0.99,
    }
    report = ExportReport.from_dict(old)
    assert report.selected_on == "test" and report.val_accuracy == 0.9
    assert report.test_accuracy == 0.9 and "best_val_accuracy" not in report.extra
    line = summarize(RunResult(Path("run"), [], old))
    assert "epoch 5, best of its epochs on the test split (selected maximum)" in line
    record = RunRecord.from_dict(
        {"config": {"student": "small_cnn"}, "cache": "c", "cache_key": "k", "versions": {}}
    )
    assert record.config.val_fraction == 0.0 and dict(record.validation) == {"split": "eval"}


def test_threads_apply_to_the_run_only(shared, tmp_path):
    """A later run in the same process (a pipeline, a test) must not inherit --threads."""
    import torch

    torch.set_num_threads(2)
    code, _, err = distill(shared["root"], *TINY, "--epochs", "1", "-o", tmp_path / "run")
    assert code == 0, err
    assert torch.get_num_threads() == 2
