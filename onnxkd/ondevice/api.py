"""The on-device stage's entry functions, called by the CLI in the main environment.

Each checks what it can here (the student, the artifacts folder, the cache), then runs the
work that needs onnxruntime-training in the on-device environment through the worker.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from onnxkd import __version__
from onnxkd.data.spec import InputSpec
from onnxkd.files import sha256_file, write_json_atomic
from onnxkd.metadata import STUDENT
from onnxkd.ondevice.bridge import find_python, run_worker
from onnxkd.ondevice.config import (
    BASE_MODEL,
    MANIFEST,
    REQUIRED,
    ArtifactsConfig,
    TrainConfig,
    check_cache_fits,
    check_resumable,
    read_artifacts,
    run_settings,
)
from onnxkd.ondevice.errors import OnDeviceError
from onnxkd.ondevice.manifest import ArtifactsManifest, ParameterRow, StudentInfo
from onnxkd.runtime import ort_session
from onnxkd.workspace import Workspace


def make_artifacts(
    cfg: ArtifactsConfig, log: Callable[[str], None] = print, env: Path | None = None
) -> tuple[Path, ArtifactsManifest]:
    """Write onnxruntime training artifacts for a student with the KD loss block on top.

    Args:
        cfg: the settings (see `ArtifactsConfig`).
        log: receives progress lines.
        env: the on-device environment (see `bridge.find_python`).

    Returns:
        `(folder, manifest)`.

    Example:
        >>> make_artifacts(ArtifactsConfig(Path("run/student.onnx")))  # doctest: +SKIP
    """
    import onnx

    from onnxkd.ondevice.student import prepare

    student = Path(cfg.student or Workspace(cfg.workdir).latest("student"))
    if not student.is_file():
        raise OnDeviceError(f"student {student} does not exist")
    out = Path(cfg.out or student.parent / "ondevice")
    if (out / MANIFEST).exists() and not cfg.overwrite:
        raise OnDeviceError(f"{out} already holds artifacts; pass --overwrite to replace them")
    if out.exists() and not out.is_dir():
        raise OnDeviceError(f"{out} is a file, not a folder for artifacts")
    model, info = prepare(student, cfg.freeze_prefix, cfg.freeze)
    for note in info["converted"]:
        log(f"student converted for onnxruntime-training 1.19: {note}")
    python = find_python(env)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        onnx.save(model, str(tmp / BASE_MODEL))
        built = run_worker("artifacts", _request(cfg, info, tmp), python, log)
        manifest = _manifest(cfg, student, info, built, tmp)
        _install(tmp, out, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_train, n_frozen = len(info["trainable"]), len(info["frozen"])
    log(f"artifacts for {student.name}: {n_train} parameters trained, {n_frozen} frozen")
    return out, manifest


def _request(cfg: ArtifactsConfig, info: dict, tmp: Path) -> dict:
    return {
        "base": str((tmp / BASE_MODEL).resolve()),
        "out": str(tmp.resolve()),
        "output": info["output"],
        "classes": info["classes"],
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "optimizer": cfg.optimizer,
        "weight_decay": cfg.weight_decay,
        "trainable": [p["name"] for p in info["trainable"]],
        "frozen": [p["name"] for p in info["frozen"]],
    }


def _manifest(
    cfg: ArtifactsConfig, student: Path, info: dict, built: dict, tmp: Path
) -> ArtifactsManifest:
    import onnx

    spec = info["input_spec"]
    return ArtifactsManifest(
        id=_artifacts_id(tmp),
        student=StudentInfo(
            path=str(student.resolve()),
            sha256=sha256_file(student),
            name=info["metadata"].get(STUDENT),
            input_spec=InputSpec.from_dict(spec) if spec is not None else None,
            input_shape=tuple(info["input_shape"]),
            metadata=info["metadata"],
        ),
        input=info["input"],
        output=info["output"],
        num_classes=info["classes"],
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        trainable=tuple(ParameterRow.from_dict(p) for p in info["trainable"]),
        frozen=tuple(ParameterRow.from_dict(p) for p in info["frozen"]),
        opset=info["opset"],
        ir_version=info["ir_version"],
        converted=tuple(info["converted"]),
        artifact_ir_versions=built["ir_versions"],
        config=cfg.to_dict(),
        versions={
            "onnxkd": __version__,
            "onnxruntime-training": built["onnxruntime"],
            "onnx (artifacts)": built["onnx"],
            "onnx (student prepared)": onnx.__version__,
        },
    )


def _artifacts_id(folder: Path) -> str:
    """Names these artifacts (graph and initial weights), so a run can tell it resumes them."""
    digest = hashlib.sha256()
    for name in REQUIRED:
        digest.update(sha256_file(folder / name).encode())
    return digest.hexdigest()[:16]


def _install(tmp: Path, out: Path, manifest: ArtifactsManifest) -> None:
    """Move the new artifacts into `out`, the manifest last, keeping anything else there
    (a training run of the previous artifacts, which will then refuse to resume)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on `out` reads as incomplete
    for name in (*REQUIRED, BASE_MODEL):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    write_json_atomic(out / MANIFEST, manifest.to_dict())


def train_on_device(
    cfg: TrainConfig, log: Callable[[str], None] = print, env: Path | None = None
) -> dict:
    """Train the artifacts' student from a cache with onnxruntime-training and export it.

    The exported `RUN/student.onnx` is checked here with this environment's onnxruntime and
    recorded as the workspace's latest student, so that `onnxkd quantize` and
    `onnxkd bench` find it with no options.

    Returns:
        The run's report (also in `RUN/report.json`).

    Example:
        >>> cfg = TrainConfig(Path("run/ondevice"), cache=Path("cache"))
        >>> train_on_device(cfg)  # doctest: +SKIP
    """
    from onnxkd.cache.reader import CacheReader

    manifest = read_artifacts(cfg.artifacts)
    cache = Path(cfg.cache or Workspace(cfg.workdir).latest("cache"))
    reader = CacheReader(cache)
    check_cache_fits(manifest, reader)
    check_resumable(cfg, run_settings(manifest, reader.key, cfg))
    python = find_python(env)
    resolved = replace(
        cfg,
        artifacts=cfg.artifacts.resolve(),
        cache=cache.resolve(),
        out=cfg.run_dir.resolve(),
    )
    report = run_worker("train", {"config": resolved.to_dict()}, python, log)
    exported = Path(report["export"]["onnx"])
    report["export"]["main_onnxruntime"] = _check_here(exported, manifest, cfg.threads)
    write_json_atomic(resolved.run_dir / "report.json", report)
    Workspace(cfg.workdir).record(student=exported)
    return report


def _check_here(path: Path, manifest: ArtifactsManifest, threads: int | None) -> str:
    """Run the exported model once with this environment's onnxruntime; its version."""
    import numpy as np
    import onnxruntime

    shape = [d if isinstance(d, int) else 2 for d in manifest.student.input_shape]
    session = ort_session(path, "cpu", threads, error=OnDeviceError)
    (logits,) = session.run(None, {manifest.input: np.zeros(shape, np.float32)})
    if logits.shape != (shape[0], manifest.num_classes):
        raise OnDeviceError(f"the exported {path} gives logits of shape {logits.shape}")
    return onnxruntime.__version__
