"""INT8 speed (issue 17): batch-1 latency of FP32 and INT8 for every student in the registry,
at CIFAR's 3x32x32, on this CPU; which reach the 2x INT8 speed-up.

    .venv/bin/python benchmarks/int8_speed.py [--threads 1] [--rounds 5] [--work DIR]

Each student is exported as `onnxkd distill` exports it (untrained: latency does not depend on
the weights' values), quantized as `onnxkd quantize` does (static, QDQ, U8S8 per channel,
MinMax on 512 real CIFAR-subset images), and every model is timed in the same interleaved
rounds (onnxruntime, batch 1, median). Flat-vector students (mlp*) are left out: they take
no image. Results go to benchmarks/results/int8_speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from distill_accuracy import SUITES

from onnxkd.bench.host import host_info
from onnxkd.bench.timing import interleaved_p50
from onnxkd.data.spec import InputSpec
from onnxkd.distill.export import export_student
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize
from onnxkd.runtime import ort_session
from onnxkd.students import create_student, student_names

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "int8_speed.json"
GOAL = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxkd-int8-speed"))
    parser.add_argument("--students", help="comma-separated [default: every image student]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    spec = InputSpec(layout="NCHW", size=(32, 32), channels=3)
    data = SUITES["cifar"]["data"]
    models, quant = {}, {}
    names = args.students.split(",") if args.students else student_names()
    for name in names:
        if name.startswith("mlp"):
            continue
        fp32 = args.work / name / "student.onnx"
        fp32.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        export_student(create_student(name, 10, 3, 32).eval(), spec, fp32, name)
        int8 = fp32.with_name("student.int8.onnx")
        report = quantize(
            QuantizeConfig(
                model=fp32,
                out=int8,
                data=data,
                workdir=args.work / "onnxkd-out",
                threads=args.threads,
                eval_samples=256,
                overwrite=True,
            ),
            log=print,
        ).report
        models[(name, "fp32")], models[(name, "int8")] = fp32, int8
        quant[name] = {"weight_bits": report["weight_bits"], "int8_bytes": report["int8_bytes"]}
    sessions = {key: ort_session(path, "cpu", args.threads) for key, path in models.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    p50 = interleaved_p50(sessions, {"input": x}, rounds=args.rounds, runs=50)
    rows = []
    for name in quant:
        fp32_ms, int8_ms = p50[(name, "fp32")], p50[(name, "int8")]
        params = sum(p.numel() for p in create_student(name, 10, 3, 32).parameters())
        rows.append(
            {
                "student": name,
                "params": params,
                "fp32_ms": round(fp32_ms, 4),
                "int8_ms": round(int8_ms, 4),
                "speedup": round(fp32_ms / int8_ms, 3),
                "reaches_2x": fp32_ms / int8_ms >= GOAL,
                "fp32_mb": round(models[(name, "fp32")].stat().st_size / 1e6, 3),
                "int8_mb": round(quant[name]["int8_bytes"] / 1e6, 3),
                "weight_bits": quant[name]["weight_bits"],
            }
        )
    rows.sort(key=lambda r: -r["speedup"])
    results = {
        "goal_speedup": GOAL,
        "reaching_goal": [r["student"] for r in rows if r["reaches_2x"]],
        "rows": rows,
        "rounds": args.rounds,
        "seconds": round(time.perf_counter() - started, 1),
        "host": host_info(args.threads),
    }
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'student':20} {'params':>9} {'fp32 ms':>8} {'int8 ms':>8} {'speed-up':>8}")
    for r in rows:
        print(
            f"{r['student']:20} {r['params']:>9,} {r['fp32_ms']:>8.3f} {r['int8_ms']:>8.3f} "
            f"{r['speedup']:>7.2f}x"
        )


if __name__ == "__main__":
    main()
