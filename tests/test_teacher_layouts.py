"""Students take exactly the input their teacher takes: NHWC (Keras via tf2onnx), NHW, and flat
vectors made from images (scikit-learn on digits), through distill, feature hooks, QAT,
--channels-last, PTQ and the export check; and a student of the wrong kind is refused clearly.

The Keras and scikit-learn teachers are the zoo's committed files (onnxruntime only, no
converter); the NHW teacher is built here from the suite's small digits CNN.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import teachers
import torch
from conftest import MODELS

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec, SpecOptions
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.trainer import distill
from onnxkd.errors import SpecError
from onnxkd.metadata import INPUT_SPEC
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize
from onnxkd.students.for_spec import TeacherLayout, create_student_for_spec

KERAS = MODELS / "digits_keras_cnn.onnx"
SKLEARN = MODELS / "digits_sklearn_mlp.onnx"
# A tf2onnx tensor name: TensorFlow's ":0" suffix must survive STUDENT:TEACHER pairs.
KERAS_FEATURE = "digits_keras_cnn_1/conv2d_2_1/Relu:0"
FAST = {"batch_size": 64, "threads": 1}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def input_dims(path: Path) -> list:
    proto = onnx.load(str(path), load_external_data=False)
    return [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]


def metadata_spec(path: Path) -> InputSpec:
    proto = onnx.load(str(path), load_external_data=False)
    return InputSpec.from_json({p.key: p.value for p in proto.metadata_props}[INPUT_SPEC])


def assert_takes_teachers_input(model: Path, teacher: Path, cache: Path) -> None:
    """Same input rank and fixed dims as the teacher, the cache's spec in its metadata, and it
    runs on exactly what the teacher was fed."""
    assert input_dims(model)[1:] == input_dims(teacher)[1:]
    spec = CacheReader(cache).input_spec
    assert metadata_spec(model) == spec
    raw, _ = open_source(DataRef("digits", split="test")).read(np.arange(8))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: spec.apply(raw)})
    assert logits.shape == (8, 10)


def run(ws: Path, out: Path, **options) -> dict:
    cfg = DistillConfig(workdir=ws, out=out, **{**FAST, **options})
    return distill(cfg, log=lambda s: None).export


@pytest.fixture(scope="module")
def keras(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(workspace, cache, float run) for the NHWC Keras teacher with one cached feature."""
    ws = tmp_path_factory.mktemp("keras") / "onnxkd-out"
    cache = cache_teacher(
        CacheConfig(
            KERAS,
            DataRef("digits"),
            workdir=ws,
            views=2,
            augment="crop",
            features=(KERAS_FEATURE,),
            threads=1,
        ),
        log=lambda s: None,
    ).path
    out = ws / "runs" / "float"
    run(ws, out, student="small_cnn", epochs=3)
    return ws, cache, out


def test_nhwc_student_takes_the_teachers_input(keras):
    ws, cache, out = keras
    assert CacheReader(cache).input_spec.layout == "NHWC"
    assert_takes_teachers_input(out / "student.onnx", KERAS, cache)
    report = json.loads((out / "export.json").read_text())
    assert report["max_abs_diff"] < 1e-4
    assert report["onnxruntime_accuracy"] == report["torch_accuracy"] > 0.5


def test_nhwc_feature_terms_with_channels_last_and_bf16(keras, tmp_path):
    ws, cache, _ = keras
    report = run(
        ws,
        tmp_path / "run",
        cache=cache,
        student="small_cnn",
        epochs=1,
        hints=(f"stage3:{KERAS_FEATURE}",),
        attention=(f"stage2:{KERAS_FEATURE}",),
        channels_last=True,
        bf16=True,
    )
    assert_takes_teachers_input(tmp_path / "run" / "student.onnx", KERAS, cache)
    assert report["max_abs_diff"] < 0.1  # trained in bf16, checked in float32


def test_nhwc_qat_and_ptq_keep_the_teachers_input(keras, tmp_path):
    ws, cache, out = keras
    report = run(ws, tmp_path / "qat", qat=True, init=out, epochs=1)
    int8 = tmp_path / "qat" / "student.int8.onnx"
    assert_takes_teachers_input(int8, KERAS, cache)
    assert report["int8_ops"] > 0 and report["top1_agreement"] > 0.95
    ptq = tmp_path / "ptq.int8.onnx"
    quantize(
        QuantizeConfig(model=out / "student.onnx", out=ptq, workdir=ws, cache=cache, threads=1),
        log=lambda s: None,
    )
    assert_takes_teachers_input(ptq, KERAS, cache)


def build_nhw(out_dir: Path) -> Path:
    """The suite's digits CNN taking (batch, 8, 8): single-channel images with no channel axis."""
    model = teachers._Head(teachers._trained_cnn(), pre=lambda x: x.unsqueeze(1))
    return teachers._export(
        model,
        teachers._nchw_example()[:, 0],
        Path(out_dir) / "nhw.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_batch=True,
    )


def test_nhw_student_takes_the_teachers_input(tmp_path):
    teacher = build_nhw(tmp_path)
    ws = tmp_path / "onnxkd-out"
    cfg = CacheConfig(
        teacher, DataRef("digits"), workdir=ws, spec=SpecOptions(scale=1 / 16), threads=1
    )
    cache = cache_teacher(cfg, log=lambda s: None).path
    assert CacheReader(cache).input_spec.layout == "NHW"
    report = run(ws, tmp_path / "run", student="small_cnn", epochs=2)
    assert_takes_teachers_input(tmp_path / "run" / "student.onnx", teacher, cache)
    assert report["max_abs_diff"] < 1e-4 and report["onnxruntime_accuracy"] > 0.5


