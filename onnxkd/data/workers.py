"""A pool of decoding workers, shared by every photo source of the process.

Threads, not processes: PIL releases the GIL while it decodes and resizes, so threads decode
in parallel, and a decoded photo needs no pickling back (measured in
`benchmarks/photo_pipeline.py`). Results come back in order, one batch at a time, so memory
stays bounded by the batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from onnxkd.errors import DataError

T = TypeVar("T")
R = TypeVar("R")
MAX_DEFAULT_WORKERS = 8

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def default_workers() -> int:
    """The cores this process may use, at most MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def check_workers(workers: int | None) -> int:
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers must be a whole number of at least 1, got {workers!r}")
    return workers


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """`[fn(item) for item in items]`, on `workers` threads, in order; the first error raised."""
    items = list(items)
    # Called from one of the pool's own threads (a decode that needs the folder's common size
    # the first time, say): run here, as waiting on the same pool could deadlock it.
    nested = threading.current_thread().name.startswith("onnxkd-decode")
    if workers <= 1 or len(items) <= 1 or nested:
        return [fn(item) for item in items]
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="onnxkd-decode")
    return list(pool.map(fn, items))
