"""The 224 px photo path: cache-teacher against raw onnxruntime, the distill loader against the
student's step, threads against processes, memory against the number of files, top-k bytes.

    .venv/bin/python benchmarks/photo_pipeline.py [--work DIR] [--files 20000] [--cache-images 192]
        [--views 2] [--only decode cache loader topk memory]

Workload (`photo_workload.py`): `--files` JPEG/PNG photos made from the bundled CIFAR-10 subset
and MNIST, 150-500 px on each side, random aspect ratios, RGB, L, CMYK, RGBA, palette, 16-bit
and EXIF-rotated, in train/ and val/ class folders. A file list (`train.csv`: path, label,
split) gives them labels of a 1000-class teacher (file i: class i mod 1000), as a user's list
of a subset of ImageNet's classes would. Teacher: a ResNet-50-shaped network, RANDOM weights
(speed does not depend on their values; its accuracy is meaningless, hence
`accept_low_accuracy`), 1000 classes, with a timm-style config.json beside it that the cache
reads its preprocessing from (mean/std, crop_pct 0.875, bilinear).

Measurements, each written to benchmarks/results/photo_pipeline.json ($PHOTO_RESULTS) as it
finishes:
  decode:   images/s decoding + resizing + centre-cropping 512 photos: 1 thread, 2 threads,
            2 processes (multiprocessing.Pool, arrays pickled back).
  cache:    cache-teacher (default workers, random-resized-crop views, top-10) on the first
            `--cache-images` listed training photos x 2 views: its timed writing loop in
            sample-views/s, against `InferenceSession.run` on the same views' pixels decoded
            and preprocessed beforehand (rebuilt from the cache's boxes), same batch and
            threads, run twice right after the cache (mean used). Goal: ratio >= 0.90.
  loader:   distill's batches (cached views replayed: decode, cut the box, resize, flip,
            normalize) in images/s at 224 px, 1 and default workers, against MobileNetV2 w1.0's
            training step alone (forward, backward, SGD step; batch 32, 1000 classes) on CPU;
            one untimed pass first, so both worker counts read files from the page cache.
  memory:   peak RSS (VmHWM) of a fresh process that opens a file list of 10k and of 100k rows (the
            photos listed repeatedly), fingerprints it, and decodes the same 1,024 photos.
  topk:     bytes per sample per view of the 1000-class cache, from its files, against full
            float16 storage.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

# Run as a script, its own folder is on sys.path: the workload builder sits beside it.
from photo_workload import build_photo_folder, export_resnet50_teacher

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(
    os.environ.get("PHOTO_RESULTS", ROOT / "benchmarks" / "results" / "photo_pipeline.json")
)
BATCH = 64
CLASSES = 1000


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def write_file_list(photos: Path, rows: int | None = None, name: str = "train.csv") -> Path:
    """path,label,split for every photo (labels i mod 1000); `rows` repeats them to that many."""
    files = sorted(p for p in photos.rglob("*") if p.suffix in (".jpg", ".png"))
    listed = [(p.relative_to(photos).as_posix(), p.parts[-3]) for p in files]
    if rows is not None:
        listed = [listed[i % len(listed)] for i in range(rows)]
    out = photos / name
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for i, (path, split) in enumerate(listed):
            writer.writerow([path, i % CLASSES, "train" if split == "train" else "val"])
    return out


def subset_list(photos: Path, n_train: int, n_val: int) -> Path:
    rows = list(csv.reader((photos / "train.csv").open()))[1:]
    train = [r for r in rows if r[2] == "train"][:n_train]
    val = [r for r in rows if r[2] == "val"][:n_val]
    out = photos / f"subset-{n_train}.csv"
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *train, *val])
    return out


# --- decode: threads vs processes -------------------------------------------------------------

_TRANSFORM = None


def _decode_one(path: str) -> np.ndarray:
    from onnxkd.data.photo import load_image

    return _TRANSFORM.centre(load_image(Path(path), "RGB"))


def _init(transform) -> None:
    global _TRANSFORM
    _TRANSFORM = transform


def measure_decode(photos: Path) -> dict:
    from onnxkd.data.photo import PhotoTransform
    from onnxkd.data.workers import parallel_map

    paths = [str(p) for p in sorted((photos / "train").rglob("*.jpg"))[:512]]
    transform = PhotoTransform((224, 224), 0.875, "bilinear")
    _init(transform)
    out = {}
    for threads in (1, 2):
        started = time.perf_counter()
        parallel_map(_decode_one, paths, threads)
        out[f"threads_{threads}"] = round(len(paths) / (time.perf_counter() - started), 1)
    with Pool(2, initializer=_init, initargs=(transform,)) as pool:
        pool.map(_decode_one, paths[:8])  # start-up excluded
        started = time.perf_counter()
        pool.map(_decode_one, paths, chunksize=16)
        out["processes_2"] = round(len(paths) / (time.perf_counter() - started), 1)
    out["images"] = len(paths)
    return out


# --- cache-teacher vs raw onnxruntime ---------------------------------------------------------


def measure_cache(work: Path, teacher: Path, listing: Path, views: int) -> dict:
    import onnxruntime as ort

    from onnxkd.cache.build import CacheConfig, cache_teacher
    from onnxkd.cache.reader import CacheReader
    from onnxkd.data.source import DataRef

    out_dir = work / "cache"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = CacheConfig(
        teacher,
        DataRef(str(listing)),
        out=out_dir,
        workdir=work / "ws",
        views=views,
        topk=10,
        batch_size=BATCH,
        accept_low_accuracy=True,
        overwrite=True,
    )
    session = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    result = cache_teacher(cfg, log=lambda m: None)  # a fresh folder: every view is computed
    part = result.manifest.section("train").parts[0]
    seconds = json.loads((out_dir / part.dir / "part.json").read_text())["seconds"]
    cache = CacheReader(out_dir)
    train = cache.section("train")
    cached_rate = train.n * views / seconds
    # The same views' pixels, rebuilt from the cache's boxes, decoded before any timing.
    source = cache.open_data("train")
    batches = []
    for view in range(views):
        for start in range(0, train.n, BATCH):
            idx = np.arange(start, min(start + BATCH, train.n))
            batches.append(train.model_input(source, idx, view))

    def raw() -> float:
        started = time.perf_counter()
        for x in batches:
            session.run(None, {"input": x})
        return train.n * views / (time.perf_counter() - started)

    before, after = raw(), raw()
    raw_rate = (before + after) / 2
    return {
        "images": train.n,
        "views": views,
        "batch": BATCH,
        "workers": "default",
        "raw_ort_sample_views_per_s": round(raw_rate, 2),
        "raw_two_runs": [round(before, 2), round(after, 2)],
        "cache_sample_views_per_s": round(cached_rate, 2),
        "ratio": round(cached_rate / raw_rate, 3),
        "end_to_end_seconds": round(result.seconds, 1),
        "spec_origin": result.manifest.input_spec_origin,
    }


# --- distill loader vs the student's step -----------------------------------------------------


def measure_loader(work: Path) -> dict:
    from onnxkd.cache.reader import CacheReader
    from onnxkd.distill.data import CachedBatches

    cache = CacheReader(work / "cache")
    out = {}
    warm = CachedBatches(cache.section("train"), cache.open_data("train"), ("logits",))
    sum(len(b.labels) for b in warm.epoch(0, 32))  # files into the page cache, untimed
    for workers in (1, None):
        source = cache.open_data("train", workers=workers)
        batches = CachedBatches(cache.section("train"), source, ("logits",))
        started = time.perf_counter()
        seen = sum(len(b.labels) for b in batches.epoch(1, 32))
        key = f"workers_{workers or source.workers}"
        out[key] = round(seen / (time.perf_counter() - started), 1)
    out["student_step"] = measure_student_step()
    best = max(v for k, v in out.items() if k.startswith("workers_"))
    out["loader_over_step"] = round(best / out["student_step"]["images_per_s"], 2)
    return out


def measure_student_step(batch: int = 32, steps: int = 4) -> dict:
    import torch

    from onnxkd.students import create_student

    torch.manual_seed(0)
    model = create_student("mobilenetv2_w100", num_classes=CLASSES, in_chans=3, input_size=224)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, CLASSES, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    return {
        "batch": batch,
        "images_per_s": round(batch * steps / seconds, 2),
        "threads": torch.get_num_threads(),
    }


# --- memory against the number of listed files ------------------------------------------------

_MEMORY_CHILD = """
import sys, numpy as np
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
from onnxkd.data.photo import PhotoTransform
source = open_source(DataRef(sys.argv[1], holdout=0.01))
source.configure(PhotoTransform((224, 224)), 3)
source.fingerprint()
for start in range(0, 1024, 64):
    source.read(np.arange(start, start + 64))
