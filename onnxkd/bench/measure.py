"""Measuring one model on one execution provider: session creation, node placement, validation
accuracy, and whether its outputs are finite. (Its own peak memory: `onnxkd.bench.memory`.)"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxkd.errors import ProviderError
from onnxkd.providers import ExecutionProvider
from onnxkd.runtime import ort_session, session_options


def create_session(path: Path, ep: ExecutionProvider, threads: int | None):
    """A session on `ep` and the seconds it took; an error if onnxruntime quietly dropped the EP.

    onnxruntime falls back to CPU when a provider fails to initialise (a missing CUDA library,
    say) and only logs it: timing that session under the EP's name would be a lie.
    """
    started = time.perf_counter()
    session = ort_session(
        path,
        ep,
        threads,
        error=ProviderError,
        failure=f"onnxruntime could not create a {ep.name} session",
        purpose="timed",
    )
    return session, time.perf_counter() - started


def node_placement(path: Path, ep: ExecutionProvider, feeds: dict, threads: int | None) -> dict:
    """How many nodes of the optimized graph each provider ran, from one profiled run."""
    with tempfile.TemporaryDirectory(prefix="onnxkd-prof-") as tmp:
        options = session_options(threads, profile_prefix=os.path.join(tmp, "profile"))
        session = ort_session(path, ep, options=options, error=ProviderError, purpose="timed")
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    placed: dict[str, str] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            placed[args.get("node_index", event["name"])] = args["provider"]
    counts = Counter(placed.values())
    total = sum(counts.values())
    return {
        "nodes": total,
        "by_provider": dict(counts),
        "share_on_ep": round(counts.get(ep.ort_name, 0) / total, 4) if total else None,
    }


@dataclass(frozen=True)
class Score:
    """Top-1 accuracy over the validation samples, how many of them gave NaN or Inf, and the
    scores and labels themselves (for calibration and per-class figures)."""

    accuracy: float
    samples: int
    non_finite: int
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None


def accuracy(session, batches, output: str | None = None) -> Score:
    """Top-1 accuracy of `session` over (input, label) batches, counting non-finite outputs:
    argmax over NaN picks an arbitrary class, so such an accuracy describes a broken model."""
    name = session.get_inputs()[0].name
    all_scores, all_labels = [], []
    for x, labels in batches:
        all_scores.append(
            as_scores(session.run([output] if output else None, {name: x})[0], len(x))
        )
        all_labels.append(np.asarray(labels))
    if not all_scores:
        return Score(0.0, 0, 0)
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    hits = int((scores.argmax(axis=1) == labels).sum())
    return Score(hits / len(labels), len(labels), count_non_finite(scores), scores, labels)


def as_scores(out, samples: int) -> np.ndarray:
    """A model's output as one row of scores per sample."""
    if isinstance(out, list) and out and isinstance(out[0], dict):
        # a ZipMap (scikit-learn's default): one {class: probability} map per sample
        out = [[row[k] for k in sorted(row)] for row in out]
    return np.asarray(out).reshape(samples, -1)


def count_non_finite(scores: np.ndarray) -> int:
    """Samples (rows) with any NaN or Inf; 0 for outputs that are not floating point."""
    if scores.dtype.kind != "f":
        return 0
    return int((~np.isfinite(scores)).any(axis=1).sum())


def parameter_count(path: Path) -> int:
    """Elements of the model's weights: initializers, less the scales and zero points of
    quantization nodes."""
    import onnx

    model = onnx.load(str(path))
    quant_params = {
        name
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear")
        for name in node.input[1:]
    }
    return int(
        sum(
            int(np.prod(t.dims)) if t.dims else 1
            for t in model.graph.initializer
            if t.name not in quant_params
        )
    )
