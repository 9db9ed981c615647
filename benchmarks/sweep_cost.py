"""Sweep cost (issue 17): five students distilled from one cache (`onnxkd sweep`, the cache's
build included) against the same five with online KD (the teacher run through onnxruntime on
every batch), end to end, on the CIFAR-10 subset; and what the ratio becomes for a teacher 10x
the cost of the zoo's ResNet-20.

    .venv/bin/python benchmarks/sweep_cost.py [--epochs 3] [--threads 1] [--work DIR]

Both sides train the same students for the same epochs on the same replayed augmented views.
The cached side is timed from an empty workspace: cache build, then the whole sweep (training,
scoring, the latency pass; no quantization, which the online side has no counterpart of). The
online side is the five distill runs alone (a real online user builds no cache).

The 10x projection multiplies the teacher's share on each side by 10 (see `project`): the
cache pays `epochs` teacher passes over the training set once (a pass timed here by itself),
the online runs pay them once per student, partly hidden behind the student's step.
`--project-only` recomputes the projections from the results file.
Goal: cached >= 1.25x faster. Results go to benchmarks/results/sweep_cost.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from distill_accuracy import SUITES

from onnxkd.bench.host import host_info
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.trainer import distill
from onnxkd.runtime import ort_session
from onnxkd.sweep.config import SweepConfig
from onnxkd.sweep.runner import sweep

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sweep_cost.json"
STUDENTS = ("small_cnn_s", "small_cnn", "resnet8", "mobilenetv2_w035", "shufflenetv2_w050")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxkd-sweep-cost"))
    parser.add_argument("--project-only", action="store_true")
    args = parser.parse_args()
    if args.project_only:
        results = json.loads(OUT.read_text())
        results.pop("projected_10x_teacher", None)
        results.update(project(results))
        OUT.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: v for k, v in results.items() if k != "host"}, indent=2))
        return
    torch.set_num_threads(args.threads)
    suite = SUITES["cifar"]
    shutil.rmtree(args.work, ignore_errors=True)
    ws = args.work / "onnxkd-out"

    started = time.perf_counter()
    cache = cache_teacher(
        CacheConfig(
            suite["teacher"],
            DataRef(suite["data"]),
            workdir=ws,
            views=args.epochs,
            augment=suite["kd_augment"],
            threads=args.threads,
        ),
        log=print,
    ).path
    cache_seconds = time.perf_counter() - started
    result = sweep(
        SweepConfig(
            grid={"student": STUDENTS},
            base={"epochs": args.epochs},
            cache=cache,
            quantize=False,
            threads=args.threads,
            workdir=ws,
            out=args.work / "sweep",
        ),
        log=print,
    )
    cached_seconds = time.perf_counter() - started
    sweep_report = json.loads((result.out / "sweep.json").read_text())

    online = {}
    for student in STUDENTS:
        t0 = time.perf_counter()
        distill(
            DistillConfig(
                student=student,
                cache=cache,
                epochs=args.epochs,
                online=True,
                workdir=ws,
                out=args.work / "online" / student,
                threads=args.threads,
            ),
            log=print,
        )
        online[student] = time.perf_counter() - t0
    teacher_pass = _teacher_pass_seconds(suite["teacher"], cache, args.threads)

    results = _results(args, cache, cache_seconds, cached_seconds, sweep_report, online)
    results["teacher_pass_seconds"] = round(teacher_pass, 2)
    results.update(project(results))
    results["host"] = host_info(args.threads, packages=("torch",))
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "host"}, indent=2))


def project(r: dict) -> dict:
    """The ratio for a teacher 10x as costly, two ways.

    `measured_overhead`: the online runs' extra time over the same students trained from the
    cache (the sweep's distill jobs) is the online teacher's share as it ran, part of it hidden
    behind the student's step in the prefetch thread; the cache's share is `epochs` teacher
    passes. Both x10. `no_overlap`: the online share taken as every teacher pass in full
    (students x epochs passes), an upper bound where nothing overlaps.
    """
    distill_jobs = sum(v for k, v in r["sweep_job_seconds"].items() if k.startswith("distill"))
    cached_teacher = r["epochs"] * r["teacher_pass_seconds"]
    online_measured = r["online_total_seconds"] - distill_jobs
    online_full = len(r["students"]) * r["epochs"] * r["teacher_pass_seconds"]
    cached_10x = r["cached_sweep_seconds_incl_cache"] + 9 * cached_teacher
    out = {"online_teacher_overhead_seconds": round(online_measured, 1)}
    for name, share in (("measured_overhead", online_measured), ("no_overlap", online_full)):
        online_10x = r["online_total_seconds"] + 9 * share
        out[f"projected_10x_teacher_{name}"] = {
            "cached_seconds": round(cached_10x, 1),
            "online_seconds": round(online_10x, 1),
            "speedup": round(online_10x / cached_10x, 3),
        }
    return out


def _results(args, cache, cache_seconds, cached_seconds, sweep_report, online) -> dict:
    online_seconds = sum(online.values())
    return {
        "students": list(STUDENTS),
        "epochs": args.epochs,
        "train_samples": CacheReader(cache).section("train").n,
        "cache_seconds": round(cache_seconds, 1),
        "cached_sweep_seconds_incl_cache": round(cached_seconds, 1),
        "sweep_job_seconds": sweep_report["job_seconds"],
        "online_seconds": {k: round(v, 1) for k, v in online.items()},
        "online_total_seconds": round(online_seconds, 1),
        "speedup": round(online_seconds / cached_seconds, 3),
        "goal_speedup": 1.25,
        "goal_met": online_seconds / cached_seconds >= 1.25,
    }


def _teacher_pass_seconds(teacher: Path, cache: Path, threads: int) -> float:
    """One pass of the teacher over the training images in onnxruntime, batches of 256."""
    reader = CacheReader(cache)
    section = reader.section("train")
    source = reader.open_data("train")
    session = ort_session(teacher, "cpu", threads)
    name = session.get_inputs()[0].name
    batches = [
        section.model_input(source, np.arange(i, min(i + 256, section.n)), 0)
        for i in range(0, section.n, 256)
    ]
    t0 = time.perf_counter()
    for x in batches:
        session.run(None, {name: x.astype(np.float32)})
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
