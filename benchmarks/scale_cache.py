"""Caching at scale (issue 29): resuming a cache of 10k to 1M photos, cache-teacher with many
views per photo against raw onnxruntime, and a 2-process torchrun cache against 1 process.

    .venv/bin/python benchmarks/scale_cache.py [--parts resume,views,torchrun]
        [--sizes 10000,100000,1000000] [--photos 2000] [--views 10] [--work /tmp/onnxkd-scale]

resume    On the folders of benchmarks/scale.py (N 8x8 PNGs padded by sparse holes, reused if
          there, with their workspace's data record) and a tiny teacher (a seeded linear head,
          3x8x8 -> 100 classes: what is timed is the cache's own work, not a network):
            build   `onnxkd cache-teacher` from nothing (1 view, no eval section, 1 thread);
            again   the same command on the complete cache (it finds it complete);
            resume  a build stopped by Ctrl-C (SIGINT) once half its chunks are on disk, rerun:
                    its time against the build's share of the remaining chunks.
          Each command runs in a fresh process, as a user's rerun would.
views     --photos real CIFAR-10 training images upscaled to 96x96 JPEG, 10 class folders; the
          zoo's CIFAR ResNet teacher (32x32) over --views random-resized-crop views per photo:
          `cache_teacher`'s timed loop (decoding each photo once, cutting its views,
          preprocessing, running, writing) against raw `InferenceSession.run` over the same
          number of batches already preprocessed in memory; interleaved rounds, medians.
torchrun  the same photo cache by `torchrun --nproc-per-node 2` (1 thread each) against one
          process with 2 threads and one with 1 thread (wall time of each command).
Results go to benchmarks/results/scale_cache.json (rewritten after each part).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scale import make_folder

from onnxkd.bench.host import host_info

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scale_cache.json"
CIFAR_TEACHER = ROOT / "models" / "cifar10_resnet.onnx"
ONNXKD = [sys.executable, "-m", "onnxkd"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="resume,views,torchrun")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--file-kb", type=int, default=110, help="as in benchmarks/scale.py")
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxkd-scale"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = set(parts) - {"resume", "views", "torchrun"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; give resume, views or torchrun")
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.update(benchmark="scale_cache", host=host_info(1))
    results.setdefault("commands", {})
    if "resume" in parts:
        teacher = tiny_teacher(args.work / "linear-head-8x8.onnx")
        rows = {r["files"]: r for r in results.get("resume", [])}
        for n in [int(s) for s in args.sizes.split(",")]:
            folder = args.work / f"folder-{n}-{args.file_kb}kb"
            made = make_folder(folder, n, args.file_kb)
            rows[n] = resume_row(teacher, folder, args.work / f"ws-{n}", n)
            rows[n]["folder_made_s"] = made  # None: the folder was already there
            print(json.dumps(rows[n]), flush=True)
            results["resume"] = [rows[k] for k in sorted(rows)]
            write(args, results, "resume")
    if "views" in parts or "torchrun" in parts:
        photos = photo_folder(args.work / f"photos-{args.photos}-96px", args.photos)
    if "views" in parts:
        results["views"] = views_vs_raw(photos, args.work / "views", args.views, args.rounds)
        print(json.dumps(results["views"], indent=1), flush=True)
        write(args, results, "views")
    if "torchrun" in parts:
        results["torchrun"] = torchrun_vs_one(photos, args.work / "torchrun", args.views)
        print(json.dumps(results["torchrun"], indent=1), flush=True)
        write(args, results, "torchrun")


def tiny_teacher(path: Path) -> Path:
    """A seeded linear head over 3x8x8 images to 100 classes (the scale folders' classes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3 * 8 * 8, 100)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
        ],
        "linear_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 100])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def resume_row(teacher: Path, folder: Path, ws: Path, n: int) -> dict:
    cache = ws / "scale-cache"
    command = [*ONNXKD, "cache-teacher", str(teacher), "--data", str(folder), "-o", str(cache)]
    command += ["--workdir", str(ws), "--views", "1", "--augment", "none", "--no-eval"]
    command += ["--threads", "1", "--workers", "1", "--accept-low-accuracy"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shutil.rmtree(cache, ignore_errors=True)
    build = timed(command, env)
    again = timed(command, env)
    chunks = read_json(cache / "train" / "part-0-of-1" / "part.json")
    shutil.rmtree(cache, ignore_errors=True)
    stopped_at, total = stop_halfway(command, env, cache)
    resumed = timed(command, env)
    remaining = (total - stopped_at) / total
    # What a rerun costs before any work (process start, imports, opening the folder through
    # its record, checking the cache) is what `again` measures; a resume should add only the
    # remaining chunks' share of the build's write loop to it.
    expected = again + remaining * chunks["seconds"]
    return {
        "files": n,
        "cached_samples": read_json(cache / "manifest.json")["sections"]["train"]["n"],
        "build_s": build,
        "build_loop_s": chunks["seconds"],
        "again_s": again,
        "again_percent_of_build": round(100 * again / build, 2),
        "stopped_at_chunk": stopped_at,
        "chunks": total,
        "resume_s": resumed,
        "resume_expected_s": round(expected, 3),
        "resume_overhead_s": round(resumed - expected, 3),
    }


def stop_halfway(command: list[str], env: dict, cache: Path) -> tuple[int, int]:
    """Start the build, send SIGINT once half its chunks are on disk; (chunks done, total)."""
    progress = cache / "train" / "part-0-of-1" / "progress.json"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    total = None
    while process.poll() is None:
        time.sleep(0.05)
        if total is None and (cache / "pending.json").exists():
            pending = read_json(cache / "pending.json")
            n = pending["sections"]["train"]["n"]
            total = -(-n // pending["config"]["batch_size"])
        if total and progress.exists():
            try:
                done = read_json(progress)["chunks_done"]
            except (json.JSONDecodeError, FileNotFoundError):
                continue  # replaced between the check and the read
            if done >= total // 2:
                process.send_signal(signal.SIGINT)
                break
    err = process.communicate()[1].decode()
    if process.returncode != 130:
        raise SystemExit(f"the build was not interrupted (exit {process.returncode}): {err}")
    return read_json(progress)["chunks_done"], total


def photo_folder(folder: Path, n: int) -> Path:
    """N real CIFAR-10 training images upscaled to 96x96 (bicubic) as JPEG, a folder per class."""
    marker = folder / ".complete"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    with np.load(ROOT / "data" / "cifar10" / "cifar10-subset.npz") as data:
        images, labels = data["x_train"][:n], data["y_train"][:n]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / f"class{int(label)}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((96, 96), Image.BICUBIC).save(target, quality=90)
    marker.touch()
    return folder


def views_vs_raw(photos: Path, work: Path, views: int, rounds: int) -> dict:
    from onnxkd.bench.timing import interleaved_rounds
    from onnxkd.cache.build import CacheConfig, cache_teacher
    from onnxkd.data.source import DataRef
    from onnxkd.data.spec import InputSpec
    from onnxkd.teacher.model import load_teacher
    from onnxkd.teacher.runner import make_session

    teacher = load_teacher(CIFAR_TEACHER)
    spec = InputSpec.from_json(teacher.metadata_spec)
    batch, samples = 256, None

    def cache_round() -> float:
        nonlocal samples
        out = work / "cache"
        shutil.rmtree(out, ignore_errors=True)
        cfg = CacheConfig(
            CIFAR_TEACHER,
            DataRef(str(photos)),
            out=out,
            workdir=work / "ws",
            views=views,
            augment="random-resized-crop",
            eval_split=False,
            threads=1,
            workers=1,
            batch_size=batch,
        )
        result = cache_teacher(cfg, log=lambda s: None)
        (part,) = result.manifest.section("train").parts
        samples = result.manifest.section("train").n
        return part.seconds

    cache_round()  # the first makes the data record, and tells how many samples are cached
    session = make_session(teacher.model, "cpu", 1)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (batch, spec.size[0], spec.size[1], 3), dtype=np.uint8)
    x = spec.apply(raw)
    name = session.get_inputs()[0].name
    chunks = [min(batch, samples - i) for i in range(0, samples, batch)]
    inputs = {c: x[:c] for c in set(chunks)}

    def raw_round() -> None:
        for _ in range(views):
            for c in chunks:
                session.run(None, {name: inputs[c]})

    times = interleaved_rounds({"raw_ort": raw_round, "cache_teacher": cache_round}, rounds, print)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: samples * views / v for k, v in med.items()}
    return {
        "photos_cached": samples,  # the train split: 80% of the folder
        "photo_size": "96x96 JPEG (CIFAR-10 upscaled)",
        "teacher": CIFAR_TEACHER.name,
        "views": views,
        "augment": "random-resized-crop",
        "threads": 1,
        "batch": batch,
        "seconds": times,
        "views_per_s_median": {k: round(v, 1) for k, v in rate.items()},
        "ratio_cache_vs_raw_ort": round(rate["cache_teacher"] / rate["raw_ort"], 3),
    }


