"""One way of timing an onnxruntime session, used by every stage that reports a latency.

Fixed inputs, warm-up runs excluded, `time.perf_counter` around `session.run` with outputs
fetched to host memory, then percentiles over the timed runs. Comparisons (this session against
that one, cached against online distillation) run in interleaved rounds, so that a noisy
neighbour on a shared machine slows every contender alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_session(
    session, feeds: dict, runs: int = 50, warmup: int = 5, min_seconds: float = 0.0
) -> np.ndarray:
    """Seconds per `session.run(None, feeds)` over `runs` timed runs (and at least
    `min_seconds` of them), after `warmup` untimed ones."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def summarize(times: np.ndarray, batch: int) -> dict:
    """Latency statistics in milliseconds, and throughput in samples per second.

    Throughput is the batch over the median latency, like the p50 reported beside it: the mean
    is pulled up by the odd run a neighbour or the scheduler slowed, so two figures from one
    measurement would otherwise disagree.
    """
    ms = times * 1e3
    mean = float(ms.mean())
    median = float(np.median(times))
    return {
        "runs": len(ms),
        "mean_ms": mean,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "std_ms": float(ms.std()),
        "cv": float(ms.std() / mean) if mean > 0 else 0.0,
        "throughput": float(batch / median) if median > 0 else 0.0,
    }


def interleaved_rounds(
    tasks: dict[str, Callable[[], float | None]],
    rounds: int,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each task in each of `rounds` rounds, run interleaved (A B C A B C …).

    A task returns the seconds it measured itself (a timed loop inside a longer call, a training
    epoch) or None to be timed whole. `log` gets one line per round.

    Example:
        >>> times = interleaved_rounds({"a": lambda: 0.5, "b": lambda: None}, rounds=2)
        >>> times["a"], len(times["b"])
        ([0.5, 0.5], 2)
    """
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for r in range(rounds):
        for name, task in tasks.items():
            start = time.perf_counter()
            seconds = task()
            times[name].append(time.perf_counter() - start if seconds is None else float(seconds))
        if log is not None:
            log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    return times


def interleaved_p50(sessions: dict, feeds: dict, rounds: int = 3, runs: int = 30) -> dict:
    """Median latency (ms) of each session, measured in interleaved rounds (A B A B …) so that
    a noisy neighbour slows all of them alike; the ratios between them are what to trust."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            samples[name].append(time_session(session, feeds, runs=runs, warmup=3))
    return {name: float(np.median(np.concatenate(t)) * 1e3) for name, t in samples.items()}