# VmHWM: this process's own peak (ru_maxrss would include the parent's, kept across exec).
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(len(source), int(peak) / 1024)
"""


def measure_memory(photos: Path) -> dict:
    out = {}
    for rows in (10_000, 100_000):
        listing = write_file_list(photos, rows, name=f"list-{rows}.csv")
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(listing)],
            capture_output=True,
            text=True,
            check=True,
        )
        n, peak = done.stdout.split()
        out[f"rows_{rows}"] = {"samples": int(n), "peak_rss_mb": round(float(peak), 1)}
    return out


def measure_topk(work: Path) -> dict:
    from onnxkd.cache.reader import CacheReader

    cache = CacheReader(work / "cache")
    train = cache.section("train")
    folder = work / "cache" / train.parts[0].dir
    per_view = {}
    for name in ("topk_values.npy", "topk_indices.npy", "residual.npy", "label_value.npy"):
        array = np.load(folder / name, mmap_mode="r")
        per_view[name] = array.dtype.itemsize * int(np.prod(array.shape[2:], dtype=np.int64))
    total = sum(per_view.values())
    return {
        "k": cache.manifest.targets.k,
        "classes": CLASSES,
        "bytes_per_sample_view": per_view,
        "total_bytes_per_sample_view": total,
        "full_float16_bytes": CLASSES * 2,
        "saving": round(CLASSES * 2 / total, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnxkd-photo")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--cache-images", type=int, default=192)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    from onnxkd.bench.host import host_info

    results["host"] = host_info(None)
    started = time.perf_counter()
    photos = args.work / "photos"
    results["workload"] = build_photo_folder(photos, args.files)
    teacher = export_resnet50_teacher(args.work / "resnet50" / "resnet50.onnx")
    results["teacher"] = {"path": teacher.name, "mb": round(teacher.stat().st_size / 2**20, 1)}
    write_file_list(photos)
    listing = subset_list(photos, args.cache_images, 32)
    steps = {
        "decode": lambda: measure_decode(photos),
        "cache": lambda: measure_cache(args.work, teacher, listing, args.views),
        "loader": lambda: measure_loader(args.work),
        "topk": lambda: measure_topk(args.work),
        "memory": lambda: measure_memory(photos),
    }
    for name, run in steps.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        results[name] = run()
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        save(results)
        print(name, json.dumps(results[name]), flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["command"] = "python benchmarks/photo_pipeline.py " + " ".join(argv or sys.argv[1:])
    save(results)
    print(json.dumps({k: results[k] for k in ("seconds", "peak_rss_mb")}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
