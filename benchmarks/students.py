"""Students compared (issue 27): for every registered image student at CIFAR's 32 px, its
parameters, FP32 and INT8 batch-1 latency under onnxruntime (interleaved rounds, one thread and
all threads), INT8 speed-up, and its KD accuracy from the zoo teacher on the CIFAR-10 subset;
the Pareto front (validation accuracy against INT8 latency) gets more seeds.

    .venv/bin/python benchmarks/students.py --part latency [--rounds 5]
    .venv/bin/python benchmarks/students.py --part accuracy --epochs 30 [--worker 0/2]
    .venv/bin/python benchmarks/students.py --part front --epochs 30 [--front-seeds 1,2]
    .venv/bin/python benchmarks/students.py --part table     # the README's table, from results

`latency` exports each student as distill does (untrained: latency does not depend on the
weights' values) and quantizes it as `onnxkd quantize` does (MinMax on 512 real images).
`accuracy` caches the zoo teacher once (one strong view per epoch) and trains every student with
the KD defaults on seed 0 (bf16 autocast and channels-last, as distill_accuracy.py: 1.7x faster
on a CPU with AMX; --fp32 turns them off); `--worker I/N` takes the I-th of N shares balanced by
FP32 latency, so N one-thread workers split the grid. `front` then trains the five best of the
validation-accuracy/INT8-latency front on the other seeds. Test accuracy is measured once per
run, never used to choose. Runs are folders under --work that a rerun resumes; every finished
run is merged into the results file under a lock, so workers can share it. Aliases
(`mobilenetv2` = `mobilenetv2_w100`) and flat-vector students (mlp*) are left out.
Results: benchmarks/results/students.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from distill_accuracy import SUITES

from onnxkd.bench.host import host_info
from onnxkd.bench.timing import interleaved_p50
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.export import export_student
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.trainer import distill
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize
from onnxkd.runtime import ort_session
from onnxkd.students import create_student, student_names

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "students.json"
ALIASES = {"mobilenetv2"}  # = mobilenetv2_w100
FRONT = 5
REFERENCE = "mobilenetv2_w050"  # the goal: beat its accuracy at lower INT8 latency


def image_students() -> list[str]:
    return [
        n
        for n in student_names()
        if n not in ALIASES and create_student(n, in_chans=64).input_ndim == 4
    ]


def export_and_quantize(name: str, folder: Path, workdir: Path) -> tuple[Path, Path]:
    """The untrained student at 3x32x32 exported as distill does (latency does not depend on
    the weights' values) and quantized as `onnxkd quantize` does (MinMax on real CIFAR)."""
    fp32 = folder / "student.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    spec = InputSpec(layout="NCHW", size=(32, 32), channels=3)
    export_student(create_student(name, 10, 3, 32).eval(), spec, fp32, name)
    int8 = fp32.with_name("student.int8.onnx")
    quantize(
        QuantizeConfig(
            model=fp32,
            out=int8,
            data=SUITES["cifar"]["data"],
            workdir=workdir,
            threads=1,
            eval_samples=256,
            overwrite=True,
        ),
        log=lambda _: None,
    )
    return fp32, int8


def measure_latency(names: list[str], work: Path, rounds: int) -> list[dict]:
    models, sizes = {}, {}
    for name in names:
        fp32, int8 = export_and_quantize(name, work / "latency" / name, work / "onnxkd-out")
        models[(name, "fp32")], models[(name, "int8")] = fp32, int8
        sizes[name] = (fp32.stat().st_size, int8.stat().st_size)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    p50 = {}
    for threads in (1, os.cpu_count() or 1):
        sessions = {key: ort_session(path, "cpu", threads) for key, path in models.items()}
        p50[threads] = interleaved_p50(sessions, {"input": x}, rounds=rounds, runs=50)
    rows = []
    for name in names:
        row = {
            "student": name,
            "params": sum(p.numel() for p in create_student(name, 10, 3, 32).parameters()),
            "fp32_mb": round(sizes[name][0] / 1e6, 3),
            "int8_mb": round(sizes[name][1] / 1e6, 3),
        }
        for threads, figures in p50.items():
            fp32_ms, int8_ms = figures[(name, "fp32")], figures[(name, "int8")]
            row[f"fp32_ms_{threads}t"] = round(fp32_ms, 4)
            row[f"int8_ms_{threads}t"] = round(int8_ms, 4)
            row[f"int8_speedup_{threads}t"] = round(fp32_ms / int8_ms, 3)
        rows.append(row)
    return rows


def train(name: str, seed: int, cache: Path, work: Path, epochs: int, bf16: bool) -> dict:
    run = work / "runs" / f"{name}-seed{seed}"
    folder = RunFolder(run)
    started = time.perf_counter()
    if not folder.finished:
        distill(
            DistillConfig(
                student=name,
                epochs=epochs,
                cache=cache,
                # one workspace per run: workers never write the same workspace state
                workdir=work / "ws" / run.name,
                out=run,
                seed=seed,
                threads=1,
                bf16=bf16,
                channels_last=bf16,
                resume=folder.started,
            ),
            log=print,
        )
    report = RunFolder(run).export_report()
    return {
        "student": name,
        "seed": seed,
        "val_accuracy": report.val_accuracy,
        "test_accuracy": report.test_accuracy,
        "seconds": round(time.perf_counter() - started, 1),
    }


def share(names: list[str], latency: dict[str, float], worker: str) -> list[str]:
    """The `worker` ("I/N") share of `names`: greedy bins balanced by FP32 latency, a proxy for
    a student's training cost, each bin ordered costliest first."""
    index, count = (int(v) for v in worker.split("/"))
    bins: list[list[str]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for name in sorted(names, key=lambda n: -latency[n]):
        lightest = loads.index(min(loads))
        bins[lightest].append(name)
        loads[lightest] += latency[name]
    return bins[index]


def pareto_front(rows: list[dict], latency: dict[str, float]) -> list[str]:
    """Students no other beats on both validation accuracy and INT8 latency."""
    front = []
    for r in rows:
        beaten = any(
            o["val_accuracy"] >= r["val_accuracy"]
            and latency[o["student"]] <= latency[r["student"]]
            and (
                o["val_accuracy"] > r["val_accuracy"]
                or latency[o["student"]] < latency[r["student"]]
            )
            for o in rows
        )
        if not beaten:
            front.append(r["student"])
    return front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["latency", "accuracy", "front", "table"], required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--worker", default="0/1", help="I/N: this worker's share of N")
    parser.add_argument("--front-seeds", default="1,2")
    parser.add_argument("--fp32", action="store_true", help="train in fp32, channels-first")
    parser.add_argument("--students", help="comma-separated [default: every image student]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxkd-students"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    names = args.students.split(",") if args.students else image_students()
    results = _read()
    if args.part == "latency":
        results["latency"] = {
            "rows": measure_latency(names, args.work, args.rounds),
            "rounds": args.rounds,
            "host": host_info(os.cpu_count()),
            "seconds": round(time.perf_counter() - started, 1),
        }
        _write(results)
        for r in results["latency"]["rows"]:
            print(json.dumps(r))
        return
    if args.part == "table":
        print(table(results))
        return
    rows = {r["student"]: r for r in results["latency"]["rows"]}
    int8_ms = {n: r["int8_ms_1t"] for n, r in rows.items()}
    cache = _teacher_cache(args.work, args.epochs)
    bf16 = not args.fp32
    if args.part == "accuracy":
        plan = share(names, {n: rows[n]["fp32_ms_1t"] for n in names}, args.worker)
        print(f"worker {args.worker}: {', '.join(plan)}")
        for name in plan:
            if (name, 0) not in _finished():
                _record(train(name, 0, cache, args.work, args.epochs, bf16), args.epochs)
        return
    first = [r for r in _read().get("accuracy", {}).get("runs", []) if r["seed"] == 0]
    missing = sorted(set(names) - {r["student"] for r in first})
    if missing:
        parser.error(f"--part front needs every student's seed-0 run first; missing: {missing}")
    front = pareto_front(first, int8_ms)
    best = sorted(front, key=lambda n: -next(r["val_accuracy"] for r in first if r["student"] == n))
    _update(lambda acc: acc.__setitem__("front", best[:FRONT]))
    for seed in [int(s) for s in args.front_seeds.split(",")]:
        for name in best[:FRONT]:
            if (name, seed) not in _finished():
                _record(train(name, seed, cache, args.work, args.epochs, bf16), args.epochs)


def _teacher_cache(work: Path, views: int) -> Path:
    suite = SUITES["cifar"]
    return cache_teacher(
        CacheConfig(
            suite["teacher"],
            DataRef(suite["data"]),
            workdir=work / "onnxkd-out",
            views=views,
            augment=suite["kd_augment"],
            threads=1,
        ),
        log=print,
    ).path


def _read() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def _finished() -> set[tuple[str, int]]:
    return {(r["student"], r["seed"]) for r in _read().get("accuracy", {}).get("runs", [])}


def _record(run: dict, epochs: int) -> None:
    def add(accuracy: dict) -> None:
        if accuracy.setdefault("epochs", epochs) != epochs:
            raise SystemExit(f"{OUT} holds {accuracy['epochs']}-epoch runs, not {epochs}")
        runs = [
            r
            for r in accuracy.setdefault("runs", [])
            if (r["student"], r["seed"]) != (run["student"], run["seed"])
        ]
        accuracy["runs"] = [*runs, run]

    _update(add)


def _update(change) -> None:
    """Read, change and rewrite the results' accuracy part under a lock (workers share it)."""
    with open(OUT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _read()
        accuracy = results.setdefault("accuracy", {})
        change(accuracy)
        accuracy["summary"] = _summary(accuracy.get("runs", []))
        _write(results)


def _summary(runs: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["student"], []).append(r)
    out = {}
    for name, rows in by.items():
        test = [100 * r["test_accuracy"] for r in rows]
        val = [100 * r["val_accuracy"] for r in rows]
        out[name] = {
            "seeds": len(rows),
            "val_mean": round(statistics.fmean(val), 2),
            "val_std": round(statistics.stdev(val), 2) if len(val) > 1 else None,
            "test_mean": round(statistics.fmean(test), 2),
            "test_std": round(statistics.stdev(test), 2) if len(test) > 1 else None,
        }
    return out


def table(results: dict) -> str:
    """The README's student table, from the results file: every student by INT8 latency,
    the Pareto front (on seed-0 validation accuracy) marked, accuracies as mean ± std over the
    seeds run; then the goal's verdict on the validation means."""
    accuracy = results.get("accuracy", {})
    summary = _summary(accuracy.get("runs", []))
    front = set(accuracy.get("front", []))
    seed0 = {r["student"]: r for r in accuracy.get("runs", []) if r["seed"] == 0}
    int8_ms = {r["student"]: r["int8_ms_1t"] for r in results["latency"]["rows"]}
    on_front = set(pareto_front(list(seed0.values()), int8_ms)) if seed0 else set()
    lines = [
        "| student | params | INT8 ms (1 thread) | INT8 speed-up | val % | test % | "
        "seeds | Pareto front |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(results["latency"]["rows"], key=lambda r: r["int8_ms_1t"]):
        name, s = r["student"], summary.get(r["student"])
        if s is None:
            continue
        test = f"{s['test_mean']:.2f}" + (f" ± {s['test_std']:.2f}" if s["test_std"] else "")
        val = f"{s['val_mean']:.2f}" + (f" ± {s['val_std']:.2f}" if s.get("val_std") else "")
        mark = "yes (3 seeds)" if name in front else "yes" if name in on_front else ""
        lines.append(
            f"| `{name}` | {r['params'] / 1e6:.3f} M | {r['int8_ms_1t']:.3f} | "
            f"{r['int8_speedup_1t']:.2f}x | {val} | {test} | "
            f"{s['seeds']} | {mark} |"
        )
    return "\n".join([*lines, "", verdict(summary, int8_ms)])


def verdict(summary: dict, int8_ms: dict) -> str:
    """Which students beat the reference's validation mean at lower INT8 latency (the goal),
    compared over the same number of seeds only."""
    ref = summary[REFERENCE]
    winners = [
        f"`{n}` (val {s['val_mean']:.2f} vs {ref['val_mean']:.2f}, test {s['test_mean']:.2f} "
        f"vs {ref['test_mean']:.2f}, INT8 {int8_ms[n]:.3f} vs {int8_ms[REFERENCE]:.3f} ms)"
        for n, s in summary.items()
        if n != REFERENCE
        and s["seeds"] == ref["seeds"]
        and s["val_mean"] > ref["val_mean"]
        and int8_ms[n] < int8_ms[REFERENCE]
    ]
    head = f"Beat `{REFERENCE}` at lower INT8 latency over {ref['seeds']} seeds: "
    return head + (", ".join(winners) if winners else "none")


def _write(results: dict) -> None:
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(OUT)


if __name__ == "__main__":
    main()