def test_layout_adapter_moves_axes_only():
    """An adapted student is its NCHW network applied to the permuted batch."""
    spec = InputSpec(layout="NHWC", size=(8, 6), channels=3)
    torch.manual_seed(0)
    student = create_student_for_spec("small_cnn_s", spec, num_classes=10).eval()
    assert isinstance(student, TeacherLayout)
    assert student.feature_modules["stage2"] == "net.stage2"
    x = torch.randn(2, 8, 6, 3)
    torch.testing.assert_close(student(x), student.net(x.permute(0, 3, 1, 2)))
    nchw = InputSpec(layout="NCHW", size=(8, 6), channels=3)
    assert not isinstance(create_student_for_spec("small_cnn_s", nchw, 10), TeacherLayout)


@pytest.fixture(scope="module")
def sklearn_cache(tmp_path_factory) -> tuple[Path, Path]:
    """(workspace, cache) for the scikit-learn teacher on digits images, with cropped views."""
    ws = tmp_path_factory.mktemp("sklearn") / "onnxkd-out"
    cfg = CacheConfig(
        SKLEARN,
        DataRef("digits"),
        workdir=ws,
        views=2,
        augment="crop",
        spec=SpecOptions(scale=1.0),
        threads=1,
    )
    notes: list[str] = []
    cache = cache_teacher(cfg, log=notes.append).path
    assert any("flattened row-major (H, W, C)" in n for n in notes)
    return ws, cache


def test_flat_teacher_on_images_flattens_as_sklearn_does(sklearn_cache):
    from sklearn.datasets import load_digits

    _, cache = sklearn_cache
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["input_spec"]["flatten"] == [8, 8, 1]
    assert manifest["sections"]["eval"]["teacher_accuracy"][0] == round(353 / 359, 6)  # card
    spec = CacheReader(cache).input_spec
    assert (spec.layout, spec.channels, spec.raw_shape) == ("flat", 64, (8, 8, 1))
    digits = load_digits()
    flat = spec.apply(digits.images.astype(np.uint8)[..., None])
    np.testing.assert_array_equal(flat, digits.data.astype(np.float32))


def test_flattened_views_are_what_the_teacher_saw(sklearn_cache):
    _, cache = sklearn_cache
    section = CacheReader(cache).section("train")
    source = open_source(DataRef("digits"))
    idx = np.arange(64)
    x0, x1 = section.model_input(source, idx, 0), section.model_input(source, idx, 1)
    assert x1.shape == (64, 64) and not np.array_equal(x0, x1)  # the crop moved pixels
    session = ort.InferenceSession(str(SKLEARN), providers=["CPUExecutionProvider"])
    labels, _ = session.run(None, {"float_input": x1})
    np.testing.assert_array_equal(section.scores(idx, 1).argmax(1), labels)


def test_mlp_on_flattened_images_exports_flat(sklearn_cache, tmp_path):
    ws, cache = sklearn_cache
    report = run(ws, tmp_path / "run", cache=cache, student="mlp", epochs=3)
    model = tmp_path / "run" / "student.onnx"
    assert input_dims(model) == ["batch", 64]
    assert_takes_teachers_input(model, SKLEARN, cache)
    assert report["max_abs_diff"] < 1e-4 and report["onnxruntime_accuracy"] > 0.8


def test_flat_teacher_refuses_images_of_another_size(cli, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, (40, 7, 7), dtype=np.uint8)
    np.savez(tmp_path / "small.npz", x=images, y=rng.integers(0, 10, 40))
    result = cli("cache-teacher", SKLEARN, "--data", "small.npz", "--threads", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "data samples have shape (7, 7, 1), but the teacher's input spec (flat, size None, "
        "64 channels) needs raw samples of shape (64,)"
    ) in result.stderr


@pytest.mark.parametrize(
    ("which", "student", "message"),
    [
        (
            "sklearn",
            "small_cnn",
            "student small_cnn takes images, but this cache's input is 64 flat features; pick "
            "a flat-input student (mlp, mlp_s)",
        ),
        (
            "keras",
            "mlp",
            "student mlp takes flat feature vectors, but this cache's input is NHWC images "
            "(8x8x1); pick an image student such as small_cnn",
        ),
    ],
)
def test_student_of_the_wrong_kind_is_one_clear_line(
    cli, keras, sklearn_cache, tmp_path, which, student, message
):
    cache = sklearn_cache[1] if which == "sklearn" else keras[1]
    shutil.copytree(cache, tmp_path / "cache")
    result = cli("distill", "--cache", "cache", "--student", student, "--epochs", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_flatten_is_recorded_only_when_set():
    """Specs without `flatten` serialize as before it existed (cache keys stay the same)."""
    assert "flatten" not in InputSpec("NCHW", (8, 8), 1).to_dict()
    spec = InputSpec("flat", channels=64, flatten=(8, 8, 1))
    assert InputSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SpecError, match="makes 63 features, the spec has 64"):
        InputSpec("flat", channels=64, flatten=(7, 9, 1))


def test_bench_scores_the_sklearn_teacher_as_shipped(sklearn_cache, tmp_path):
    """The cache read the tensor under skl2onnx's ZipMap; the file is timed with its ZipMap and
    scored on the ZipMap's output, at the cache's teacher accuracy."""
    from onnxkd.bench.config import BenchConfig
    from onnxkd.bench.runner import bench

    ws, cache = sklearn_cache
    cfg = BenchConfig(
        models=(SKLEARN,),
        labels=("teacher",),
        batches=(1,),
        runs=5,
        min_seconds=0.0,
        warmup=1,
        rounds=1,
        threads=1,
        workdir=ws,
        out=tmp_path / "bench",
        cache=cache,
    )
    (row,) = bench(cfg, log=lambda s: None).rows
    assert row["status"] == "ok" and row["accuracy"] == round(353 / 359, 5)
