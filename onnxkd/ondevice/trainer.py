"""On-device training from cached teacher targets with onnxruntime's training API
(on-device environment).

Epoch `e` replays cached view `e mod K`, batch by batch, exactly as `onnxkd distill` does
(`CachedBatches`, which needs no torch). After every epoch the eval section is scored and the
checkpoint (parameters, optimizer state, and the history as checkpoint properties) is replaced
atomically, so a rerun continues after the last finished epoch. At the end the student is
exported for inference with its onnxkd metadata, which `onnxkd quantize` and `onnxkd bench`
read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from onnxkd import __version__
from onnxkd.cache.reader import CacheReader
from onnxkd.distill.data import CachedBatches
from onnxkd.files import write_json_atomic
from onnxkd.metadata import CACHE_KEY, ONDEVICE, VERSION, write_metadata
from onnxkd.ondevice.config import (
    CHECKPOINT,
    RUN_CONFIG,
    TrainConfig,
    check_cache_fits,
    check_resumable,
    read_artifacts,
    run_settings,
)
from onnxkd.ondevice.errors import OnDeviceError
from onnxkd.ondevice.manifest import ArtifactsManifest
from onnxkd.ondevice.session import open_module, run_batch, session_options
from onnxkd.runtime import ort_session

EXPORT = "student.onnx"
REPORT = "report.json"
METRICS = "metrics.jsonl"
EVAL_BATCH = 512
PROGRESS_SECONDS = 15.0
HISTORY_PROPERTY = "onnxkd.history"


def learning_rate(cfg: TrainConfig, lr: float, step: int, total: int) -> float:
    """Cosine decay from `lr` to 0 over the run (no warm-up: the student is already trained)."""
    if cfg.schedule == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def evaluate(module, manifest: ArtifactsManifest, batches: CachedBatches) -> dict:
    """Accuracy, agreement with the teacher and mean loss over the eval section."""
    module.eval()
    hits = agree = 0
    loss_sum = 0.0
    for batch in batches.epoch(0, EVAL_BATCH, shuffle=False):
        loss, logits = run_batch(module, manifest, batch)
        pred = logits.argmax(1)
        hits += int((pred == batch.labels).sum())
        agree += int((pred == batch.teacher["logits"].argmax(1)).sum())
        loss_sum += loss * len(batch.labels)
    module.train()
    n = max(len(batches), 1)
    return {"val_accuracy": hits / n, "val_agreement": agree / n, "val_loss": loss_sum / n}


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train the artifacts' student on the cache, then export it for inference.

    Args:
        cfg: resolved settings (`cfg.cache` given).
        log: receives one line per epoch and notes.

    Returns:
        The report written to `RUN/report.json`: accuracy before and after, per-epoch
        metrics, and the exported model's check.
    """
    from onnxruntime.training.api import CheckpointState

    manifest = read_artifacts(cfg.artifacts)
    cache = CacheReader(cfg.cache)
    check_cache_fits(manifest, cache)
    train_batches = CachedBatches(cache.section("train"), cache.open_data("train", cfg.data))
    eval_batches = CachedBatches(cache.section("eval"), cache.open_data("eval", cfg.data))
    settings = run_settings(manifest, cache.key, cfg)
    lr, run = settings["lr"], cfg.run_dir
    checkpoint = _prepare_run(cfg, settings)
    resumed = checkpoint.exists()
    state, module, optimizer = open_module(
        cfg.artifacts, checkpoint if resumed else cfg.artifacts / CHECKPOINT, cfg.threads
    )
    history = json.loads(state.properties[HISTORY_PROPERTY]) if resumed else {"epochs": []}
    write_json_atomic(
        run / RUN_CONFIG,
        {
            "config": cfg.to_dict(),
            "settings": settings,
            "cache": str(Path(cfg.cache).resolve()),  # where onnxkd quantize looks for data
            "artifacts": str(Path(cfg.artifacts).resolve()),
            "versions": _versions(),
        },
    )
    done = len(history["epochs"])
    if resumed and done >= cfg.epochs:
        log(f"{run} has trained {done} epochs already; exporting it again")
    elif resumed:
        log(f"resuming {run} after epoch {done} of {cfg.epochs}")
    else:
        history["before"] = evaluate(module, manifest, eval_batches)
        log(f"before: val acc {100 * history['before']['val_accuracy']:.2f}%")
    steps_per_epoch = max(1, train_batches.batches_per_epoch(cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    module.train()
    for epoch in range(done, cfg.epochs):
        started = last_line = time.perf_counter()
        losses = []
        for i, batch in enumerate(train_batches.epoch(epoch, cfg.batch_size, seed=cfg.seed)):
            optimizer.set_learning_rate(learning_rate(cfg, lr, epoch * steps_per_epoch + i, total))
            loss, _ = run_batch(module, manifest, batch)
            optimizer.step()
            module.lazy_reset_grad()
            losses.append(loss)
            if time.perf_counter() - last_line > PROGRESS_SECONDS:  # long epochs on slow devices
                last_line = time.perf_counter()
                log(
                    f"epoch {epoch + 1}: step {i + 1}/{steps_per_epoch}  loss {np.mean(losses):.4f}"
                )
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "view": train_batches.view_for_epoch(epoch),
            "train_loss": float(np.mean(losses)),
            "lr": optimizer.get_learning_rate(),
            "epoch_seconds": round(seconds, 3),
            **evaluate(module, manifest, eval_batches),
        }
        history["epochs"].append(row)
        state.properties[HISTORY_PROPERTY] = json.dumps(history)
        tmp = run / (CHECKPOINT + ".tmp")
        CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
        os.replace(tmp, checkpoint)
        _write_metrics(run / METRICS, history["epochs"])
        log(
            f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  val acc "
            f"{100 * row['val_accuracy']:.2f}%  agreement {100 * row['val_agreement']:.2f}%  "
            f"({seconds:.1f} s)"
        )
    export = _export(module, manifest, cache, cfg, run, eval_batches)
    before, after = history["before"], history["epochs"][-1]
    report = {
        "before": before,
        "after": {k: after[k] for k in ("val_accuracy", "val_agreement", "val_loss")},
        "epochs": history["epochs"],
        "export": export,
        "settings": settings,
        "teacher_accuracy": cache.manifest.eval_teacher_accuracy,
    }
    # One image in the eval split, so that noise of a single sample is not called a loss.
    report["worse_than_before"] = after["val_accuracy"] < before["val_accuracy"] - 1 / max(
        len(eval_batches), 1
    )
    write_json_atomic(run / REPORT, report)
    log(
        f"exported {export['onnx']}: onnxruntime accuracy {100 * export['accuracy']:.2f}% "
        f"(before on-device training {100 * before['val_accuracy']:.2f}%)"
    )
    if report["worse_than_before"]:
        log(
            "warning: on-device training lowered the accuracy; the artifacts' own student is "
            "unchanged. Retry with a lower --lr (and --restart)."
        )
    return report


def _prepare_run(cfg: TrainConfig, settings: dict) -> Path:
    """The run's checkpoint path, after clearing the run for --restart or checking that it
    can be resumed."""
    run = cfg.run_dir
    checkpoint = run / CHECKPOINT
    if cfg.restart and run.exists():
        for name in (CHECKPOINT, METRICS, REPORT, EXPORT, RUN_CONFIG):
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, settings)
    if checkpoint.exists() and not (run / RUN_CONFIG).exists():
        checkpoint.unlink()  # no config: the run never finished setting up
    return checkpoint


