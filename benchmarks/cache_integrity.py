"""What the integrity check on every cache read costs, and what it would cost at 1M × 30.

Measures on this machine, in one run:
- the full check (sha256 of every byte), as on a cache's first read or after a file changed,
  over a real cache of the CIFAR-10 subset (30 views of full float16 logits) and over a
  larger array written for the purpose (hashing speed does not depend on the values);
- the every-read check once verified (stat + `.npy` header of each array file, no hashing);

and from these extrapolates to 1M samples × 30 views at 10, 100 and 1000 classes (full
float16 logits) and top-5 storage.

    .venv/bin/python benchmarks/cache_integrity.py [--mb 512]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from onnxkd.bench.host import host_info
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.integrity import VERIFIED, array_files, find_problems
from onnxkd.cache.reader import CacheReader
from onnxkd.data.source import DataRef
from onnxkd.files import sha256_file, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cache_integrity.json"
TEACHER = ROOT / "models" / "cifar10_resnet.onnx"
DATA = ROOT / "data" / "cifar10" / "cifar10-subset.npz"


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bytes_per_sample_view(classes: int, topk: int | None) -> int:
    """Teacher bytes per sample and view (float16 values; top-k adds int16 indices and a
    float16 residual), the bulk of a cache."""
    return 2 * classes if topk is None else 2 * topk + 2 * topk + 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="size of the array hashed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="onnxkd-integrity-"))
    try:
        cache = work / "cifar"
        cache_teacher(
            CacheConfig(
                teacher=TEACHER,
                data=DataRef(str(DATA)),
                out=cache,
                workdir=work / "ws",
                views=30,
                augment="crop-flip",
                threads=1,
            ),
            log=lambda s: None,
        )
        manifest = CacheReader(cache, check_arrays=False).manifest
        files = array_files(manifest)
        cache_bytes = sum((cache / f.relpath).stat().st_size for f in files)

        def full_check():
            (cache / VERIFIED).unlink(missing_ok=True)
            assert find_problems(cache, manifest) == []

        full_s = best_of(full_check)
        find_problems(cache, manifest)
        time.sleep(2.5)  # past the racy window, so that the record written next is trusted
        find_problems(cache, manifest)
        every_read_s = best_of(lambda: find_problems(cache, manifest), repeats=20)

        big = work / "big.npy"
        rows = args.mb * 2**20 // 2000
        np.lib.format.open_memmap(big, "w+", np.float16, (rows, 1000)).flush()
        hash_s = best_of(lambda: sha256_file(big), repeats=3)
        hash_gb_s = big.stat().st_size / hash_s / 1e9

        per_file_s = every_read_s / len(files)
        shards, arrays_per_part = 64, 5  # a 1M-sample cache written as 64 shards
        extrapolated = {}
        for name, classes, topk in [
            ("full, 10 classes", 10, None),
            ("full, 100 classes", 100, None),
            ("full, 1000 classes", 1000, None),
            ("top-5 of 1000 classes", 1000, 5),
        ]:
            size = 1_000_000 * 30 * bytes_per_sample_view(classes, topk)
            extrapolated[name] = {
                "gb": round(size / 1e9, 2),
                "first_read_full_check_s": round(size / 1e9 / hash_gb_s, 1),
                "every_read_check_ms": round(1e3 * per_file_s * shards * arrays_per_part, 2),
            }
        result = {
            "host": host_info(1, ("numpy",)),
            "cifar_cache": {
                "samples": manifest.section("train").n + manifest.section("eval").n,
                "views": 30,
                "files": len(files),
                "mb": round(cache_bytes / 2**20, 1),
                "full_check_s": round(full_s, 4),
                "every_read_check_ms": round(1e3 * every_read_s, 3),
            },
            "sha256_gb_per_s": round(hash_gb_s, 2),
            "hashed_mb": round(big.stat().st_size / 2**20),
            "extrapolated_1m_samples_30_views": extrapolated,
            "every_read_per_file_us": round(1e6 * per_file_s, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, result)


if __name__ == "__main__":
    main()
