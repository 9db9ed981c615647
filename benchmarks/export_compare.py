"""The torch.export-based ONNX exporter (dynamo) against the legacy TorchScript one, on every
registered student: parity with torch, onnxruntime latency, graph size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_compare.py [--rounds 5] [--runs 30]

Students are built untrained (seed 0) with BatchNorm statistics from 512 real training samples,
so their activations look like a trained net's: image students at 32x32x3 on the CIFAR-10
subset (data), flat students on scikit-learn's digits (64 features). Both exports go
through `export_student` at the same opset. Parity: max |onnxruntime - torch| and top-1
agreement over the whole test split. Latency: onnxruntime CPU, one intra-op thread, batch 1 and
64, median of `rounds` x `runs` timed runs, the two exporters interleaved in one process so a
noisy neighbour slows both alike. Results go to benchmarks/results/export_compare.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
from sklearn.datasets import load_digits
from torch import nn

from onnxkd.bench.host import host_info
from onnxkd.bench.timing import interleaved_p50
from onnxkd.data.spec import InputSpec
from onnxkd.distill.export import OPSET, export_student
from onnxkd.files import write_json_atomic
from onnxkd.runtime import ort_session
from onnxkd.students import create_student, student_names

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "data" / "cifar10" / "cifar10-subset.npz"
RESULTS = ROOT / "benchmarks" / "results" / "export_compare.json"
EXPORTERS = ("dynamo", "legacy")
BATCHES = (1, 64)
IMAGE_SPEC = InputSpec(
    layout="NCHW",
    size=(32, 32),
    channels=3,
    scale=1 / 255,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
FLAT_SPEC = InputSpec(layout="flat", channels=64, scale=1 / 16, mean=(0.5,), std=(0.5,))


def data() -> dict[str, tuple[InputSpec, np.ndarray, np.ndarray]]:
    """(spec, training inputs, test inputs) for image and flat students."""
    cifar = np.load(CIFAR)
    digits = load_digits().data.astype(np.float32)
    return {
        "image": (
            IMAGE_SPEC,
            IMAGE_SPEC.apply(cifar["x_train"][:512]),
            IMAGE_SPEC.apply(cifar["x_test"]),
        ),
        "flat": (FLAT_SPEC, FLAT_SPEC.apply(digits[:512]), FLAT_SPEC.apply(digits[1000:])),
    }


def build(name: str, train: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    in_chans = train.shape[1]
    model = create_student(name, in_chans=in_chans, input_size=32)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for chunk in np.array_split(train, 4):
            model(torch.from_numpy(chunk))
    return model.eval()


def parity(model: nn.Module, session: ort.InferenceSession, test: np.ndarray) -> dict:
    diff, agree = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(test), 64):
            x = test[start : start + 64]
            ours = session.run(None, {"input": x})[0]
            ref = model(torch.from_numpy(x)).numpy()
            diff = max(diff, float(np.abs(ours - ref).max()))
            agree += int((ours.argmax(1) == ref.argmax(1)).sum())
    return {"max_abs_diff": diff, "top1_agreement": agree / len(test)}


def graph(path: Path) -> dict:
    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return {
        "nodes": len(proto.graph.node),
        "ops": dict(sorted(ops.items())),
        "initializers": len(proto.graph.initializer),
        "bytes": path.stat().st_size,
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": proto.ir_version,
        "dynamic_batch": bool(batch.dim_param) and not batch.dim_value,
    }


def compare(name: str, kind: tuple, work: Path, opset: int, rounds: int, runs: int) -> dict:
    spec, train, test = kind
    model = build(name, train)
    row: dict = {"student": name, "input": list(spec.input_shape)}
    sessions = {}
    for exporter in EXPORTERS:
        path = work / f"{name}.{exporter}.onnx"
        started = time.perf_counter()
        try:
            export_student(model, spec, path, name, opset=opset, exporter=exporter)
        except Exception as e:  # a failing exporter is a row, not a crash
            row[exporter] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            continue
        seconds = time.perf_counter() - started
        sessions[exporter] = ort_session(path, threads=1)
        row[exporter] = {
            "export_s": seconds,
            **graph(path),
            **parity(model, sessions[exporter], test),
        }
    if len(sessions) == len(EXPORTERS):
        for batch in BATCHES:
            feeds = {"input": np.ascontiguousarray(test[:batch])}
            p50 = interleaved_p50(sessions, feeds, rounds=rounds, runs=runs)
            for exporter, ms in p50.items():
                row[exporter][f"p50_ms_b{batch}"] = ms
            row[f"dynamo_over_legacy_b{batch}"] = p50["dynamo"] / p50["legacy"]
    return row


def summary(rows: list[dict]) -> dict:
    """What the per-student rows say together: failures, worst parity, latency ratio spread."""
    ok = [r for r in rows if "error" not in r["dynamo"] and "error" not in r["legacy"]]
    out: dict = {
        "failed": {r["student"]: r[e]["error"] for r in rows for e in EXPORTERS if "error" in r[e]},
        "all_dynamic_batch": all(r[e]["dynamic_batch"] for r in ok for e in EXPORTERS),
    }
    for e in EXPORTERS:
        out[f"{e}_max_abs_diff"] = max((r[e]["max_abs_diff"] for r in ok), default=None)
        out[f"{e}_min_top1_agreement"] = min((r[e]["top1_agreement"] for r in ok), default=None)
    for batch in BATCHES:
        ratios = sorted(r[f"dynamo_over_legacy_b{batch}"] for r in ok)
        if ratios:
            out[f"dynamo_over_legacy_b{batch}"] = {
                "min": ratios[0],
                "median": float(np.median(ratios)),
                "max": ratios[-1],
            }
    return out


def table(rows: list[dict]) -> str:
    head = (
        f"{'student':<18} {'diff dyn':>9} {'diff leg':>9} {'b1 dyn':>8} {'b1 leg':>8} "
        f"{'ratio':>6} {'b64 dyn':>8} {'b64 leg':>8} {'ratio':>6} {'nodes':>9} {'KB':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        d, g = r["dynamo"], r["legacy"]
        if "error" in d or "error" in g:
            lines.append(
                f"{r['student']:<18} dynamo: {d.get('error', 'ok')} legacy: {g.get('error', 'ok')}"
            )
            continue
        lines.append(
            f"{r['student']:<18} {d['max_abs_diff']:>9.1e} {g['max_abs_diff']:>9.1e} "
            f"{d['p50_ms_b1']:>8.3f} {g['p50_ms_b1']:>8.3f} {r['dynamo_over_legacy_b1']:>6.2f} "
            f"{d['p50_ms_b64']:>8.2f} {g['p50_ms_b64']:>8.2f} {r['dynamo_over_legacy_b64']:>6.2f} "
            f"{d['nodes']:>4}/{g['nodes']:<4} {d['bytes'] / 1e3:>5.0f}/{g['bytes'] / 1e3:<5.0f}"
        )
    lines.append("times in ms (p50); ratio = dynamo / legacy; nodes and KB: dynamo/legacy")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument("--students", default=None, help="comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds = data()
    names = args.students.split(",") if args.students else student_names()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            flat = create_student(name, in_chans=64).input_ndim == 2
            rows.append(
                compare(
                    name,
                    kinds["flat" if flat else "image"],
                    Path(tmp),
                    args.opset,
                    args.rounds,
                    args.runs,
                )
            )
            print(table(rows[-1:]).splitlines()[2], flush=True)
    result = {
        "what": "dynamo (torch.export) vs legacy (TorchScript) ONNX export of every student",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_compare.py "
        f"--rounds {args.rounds} --runs {args.runs} --opset {args.opset}",
        "opset": args.opset,
        "threads": 1,
        "rounds": args.rounds,
        "runs_per_round": args.runs,
        "host": {
            **host_info(1),
            "torch": torch.__version__,
            "onnxscript": onnxscript.__version__,
            "onnx": onnx.__version__,
        },
        "seconds": time.perf_counter() - started,
        "summary": summary(rows),
        "students": rows,
    }
    write_json_atomic(args.out, result)
    print(table(rows))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