def _write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, path)


def _export(
    module, manifest: ArtifactsManifest, cache: CacheReader, cfg: TrainConfig, run: Path, batches
):
    """Export for inference with the student's metadata, and check it against the eval model."""

    module.eval()
    tmp = run / (EXPORT + ".tmp")
    module.export_model_for_inferencing(str(tmp), [manifest.output])
    model = onnx.load(str(tmp))
    metadata = {
        **manifest.student.metadata,
        CACHE_KEY: cache.key,  # the data it was last trained on
        ONDEVICE: json.dumps(
            {"artifacts": str(Path(cfg.artifacts).resolve()), "epochs": cfg.epochs}
        ),
        VERSION: __version__,
    }
    write_metadata(model, metadata, replace=True)
    model.producer_name, model.producer_version = "onnxkd", __version__
    # The training graph's domains (com.microsoft, ai.onnx.training, …) stay imported after
    # the export; tools such as mobile converters reject what they do not know, so drop them.
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    session = ort_session(tmp, "cpu", options=session_options(cfg.threads), error=OnDeviceError)
    hits = n = 0
    max_diff = 0.0
    for batch in batches.epoch(0, EVAL_BATCH, shuffle=False):
        ours = session.run(None, {manifest.input: batch.x.astype(np.float32)})[0]
        _, ref = run_batch(module, manifest, batch)
        max_diff = max(max_diff, float(np.abs(ours - ref).max()))
        hits += int((ours.argmax(1) == batch.labels).sum())
        n += len(batch.labels)
    os.replace(tmp, run / EXPORT)
    return {
        "onnx": str(run / EXPORT),
        "accuracy": hits / max(n, 1),
        "max_abs_diff_vs_eval_model": max_diff,
        "ir_version": model.ir_version,
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def _versions() -> dict:
    import platform

    import onnxruntime

    return {
        "onnxkd": __version__,
        "onnxruntime-training": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
