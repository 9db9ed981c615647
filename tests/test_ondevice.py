"""`onnxkd ondevice`: the KD loss block against PyTorch's, on-device training of a weak student
from a digits cache, the export in this environment's onnxruntime, resume, frozen parameters,
opset conversion, and bad inputs.

The parts that need onnxruntime-training run in `.venv-ondevice` (`bash .ci/setup-ondevice`).
Without it those tests skip here, and fail under CI, which must build it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import MODELS, ROOT, run_cli
from onnx import numpy_helper

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.losses import KD
from onnxkd.distill.trainer import distill
from onnxkd.ondevice.bridge import find_python, run_worker
from onnxkd.ondevice.config import MANIFEST, REQUIRED, read_artifacts
from onnxkd.ondevice.errors import OnDeviceError
from onnxkd.ondevice.manifest import ArtifactsManifest, ParameterRow, StudentInfo
from onnxkd.ondevice.student import prepare

ONDEVICE_ENV = ROOT / ".venv-ondevice"
DIGITS_TEACHER = MODELS / "digits_cnn.onnx"
# The tests name the environment; a user's $ONNXKD_ONDEVICE_ENV must not redirect them.
ENV = {"ONNXKD_ONDEVICE_ENV": str(ONDEVICE_ENV)}
TRAIN = ("--threads", "1", "--lr", "5e-3")


@pytest.fixture(scope="module")
def ondevice_env() -> Path:
    if not (ONDEVICE_ENV / "bin" / "python").is_file():
        message = f"no on-device environment at {ONDEVICE_ENV}; build it: bash .ci/setup-ondevice"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run these tests, not skip them)")
        pytest.skip(message)
    return ONDEVICE_ENV


@pytest.fixture(scope="module")
def weak(tmp_path_factory) -> dict:
    """A digits cache (3 cropped views) and a small student distilled for one epoch only."""
    root = tmp_path_factory.mktemp("ondevice")
    workdir = root / "onnxkd-out"
    cache = cache_teacher(
        CacheConfig(
            DIGITS_TEACHER, DataRef("digits"), workdir=workdir, views=3, augment="crop", threads=1
        ),
        log=lambda s: None,
    ).path
    cfg = DistillConfig(
        student="small_cnn_s",
        cache=cache,
        workdir=workdir,
        out=root / "run",
        epochs=1,
        lr=0.01,
        batch_size=64,
        threads=1,
    )
    run = distill(cfg, log=lambda s: None)
    return {"root": root, "cache": cache, "student": Path(run.export["onnx"])}


@pytest.fixture(scope="module")
def artifacts(ondevice_env, weak) -> Path:
    out = weak["root"] / "artifacts"
    result = run_cli("ondevice", "artifacts", weak["student"], "-o", out, cwd=weak["root"], env=ENV)
    assert result.returncode == 0, result.stderr
    assert "10 trained, 0 frozen" in result.stdout
    return out


@pytest.fixture(scope="module")
def trained(artifacts, weak) -> dict:
    result = run_cli(
        "ondevice", "train", artifacts, "--cache", weak["cache"], *TRAIN, cwd=weak["root"], env=ENV
    )
    assert result.returncode == 0, result.stderr
    run = artifacts / "run"
    return {"run": run, "report": json.loads((run / "report.json").read_text()), "result": result}


def probe(artifacts: Path, cache: Path, indices: np.ndarray, view: int, out: Path) -> dict:
    """One cached batch through the artifacts in the on-device environment."""
    request = {
        "artifacts": str(artifacts),
        "cache": str(cache),
        "indices": indices.tolist(),
        "view": view,
        "out": str(out),
        "threads": 1,
    }
    run_worker("probe", request, find_python(ONDEVICE_ENV), log=lambda s: None)
    return dict(np.load(out))


def torch_kd(manifest: dict, logits: np.ndarray, scores: np.ndarray, labels: np.ndarray):
    """onnxkd's PyTorch `kd` loss and its gradient with respect to the logits."""
    loss_fn = KD(alpha=manifest["loss"]["alpha"], temperature=manifest["loss"]["temperature"])
    z = torch.from_numpy(logits).requires_grad_(True)
    loss = loss_fn({"logits": z}, {"logits": torch.from_numpy(scores)}, torch.from_numpy(labels))
    loss.backward()
    return float(loss.detach()), z.grad.numpy()


