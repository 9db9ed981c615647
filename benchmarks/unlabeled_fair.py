"""Unlabeled images, measured fairly (issue 28): a teacher that never saw them, and a labeled-only
baseline given the same optimizer steps as well as the same epochs.

    .venv/bin/python benchmarks/unlabeled_fair.py --suite cifar [--epochs 30 --seeds 0,1,2]
    .venv/bin/python benchmarks/unlabeled_fair.py --suite mnist --epochs 10

The suite's training images are split per class: the first half keep their labels, the rest are
the unlabeled pool. A teacher of the zoo's architecture and recipe is retrained on the labeled
half alone (`models/train_*.py --data`, one thread), so the pool is new to it, as a user's
unlabeled photos are to their teacher. (issue 16's +23-point figure used the zoo teacher, which
had been trained on the "unlabeled" images with their labels.) Then three arms, the suite's
student and KD defaults, the best epoch chosen on 10% of the labeled half held back:

  labeled         KD on the labeled half, E epochs
  labeled_steps   KD on the labeled half for as many optimizer steps as `unlabeled` takes
  unlabeled       KD on the labeled half plus the pool without labels (--unlabeled: α 1 on
                  it), E epochs; an epoch covers both parts, so it takes about twice the steps

The epochs-matched gain (unlabeled - labeled) mixes more data with more steps; the steps-matched
gain (unlabeled - labeled_steps) is what the images alone add. Goal: steps-matched >= 3 points.
Test accuracy (onnxruntime, the exported student) is measured once per run, mean ± std over
seeds. Every run is a resumable folder under --work; the results file is rebuilt from the
finished folders after each run, so one-thread workers on disjoint arms or seeds can share it:
    unlabeled_fair.py --suite cifar --prepare-only
    unlabeled_fair.py --suite cifar --threads 1 --arms unlabeled --seeds 0,1,2 &
    unlabeled_fair.py --suite cifar --threads 1 --arms labeled_steps,labeled --seeds 0,1,2
Results: benchmarks/results/unlabeled_fair_<suite>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from distill_accuracy import SUITES, finished_run, precision, resumable

from onnxkd.bench.host import host_info
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.data import batches_per_epoch
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.trainer import distill
from onnxkd.distill.validation import carve

ROOT = Path(__file__).resolve().parents[1]
TEACHER_SCRIPT = {"cifar": "train_cifar10_resnet.py", "mnist": "train_mnist_teacher.py"}
ARMS = ("labeled", "labeled_steps", "unlabeled")
BATCH, VAL_FRACTION = 128, 0.1  # DistillConfig's defaults, which the step count depends on
GOAL = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=sorted(TEACHER_SCRIPT), default="cifar")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prepare-only", action="store_true", help="split, teacher, caches")
    parser.add_argument("--collect", action="store_true", help="train nothing; summarize")
    parser.add_argument("--work", type=Path, default=ROOT / "onnxkd-out" / "bench-unlabeled")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if unknown := sorted(set(arms) - set(ARMS)):
        parser.error(f"unknown arm(s) {unknown}; valid: {', '.join(ARMS)}")
    suite, folder = SUITES[args.suite], args.work / args.suite
    out = ROOT / "benchmarks" / "results" / f"unlabeled_fair_{args.suite}.json"
    started = time.perf_counter()
    if not args.collect:
        parts = split(suite, folder)
        teacher = train_teacher(args.suite, parts["labeled"], folder)
        plan = step_plan(parts, args.epochs)
        caches = build_caches(args, suite, teacher, parts, plan, folder)
        if args.prepare_only:
            print(f"prepared in {time.perf_counter() - started:.0f} s: {plan}")
            return
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arm in arms:
                accuracy = train_arm(args, suite, caches, plan, arm, seed, folder)
                print(f"seed {seed} {arm:14} {100 * accuracy:.2f}%", flush=True)
                write_results(args, folder, out, started)
    write_results(args, folder, out, started, echo=True)


def split(suite: dict, folder: Path) -> dict[str, Path]:
    """labeled.npz (the first half of each class's training images, with labels, and the test
    split) and pool.npz (the other training images, images only)."""
    folder.mkdir(parents=True, exist_ok=True)
    labeled, pool = folder / "labeled.npz", folder / "pool.npz"
    if not (labeled.exists() and pool.exists()):
        train = open_source(DataRef(suite["data"], split="train"))
        test = open_source(DataRef(suite["data"], split="test"))
        x, y = np.asarray(train.x), np.asarray(train.y)
        keep = np.sort(
            np.concatenate([np.flatnonzero(y == c)[: (y == c).sum() // 2] for c in np.unique(y)])
        )
        rest = np.setdiff1d(np.arange(len(y)), keep)
        names = {"label_names": np.array(train.label_names)} if train.label_names else {}
        for path, arrays in (
            (pool, {"x": x[rest]}),
            (
                labeled,
                {"x_train": x[keep], "y_train": y[keep], "x_test": test.x, "y_test": test.y}
                | names,
            ),
        ):
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)  # pool first, labeled last: both exist only when both are whole
    return {"labeled": labeled, "pool": pool}


def train_teacher(suite_name: str, labeled: Path, folder: Path) -> Path:
    """The zoo's teacher recipe on the labeled half only; its card marks it finished."""
    teacher = folder / "teacher.onnx"
    if not teacher.with_suffix(".md").exists():
        script = ROOT / "models" / TEACHER_SCRIPT[suite_name]
        command = [sys.executable, str(script), "--data", str(labeled), "--threads", "1"]
        command += ["--out", str(teacher), "--no-readme"]
        print("training the teacher on the labeled half:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return teacher


def step_plan(parts: dict[str, Path], epochs: int) -> dict:
    """Epochs and optimizer steps per arm: labeled_steps gets the epochs whose steps come
    closest to the unlabeled arm's (distill drops partial batches and holds back 10%)."""
    with np.load(parts["labeled"]) as d:
        n_labeled = len(d["y_train"])
    with np.load(parts["pool"]) as d:
        n_pool = len(d["x"])
    train = len(carve(n_labeled, VAL_FRACTION, seed=0).train)  # its size is seed-independent
    per_epoch = batches_per_epoch(train, BATCH, drop_last=True)
    joined = batches_per_epoch(train + n_pool, BATCH, drop_last=True)
    matched = round(epochs * joined / per_epoch)
    return {
        "labeled_images": n_labeled,
        "labeled_train_images": train,
        "pool_images": n_pool,
        "labeled": {"epochs": epochs, "steps": epochs * per_epoch},
        "labeled_steps": {"epochs": matched, "steps": matched * per_epoch},
        "unlabeled": {"epochs": epochs, "steps": epochs * joined},
    }


def build_caches(args, suite, teacher: Path, parts, plan: dict, folder: Path) -> dict[str, Path]:
    """The new teacher over the labeled half (one view per epoch of the longest arm) and over
    the pool (one view per epoch), on the suite's KD augmentation."""
    views = {"labeled": plan["labeled_steps"]["epochs"], "pool": plan["unlabeled"]["epochs"]}
    caches = {}
    for part, count in views.items():
        caches[part] = folder / f"cache-{part}-{count}views"
        cache_teacher(
            CacheConfig(
                teacher,
                DataRef(str(parts[part])),
                out=caches[part],
                views=count,
                augment=suite["kd_augment"],
                threads=args.threads,
                workdir=args.work / "ws",
            ),
            log=print,
        )
    return caches


def train_arm(args, suite, caches, plan, arm: str, seed: int, folder: Path) -> float:
    run = folder / f"{arm}-s{seed}"
    cfg = DistillConfig(
        student=suite["student"],
        cache=caches["labeled"],
        unlabeled=(caches["pool"],) if arm == "unlabeled" else (),
        epochs=plan[arm]["epochs"],
        batch_size=BATCH,
        val_fraction=VAL_FRACTION,
        loss="kd",
        seed=seed,
        threads=args.threads,
        workdir=args.work / "ws",
        **resumable(run),
        bf16=True,
        channels_last=True,
    )
    return distill(cfg, log=lambda s: None).export["onnxruntime_accuracy"]


def write_results(args, folder: Path, out: Path, started: float, echo: bool = False) -> None:
    """Every finished run under `folder` (other workers' too), summarized, with the gains."""
    parts = {"labeled": folder / "labeled.npz", "pool": folder / "pool.npz"}
    plan = step_plan(parts, args.epochs)
    table = {}
    for arm in ARMS:
        runs = {}
        for run in sorted(folder.glob(f"{arm}-s*")):
            if RunFolder(run).finished:
                runs[int(run.name.rsplit("-s", 1)[1])] = 100 * finished_run(run)[0]
        if runs:
            values = list(runs.values())
            table[arm] = {
                **plan[arm],
                "mean": round(statistics.fmean(values), 2),
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                "runs": {s: round(v, 2) for s, v in sorted(runs.items())},
            }
    if not table:
        sys.exit(f"no finished runs under {folder}")
    any_run = next(r for r in sorted(folder.glob("*-s*")) if RunFolder(r).finished)
    teacher = RunFolder(any_run).export_report().teacher_accuracy
    gains = {}
    for name, base in (("steps_matched", "labeled_steps"), ("epochs_matched", "labeled")):
        seeds = _common_seeds(table, base)
        if seeds:  # paired: the same seeds in both arms
            per_seed = [table["unlabeled"]["runs"][s] - table[base]["runs"][s] for s in seeds]
            gains[name] = {
                "value": round(statistics.fmean(per_seed), 2),
                "std": round(statistics.stdev(per_seed), 2) if len(per_seed) > 1 else None,
                "seeds": seeds,
            }
    if "steps_matched" in gains:
        gains["steps_matched"]["goal_holds"] = gains["steps_matched"]["value"] >= GOAL
    results = {
        "host": host_info(args.threads, packages=("torch",)),
        "suite": args.suite,
        "student": SUITES[args.suite]["student"],
        "teacher": "zoo recipe retrained on the labeled half only (teacher.onnx, its card)",
        "teacher_test_accuracy": round(100 * teacher, 2),
        "split": {k: plan[k] for k in ("labeled_images", "labeled_train_images", "pool_images")},
        "epochs": args.epochs,
        "precision": precision(folder.glob("*-s*")),
        "accuracy_percent": table,
        "gains": gains,
        "goal": f"steps-matched gain >= {GOAL} points",
        "seconds_this_worker": round(time.perf_counter() - started, 1),
        "command": " ".join(sys.argv),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out)
    if echo:
        print(f"{args.suite}: teacher (labeled half only) {results['teacher_test_accuracy']}%")
        for arm, row in table.items():
            print(f"  {arm:14} {row['mean']:6.2f} ± {row['std']}  {row['steps']} steps {row}")
        for name, gain in gains.items():
            print(f"  {name}: {gain['value']:+.2f} points over seeds {gain['seeds']}")
        print(f"written to {out}")


def _common_seeds(table: dict, base: str) -> list[int]:
    if "unlabeled" not in table or base not in table:
        return []
    return sorted(set(table["unlabeled"]["runs"]) & set(table[base]["runs"]))


if __name__ == "__main__":
    main()
