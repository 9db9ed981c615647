"""INT8 on the CIFAR-10-subset student: FP32 vs PTQ (each calibration method, and S8S8 for the
x86 speed claim) vs accuracy-aware PTQ vs QAT with KD.

    .venv/bin/python benchmarks/quantize_int8.py --run RUN_DIR [--qat-epochs 5]

RUN_DIR is a finished `onnxkd distill` run of mobilenetv2_w050 on the CIFAR subset (for example
one of benchmarks/distill_accuracy.py's runs). For every model: onnxruntime accuracy on the 846
test images, top-1 agreement with FP32, batch-1 and batch-32 median latency (onnxruntime CPU,
interleaved rounds in one process, ratio to FP32 from the same rounds; with 1 and 2
intra-op threads) and size on disk.
Goals: INT8 drop <= 0.5 points with accuracy-aware PTQ or QAT+KD; batch-1 INT8 >= 2x faster than
FP32; size <= 0.3x. Results go to benchmarks/results/quantize_int8.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxkd.bench.host import host_info
from onnxkd.bench.timing import interleaved_p50
from onnxkd.cache.for_model import resolve_model_data
from onnxkd.distill.run_folder import RunFolder
from onnxkd.metadata import read_metadata
from onnxkd.quantize import evaluate
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize

ROOT = Path(__file__).resolve().parents[1]

PTQ_VARIANTS = {
    "ptq_minmax": {"calibration": "minmax"},
    "ptq_entropy": {"calibration": "entropy"},
    "ptq_percentile": {"calibration": "percentile"},
    "ptq_minmax_s8s8": {"calibration": "minmax", "target": "arm"},
    "ptq_aware": {"calibration": "minmax", "max_drop": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished distill run folder")
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument(
        "--threads", default="1,2", help="intra-op thread counts to time (comma-separated)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / "onnxkd-out" / "bench-quantize")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "quantize_int8.json",
        help="results file [default: benchmarks/results/quantize_int8.json]",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    threads = [int(t) for t in args.threads.split(",")]
    args.threads = max(threads)  # quantization and QAT run with the most threads
    student = args.run / "student.onnx"
    args.work.mkdir(parents=True, exist_ok=True)

    models = {"fp32": student}
    reports = {}
    for name, options in PTQ_VARIANTS.items():
        cfg = QuantizeConfig(
            model=student,
            out=args.work / f"{name}.onnx",
            workdir=args.work / "ws",
            threads=args.threads,
            # --work is this benchmark's scratch: a rerun recomputes its PTQ models (seconds
            # each) rather than refusing them; QAT, the long part, resumes instead
            overwrite=True,
            **options,
        )
        result = quantize(cfg, log=lambda s: None)
        models[name], reports[name] = result.model, result.report
        print(f"{name}: {100 * result.report['int8_accuracy']:.2f}%", flush=True)
    models["qat_kd"], reports["qat_kd"] = qat(args)

    # the cache the run recorded: a run's cache need not be in this benchmark's workspace
    hints = RunFolder.cache_hints(student)
    data = resolve_model_data(student, read_metadata(student), args.work / "ws", cache_hints=hints)
    sessions = {name: evaluate.session(path, args.threads) for name, path in models.items()}
    preds = evaluate.predictions(sessions, data.batches(data.eval, 256))
    x = next(data.batches(data.eval, 32))[0]
    latency = {}
    for t in threads:
        timed = {name: evaluate.session(path, t) for name, path in models.items()}
        # every model is the same student, with the same input
        feed = timed["fp32"].get_inputs()[0].name
        for b in (1, 32):
            latency[f"batch{b}_t{t}"] = interleaved_p50(
                timed, {feed: x[:b]}, rounds=args.rounds, runs=40 if b == 1 else 10
            )

    rows = {}
    labels = preds["labels"]
    fp32_acc = (preds["fp32"] == labels).mean()
    for name, path in models.items():
        acc = (preds[name] == labels).mean()
        rows[name] = {
            "accuracy": round(100 * float(acc), 2),
            "drop_points": round(100 * float(fp32_acc - acc), 2),
            "agreement_with_fp32": round(100 * float((preds[name] == preds["fp32"]).mean()), 2),
            "size_bytes": path.stat().st_size,
            "size_ratio": round(path.stat().st_size / student.stat().st_size, 3),
            "p50_ms": {k: round(v[name], 4) for k, v in latency.items()},
            "speedup": {k: round(v["fp32"] / v[name], 2) for k, v in latency.items()},
            "excluded_nodes": len(reports.get(name, {}).get("excluded_nodes", [])),
        }
    results = {
        "student_run": str(args.run),
        "test_samples": int(len(labels)),
        "threads": threads,
        "host": host_info(args.threads, packages=("torch",)),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(sys.argv),
    }
    out = args.out
    out.write_text(json.dumps(results, indent=1) + "\n")
    keys = list(latency)
    print(
        f"\n{'model':16} {'acc %':>7} {'drop':>6} {'agree %':>8} {'size':>6}  "
        + "  ".join(f"{k + ' ms (x)':>20}" for k in keys)
    )
    for name, r in rows.items():
        timings = "  ".join(f"{r['p50_ms'][k]:>12.3f} ({r['speedup'][k]:4.2f})" for k in keys)
        print(
            f"{name:16} {r['accuracy']:7.2f} {r['drop_points']:6.2f} "
            f"{r['agreement_with_fp32']:8.2f} {r['size_ratio']:6.3f}  {timings}"
        )
    print(f"written to {out} ({results['seconds'] / 60:.1f} min)")


def qat(args) -> tuple[Path, dict]:
    """QAT with KD from the float run, with the same cached teacher targets."""
    from onnxkd.distill.config import DistillConfig
    from onnxkd.distill.trainer import distill

    out = args.work / "qat"
    cfg = DistillConfig(
        qat=True,
        init=args.run,
        epochs=args.qat_epochs,
        workdir=args.work / "ws",
        out=out,
        threads=args.threads,
        resume=RunFolder(out).last_checkpoint.exists(),
    )
    result = distill(cfg, log=print)
    return out / "student.int8.onnx", result.export or {}


if __name__ == "__main__":
    main()