def test_help_imports_neither_torch_nor_onnxruntime():
    code = (
        "import sys\n"
        "from onnxkd.cli import main\n"
        "for cmd in ['ondevice', 'ondevice artifacts', 'ondevice train']:\n"
        "    try:\n"
        "        main([*cmd.split(), '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (cmd, e.code)\n"
        "print([m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--freeze-prefix" in out.stdout and "--cache" in out.stdout and "--env" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("storage", ["logits", "topk log-probs"])
def test_loss_block_equals_torch_kd_on_cached_targets(artifacts, weak, tmp_path, storage):
    cache = weak["cache"]
    if storage != "logits":  # top-k storage hands the loss rebuilt log-probabilities
        cache = cache_teacher(
            CacheConfig(
                DIGITS_TEACHER,
                DataRef("digits"),
                out=tmp_path / "topk",
                views=3,
                augment="crop",
                topk=3,
                threads=1,
            ),
            log=lambda s: None,
        ).path
    manifest = json.loads((artifacts / MANIFEST).read_text())
    got = probe(artifacts, cache, np.arange(100, 164), view=1, out=tmp_path / "probe.npz")
    scores = got["teacher_scores"]
    if storage == "logits":
        assert CacheReader(cache).manifest.to_dict()["targets"]["kind"] == "logits"
    else:
        np.testing.assert_allclose(np.exp(scores).sum(1), 1, rtol=1e-3)  # float16 log-probs
    ref, ref_grad = torch_kd(manifest, got["eval_logits"], scores, got["labels"])
    assert float(got["eval_loss"]) == pytest.approx(ref, rel=1e-5)
    assert float(got["train_loss"]) == pytest.approx(ref, rel=1e-5)
    # The bias of the last Gemm gets exactly the batch sum of dL/dlogits.
    np.testing.assert_allclose(got["grad:head.fc.bias"], ref_grad.sum(0), rtol=1e-4, atol=1e-7)
    # The logits are the student's own, as this environment's onnxruntime computes them.
    session = ort.InferenceSession(str(weak["student"]), providers=["CPUExecutionProvider"])
    (direct,) = session.run(None, {"input": got["x"]})
    np.testing.assert_allclose(got["eval_logits"], direct, rtol=1e-5, atol=1e-5)


def test_training_from_the_cache_lifts_a_weak_student(trained):
    report, result = trained["report"], trained["result"]
    before, after = report["before"]["val_accuracy"], report["after"]["val_accuracy"]
    assert before < 0.5  # one epoch of distillation leaves it weak
    assert after >= before + 0.3 and after >= 0.75
    assert [r["view"] for r in report["epochs"]] == [0, 1, 2, 0, 1]  # view e mod K
    losses = [r["train_loss"] for r in report["epochs"]]
    assert losses[-1] < losses[0]
    rows = (trained["run"] / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 5
    assert "epoch 5/5" in result.stderr and "before: val acc" in result.stderr
    assert "accuracy:" in result.stdout and "->" in result.stdout
    assert report["export"]["accuracy"] == pytest.approx(after)
    assert report["export"]["max_abs_diff_vs_eval_model"] < 1e-5
    assert report["worse_than_before"] is False and "warning" not in result.stderr


def test_training_that_lowers_the_accuracy_says_so(trained, weak, tmp_path):
    """A trained student fine-tuned at a learning rate far too high: the report and the log say
    that the accuracy fell, and how to retry."""
    good = Path(trained["report"]["export"]["onnx"])
    out = tmp_path / "artifacts"
    made = run_cli("ondevice", "artifacts", good, "-o", out, cwd=weak["root"], env=ENV)
    assert made.returncode == 0, made.stderr
    args = ("--cache", weak["cache"], "--threads", "1", "--lr", "1.0", "--epochs", "1")
    result = run_cli("ondevice", "train", out, *args, cwd=weak["root"], env=ENV)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "run" / "report.json").read_text())
    assert report["after"]["val_accuracy"] < report["before"]["val_accuracy"] - 0.2
    assert report["worse_than_before"] is True
    assert "lowered the accuracy" in result.stderr and "lower --lr" in result.stderr


