"""Writing onnxruntime training artifacts for a prepared student (on-device environment).

The main environment has already checked the student, brought it to an opset and IR version
that onnxruntime-training 1.19 reads, and chosen the parameters to train; this module stacks
the KD loss block on it and lets onnxruntime build the gradient and optimizer graphs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx

from onnxkd.ondevice.config import (
    CHECKPOINT,
    EVAL_MODEL,
    MAX_IR,
    OPTIMIZER_MODEL,
    TRAINING_MODEL,
)
from onnxkd.ondevice.errors import OnDeviceError

MODELS = (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL)


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to `path`: onnxruntime's graph builders log every transformer
    there from C++, past Python's logging, and a user wants one line per step instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def generate(request: dict, log: Callable[[str], None] = print) -> dict:
    """Write the training, eval and optimizer models and the checkpoint into `request["out"]`.

    Args:
        request: `base` (the prepared student), `out`, `output` (its logits name), `classes`,
            `alpha`, `temperature`, `optimizer`, `weight_decay`, `trainable` and `frozen`
            (parameter names).

    Returns:
        The IR version of each written model and the versions of onnx and onnxruntime.
    """
    import onnxruntime
    from onnxruntime.training import artifacts, onnxblock

    from onnxkd.ondevice.loss_block import KDLoss

    out = Path(request["out"])
    base = onnx.load(request["base"])
    loss = KDLoss(request["alpha"], request["temperature"], request["classes"])
    if request["optimizer"] == "adamw":
        optimizer = onnxblock.optim.AdamW(weight_decay=request["weight_decay"])
    else:
        optimizer = onnxblock.optim.SGD()
    log(
        f"building the training graph: {len(request['trainable'])} parameters to train, "
        f"{len(request['frozen'])} frozen"
    )
    build_log = out / "generate.log"
    try:
        with stderr_to(build_log):
            artifacts.generate_artifacts(
                base,
                requires_grad=request["trainable"],
                frozen_params=request["frozen"] or None,
                loss=loss,
                optimizer=optimizer,
                artifact_directory=out,
                additional_output_names=[request["output"]],
            )
    except Exception as e:
        tail = build_log.read_text(errors="replace").strip().splitlines()[-3:]
        raise OnDeviceError(
            f"onnxruntime could not build training artifacts for this student ({e}); "
            f"its last log lines: {' | '.join(tail) or '(none)'}"
        ) from e
    ir = {name: _cap_ir(out / name) for name in MODELS}
    _smoke_test(out, request.get("threads"))
    build_log.unlink(missing_ok=True)
    return {"ir_versions": ir, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _cap_ir(path: Path) -> int:
    """Rewrite a model whose IR version is newer than onnxruntime-training reads.

    The pinned onnx writes IR 10 already; this keeps artifacts loadable should the
    environment get a newer onnx (which writes IR 11+ with the same opsets).
    """
    model = onnx.load(str(path))
    if model.ir_version > MAX_IR:
        model.ir_version = MAX_IR
        onnx.save(model, str(path))
    return model.ir_version


def _smoke_test(out: Path, threads: int | None) -> None:
    """Load the artifacts the way training will, so that a problem shows now, not on a device."""
    from onnxkd.ondevice.session import open_module

    try:
        open_module(out, out / CHECKPOINT, threads)
    except Exception as e:
        raise OnDeviceError(f"onnxruntime-training cannot load the artifacts it wrote: {e}") from e
