"""cache-teacher throughput vs raw onnxruntime and eager PyTorch, and cache size full vs top-k.

    .venv/bin/python benchmarks/cache_throughput.py [--rounds 3] [--threads 2]

On the CIFAR-10 subset's 4,660 training images with the zoo's ResNet teacher, batch 256:
  (a) raw `InferenceSession.run` over batches already preprocessed in memory (the ceiling),
  (b) `cache_teacher` end to end over the same batches: reading, preprocessing, running,
      writing and syncing the cache (its timed loop; set-up and fingerprinting are reported
      apart),
  (c) eager PyTorch forward of the same architecture (the library's CIFAR ResNet-20 at the
      teacher's widths, eval mode, inference_mode; speed does not depend on the weights' values).
The three run in interleaved rounds (a b c a b c …) so machine noise hits each alike; ratios
use the medians. Goals: (b)/(a) >= 0.95, (b)/(c) >= 1.5.

Cache size: bytes per sample of full float16/float32 targets vs top-5 for the 10-class teacher
and for a 1000-class teacher (a linear head on the same images), where top-k pays off.
Results go to benchmarks/results/cache_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from onnxkd.bench.host import host_info
from onnxkd.bench.timing import interleaved_rounds
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.spec import InputSpec
from onnxkd.teacher.model import load_teacher
from onnxkd.teacher.runner import make_session

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "cifar10_resnet.onnx"
DATA = ROOT / "data" / "cifar10" / "cifar10-subset.npz"
RESULTS = ROOT / "benchmarks" / "results" / "cache_throughput.json"
BATCH = 256


def run_raw_ort(session, batches: list[np.ndarray]) -> None:
    for x in batches:
        session.run(None, {"input": x})


def run_eager(model, batches: list) -> None:
    import torch

    with torch.inference_mode():
        for x in batches:
            model(x)


def eager_twin():
    """An eager PyTorch network with the zoo teacher's architecture: ResNet-20 at widths
    32/64/128, which the library's student family builds op for op (the same graph when
    exported, the same 1.08 M parameters; models/cifar10_resnet.md)."""
    from onnxkd.students.resnet_cifar import CifarResNet

    return CifarResNet(20, (32, 32, 64, 128), num_classes=10).eval()


def time_cache(out: Path, threads: int) -> tuple[float, float]:
    """(timed write loop, whole call) in seconds for one run from scratch."""
    shutil.rmtree(out, ignore_errors=True)  # the same inputs again would be a no-op
    cfg = CacheConfig(
        TEACHER,
        DataRef(str(DATA)),
        out=out,
        eval_split=False,
        threads=threads,
        batch_size=BATCH,
        workdir=out.parent / "ws",
    )
    start = time.perf_counter()
    result = cache_teacher(cfg, log=lambda s: None)
    whole = time.perf_counter() - start
    assert not result.resumed and result.complete
    loop = sum(p.seconds for p in result.manifest.section("train").parts)
    return loop, whole


def cache_bytes_per_sample(teacher: Path, data: Path, work: Path, threads: int) -> dict[str, float]:
    sizes = {}
    for label, kw in {
        "full float32": {"dtype": "float32"},
        "full float16": {"dtype": "float16"},
        "top-5 float16": {"topk": 5},
    }.items():
        out = work / f"size-{teacher.stem}-{label.replace(' ', '-')}"
        cfg = CacheConfig(
            teacher,
            DataRef(str(data)),
            out=out,
            eval_split=False,
            threads=threads,
            workdir=work / "ws",
            **kw,
        )
        cache_teacher(cfg, log=lambda s: None)
        reader = CacheReader(out)
        (part,) = reader.manifest.section("train").parts
        target_files = [f for f in part.files if f.startswith(("targets", "topk_", "residual"))]
        total = sum((out / part.dir / f).stat().st_size for f in target_files)
        sizes[label] = round(total / reader.section("train").n, 1)
    return sizes


def thousand_class_teacher(work: Path) -> tuple[Path, Path]:
    """A 1000-class linear head on the CIFAR images, and the images without class names (a
    1000-class teacher cannot name 10 classes)."""
    import onnx
    import torch

    from onnxkd.metadata import INPUT_SPEC

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1000))
    path = work / "head1000.onnx"
    torch.onnx.export(
        head,
        torch.zeros(1, 3, 32, 32),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    model = onnx.load(str(path))
    spec = load_teacher(TEACHER).metadata_spec
    entry = model.metadata_props.add()
    entry.key = INPUT_SPEC
    entry.value = InputSpec.from_json(spec).with_labels(None).to_json()
    onnx.save(model, str(path))
    data = np.load(DATA)
    unnamed = work / "cifar-unnamed.npz"
    np.savez(
        unnamed,
        x_train=data["x_train"],
        y_train=data["y_train"],
        x_test=data["x_test"],
        y_test=data["y_test"],
    )
    return path, unnamed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    source = open_source(DataRef(str(DATA)))
    teacher = load_teacher(TEACHER)
    spec = InputSpec.from_json(teacher.metadata_spec)
    raw, _ = source.read(np.arange(len(source)))
    batches = [spec.apply(raw[i : i + BATCH]) for i in range(0, len(raw), BATCH)]
    session = make_session(teacher.model, "cpu", args.threads)
    eager = eager_twin()
    torch_batches = [torch.from_numpy(x) for x in batches]
    n = len(raw)

    whole_calls = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def cache_round() -> float:
            loop, whole = time_cache(work / "cache", args.threads)
            whole_calls.append(whole)
            return loop

        run_raw_ort(session, batches[:2])  # warm-up: first runs allocate
        run_eager(eager, torch_batches[:2])
        times = interleaved_rounds(
            {
                "raw_ort": lambda: run_raw_ort(session, batches),
                "cache_teacher": cache_round,
                "eager_torch": lambda: run_eager(eager, torch_batches),
            },
            args.rounds,
            log=print,
        )
        head, unnamed = thousand_class_teacher(work)
        sizes = {
            "cifar10_resnet (10 classes)": cache_bytes_per_sample(
                TEACHER, DATA, work, args.threads
            ),
            "linear head (1000 classes)": cache_bytes_per_sample(head, unnamed, work, args.threads),
        }

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: n / v for k, v in med.items()}
    results = {
        "host": host_info(args.threads, packages=("torch",)),
        "teacher": TEACHER.name,
        "samples": n,
        "batch": BATCH,
        "rounds": args.rounds,
        "seconds": times,
        "samples_per_s_median": {k: round(v, 1) for k, v in rate.items()},
        "ratio_cache_vs_raw_ort": round(rate["cache_teacher"] / rate["raw_ort"], 3),
        "ratio_cache_vs_eager_torch": round(rate["cache_teacher"] / rate["eager_torch"], 3),
        "cache_teacher_whole_call_s_median": round(statistics.median(whole_calls), 3),
        "cache_bytes_per_sample": sizes,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{n} images, batch {BATCH}, {args.threads} threads, median of {args.rounds} rounds")
    for k, v in rate.items():
        print(f"  {k:14} {v:8.0f} samples/s")
    print(f"  cache/raw ORT   {results['ratio_cache_vs_raw_ort']:.3f}  (goal >= 0.95)")
    print(f"  cache/eager     {results['ratio_cache_vs_eager_torch']:.3f}  (goal >= 1.5)")
    print(
        f"  whole cache-teacher call (set-up, fingerprint, run): "
        f"{results['cache_teacher_whole_call_s_median']:.2f}s"
    )
    for teacher_name, s in sizes.items():
        print(f"  bytes/sample {teacher_name}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
