"""Prune vs narrow (issue 17): MobileNetV2 w1.0 distilled, then pruned with KD to the parameter
count of w0.5, against `mobilenetv2_w050` distilled directly for the same total epochs, on the
CIFAR-10 subset: test accuracy (onnxruntime, of the exported model) and FP32/INT8 batch-1
latency (onnxruntime, 1 thread, interleaved so both models see the same machine state).

    .venv/bin/python benchmarks/prune_vs_narrow.py --seeds 0,1,2 [--wide-epochs 20]
        [--prune-epochs 10] [--variants l2:1,l2:5,l1:5,bn:5]

--variants compares pruning runs from the same wide student: Torch-Pruning's importance
criteria (L2 or L1 weight magnitude, BN scale) and one step or several (iterative pruning, KD
fine-tuning between steps); the prune epochs split evenly over the steps, so every variant
trains the same total epochs as the narrow network. A third field `student` (l2:5:student)
fine-tunes on the unpruned wide student's own outputs instead of the teacher's (its
`student.onnx` cached over the same views with cache-teacher, then `prune --teacher-cache`).

Each run is a resumable folder under --work; the results file is rewritten after every seed,
so a grid stopped midway reports what finished. Goal: the pruned model is at least as accurate
as the narrow one at no more INT8 latency.
Results go to benchmarks/results/prune_vs_narrow.json.
"""

from __future__ import annotations

import argparse
import json
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
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.trainer import distill
from onnxkd.prune.config import PruneConfig
from onnxkd.prune.runner import prune
from onnxkd.prune.search import measure
from onnxkd.quantize.config import QuantizeConfig
from onnxkd.quantize.ptq import quantize
from onnxkd.runtime import ort_session, session_options
from onnxkd.students import create_student

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "prune_vs_narrow.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--wide-epochs", type=int, default=20)
    parser.add_argument("--prune-epochs", type=int, default=10)
    parser.add_argument(
        "--variants",
        default="l2:1",
        help="pruning runs to compare, IMPORTANCE:STEPS[:student] each (l2, l1 or bn; the "
        "prune epochs split evenly over the steps, so every variant trains the same total "
        "epochs; `student`: distil from the unpruned student), e.g. l2:1,l2:5,bn:5,l2:5:student",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="results file")
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxkd-prune-vs-narrow"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    suite = SUITES["cifar"]
    total = args.wide_epochs + args.prune_epochs
    ws = args.work / "onnxkd-out"
    cache = cache_teacher(
        CacheConfig(
            suite["teacher"],
            DataRef(suite["data"]),
            workdir=ws,
            views=total,
            augment=suite["kd_augment"],
            threads=args.threads,
        ),
        log=print,
    ).path
    # The parameter share of w0.5 in w1.0, so the pruned model matches the narrow one's count.
    spec_args = (10, 3, 32)
    wide_params = sum(
        p.numel() for p in create_student("mobilenetv2_w100", *spec_args).parameters()
    )
    narrow_params = sum(
        p.numel() for p in create_student("mobilenetv2_w050", *spec_args).parameters()
    )
    ratio = narrow_params / wide_params
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        common = dict(cache=cache, workdir=ws, seed=seed, threads=args.threads)
        runs = args.work / f"seed{seed}"
        wide = _distill(runs / "wide", "mobilenetv2_w100", args.wide_epochs, common)
        narrow = _distill(runs / "narrow", "mobilenetv2_w050", total, common)
        pruned = {}
        for importance, steps, from_student in _variants(args):
            # the first study's single l2 step keeps its folder name, so its runs resume
            name = "pruned" if (importance, steps) == ("l2", 1) else f"pruned-{importance}-x{steps}"
            name += "-from-student" if from_student else ""
            pruned[name] = run = runs / name
            targets = _student_cache(wide, ws, total, suite, args) if from_student else None
            if not RunFolder(run).finished:
                prune(
                    PruneConfig(
                        target=f"params={ratio:.6f}",
                        init=wide,
                        steps=steps,
                        epochs=args.prune_epochs // steps,
                        importance=importance,
                        teacher_cache=targets,
                        workdir=ws,
                        out=run,
                        resume=(run / "prune.json").exists(),
                        threads=args.threads,
                    ),
                    log=print,
                )
        row = {"seed": seed}
        for name, run in (("narrow", narrow), *pruned.items(), ("wide", wide)):
            row[name] = _measure(run, cache, args.threads)
        row["latency"] = _latencies({n: row[n] for n in ("narrow", *pruned)})
        rows.append(row)
        _write(args, rows, ratio, started)
    print(json.dumps(_summary(rows), indent=2))


def _variants(args) -> list[tuple[str, int, bool]]:
    out = []
    for item in args.variants.split(","):
        importance, steps, *rest = item.split(":") + [""]
        from_student = rest[0] == "student"
        if (
            importance not in ("l2", "l1", "bn")
            or not steps.isdigit()
            or int(steps) < 1
            or rest[0] not in ("", "student")
            or len(rest) > 2
        ):
            raise SystemExit(
                f"--variants: {item!r} is not IMPORTANCE:STEPS[:student] (l2|l1|bn, >= 1)"
            )
        if args.prune_epochs % int(steps):
            raise SystemExit(f"--variants {item}: {args.prune_epochs} epochs do not split evenly")
        out.append((importance, int(steps), from_student))
    return out


