"""Opening artifacts with onnxruntime's training API, and running batches through them
(on-device environment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxkd import runtime
from onnxkd.ondevice.config import (
    EVAL_MODEL,
    LABELS_INPUT,
    OPTIMIZER_MODEL,
    TEACHER_INPUT,
    TRAINING_MODEL,
)
from onnxkd.ondevice.manifest import ArtifactsManifest


def quiet() -> None:
    """Warnings and errors only from onnxruntime's C++ logger (it logs every pass at info)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def session_options(threads: int | None):
    options = runtime.session_options(threads)
    if threads:
        options.inter_op_num_threads = 1
    return options


def open_module(artifacts: Path, checkpoint: Path, threads: int | None = None):
    """`(state, module, optimizer)` for the artifacts in `artifacts`, starting from `checkpoint`."""
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    state = CheckpointState.load_checkpoint(str(checkpoint))
    module = Module(
        str(artifacts / TRAINING_MODEL),
        state,
        str(artifacts / EVAL_MODEL),
        session_options=session_options(threads),
    )
    optimizer = Optimizer(str(artifacts / OPTIMIZER_MODEL), module)
    return state, module, optimizer


def run_batch(module, manifest: ArtifactsManifest, batch) -> tuple[float, np.ndarray]:
    """The loss and logits of one `Batch` (forward only in eval mode; in train mode the
    gradients are also accumulated, for the optimizer's next step)."""
    feeds = {
        manifest.input: np.ascontiguousarray(batch.x, dtype=np.float32),
        LABELS_INPUT: np.ascontiguousarray(batch.labels, dtype=np.int64),
        TEACHER_INPUT: np.ascontiguousarray(batch.teacher["logits"], dtype=np.float32),
    }
    loss, logits = module(*(feeds[name] for name in module.input_names()))
    return float(loss), logits
