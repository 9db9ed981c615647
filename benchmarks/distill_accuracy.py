"""Student accuracy by method over several seeds: scratch vs KD vs KD with K cached views vs DKD
vs online KD, on real data.

    .venv/bin/python benchmarks/distill_accuracy.py --suite cifar [--epochs 30 --seeds 0,1,2]
    .venv/bin/python benchmarks/distill_accuracy.py --suite mnist

On 2 cores, two one-thread workers on disjoint methods finish sooner than one two-thread run:
    distill_accuracy.py --suite cifar --caches-only
    distill_accuracy.py --suite cifar --threads 1 --methods scratch,kd_online,kd_1view &
    distill_accuracy.py --suite cifar --threads 1 --methods kd_kviews,dkd_kviews,scratch_strong &
    distill_accuracy.py --suite cifar --collect     # then: summarize the finished runs

Methods (same student, epochs, optimizer and schedule; only the targets and views differ):
  scratch         cross-entropy on K views of the suite's standard augmentation (no teacher)
  scratch_strong  cross-entropy on K views of the strong augmentation (no teacher)
  kd_1view        KD from a cache with a single view of KD's augmentation, replayed every epoch
  kd_kviews       KD from a cache with K = epochs views of KD's augmentation (one per epoch)
  dkd_kviews      decoupled KD from the same K-view cache, at KD's learning rate
  dkd_warmup      the same with lr 0.01 and a 5-epoch warm-up of its distillation part
  kd_online       KD with the teacher run live through onnxruntime on the same K views
KD's augmentation is the strong policy on CIFAR (a teacher that has memorized its training
images gives near one-hot targets on lightly augmented ones) and crops on MNIST; both scratch
variants are reported on CIFAR so that KD is compared with the better of them.
Accuracy is onnxruntime's, of the exported student (its epoch chosen on distill's validation split,
carved from the training data), on the test split, measured once (846 CIFAR
images: about ±1.5 points per run, hence several seeds; mean ± std reported). Goals: kd_kviews
beats scratch by >= 3 points on CIFAR; kd_kviews within 0.5 points of kd_online.
Results go to benchmarks/results/distill_accuracy_<suite>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from onnxkd.bench.host import host_info
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.trainer import distill

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "data"
SUITES = {
    "cifar": {
        "teacher": ROOT / "models" / "cifar10_resnet.onnx",
        "data": str(SHARED / "cifar10" / "cifar10-subset.npz"),
        "augment": "crop-flip",
        # KD's views: a teacher that has memorized its training images gives near one-hot
        # targets on lightly augmented ones, so KD gets the strong ones.
        "kd_augment": "strong",
        "student": "mobilenetv2_w050",
    },
    "mnist": {
        "teacher": ROOT / "models" / "mnist_cnn.onnx",
        "data": str(SHARED / "mnist"),
        "augment": "crop",
        "kd_augment": "crop",  # strong flips, and a flipped digit is another digit or none
        "student": "mobilenetv2_w050",
    },
}
# method: (views, augmentation, distill settings); "standard" and "kd" are the suite's
# augmentations for scratch and KD, "strong" the strong policy.
METHODS = {
    "scratch": ("k", "standard", {"loss": "ce"}),
    "scratch_strong": ("k", "strong", {"loss": "ce"}),
    "kd_1view": ("1", "kd", {"loss": "kd"}),
    "kd_kviews": ("k", "kd", {"loss": "kd"}),
    "dkd_kviews": ("k", "kd", {"loss": "dkd"}),
    # DKD's loss runs ~10x KD's scale here: the lr RepDistiller/CRD use for MobileNetV2
    # students (0.01) and DKD's warm-up of its distillation part (20 of 240 epochs in the
    # authors' code, 5 of 30 here)
    "dkd_warmup": ("k", "kd", {"loss": "dkd", "lr": 0.01, "alpha_warmup_epochs": 5}),
    "kd_online": ("k", "kd", {"loss": "kd", "online": True}),
}


def precision(runs: Iterable[Path]) -> str:
    """What the finished runs among `runs` trained in, read from their own records: distill
    trains in float32 where bf16 was asked for on a CPU without bf16 arithmetic and records
    that, so a results file collected from runs on several hosts names what each did."""
    labels = set()
    for run in runs:
        folder = RunFolder(run)
        if folder.finished:
            config = folder.record().config
            kind = "bf16 autocast" if config.bf16 else "fp32"
            labels.add(kind + (", channels-last" if config.channels_last else ""))
    return "; ".join(sorted(labels)) or "no finished runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cifar")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", type=Path, help="another teacher .onnx for the suite's data")
    # bf16 autocast + channels-last: 1.7x faster on a CPU with AMX, same for every method
    parser.add_argument("--fp32", action="store_true", help="train in fp32, channels-first")
    parser.add_argument(
        "--caches-only",
        action="store_true",
        help="build the methods' caches and stop (then start workers on disjoint methods/seeds)",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: summarize the finished runs among --methods x --seeds (each "
        "method lists the seeds it has)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "onnxkd-out" / "bench-accuracy")
    parser.add_argument(
        "--out", type=Path, help="results file [default: results/distill_accuracy_SUITE.json]"
    )
    args = parser.parse_args()
    suite = dict(SUITES[args.suite])
    if args.teacher:
        suite["teacher"] = args.teacher.resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    started = time.perf_counter()
    caches = {} if args.collect else build_caches(args, suite, methods)
    cache_seconds = time.perf_counter() - started
    if args.caches_only:
        print(f"caches built in {cache_seconds:.0f} s")
        return
    runs = {m: {} for m in methods}  # method -> seed -> (accuracy, training minutes)
    for seed in seeds:
        for method in methods:
            run = args.work / args.suite / f"{method}-s{seed}"
            if args.collect:
                if RunFolder(run).finished:
                    runs[method][seed] = finished_run(run)
                continue
            runs[method][seed] = train_run(args, suite, caches, method, seed, run)
            print(f"seed {seed} {method:14} {100 * runs[method][seed][0]:.2f}%", flush=True)
    if not any(runs.values()):
        sys.exit(f"no finished runs of {methods} x seeds {seeds} under {args.work / args.suite}")
    results = {
        "host": host_info(args.threads, packages=("torch",)),
        "suite": args.suite,
        "student": suite["student"],
        "teacher": suite["teacher"].name,
        "teacher_test_accuracy": teacher_accuracy(caches, args.work / args.suite),
        "epochs": args.epochs,
        "seeds": seeds,
        "precision": precision((args.work / args.suite).glob("*-s*")),
        "accuracy_percent": {m: summary(r) for m, r in runs.items() if r},
        "cache_seconds": round(cache_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(sys.argv),
    }
    # The issue states its goals for the CIFAR subset (MNIST leaves a teacher little to add)
    results["goals"] = goals(results["accuracy_percent"]) if args.suite == "cifar" else {}
    out = args.out or ROOT / "benchmarks" / "results" / f"distill_accuracy_{args.suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"\n{args.suite}: {suite['student']} for {args.epochs} epochs; teacher "
        f"{results['teacher_test_accuracy']}%"
    )
    for m, s in results["accuracy_percent"].items():
        spread = f"± {s['std']:.2f}" if len(s["runs"]) > 1 else "(1 run)"
        print(f"  {m:14} {s['mean']:6.2f} {spread:7}  seeds {s['seeds']}: {s['runs']}")
    for name, goal in results["goals"].items():
        print(f"  goal {name}: {goal['value']:+.2f} ({'holds' if goal['holds'] else 'MISSED'})")
    print(f"total {results['total_seconds'] / 60:.1f} min; written to {out}")


def build_caches(args, suite: dict, methods: list[str]) -> dict:
    """The teacher's caches the methods read, keyed by (views, augmentation)."""
    caches = {}
    for views, augment in sorted({METHODS[m][:2] for m in methods}):
        count = 1 if views == "1" else args.epochs
        policy = {"standard": suite["augment"], "kd": suite["kd_augment"]}.get(augment, augment)
        out = args.work / args.suite / f"cache-{policy}-{count}views"
        cache_teacher(
            CacheConfig(
                suite["teacher"],
                DataRef(suite["data"]),
                out=out,
                views=count,
                augment=policy,
                threads=args.threads,
                workdir=args.work / "ws",
            ),
            log=print,
        )
        caches[views, augment] = out
    return caches


