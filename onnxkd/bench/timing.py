"""One way of timing an onnxruntime session, used by every stage that reports a latency.

Fixed inputs, warm-up runs excluded, `time.perf_counter` around `session.run` with outputs
fetched to host memory, then percentiles over the timed runs.
"""

from __future__ import annotations

import time

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
    """Latency statistics in milliseconds, and throughput in samples per second."""
    ms = times * 1e3
    mean = float(ms.mean())
    return {
        "runs": len(ms),
        "mean_ms": mean,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "std_ms": float(ms.std()),
        "cv": float(ms.std() / mean) if mean > 0 else 0.0,
        "throughput": float(batch / times.mean()) if times.mean() > 0 else 0.0,
    }


def interleaved_p50(sessions: dict, feeds: dict, rounds: int = 3, runs: int = 30) -> dict:
    """Median latency (ms) of each session, measured in interleaved rounds (A B A B …) so that
    a noisy neighbour slows all of them alike; the ratios between them are what to trust."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            samples[name].append(time_session(session, feeds, runs=runs, warmup=3))
    return {name: float(np.median(np.concatenate(t)) * 1e3) for name, t in samples.items()}