def torchrun_vs_one(photos: Path, work: Path, views: int) -> dict:
    args = ["cache-teacher", str(CIFAR_TEACHER), "--data", str(photos), "--views", str(views)]
    args += ["--no-eval", "--workdir", str(work / "ws")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "one process, 2 threads": [*ONNXKD, *args, "--threads", "2", "--workers", "2"],
        "one process, 1 thread": [*ONNXKD, *args, "--threads", "1", "--workers", "1"],
        "torchrun 2 processes, 1 thread each": [
            *TORCHRUN,
            "--nproc-per-node",
            "2",
            "-m",
            "onnxkd",
            *args,
            "--threads",
            "1",
            "--workers",
            "1",
        ],
    }
    timed([*ONNXKD, *args, "-o", str(work / "record")], env)  # makes the data record
    seconds = {}
    for label, command in runs.items():
        out = work / "cache"
        shutil.rmtree(out, ignore_errors=True)
        seconds[label] = timed([*command, "-o", str(out)], env)
        assert read_json(out / "manifest.json")["sections"]["train"]["n"] > 0
    one = seconds["one process, 2 threads"]
    return {
        "photos": str(photos.name),
        "views": views,
        "seconds": seconds,
        "torchrun_vs_one_process_2_threads": round(
            one / seconds["torchrun 2 processes, 1 thread each"], 3
        ),
        "torchrun_vs_one_process_1_thread": round(
            seconds["one process, 1 thread"] / seconds["torchrun 2 processes, 1 thread each"], 3
        ),
    }


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 3)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write(args, results: dict, part: str) -> None:
    results["commands"][part] = " ".join(["benchmarks/scale_cache.py", *sys.argv[1:]])
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