def train_run(args, suite: dict, caches: dict, method: str, seed: int, run: Path) -> tuple:
    """Train (or resume, or only re-score) one method's run: (accuracy, training minutes)."""
    views, augment, extra = METHODS[method]
    cfg = DistillConfig(
        student=suite["student"],
        cache=caches[views, augment],
        epochs=args.epochs,
        seed=seed,
        threads=args.threads,
        workdir=args.work / "ws",
        out=run,
        resume=RunFolder(run).last_checkpoint.exists(),
        bf16=not args.fp32,
        channels_last=not args.fp32,
        **extra,
    )
    result = distill(cfg, log=lambda s: None)
    return result.export["onnxruntime_accuracy"], training_minutes(result.history)


def resumable(run: Path) -> dict:
    """DistillConfig's out/resume/overwrite for a benchmark run folder: resume one that has a
    checkpoint; start over in one killed before its first epoch (a record, nothing to resume)."""
    started = RunFolder(run).last_checkpoint.exists()
    return {"out": run, "resume": started, "overwrite": run.exists() and not started}


def finished_run(run: Path) -> tuple:
    """A finished run's exported accuracy and training minutes, from its folder."""
    folder = RunFolder(run)
    history = [json.loads(line) for line in folder.metrics_path.read_text().splitlines()]
    return folder.export_report().onnxruntime_accuracy, training_minutes(history)


