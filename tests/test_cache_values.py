"""`cache-teacher` refuses values that would make a silently wrong cache: NaN/Inf samples,
labels the teacher has no class for, NaN/Inf teacher outputs, and data scaled the wrong way for
the teacher (the classic distillation bug). Also its defaults (`--views`, a missing `--data`)
and a quiet batch-size probe. Real digits throughout, where accuracy matters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

from onnxkd.cli import main
from onnxkd.metadata import write_metadata

DIGITS_TEACHER = MODELS / "digits_cnn.onnx"  # its metadata spec: (x / 16 - 0.5) / 0.5
TO_255 = f"{1 / 255:.6g}"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8, 1) float32 images with values 0..16, and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[..., None].astype(np.float32), d.target.astype(np.int64)


def save(path: Path, x: np.ndarray, y: np.ndarray, split_at: int = 1400) -> Path:
    """Native train/test keys, so an index in a message is an index into x_train/x_test."""
    np.savez(
        path, x_train=x[:split_at], y_train=y[:split_at], x_test=x[split_at:], y_test=y[split_at:]
    )
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """`cache(*args)` runs `onnxkd cache-teacher ARGS` in tmp_path; returns the click result."""
    monkeypatch.chdir(tmp_path)

    def invoke(*args):
        result = CliRunner().invoke(main, ["cache-teacher", *map(str, args)])
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result

    return invoke


def assert_refused(result, out: Path, *messages: str) -> None:
    """Exit 1, one `error:` line naming the problem, and no cache that looks complete."""
    assert result.exit_code == 1, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    for message in messages:
        assert message in error[0]
    assert not (out / "manifest.json").exists()
    assert not (out.parent / "onnxkd-out" / "state.json").exists()


# --- values checked where they enter --------------------------------------------------------


def test_nonfinite_samples_are_refused_with_count_and_first_index(cache, digits, tmp_path):
    x, y = digits
    x = x.copy()
    x[7, 3, 3, 0], x[20, 0, 0, 0] = np.nan, np.inf
    data = save(tmp_path / "nan.npz", x, y)
    result = cache(DIGITS_TEACHER, "--data", data, "-o", tmp_path / "c")
    assert_refused(
        result,
        tmp_path / "c",
        "the train section",
        "2 sample(s) hold NaN or Inf",
        "the first at index 7",
    )
    assert not (tmp_path / "c").exists()  # checked before anything is written

    x, _ = digits
    x = x.copy()
    x[1400 + 3, 1, 1, 0] = np.nan
    result = cache(DIGITS_TEACHER, "--data", save(tmp_path / "nan_test.npz", x, y), "-o", "c2")
    assert_refused(result, tmp_path / "c2", "the eval section", "test split", "index 3")


def test_labels_outside_the_teachers_classes_are_refused(cache, digits, tmp_path):
    x, y = digits
    y = y.copy()
    y[3], y[9] = 10, 12
    result = cache(DIGITS_TEACHER, "--data", save(tmp_path / "y.npz", x, y), "-o", "c")
    assert_refused(
        result,
        tmp_path / "c",
        "2 label(s) outside the teacher's 10 classes (0..9)",
        "the first at index 3 (label 10)",
    )


def flat_teacher(path: Path, digits, nan_when_blank: bool = False) -> Path:
    """A logistic regression on the 64 digit features as ONNX (about 97% on digits); with
    `nan_when_blank`, its logits are NaN for a sample whose features are all 0 (log 0 * 0)."""
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    model = LogisticRegression(max_iter=300).fit(x.reshape(len(x), -1)[:1400], y[:1400])
    inits = [
        numpy_helper.from_array(model.coef_.T.astype(np.float32), "w"),
        numpy_helper.from_array(model.intercept_.astype(np.float32), "b"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["scores"]),
    ]
    if nan_when_blank:
        nodes += [
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
            helper.make_node("Log", ["total"], ["log_total"]),
            helper.make_node("Mul", ["log_total", "zero"], ["nan_if_blank"]),
            helper.make_node("Add", ["scores", "nan_if_blank"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["scores"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "logreg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model_proto, path)
    return path


def test_nonfinite_teacher_outputs_are_refused(cache, digits, tmp_path):
    teacher = flat_teacher(tmp_path / "nan_logreg.onnx", digits, nan_when_blank=True)
    x, y = digits
    features = x.reshape(len(x), -1).copy()
    features[500] = 0.0  # not among the samples probed up front: found as the cache streams
    result = cache(teacher, "--data", save(tmp_path / "f.npz", features, y), "-o", "c")
    assert_refused(
        result,
        tmp_path / "c",
        "the train section",
        "output 'logits' is NaN or Inf for 1 sample(s), the first at index 500",
    )
    assert (tmp_path / "c" / "pending.json").exists()  # an unfinished cache, never a complete one


def test_a_lazy_source_is_checked_as_it_streams(digits, tmp_path):
    """Data read lazily is not read twice: its NaN is found in the chunk that holds it."""
    from onnxkd.cache.build import CacheConfig, cache_teacher
    from onnxkd.data.source import ArraySource, DataRef
    from onnxkd.errors import DataError

    class Lazy(ArraySource):
        def __init__(self, x, y):
            super().__init__(DataRef("lazy"), x, y)
            self.x = np.asarray(x).view(np.memmap)  # a mapped array is checked as it streams

    x, y = digits
    x = x[:1000].copy()
    x[301, 4, 4, 0] = np.nan
    cfg = CacheConfig(
        DIGITS_TEACHER,
        DataRef("lazy"),
        out=tmp_path / "c",
        views=1,
        workdir=tmp_path / "ws",
        batch_size=100,
    )
    with pytest.raises(DataError, match=r"1 sample\(s\) hold NaN or Inf, the first at index 301"):
        cache_teacher(cfg, log=lambda s: None, source=Lazy(x, y[:1000]))
    progress = json.loads((tmp_path / "c" / "train" / "part-0-of-1" / "progress.json").read_text())
    assert progress["chunks_done"] == 3 and not (tmp_path / "c" / "manifest.json").exists()


# --- preprocessing mistakes -----------------------------------------------------------------


def test_digits_stored_as_0_255_are_refused_with_the_fix(cache, digits, tmp_path):
    x, y = digits
    data = save(tmp_path / "d255.npz", np.round(x * 255 / 16).astype(np.uint8), y)
    result = cache(DIGITS_TEACHER, "--data", data, "-o", "c")
    assert_refused(
        result,
        tmp_path / "c",
        "values go up to 255",
        "scale 0.0625 is meant for values up to 16",
        "(from teacher metadata)",
        f"likely fix: pass --scale {TO_255}",
        "--accept-low-accuracy",
    )

    fixed = cache(DIGITS_TEACHER, "--data", data, "-o", "c", "--scale", TO_255, "--views", "1")
    assert fixed.exit_code == 0, fixed.output
    assert f"scale 0.0625 -> {TO_255}" in fixed.stderr  # said before caching
    assert f"overridden by options (scale 0.0625 -> {TO_255})" in fixed.stdout  # and in the summary
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["spec_overrides"] == {"scale": [0.0625, float(TO_255)]}
    assert manifest["input_spec"]["scale"] == float(TO_255)
    assert manifest["sections"]["eval"]["teacher_accuracy"][0] > 0.97


def test_digits_stored_as_0_1_floats_are_refused(cache, digits, tmp_path):
    x, y = digits
    data = save(tmp_path / "d01.npz", x / 16, y)
    result = cache(DIGITS_TEACHER, "--data", data, "-o", "c")
    assert_refused(
        result,
        tmp_path / "c",
        "near chance",
        "values go up to 1 while the input spec's scale 0.0625",
        "likely fix: pass --scale 1;",
    )


def test_accept_low_accuracy_caches_with_a_recorded_warning(cache, digits, tmp_path):
    x, y = digits
    data = save(tmp_path / "d01.npz", x / 16, y)
    result = cache(
        DIGITS_TEACHER, "--data", data, "-o", "c", "--views", "1", "--accept-low-accuracy"
    )
    assert result.exit_code == 0, result.output
    assert "warning: the teacher scores" in result.stderr
    assert "accepted with --accept-low-accuracy" in result.stdout  # the summary repeats it
    checks = json.loads((tmp_path / "c" / "manifest.json").read_text())["input_checks"]
    assert checks["teacher_accuracy"] < 0.2 and len(checks["accepted_problems"]) == 2
    assert checks["value_range"] == [0.0, 1.0]


def test_a_teacher_near_chance_is_refused_even_when_the_range_fits(cache, digits, tmp_path):
    """Labels that are not what the teacher predicts (here shuffled) score near chance."""
    x, y = digits
    shuffled = np.random.default_rng(0).permutation(y)
    result = cache(DIGITS_TEACHER, "--data", save(tmp_path / "s.npz", x, shuffled), "-o", "c")
    assert_refused(
        result,
        tmp_path / "c",
        "near chance",
        "input spec: NCHW, scale 0.0625, mean [0.5], std [0.5] (from teacher metadata)",
        "check --scale, --mean, --std and --layout",
    )


def test_far_below_the_accuracy_the_teacher_records(cache, digits, tmp_path):
    proto = onnx.load(str(DIGITS_TEACHER))
    write_metadata(proto, {"onnxkd.teacher_accuracy": "0.99"})
    teacher = tmp_path / "recorded.onnx"
    onnx.save(proto, teacher)
    x, y = digits
    y = y.copy()
    half = np.arange(0, len(y), 2)
    y[half] = (y[half] + 1) % 10  # every other label wrong: about 50%, well above chance
    result = cache(teacher, "--data", save(tmp_path / "h.npz", x, y), "-o", "c")
    assert_refused(result, tmp_path / "c", "far below the 99.0% its metadata records")


def test_an_option_overrides_the_teachers_metadata_spec_and_says_so(cache, tmp_path):
    result = cache(DIGITS_TEACHER, "--data", "digits", "-o", "c", "--mean", "0.45", "--views", "1")
    assert result.exit_code == 0, result.output
    assert "mean [0.5] -> [0.45]" in result.stderr and "mean [0.5] -> [0.45]" in result.stdout
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["spec_overrides"] == {"mean": [[0.5], [0.45]]}
    assert manifest["input_checks"]["accepted_problems"] == []


# --- defaults -------------------------------------------------------------------------------


def test_missing_data_says_what_data_accepts(cache):
    result = cache(DIGITS_TEACHER)
    assert result.exit_code == 2
    assert "missing --data" in result.stderr
    assert "accepted: 'digits'" in result.stderr and "a .npz file" in result.stderr


def test_default_views_are_ten_crops_for_images_and_one_for_features(cache, digits, tmp_path):
    images = cache(DIGITS_TEACHER, "--data", "digits", "-o", "img")
    assert images.exit_code == 0, images.output
    assert "warning" not in images.stderr  # the zoo teacher was trained on shifted digits
    train = json.loads((tmp_path / "img" / "manifest.json").read_text())["sections"]["train"]
    assert (train["views"], train["augmentation"]["policy"]) == (10, "crop")

    x, y = digits
    teacher = flat_teacher(tmp_path / "logreg.onnx", digits)
    data = save(tmp_path / "f.npz", x.reshape(len(x), -1), y)
    features = cache(teacher, "--data", data, "-o", "feat")
    assert features.exit_code == 0, features.output
    train = json.loads((tmp_path / "feat" / "manifest.json").read_text())["sections"]["train"]
    assert (train["views"], train["augmentation"]["policy"]) == (1, "none")


def test_default_views_a_teacher_was_not_trained_on_are_warned_about(cache, tmp_path):
    import teachers  # trained on clean digits only: 1-pixel crops of 8x8 images hurt it

    teacher = teachers.build_dynamic_nchw(tmp_path)
    result = cache(teacher, "--data", "digits", "--scale", "0.0625", "-o", "c")
    assert result.exit_code == 0, result.output
    assert "on the default crop views against" in result.stderr
    assert "--augment none --views 1" in result.stderr
    checks = json.loads((tmp_path / "c" / "manifest.json").read_text())["input_checks"]
    assert checks["augmented_accuracy"] < checks["teacher_accuracy"] - 0.15
    # Views the user chose (the CIFAR recipe's strong ones, say) are theirs: no warning.
    chosen = cache(teacher, "--data", "digits", "--scale", "0.0625", "--augment", "crop",
                   "--views", "2", "-o", "c2")  # fmt: skip
    assert chosen.exit_code == 0 and "warning" not in chosen.stderr


# --- onnxruntime's own noise ----------------------------------------------------------------


def test_probing_a_fixed_batch_teacher_prints_no_onnxruntime_errors(cli, tmp_path):
    import teachers

    teacher = teachers.build_fixed_batch_hard_reshape(tmp_path)  # a batched run fails in ORT
    result = cli(
        "cache-teacher",
        teacher,
        "--data",
        "digits",
        "--scale",
        "0.0625",
        "--views",
        "1",
        "-o",
        tmp_path / "c",
    )
    assert result.returncode == 0, result.stderr
    assert "[E:onnxruntime" not in result.stderr and "GEMM" not in result.stderr
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["created_by"]["batching"] == "loop"


def test_a_model_card_for_another_file_is_not_taken_as_the_record(tmp_path):
    """The card beside a teacher counts only when its sha256 is the file's: a retrained or
    replaced teacher is not held to an old card's accuracy."""
    import re
    import shutil

    from sklearn.datasets import load_digits

    for name in ("digits_cnn.onnx", "digits_cnn.md"):
        shutil.copy(MODELS / name, tmp_path / name)
    card = tmp_path / "digits_cnn.md"
    card.write_text(re.sub(r"`[0-9a-f]{64}`", "`" + "0" * 64 + "`", card.read_text(), count=1))
    x, y = load_digits(return_X_y=True)
    swap = {0: 1, 1: 0, 2: 3, 3: 2}  # a class-order mistake: ~56% right, well above chance
    np.savez(tmp_path / "d.npz", x=x.reshape(-1, 8, 8), y=[swap.get(int(v), int(v)) for v in y])
    result = CliRunner().invoke(
        main,
        [
            "cache-teacher",
            str(tmp_path / "digits_cnn.onnx"),
            "--data",
            str(tmp_path / "d.npz"),
            "-o",
            str(tmp_path / "c"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "manifest.json").is_file()


def test_chance_is_judged_against_the_most_common_label():
    from onnxkd.teacher.sanity import near_chance

    assert near_chance(0.12, 0.10) and near_chance(0.55, 0.52)  # a guess, on 10 and on 2 classes
    assert not near_chance(0.99, 0.52) and not near_chance(0.40, 0.10)
    assert near_chance(0.90, 0.90)  # always the majority class of imbalanced data
    assert not near_chance(1.0, 1.0)  # data of one class: chance says nothing
