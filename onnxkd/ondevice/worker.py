"""The on-device environment's entry point: `python -m onnxkd.ondevice.worker COMMAND REQ RES`.

The main environment (`onnxkd.ondevice.bridge`) writes the request as JSON, streams this
process's stderr (one line per step) to the user, and reads the result JSON. A user error is
returned as `{"ok": false, "error": ...}` with exit code 1, so the main side can print it as one
line; anything else is a bug and keeps its traceback on stderr.

Commands:
    artifacts: build the training artifacts for a prepared student (`generate.generate`).
    train: train from a cache and export for inference (`trainer.train`).
    probe: one cached batch through the artifacts, its loss, logits and gradients saved to an
        `.npz`, for checking the loss block against PyTorch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from onnxkd.errors import OnnxkdError
from onnxkd.ondevice.errors import EnvironmentMissing

SETUP = "bash .ci/setup-ondevice"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _artifacts(request: dict) -> dict:
    from onnxkd.ondevice.generate import generate

    return generate(request, log)


def _train(request: dict) -> dict:
    from onnxkd.ondevice.config import TrainConfig
    from onnxkd.ondevice.trainer import train

    return train(TrainConfig.from_dict(request["config"]), log)


def _probe(request: dict) -> dict:
    from onnxkd.cache.reader import CacheReader
    from onnxkd.distill.data import CachedBatches
    from onnxkd.ondevice.config import CHECKPOINT, check_cache_fits, read_artifacts
    from onnxkd.ondevice.session import open_module, run_batch

    artifacts = Path(request["artifacts"])
    manifest = read_artifacts(artifacts)
    cache = CacheReader(request["cache"])
    check_cache_fits(manifest, cache)
    section = request.get("section", "train")
    batches = CachedBatches(cache.section(section), cache.open_data(section))
    batch = batches.load(np.asarray(request["indices"]), request.get("view", 0))
    checkpoint = Path(request.get("checkpoint") or artifacts / CHECKPOINT)
    state, module, _ = open_module(artifacts, checkpoint, request.get("threads"))
    module.eval()
    eval_loss, eval_logits = run_batch(module, manifest, batch)
    module.train()
    module.lazy_reset_grad()
    train_loss, train_logits = run_batch(module, manifest, batch)
    arrays = {
        "x": batch.x,
        "labels": batch.labels,
        "teacher_scores": batch.teacher["logits"],
        "eval_loss": np.float32(eval_loss),
        "eval_logits": eval_logits,
        "train_loss": np.float32(train_loss),
        "train_logits": train_logits,
    }
    for row in manifest.trainable:
        arrays[f"grad:{row.name}"] = state.parameters[row.name].grad
    for row in manifest.parameters:
        arrays[f"param:{row.name}"] = state.parameters[row.name].data
    np.savez(request["out"], **arrays)
    return {"npz": request["out"]}


COMMANDS = {"artifacts": _artifacts, "train": _train, "probe": _probe}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in COMMANDS:
        log(f"usage: python -m onnxkd.ondevice.worker {{{','.join(COMMANDS)}}} REQUEST RESULT")
        return 2
    command, request_path, result_path = argv
    request = json.loads(Path(request_path).read_text())
    try:
        try:
            import onnxruntime.training.api  # noqa: F401  (needs torch, as the package says)
        except ImportError as e:
            raise EnvironmentMissing(
                f"{sys.executable} has no working onnxruntime-training ({e}); rebuild its "
                f"environment with `{SETUP}`"
            ) from e
        from onnxkd.ondevice.session import quiet

        quiet()
        result = {"ok": True, "result": COMMANDS[command](request)}
        code = 0
    except OnnxkdError as e:
        result = {"ok": False, "error": str(e), "type": type(e).__name__}
        code = 1
    except KeyboardInterrupt:
        return 130
    Path(result_path).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
