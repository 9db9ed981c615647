"""Calibration of distilled students and their INT8 models, and what one fitted temperature
does to it (issue 18), over seeds: ECE (15 equal-width and equal-mass bins), NLL and Brier on
the test split, of the float student and its INT8 model, as exported and with the
temperature `distill --fit-temperature` fitted on the held-back training samples.

    .venv/bin/python benchmarks/calibration.py --suite cifar --seeds 0,1,2 [--epochs 6]

The schedule is the shipped CIFAR recipe's (MobileNetV2 w0.5, 6 strong views, 6 epochs, bf16
on CPU). The temperature never sees the test split whose figures are reported. Runs are
folders under --work that a rerun reuses; the results file is rewritten after every seed.
Results go to benchmarks/results/calibration_SUITE.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from distill_accuracy import SUITES

from onnxkd.bench.host import host_info
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.trainer import distill
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("accuracy", "mean_confidence", "ece_equal_width", "ece_equal_mass", "nll", "brier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cifar")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxkd-calibration"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    suite = SUITES[args.suite]
    ws = args.work / args.suite / "onnxkd-out"
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
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = args.work / args.suite / f"seed{seed}"
        if not RunFolder(run).finished:
            distill(
                DistillConfig(
                    student=suite["student"],
                    epochs=args.epochs,
                    cache=cache,
                    workdir=ws,
                    out=run,
                    seed=seed,
                    threads=args.threads,
                    bf16=True,
                    channels_last=True,
                    fit_temperature=True,
                    resume=RunFolder(run).started,
                ),
                log=print,
            )
        int8 = run / "student.int8.onnx"
        if not int8.with_suffix(".json").exists():
            quantize(
                QuantizeConfig(
                    model=run / "student.onnx", cache=cache, threads=args.threads, overwrite=True
                ),
                log=print,
            )
        rows.append(_row(seed, json.loads(int8.with_suffix(".json").read_text())))
        _write(args, rows, started)
    print(json.dumps(_summary(rows), indent=2))


def _row(seed: int, report: dict) -> dict:
    """One seed's figures from its quantize report (the test split, both models, with and
    without the temperature)."""
    quality = report["quality"]
    row = {"seed": seed, "temperature": quality["temperature"]}
    for model in ("float", "int8"):
        row[model] = {k: quality[model]["calibration"][k] for k in FIGURES}
        row[f"{model}_T"] = {k: quality[model]["temperature_scaled"][k] for k in FIGURES}
    row["int8_worst_classes"] = quality["worst_classes"][:3]
    row["int8_flagged_classes"] = quality["flagged_classes"]
    return row


def _summary(rows: list[dict]) -> dict:
    """Mean ± std over seeds of every figure, per model, before and after the temperature."""
    summary = {"seeds": [r["seed"] for r in rows]}
    for model in ("float", "float_T", "int8", "int8_T"):
        summary[model] = {k: _mean_std([r[model][k] for r in rows]) for k in FIGURES}
    summary["temperature"] = _mean_std([r["temperature"]["temperature"] for r in rows])
    summary["int8_flagged"] = sum(len(r["int8_flagged_classes"]) for r in rows)
    return summary


def _mean_std(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 5),
        "std": round(statistics.stdev(values), 5) if len(values) > 1 else None,
    }


def _write(args, rows: list[dict], started: float) -> None:
    out = ROOT / "benchmarks" / "results" / f"calibration_{args.suite}.json"
    document = {
        "command": f"benchmarks/calibration.py --suite {args.suite} --seeds {args.seeds} "
        f"--epochs {args.epochs} --threads {args.threads}",
        "host": host_info(args.threads),
        "rows": rows,
        "summary": _summary(rows),
        "seconds": round(time.perf_counter() - started, 1),
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(out)


if __name__ == "__main__":
    main()
