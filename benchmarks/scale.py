"""Opening a photo folder of 10k to 1M files, the first time and again (issue 29).

    .venv/bin/python benchmarks/scale.py [--sizes 10000,100000] [--work /tmp/onnxkd-scale]

What is made: a folder of N PNG files (real CIFAR-10 images shrunk to 8x8, 100 distinct images
over 100 class folders), each followed by a sparse hole to --file-kb KiB (110 by default, about
an ImageNet JPEG: the bytes a fingerprint hashes, without the disk they would take). Each open
runs in a fresh process, as a rerun of cache-teacher would: list the folder, hold back a
seeded 10% test split, read the workspace's data record, compute the train split's fingerprint
and the folder's common size (what cache-teacher does before any teacher call). Timed:
  first   no record yet: every file hashed and every header read (the record is written)
  second  the record trusted where stat is unchanged (a sample of 16 files rehashed)
  changed one file rewritten with other pixels: found, named, rehashed
The page cache is warm for all three (the files were just written), so `first` is a lower
bound of a cold first open. RSS is the peak of the opening process. Goal: second <= 5% of
first at 100k files, and the changed file named.
Results go to benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from onnxkd.bench.host import host_info

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scale.json"
CLASSES = 100

OPEN = """
import json, resource, sys, time
from pathlib import Path
started = time.perf_counter()
from onnxkd.data.loaders import open_source
from onnxkd.data.source import DataRef
imported = time.perf_counter()
source = open_source(DataRef(sys.argv[1], holdout=0.1))
source.use_record(Path(sys.argv[2]))
fingerprint = source.fingerprint()
size = source.common_size()
changes = source.data_changes
print(json.dumps({
    "seconds": round(time.perf_counter() - imported, 3),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "files": len(source), "fingerprint": fingerprint, "common_size": size,
    "changed": changes.changed if changes else [],
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxkd-scale"))
    parser.add_argument(
        "--file-kb",
        type=int,
        default=110,
        help="each file's length: the PNG, then a sparse hole up to this size (110: about an "
        "ImageNet JPEG; 0: the bare PNG)",
    )
    args = parser.parse_args()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        folder, ws = args.work / f"folder-{n}-{args.file_kb}kb", args.work / f"ws-{n}"
        shutil.rmtree(ws, ignore_errors=True)
        made = make_folder(folder, n, args.file_kb)
        first = open_folder(folder, ws)
        second = open_folder(folder, ws)
        victim = folder / "class000" / "000000.png"
        Image.new("RGB", (8, 8), (255, 0, 0)).save(victim)
        changed = open_folder(folder, ws)
        row = {
            "files": n,
            "file_kb": args.file_kb,
            "make_seconds": made,
            "first": first,
            "second": second,
            "changed": changed,
            "second_over_first": round(second["seconds"] / first["seconds"], 4),
            "changed_file_named": changed["changed"] == ["class000/000000.png"],
            "per_file_us": {
                k: round(1e6 * r["seconds"] / n, 2)
                for k, r in (("first", first), ("second", second), ("changed", changed))
            },
        }
        for r in (first, second, changed):
            r.pop("fingerprint")
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(rows)
    write(rows)


def make_folder(folder: Path, n: int, file_kb: int) -> float | None:
    """N tiny PNGs (100 real CIFAR images at 8x8, reused), each extended by a sparse hole to
    `file_kb` KiB (no disk blocks; PNG readers stop at the image's end); None if it was
    already there."""
    marker = folder / ".complete"
    if marker.exists():
        return None
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    with np.load(ROOT / "data" / "cifar10" / "cifar10-subset.npz") as data:
        images = data["x_train"][:100]
    blobs = []
    for image in images:
        path = folder / "tmp.png"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((8, 8)).save(path)
        blobs.append(path.read_bytes())
    path.unlink()
    for c in range(CLASSES):
        (folder / f"class{c:03d}").mkdir()
    for i in range(n):
        with open(folder / f"class{i % CLASSES:03d}" / f"{i // CLASSES:06d}.png", "wb") as f:
            f.write(blobs[i % len(blobs)])
            f.truncate(max(f.tell(), file_kb * 1024))
    marker.touch()
    return round(time.perf_counter() - started, 1)


def open_folder(folder: Path, ws: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", OPEN, str(folder), str(ws)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def write(rows: list[dict]) -> None:
    OUT.write_text(
        json.dumps(
            {
                "benchmark": "scale",
                "host": host_info(1),
                "command": " ".join(["benchmarks/scale.py", *sys.argv[1:]]),
                "made": "PNG files (100 real CIFAR-10 images at 8x8, reused) each extended by "
                "a sparse hole to file_kb KiB, 100 class folders; page cache warm",
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
