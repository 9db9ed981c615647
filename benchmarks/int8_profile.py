"""Where INT8 time goes (the README's INT8 section): onnxruntime's profile of a student's FP32 and
INT8 models at batch 1, one thread, kernel time per inference by kind of node, with
depthwise convolutions apart from the others.

    .venv/bin/python benchmarks/int8_profile.py [--student mobilenetv2_w050] [--runs 200]

The student is exported as distill does (untrained: kernel time does not depend on the
weights' values) and quantized as `onnxkd quantize` does (MinMax on 512 real CIFAR images, U8S8
QDQ). A convolution is depthwise when its group count equals its channels: in the FP32 profile
its weight is (C, 1, k, k); in the INT8 one, the fused QLinearConv keeps the QDQ Conv's name,
whose group the QDQ model holds. Results: benchmarks/results/int8_profile.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from students import export_and_quantize

from onnxkd.bench.host import host_info

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "int8_profile.json"
CONVS = ("Conv", "QLinearConv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="mobilenetv2_w050")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--work", type=Path, default=ROOT / "onnxkd-out" / "bench-int8-profile")
    args = parser.parse_args()
    fp32, int8 = export_and_quantize(args.student, args.work, args.work / "onnxkd-out")
    profiles = {name: profile(path, args.runs) for name, path in (("fp32", fp32), ("int8", int8))}
    speedup = {
        kind: round(profiles["fp32"][kind]["us"] / profiles["int8"][kind]["us"], 3)
        for kind in ("depthwise conv", "other conv")
    }
    total = {name: round(sum(r["us"] for r in p.values()), 1) for name, p in profiles.items()}
    results = {
        "host": host_info(1, packages=("torch", "onnxruntime")),
        "student": args.student,
        "runs": args.runs,
        "kernel_us_per_inference": profiles,
        "total_kernel_us": total,
        "int8_speedup": {**speedup, "all kernels": round(total["fp32"] / total["int8"], 3)},
        "command": " ".join(sys.argv),
    }
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["int8_speedup"]), json.dumps(total))
    print(f"written to {OUT}")


def profile(path: Path, runs: int) -> dict[str, dict]:
    """Kernel microseconds per inference and node count per inference, by kind of node."""
    groups = {
        n.name: next((a.i for a in n.attribute if a.name == "group"), 1)
        for n in onnx.load(str(path)).graph.node
        if n.op_type == "Conv"
    }
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        for _ in range(10):  # warm-up, profiled too: dropped below by counting from the end
            session.run(None, {"input": x})
        for _ in range(runs):
            session.run(None, {"input": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(kernels) // (runs + 10)
    totals: dict[str, list[float]] = {}
    for event in kernels[-runs * per_run :]:
        kind = _kind(event, groups)
        totals.setdefault(kind, [0.0, 0])
        totals[kind][0] += event["dur"]
        totals[kind][1] += 1
    return {k: {"us": round(us / runs, 1), "nodes": n // runs} for k, (us, n) in totals.items()}


def _kind(event: dict, groups: dict[str, int]) -> str:
    op = event["args"]["op_name"]
    if op not in CONVS:
        return op
    if op == "Conv":
        weight = next(iter(event["args"]["input_type_shape"][1].values()))
        depthwise = weight[1] == 1 and weight[0] > 1
    else:
        name = re.sub(r"_token_\d+$", "", event["name"].removesuffix("_kernel_time"))
        if name not in groups:
            raise SystemExit(f"QLinearConv {name!r} has no Conv of that name in the QDQ model")
        depthwise = groups[name] > 1
    return "depthwise conv" if depthwise else "other conv"


if __name__ == "__main__":
    main()