def test_exported_model_runs_here_and_onnxkd_quantize_takes_it(trained, weak):
    path = Path(trained["report"]["export"]["onnx"])
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    student_meta = {p.key: p.value for p in onnx.load(str(weak["student"])).metadata_props}
    assert meta["onnxkd.input_spec"] == student_meta["onnxkd.input_spec"]
    assert meta["onnxkd.cache_key"] == CacheReader(weak["cache"]).manifest.to_dict()["key"]
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    # This environment's onnxruntime (not onnxruntime-training) scores it as the report says.
    cache = CacheReader(weak["cache"])
    source = open_source(DataRef("digits", split="test"))
    idx = np.arange(len(source))
    x = cache.input_spec.apply(source.read(idx)[0])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    accuracy = float((session.run(None, {"input": x})[0].argmax(1) == source.read(idx)[1]).mean())
    assert accuracy == pytest.approx(trained["report"]["after"]["val_accuracy"])
    assert trained["report"]["export"]["main_onnxruntime"] == ort.__version__
    result = run_cli(
        "quantize", path, "--threads", "1", "--calib-samples", "64", cwd=weak["root"], timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert path.with_suffix(".int8.onnx").exists()


def test_rerun_resumes_after_the_last_epoch(trained, weak, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    artifacts = trained["run"].parent
    args = ("ondevice", "train", artifacts, "--cache", weak["cache"], "-o", run, *TRAIN)
    more = run_cli(*args, "--epochs", "6", cwd=weak["root"], env=ENV)
    assert more.returncode == 0, more.stderr
    assert "resuming" in more.stderr and "after epoch 5 of 6" in more.stderr
    assert "epoch 6/6" in more.stderr and "epoch 1/6" not in more.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6
    other = run_cli(*args, "--batch-size", "32", cwd=weak["root"], env=ENV)
    assert other.returncode == 1
    assert "holds a run with other settings (batch_size 64 -> 32)" in other.stderr
    assert "--restart" in other.stderr and "Traceback" not in other.stderr


def test_frozen_prefix_stays_put_and_a_new_opset_is_converted(ondevice_env, weak, tmp_path):
    # A student at opset 22 and IR 11, which onnxruntime-training 1.19 refuses as it is.
    newer = onnx.version_converter.convert_version(onnx.load(str(weak["student"])), 22)
    newer.ir_version = 11
    path = tmp_path / "student22.onnx"
    onnx.save(newer, str(path))
    out = tmp_path / "art"
    made = run_cli(
        "ondevice",
        "artifacts",
        path,
        "-o",
        out,
        "--freeze-prefix",
        "2",
        "--freeze",
        "stage1",
        cwd=tmp_path,
        env=ENV,
    )
    assert made.returncode == 0, made.stderr
    assert "opset 22 -> 21" in made.stderr and "IR 11 -> 10" in made.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    frozen = [p["module"] for p in manifest["parameters"]["frozen"]]
    assert frozen == ["stem.0.weight", "stem.0.bias", "stage1.0.weight", "stage1.0.bias"]
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        assert onnx.load(str(out / name)).ir_version <= 10
    result = run_cli(
        "ondevice",
        "train",
        out,
        "--cache",
        weak["cache"],
        "--epochs",
        "1",
        *TRAIN,
        cwd=tmp_path,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    before = {i.name: numpy_helper.to_array(i) for i in newer.graph.initializer}
    after = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(out / "run" / "student.onnx")).graph.initializer
    }
    for p in manifest["parameters"]["frozen"]:
        np.testing.assert_array_equal(after[p["name"]], before[p["name"]])
    for p in manifest["parameters"]["trainable"]:
        assert not np.array_equal(after[p["name"]], before[p["name"]]), p["module"]


def test_freeze_selection_by_count_and_by_name(weak):
    _, info = prepare(weak["student"], 0, ("stem", "head.fc.bias"))
    assert [p["module"] for p in info["frozen"]] == ["stem.0.weight", "stem.0.bias", "head.fc.bias"]
    with pytest.raises(OnDeviceError, match="--freeze 'stage9' matches no parameter; they are"):
        prepare(weak["student"], 0, ("stage9",))
    with pytest.raises(OnDeviceError, match="leave at least one to train"):
        prepare(weak["student"], 10)
    with pytest.raises(OnDeviceError, match="more than the student's 10 parameters"):
        prepare(weak["student"], 11)


def test_not_an_onnx_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "student.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf of a model")
    result = run_cli("ondevice", "artifacts", bad, cwd=tmp_path, env=ENV)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "is not a readable ONNX model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_environment_names_the_setup_script(tmp_path):
    result = run_cli(
        "ondevice",
        "artifacts",
        DIGITS_TEACHER,
        "-o",
        tmp_path / "art",
        "--env",
        tmp_path / "nowhere",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "bash .ci/setup-ondevice" in result.stderr and "onnxruntime-training" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "art").exists()


