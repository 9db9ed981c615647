"""The sweep's units of work and how several run at once.

A job is one distill run, one prune run or one model's evaluation, written as JSON so that a
separate process (`python -m onnxkd.sweep.worker JOB.json`) can run it. With `jobs > 1` each
runs in its own process with its share of the threads (OMP_NUM_THREADS and torch's), and, on a
machine with several GPUs, its own GPU (CUDA_VISIBLE_DEVICES), so that trials never contend
inside one interpreter. With one job they run in this process, one after another.

Every job writes into a resumable folder, so a sweep killed midway redoes only unfinished work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnxkd.errors import OnnxkdError
from onnxkd.files import write_json_atomic

KINDS = ("distill", "prune", "evaluate")


@dataclass(frozen=True)
class Job:
    """One unit of work: `kind`, its arguments (JSON-able), a label for progress lines."""

    kind: str
    args: dict
    label: str
    log_path: Path

    def to_dict(self) -> dict:
        return {"kind": self.kind, "args": self.args, "label": self.label}


@dataclass
class Outcome:
    job: Job
    ok: bool
    seconds: float
    error: str = ""


def run_job(kind: str, args: dict, log: Callable[[str], None]) -> None:
    """Run one job here (the worker process calls this too)."""
    from onnxkd.settings import from_settings

    if kind == "distill":
        from onnxkd.distill.config import DistillConfig
        from onnxkd.distill.trainer import distill

        decided = {
            k: Path(v) if k in ("cache", "workdir", "out") else v
            for k, v in args["decided"].items()
        }
        distill(from_settings(DistillConfig, args["settings"], **decided), log=log)
    elif kind == "prune":
        from onnxkd.prune.config import PruneConfig
        from onnxkd.prune.runner import prune

        prune(PruneConfig.from_dict(args), log=log)
    elif kind == "evaluate":
        from onnxkd.sweep.evaluate import evaluate_model

        evaluate_model(args, log=log)
    else:
        raise ValueError(f"unknown job kind {kind!r}; known: {KINDS}")


def run_jobs(
    jobs: list[Job],
    parallel: int,
    threads: int,
    log: Callable[[str], None],
) -> list[Outcome]:
    """Run every job, `parallel` at a time, each with `threads` threads; a failed job is
    reported (one line, its log named) and the others go on."""
    if not jobs:
        return []
    for job in jobs:
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
    if parallel == 1:
        return [_run_here(job, threads, i, len(jobs), log) for i, job in enumerate(jobs, 1)]
    return _run_processes(jobs, parallel, threads, log)


def _run_here(job: Job, threads: int, i: int, n: int, log) -> Outcome:
    import torch

    torch.set_num_threads(threads)
    log(f"[{i}/{n}] {job.label}")
    started = time.perf_counter()
    with open(job.log_path, "a") as f:

        def both(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        try:
            run_job(job.kind, job.args, both)
        except OnnxkdError as e:
            both(f"error: {e}")
            log(f"[{i}/{n}] {job.label} failed: {e}")
            return Outcome(job, False, time.perf_counter() - started, str(e))
    seconds = time.perf_counter() - started
    log(f"[{i}/{n}] {job.label}: done in {seconds:.0f} s")
    return Outcome(job, True, seconds)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a torch without CUDA support: no GPU to hand out
        return 0


def _run_processes(jobs: list[Job], parallel: int, threads: int, log) -> list[Outcome]:
    gpus = _gpu_count()
    pending = list(enumerate(jobs, 1))
    running: dict[int, tuple[subprocess.Popen, Job, float, int]] = {}  # slot -> process
    outcomes = []
    try:
        while pending or running:
            for slot in range(parallel):
                if slot in running or not pending:
                    continue
                i, job = pending.pop(0)
                running[slot] = (*_start(job, threads, slot, gpus), job, time.perf_counter(), i)
                gpu = f", GPU {slot % gpus}" if gpus > 1 else ""
                log(f"[{i}/{len(jobs)}] {job.label} (process {slot + 1}/{parallel}{gpu})")
            time.sleep(0.5)
            for slot, (proc, job, started, i) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                seconds = time.perf_counter() - started
                if proc.returncode == 0:
                    log(f"[{i}/{len(jobs)}] {job.label}: done in {seconds:.0f} s")
                    outcomes.append(Outcome(job, True, seconds))
                else:
                    error = _last_error(job.log_path, proc.returncode)
                    log(f"[{i}/{len(jobs)}] {job.label} failed: {error} (log: {job.log_path})")
                    outcomes.append(Outcome(job, False, seconds, error))
    finally:  # interrupted: the workers stop too (each also stops when its parent dies)
        for proc, *_ in running.values():
            proc.terminate()
        for proc, *_ in running.values():
            proc.wait()
    return outcomes


def _start(job: Job, threads: int, slot: int, gpus: int) -> tuple[subprocess.Popen]:
    spec = job.log_path.with_suffix(".job.json")
    write_json_atomic(spec, job.to_dict())
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["ONNXKD_SWEEP_THREADS"] = str(threads)
    env["ONNXKD_SWEEP_PARENT"] = str(os.getpid())
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    log_file = open(job.log_path, "a")  # noqa: SIM115 - the child owns it until it exits
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "onnxkd.sweep.worker", str(spec)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    finally:
        log_file.close()
    return (proc,)


def _last_error(log_path: Path, code: int) -> str:
    try:
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return f"exit code {code}" + (f": {lines[-1].strip()}" if lines else "")


def read_job(path: Path) -> dict:
    return json.loads(Path(path).read_text())
