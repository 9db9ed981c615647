"""QAT parity: `distill --qat` on torch's core fake-quantize ops against the previous release's
QAT on torch.ao.quantization, from the same float student on the CIFAR-10 subset.

    .venv/bin/python benchmarks/qat_parity.py --prev /tmp/prev-release [--seeds 0,1]

The previous release (a checkout given by --prev, run with PYTHONPATH pointing at it) builds one
cache of the zoo's ResNet-20 teacher (the cifar10-subset recipe's 6 strong views) and one float
mobilenetv2_w050 run (the recipe's 6 epochs, bf16, channels-last). Then, for each seed, QAT runs
for the same epochs (3 by default, QAT's own default is 5: 3 keep the benchmark within about 40
minutes on one core) from that float run twice, in subprocesses with one thread: (a) with the
previous release, (b) with this checkout. Reported per seed: each INT8 model's onnxruntime
accuracy on the 846 eval images, their difference, how often their top-1 classes agree and the
largest difference between their logits, the op counts of each INT8 graph (as written and as
onnxruntime runs it), each run's wall time, and the torch.ao modules each QAT process loaded
beyond those `import torch` loads itself. Goal: the INT8 accuracies within 0.2 points, with no
torch.ao import by (b). Finished runs are reused (delete --work to start over).
Results go to benchmarks/results/qat_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from onnxkd.bench.host import host_info
from onnxkd.cache.for_model import resolve_model_data
from onnxkd.distill.qdq import count_int8_ops, optimized_op_types
from onnxkd.metadata import read_metadata
from onnxkd.runtime import ort_session

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "cifar10_resnet.onnx"
DATA = ROOT / "data" / "cifar10" / "cifar10-subset.npz"
STUDENT = "mobilenetv2_w050"
GOAL_POINTS = 0.2

# Runs the onnxkd CLI of whichever checkout PYTHONPATH names, then records the torch.ao modules
# it loaded beyond a bare `import torch` (which loads some itself).
CLI = """
import json, runpy, sys, time
import torch
bare = {m for m in sys.modules if m.startswith("torch.ao")}
record, sys.argv = sys.argv[1], ["onnxkd", *sys.argv[2:]]
started, code = time.perf_counter(), 0
try:
    runpy.run_module("onnxkd", run_name="__main__")
except SystemExit as e:
    code = e.code or 0
loaded = sorted(m for m in sys.modules if m.startswith("torch.ao") and m not in bare)
import onnxkd
info = {"seconds": time.perf_counter() - started, "onnxkd": onnxkd.__file__,
        "torch_ao_modules_loaded": loaded}
open(record, "w").write(json.dumps(info))
sys.exit(code)
"""


def onnxkd(checkout: Path, record: Path, *args: str) -> dict:
    """Run `onnxkd ARGS` from `checkout` in a one-thread subprocess; its record."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    # Not from ROOT: the working directory comes first on sys.path.
    command = [sys.executable, "-c", CLI, str(record), *args]
    subprocess.run(command, env=env, cwd=record.parent, check=True)
    info = json.loads(record.read_text())
    if not info["onnxkd"].startswith(str(checkout)):
        raise RuntimeError(f"{info['onnxkd']} ran instead of the checkout {checkout}")
    return info


def logits(path: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    session = ort_session(path, "cpu", 1)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0] for x, _ in batches])


