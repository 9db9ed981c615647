"""One trial's model, measured the same way for every trial: FP32 and INT8 accuracy on the
run's own validation split (what the sweep chooses on) and on the test split (what it reports),
file sizes and parameter count. Latency is measured later, for all models together.

    MODELS/ID/student.int8.onnx, student.int8.json   the PTQ model and its quantize report
    MODELS/ID/eval.json                              written last: the evaluation is done
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from onnxkd.cache.reader import CacheReader
from onnxkd.distill.data import CachedBatches
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.validation import carve
from onnxkd.files import write_json_atomic
from onnxkd.quantize import evaluate as ort_eval

EVAL = "eval.json"


def evaluate_model(args: dict, log: Callable[[str], None] = print) -> dict:
    """Quantize (unless `args["quantize"]` is false) and score one run's student.

    `args`: `run` (a finished distill or prune run folder), `out` (this model's folder),
    `workdir`, `threads`, `quantize`.
    """
    from onnxkd.quantize.config import QuantizeConfig
    from onnxkd.quantize.ptq import quantize

    run, out = RunFolder(Path(args["run"])), Path(args["out"])
    record = run.record()
    fp32 = run.student_path()
    out.mkdir(parents=True, exist_ok=True)
    models = {"fp32": fp32}
    weight_bits = None
    if args["quantize"]:
        int8 = out / "student.int8.onnx"
        result = quantize(
            QuantizeConfig(
                model=fp32,
                out=int8,
                workdir=Path(args["workdir"]),
                cache=record.cache,
                threads=args["threads"],
                overwrite=True,  # this model's own folder: a file without eval.json is unfinished
            ),
            log=log,
        )
        models["int8"] = int8
        weight_bits = result.report["weight_bits"]
    cache = CacheReader(record.cache)
    val_batches, selected_on = _validation(cache, record.config)
    test_batches = CachedBatches(cache.section("eval"), cache.open_data("eval"))
    sessions = {k: ort_eval.session(p, args["threads"]) for k, p in models.items()}
    val = ort_eval.predictions(sessions, _numpy(val_batches))
    test = ort_eval.predictions(sessions, _numpy(test_batches))
    report = {
        "run": str(run.path),
        "selected_on": selected_on,
        "val_samples": int(len(val["labels"])),
        "test_samples": int(len(test["labels"])),
        "params": onnx_params(fp32),
        "weight_bits": weight_bits,
        "models": {
            name: {
                "path": str(path),
                "bytes": path.stat().st_size,
                "val_accuracy": float((val[name] == val["labels"]).mean()),
                "test_accuracy": float((test[name] == test["labels"]).mean()),
            }
            for name, path in models.items()
        },
    }
    write_json_atomic(out / EVAL, report)
    accs = ", ".join(
        f"{k} val {100 * m['val_accuracy']:.2f}% test {100 * m['test_accuracy']:.2f}%"
        for k, m in report["models"].items()
    )
    log(f"evaluated {run.path.name}: {accs}")
    return report


def _validation(cache: CacheReader, cfg) -> tuple[CachedBatches, str]:
    """The run's held-back samples, unaugmented (as its best epoch was chosen on them)."""
    train = cache.section("train")
    split = carve(train.n, cfg.val_fraction, cfg.seed)
    if split.val is None:  # the run chose on the test split: so must we, and we say so
        return CachedBatches(cache.section("eval"), cache.open_data("eval")), "test"
    return CachedBatches(train, cache.open_data("train"), members=split.val, clean=True), "val"


def _numpy(batches: CachedBatches):
    for b in batches.epoch(0, 256, shuffle=False):
        yield np.asarray(b.x), np.asarray(b.labels)


def onnx_params(path: Path) -> int:
    """Weights in the ONNX file: the elements of its floating-point initializers."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats))
