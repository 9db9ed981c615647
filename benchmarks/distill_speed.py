"""Epoch time of one student trained four ways, measured in interleaved rounds.

    .venv/bin/python benchmarks/distill_speed.py [--rounds 2] [--student mobilenetv2_w050]

On the CIFAR-10 subset (4,660 training images) with the zoo's ResNet teacher:
  (a) plain cross-entropy (no teacher),
  (b) KD from the cache (the teacher was run once, by cache-teacher),
  (c) online KD, the teacher run through onnxruntime on every batch,
  (d) online KD, the teacher run in eager PyTorch on every batch (the library's CIFAR ResNet-20
      at the teacher's widths, in eval mode: the same architecture; speed does not depend on
      weights).
Each round trains one epoch of each mode (a b c d a b c d …); the figure is the median epoch
time over rounds. Goals: (b)/(a) <= 1.10; (c)/(b) and (d)/(b) are what the teacher costs.
Results go to benchmarks/results/distill_speed.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from pathlib import Path

from onnxkd.bench.host import host_info
from onnxkd.bench.timing import interleaved_rounds
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.data.source import DataRef
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.trainer import distill

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "cifar10_resnet.onnx"
DATA = ROOT / "data" / "cifar10" / "cifar10-subset.npz"
RESULTS = ROOT / "benchmarks" / "results" / "distill_speed.json"


def eager_teacher(threads: int):
    """The teacher's architecture in eager PyTorch as an online teacher: ResNet-20 at widths
    32/64/128, which the library's student family builds op for op (the same graph when
    exported, the same 1.08 M parameters; models/cifar10_resnet.md)."""
    import torch

    from onnxkd.students.resnet_cifar import CifarResNet

    torch.set_num_threads(threads)
    model = CifarResNet(20, (32, 32, 64, 128), num_classes=10).eval()

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--student", default="mobilenetv2_w050")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    modes = {
        "a_ce": {"loss": "ce"},
        "b_kd_cached": {"loss": "kd"},
        "c_kd_online_ort": {"loss": "kd", "online": True},
        "d_kd_online_eager": {"loss": "kd", "online": True},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        cache_teacher(
            CacheConfig(
                TEACHER,
                DataRef(str(DATA)),
                out=cache,
                views=4,
                augment="crop-flip",
                threads=args.threads,
                workdir=work / "ws",
            ),
            log=lambda s: None,
        )
        eager = eager_teacher(args.threads)

        def one_epoch(mode: str, extra: dict):
            runs = itertools.count()

            def task() -> float:
                cfg = DistillConfig(
                    student=args.student,
                    cache=cache,
                    epochs=1,
                    batch_size=args.batch_size,
                    threads=args.threads,
                    workdir=work / "ws",
                    out=work / f"{mode}-{next(runs)}",
                    export=False,
                    **extra,
                )
                teacher = eager if mode == "d_kd_online_eager" else None
                result = distill(cfg, log=lambda s: None, online_teacher=teacher)
                return result.history[-1]["epoch_seconds"]

            return task

        tasks = {mode: one_epoch(mode, extra) for mode, extra in modes.items()}
        times = interleaved_rounds(tasks, args.rounds, log=print)

    med = {m: statistics.median(t) for m, t in times.items()}
    results = {
        "host": host_info(args.threads, packages=("torch",)),
        "student": args.student,
        "teacher": TEACHER.name,
        "train_images": 4660,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "rounds": args.rounds,
        "epoch_seconds": times,
        "median_epoch_seconds": med,
        "ratio_kd_cached_vs_ce": round(med["b_kd_cached"] / med["a_ce"], 3),
        "ratio_online_ort_vs_cached": round(med["c_kd_online_ort"] / med["b_kd_cached"], 3),
        "ratio_online_eager_vs_cached": round(med["d_kd_online_eager"] / med["b_kd_cached"], 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{args.student}, median epoch time over {args.rounds} rounds:")
    for m, t in med.items():
        print(f"  {m:20} {t:7.2f} s")
    print(
        f"  (b)/(a) {results['ratio_kd_cached_vs_ce']:.3f} (goal <= 1.10); (c)/(b) "
        f"{results['ratio_online_ort_vs_cached']:.2f}; (d)/(b) "
        f"{results['ratio_online_eager_vs_cached']:.2f}"
    )
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