def training_minutes(history: list[dict]) -> float:
    # median epoch x epochs: robust to a run paused or resumed midway
    return statistics.median(r["epoch_seconds"] for r in history) * len(history) / 60


def summary(runs: dict) -> dict:
    accuracies = [100 * a for a, _ in runs.values()]
    return {
        "mean": round(statistics.mean(accuracies), 2),
        "std": round(statistics.stdev(accuracies), 2) if len(accuracies) > 1 else 0.0,
        "seeds": list(runs),
        "runs": [round(a, 2) for a in accuracies],
        "train_minutes_mean": round(statistics.mean(m for _, m in runs.values()), 1),
    }


def goals(table: dict) -> dict:
    """The issue's goals, on the means: KD beats the better scratch by >= 3 points; cached
    views within 0.5 points of online KD."""
    out = {}
    scratch = [table[m]["mean"] for m in ("scratch", "scratch_strong") if m in table]
    if "kd_kviews" in table and scratch:
        gap = table["kd_kviews"]["mean"] - max(scratch)
        out["kd_kviews_over_best_scratch"] = {"value": round(gap, 2), "holds": gap >= 3}
    if "kd_kviews" in table and "kd_online" in table:
        gap = table["kd_kviews"]["mean"] - table["kd_online"]["mean"]
        out["kd_kviews_minus_kd_online"] = {"value": round(gap, 2), "holds": abs(gap) <= 0.5}
    return out


def teacher_accuracy(caches: dict, folder: Path) -> float:
    """From a cache's manifest, or (--collect builds none) from a finished run's export."""
    if caches:
        accuracy = CacheReader(next(iter(caches.values()))).manifest.eval_teacher_accuracy
    else:
        run = next(r for r in sorted(folder.glob("*-s*")) if RunFolder(r).finished)
        accuracy = RunFolder(run).export_report().teacher_accuracy
    return round(100 * accuracy, 2)


if __name__ == "__main__":
    main()
