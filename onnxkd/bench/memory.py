"""Each model's own peak memory, measured in a fresh process that loads only that model.

One process that creates sessions for a big and a small model can say nothing about the small
one: its resident set already holds the big one's weights and arena, and a process-wide peak
reported on every row gives the small model the big one's figure. So each (model, EP) gets a
process of its own (about 0.2 s to start; onnxruntime and numpy only, no torch). It records
its resident set just before the session is created, then, for each batch size in increasing
order (onnxruntime's arena only grows), the peak while the model runs a few times. The figure
reported is that peak less the baseline: the memory this model adds to a process that runs it.

    python -m onnxkd.bench.memory REQUEST.json   (writes the result as JSON on stdout)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

RUNS_PER_BATCH = 3
TIMEOUT_SECONDS = 600


def own_peak_mb(
    path: Path, ep: str, threads: int | None, feeds: dict[int, dict[str, np.ndarray]]
) -> dict[int, float]:
    """Peak resident memory (MB) that `path` adds at each batch of `feeds`, on `ep`.

    Raises RuntimeError with the child's last line when the model cannot run there alone (a
    custom op registered only in this process, say); the caller reports no figure then.
    """
    with tempfile.TemporaryDirectory(prefix="onnxkd-mem-") as tmp:
        arrays = {f"{batch}/{name}": x for batch, feed in feeds.items() for name, x in feed.items()}
        np.savez(Path(tmp) / "feeds.npz", **arrays)
        _write_identity_model(Path(tmp) / "identity.onnx")
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"model": str(path), "ep": ep, "threads": threads}))
        done = subprocess.run(
            [sys.executable, "-m", "onnxkd.bench.memory", str(request)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
        )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise RuntimeError(lines[-1])
    return {int(batch): mb for batch, mb in json.loads(done.stdout).items()}


class PeakMemory:
    """Peak resident memory of this process while the `with` block runs, sampled every ms."""

    def __init__(self, interval: float = 0.001) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        return self._process.memory_info().rss

    def __enter__(self) -> PeakMemory:
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _write_identity_model(path: Path) -> None:
    """A one-node model whose session the child creates before its baseline, so that
    onnxruntime's own start-up (its environment, thread pools) is not charged to the model."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [value],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _measure(request: Path) -> dict[int, float]:
    """The child's side: onnxruntime started, a baseline, then the model's session and runs,
    batch by batch."""
    from onnxkd.runtime import ort_session

    spec = json.loads(request.read_text())
    warm = ort_session(request.parent / "identity.onnx", spec["ep"], spec["threads"])
    warm.run(None, {"x": np.zeros(1, np.float32)})
    with np.load(request.parent / "feeds.npz") as stored:
        feeds: dict[int, dict[str, np.ndarray]] = {}
        for key in stored.files:
            batch, name = key.split("/", 1)
            feeds.setdefault(int(batch), {})[name] = stored[key]
    memory = PeakMemory()
    baseline = memory.rss()
    peaks = {}
    with memory:
        session = ort_session(spec["model"], spec["ep"], spec["threads"])
        for batch in sorted(feeds):
            for _ in range(RUNS_PER_BATCH):
                session.run(None, feeds[batch])
            peaks[batch] = round((max(memory.peak, memory.rss()) - baseline) / 2**20, 1)
    return peaks


if __name__ == "__main__":
    print(json.dumps(_measure(Path(sys.argv[1]))))