def fake_artifacts(folder: Path, weak: dict, **student) -> Path:
    """An artifacts folder as `ondevice artifacts` lays it out (empty graph files, a complete
    manifest), for checks made before any training (they read the manifest only)."""
    folder.mkdir()
    for name in REQUIRED:
        (folder / name).write_bytes(b"")
    meta = {p.key: p.value for p in onnx.load(str(weak["student"])).metadata_props}
    student_info = {
        "path": str(weak["student"]),
        "sha256": "0" * 64,
        "input_spec": json.loads(meta["onnxkd.input_spec"]),
        "input_shape": ["batch", 1, 8, 8],
        **student,
    }
    manifest = ArtifactsManifest(
        id="fake",
        student=StudentInfo.from_dict(student_info),
        input="input",
        output="logits",
        num_classes=10,
        alpha=0.9,
        temperature=4.0,
        optimizer="adamw",
        weight_decay=0.0,
        trainable=(ParameterRow("w", "fc", (10, 64)),),
        frozen=(),
        opset=17,
        ir_version=8,
        converted=(),
        artifact_ir_versions={},
        config={},
        versions={},
    )
    (folder / MANIFEST).write_text(json.dumps(manifest.to_dict()))
    return folder


def test_the_artifacts_manifest_reads_back_what_was_written(artifacts):
    written = json.loads((artifacts / MANIFEST).read_text())
    manifest = read_artifacts(artifacts)
    assert manifest.to_dict() == written
    assert manifest.num_classes == 10 and manifest.optimizer == written["optimizer"]["name"]
    assert [p.name for p in manifest.trainable] == [
        p["name"] for p in written["parameters"]["trainable"]
    ]


@pytest.mark.parametrize("broken", ["num_classes", "student", "parameters"])
def test_a_manifest_missing_a_key_is_refused_in_one_line(weak, tmp_path, broken):
    folder = fake_artifacts(tmp_path / "art", weak)
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest[broken]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(OnDeviceError, match=f"is malformed \\(KeyError: '{broken}'\\)"):
        read_artifacts(folder)


def test_artifacts_missing_files_or_mismatched_caches_are_refused(weak, tmp_path):
    def train(folder: Path) -> subprocess.CompletedProcess:
        return run_cli("ondevice", "train", folder, "--cache", weak["cache"], cwd=tmp_path, env=ENV)

    plain = fake_artifacts(tmp_path / "plain", weak)
    (plain / "eval_model.onnx").unlink()
    result = train(plain)
    assert result.returncode == 1
    assert "is missing eval_model.onnx; regenerate it with `onnxkd ondevice artifacts" in (
        result.stderr
    )
    wrong_classes = fake_artifacts(tmp_path / "classes", weak)
    manifest = json.loads((wrong_classes / MANIFEST).read_text())
    manifest["num_classes"] = 7
    (wrong_classes / MANIFEST).write_text(json.dumps(manifest))
    result = train(wrong_classes)
    assert result.returncode == 1
    assert "has 10 classes but the student student.onnx outputs 7" in result.stderr
    spec = json.loads((plain / MANIFEST).read_text())["student"]["input_spec"]
    wrong_spec = fake_artifacts(tmp_path / "spec", weak, input_spec={**spec, "scale": 1 / 255})
    result = train(wrong_spec)
    assert result.returncode == 1 and "must be the same preprocessing" in result.stderr
    result = train(tmp_path)  # a folder, but no artifacts
    assert result.returncode == 1 and "holds no onnxkd on-device artifacts" in result.stderr
    for r in (result,):
        assert len(r.stderr.strip().splitlines()) == 1


def test_an_error_in_the_on_device_environment_is_one_line_too(artifacts, weak, tmp_path):
    result = run_cli(
        "ondevice",
        "train",
        artifacts,
        "--cache",
        weak["cache"],
        "--data",
        tmp_path / "moved",
        "-o",
        tmp_path / "run",
        *TRAIN,
        cwd=tmp_path,
        env=ENV,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "moved: no such file or directory" in (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