def graph_ops(path: Path) -> dict:
    written = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {
        "written": dict(sorted(written.items())),
        "onnxruntime": dict(sorted(optimized_op_types(path).items())),
        "int8_kernels": count_int8_ops(path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prev", type=Path, required=True, help="the previous release's checkout")
    parser.add_argument("--seeds", default="0", help="QAT seeds (comma-separated)")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--float-epochs", type=int, default=6)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "onnxkd-out" / "bench-qat-parity")
    args = parser.parse_args()
    started = time.perf_counter()
    prev, work = args.prev.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # A workspace per release: their state.json need not read alike.
    workdirs = {"previous": work / "ws-previous", "current": work / "ws-current"}
    ws = ["--workdir", str(workdirs["previous"])]

    cache, float_run = work / "cache", work / "float"
    if not (cache / "manifest.json").exists():
        onnxkd(
            prev, work / "cache.json", "cache-teacher", str(TEACHER), "--data", str(DATA),
            "--views", str(args.views), "--augment", "strong", "--threads", "1",
            "--out", str(cache), *ws,
        )  # fmt: skip
    if not (float_run / "export.json").exists():
        onnxkd(
            prev, work / "float.json", "distill", "--student", STUDENT, "--cache", str(cache),
            "--epochs", str(args.float_epochs), "--bf16", "--channels-last", "--threads", "1",
            "--out", str(float_run), *ws,
        )  # fmt: skip
    setup = {k: json.loads((work / f"{k}.json").read_text())["seconds"] for k in ("cache", "float")}

    student = float_run / "student.onnx"
    data = resolve_model_data(student, read_metadata(student), workdirs["current"], cache=cache)
    batches = list(data.batches(data.eval, 256))
    labels = np.concatenate([y for _, y in batches])

    def accuracy(z: np.ndarray) -> float:
        return round(100 * float((z.argmax(1) == labels).mean()), 2)

    seeds = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        runs = {}
        for kind, checkout in (("previous", prev), ("current", ROOT)):
            run = work / f"qat-{kind}-seed{seed}"
            record = work / f"qat-{kind}-seed{seed}.json"
            if not (run / "export.json").exists():
                onnxkd(
                    checkout, record, "distill", "--qat", "--init", str(float_run),
                    "--epochs", str(args.qat_epochs), "--seed", str(seed), "--threads", "1",
                    "--out", str(run), "--workdir", str(workdirs[kind]),
                )  # fmt: skip
            info = json.loads(record.read_text())
            report = json.loads((run / "export.json").read_text())
            path = Path(report["onnx"])
            z = logits(path, batches)
            runs[kind] = {
                "accuracy": accuracy(z),
                "export_report": {
                    k: report[k]
                    for k in ("onnxruntime_accuracy", "torch_accuracy", "top1_agreement")
                },
                "best_epoch": report["best_epoch"],
                "ops": graph_ops(path),
                "size_bytes": path.stat().st_size,
                "seconds": round(info["seconds"], 1),
                "torch_ao_modules_loaded": info["torch_ao_modules_loaded"],
                "logits": z,
            }
            print(f"seed {seed} {kind}: {runs[kind]['accuracy']:.2f}%", flush=True)
        a, b = runs["previous"].pop("logits"), runs["current"].pop("logits")
        difference = round(runs["current"]["accuracy"] - runs["previous"]["accuracy"], 2)
        seeds[str(seed)] = {
            **runs,
            "difference_points": difference,
            "top1_agreement_percent": round(100 * float((a.argmax(1) == b.argmax(1)).mean()), 2),
            "max_abs_logit_difference": float(np.abs(a - b).max()),
            "same_graph_ops": runs["previous"]["ops"] == runs["current"]["ops"],
        }

    met = all(
        abs(s["difference_points"]) <= GOAL_POINTS and not s["current"]["torch_ao_modules_loaded"]
        for s in seeds.values()
    )
    float_accuracy = accuracy(logits(student, batches))
    results = {
        "goal": f"current QAT's INT8 accuracy within {GOAL_POINTS} points of the previous "
        "release's, with no torch.ao import",
        "met": met,
        "previous_release": str(prev),
        "settings": {
            "student": STUDENT,
            "views": args.views,
            "augment": "strong",
            "float_epochs": args.float_epochs,
            "float_training": "bf16, channels-last (the cifar10-subset recipe)",
            "qat_epochs": args.qat_epochs,
            "threads": 1,
            "eval_samples": int(len(labels)),
        },
        "float_accuracy": float_accuracy,
        "seeds": seeds,
        "setup_seconds": {k: round(v, 1) for k, v in setup.items()},
        "host": host_info(1, packages=("torch",)),
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(sys.argv),
    }
    out = ROOT / "benchmarks" / "results" / "qat_parity.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nfloat {float_accuracy:.2f}%")
    for seed, s in seeds.items():
        p, c = s["previous"], s["current"]
        print(
            f"seed {seed}: previous {p['accuracy']:.2f}% ({p['seconds']:.0f} s), current "
            f"{c['accuracy']:.2f}% ({c['seconds']:.0f} s), difference {s['difference_points']:+.2f}"
            f", top-1 agreement {s['top1_agreement_percent']:.2f}%, same ops {s['same_graph_ops']}"
        )
    print(f"goal {'met' if met else 'MISSED'}; written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