def _student_cache(wide: Path, ws: Path, views: int, suite: dict, args) -> Path:
    """The wide student's own outputs over the teacher cache's views (same data, augmentation
    and seed), for pruned runs that learn from the network they were cut from."""
    return cache_teacher(
        CacheConfig(
            wide / "student.onnx",
            DataRef(suite["data"]),
            workdir=ws,
            out=wide / "own-targets",
            views=views,
            augment=suite["kd_augment"],
            threads=args.threads,
            # its accuracy is measured apart; at toy lengths a wide student is near chance
            accept_low_accuracy=True,
        ),
        log=print,
    ).path


def _distill(out: Path, student: str, epochs: int, common: dict) -> Path:
    if not RunFolder(out).finished:
        distill(
            DistillConfig(
                student=student, epochs=epochs, out=out, resume=RunFolder(out).started, **common
            ),
            log=print,
        )
    return out


def _measure(run: Path, cache: Path, threads: int) -> dict:
    folder = RunFolder(run)
    model = run / "student.onnx"
    int8 = run / "student.int8.onnx"
    if not int8.exists():
        quantize(
            QuantizeConfig(model=model, cache=cache, threads=threads, overwrite=True), log=print
        )
    int8_report = json.loads(int8.with_suffix(".json").read_text())
    record = folder.record()
    student = create_student(record.config.student, 10, 3, 32)
    if record.config.architecture:
        from onnxkd.students.pruned import read_architecture

        student = read_architecture(record.config.architecture).build(_spec(cache), 10)
    size = measure(student, _spec(cache))
    return {
        "test_accuracy": folder.export_report().test_accuracy,
        "int8_accuracy": _int8_accuracy(int8_report),
        "params": size.params,
        "macs": size.macs,
        "fp32": str(model),
        "int8": str(int8),
    }


def _spec(cache: Path):
    from onnxkd.cache.reader import CacheReader

    return CacheReader(cache).input_spec


def _int8_accuracy(report: dict) -> float:
    return report["int8_accuracy"]


def _latencies(models: dict) -> dict:
    """Batch-1 p50 latency in ms, FP32 and INT8 of each model, timed interleaved."""
    sessions = {}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for name, info in models.items():
        for kind in ("fp32", "int8"):
            path = Path(info[kind])
            sessions[f"{name} {kind}"] = ort_session(path, "cpu", options=session_options(1))
    feeds = {next(iter(sessions.values())).get_inputs()[0].name: x}
    p50 = interleaved_p50(sessions, feeds, rounds=5, runs=100)
    return {k: round(v, 4) for k, v in p50.items()}


def _summary(rows: list[dict]) -> dict:
    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": round(statistics.mean(values), 4), "std": round(sd, 4), "n": len(values)}

    out = {}
    models = [k for k in rows[0] if k not in ("seed", "latency")]
    for name in models:
        out[name] = {
            "test_accuracy": stats([100 * r[name]["test_accuracy"] for r in rows]),
            "int8_accuracy": stats(
                [100 * r[name]["int8_accuracy"] for r in rows if r[name]["int8_accuracy"]]
            ),
            "params": rows[0][name]["params"],
            "macs": rows[0][name]["macs"],
        }
    for key in rows[0]["latency"]:
        out.setdefault("latency_ms", {})[key] = stats([r["latency"][key] for r in rows])
    return out


def _write(args, rows, ratio, started) -> None:
    """The results file, with the rows of other seeds that another process running the same
    settings (`--seeds` split between processes) has written there kept."""
    ours = {r["seed"] for r in rows}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        flags = f"--wide-epochs {args.wide_epochs} --prune-epochs {args.prune_epochs} "
        same = old.get("settings", _settings(args)) == _settings(args) and flags in old["command"]
        rows = sorted(
            rows + [r for r in old["rows"] if same and r["seed"] not in ours],
            key=lambda r: r["seed"],
        )
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "prune_vs_narrow",
                "command": "benchmarks/prune_vs_narrow.py "
                f"--seeds {args.seeds} --wide-epochs {args.wide_epochs} "
                f"--prune-epochs {args.prune_epochs} --variants {args.variants} "
                f"--threads {args.threads}",
                "settings": _settings(args),
                "params_ratio": ratio,
                "summary": _summary(rows),
                "rows": rows,
                "minutes_this_process": round((time.perf_counter() - started) / 60, 1),
                "host": host_info(args.threads),
            },
            indent=2,
        )
    )


def _settings(args) -> dict:
    return {
        "wide_epochs": args.wide_epochs,
        "prune_epochs": args.prune_epochs,
        "variants": args.variants,
    }


if __name__ == "__main__":
    main()
