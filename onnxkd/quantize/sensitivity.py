"""Which parts of a model lose the most to quantization, from onnxruntime's QDQ debugging tool.

The float and the QDQ model are run on a few calibration samples with every activation exposed
(`qdq_loss_debug`); each quantized activation gets the noise power of its QDQ value against the
float model's, relative to the signal, averaged over channels. Per channel, because one outlier
channel dominates a tensor's energy and hides the coarse steps every other channel suffers
(which the next layer may amplify). Noise accumulates along the graph, so a tensor's own
contribution is its noise minus the largest at the inputs of the node that produced it: the
tensors that add the most are the culprits. The QDQ pair's own pre/post values cannot be compared
directly: onnxruntime folds ReLU into the quantization range, so "pre" is the raw convolution.

Removing an activation's quantization means keeping float both the node that produces it and
every node that reads it (otherwise onnxruntime still quantizes it as their input or output),
so the unit of exclusion is that group of nodes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from onnxkd.errors import QuantizeError
from onnxkd.runtime import ort_session


def rank_units(
    float_model: Path, qdq_model: Path, batches: list[np.ndarray], memory_mb: int = 1024
) -> list[dict]:
    """Quantized activations, most added noise first, each with the nodes to keep float to
    remove its quantization. Uses as many of `batches` as fit `memory_mb` of activations."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    qdq = onnx.load(str(qdq_model))
    input_name = qdq.graph.input[0].name
    activations = {}
    with tempfile.TemporaryDirectory(prefix="onnxkd-sens-") as tmp:
        for name, path in (("float", float_model), ("qdq", qdq_model)):
            augmented = str(Path(tmp) / f"{name}.onnx")
            modify_model_output_intermediate_tensors(str(path), augmented)
            if name == "float":
                batches = _fit_memory(augmented, input_name, batches, memory_mb)
            feeds = iter([{input_name: b} for b in batches])
            activations[name] = collect_activations(augmented, feeds)
    matching = create_activation_matching(activations["qdq"], activations["float"])
    channels = _channel_counts(onnx.load(str(float_model)))
    sizes = [len(b) for b in batches]
    noise = {
        name: _channel_noise(m["float"], m["post_qdq"], sizes, channels.get(name))
        for name, m in matching.items()
        if m.get("float") and m.get("post_qdq")
    }
    producers, readers, sources = _qdq_neighbours(qdq)
    units = []
    for tensor, power in noise.items():
        nodes = [*producers.get(tensor, []), *readers.get(tensor, [])]
        if not nodes:
            continue
        inflow = max((noise.get(u, 0.0) for u in sources.get(tensor, [])), default=0.0)
        units.append(
            {
                "tensor": tensor,
                "added_noise": round(float(power - inflow), 6),
                "sqnr_db": round(float(-10 * np.log10(max(power, 1e-12))), 2),
                "nodes": nodes,
            }
        )
    units.sort(key=lambda u: u["added_noise"], reverse=True)
    return units


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Axis-1 size of every tensor whose shape inference recorded it."""
    counts = {}
    for info in [*model.graph.value_info, *model.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].dim_value > 0:
            counts[info.name] = dims[1].dim_value
    return counts


def _channel_noise(reference, quantized, batch_sizes, channels: int | None) -> float:
    """Quantization noise power relative to signal power, averaged over channels (axis 1).

    `qdq_loss_debug` hands every tensor flattened, one array per batch; the batch sizes and
    the channel count restore the (batch, channel, rest) view."""
    noise = signal = 0.0
    for f, q, n in zip(reference, quantized, batch_sizes, strict=True):
        c = channels if channels and f.size % (n * channels) == 0 else 1
        f = f.reshape(n, c, -1).astype(np.float64)
        q = q.reshape(n, c, -1).astype(np.float64)
        noise = noise + ((f - q) ** 2).sum(axis=(0, 2))
        signal = signal + (f**2).sum(axis=(0, 2))
    live = signal > 1e-12
    return float(np.mean(noise[live] / signal[live])) if live.any() else 0.0


def _fit_memory(augmented: str, input_name: str, batches: list[np.ndarray], memory_mb: int):
    """The leading samples of `batches` whose activations (both models) fit the budget."""
    session = ort_session(augmented, error=QuantizeError)
    per_sample = sum(o.nbytes for o in session.run(None, {input_name: batches[0][:1]}))
    keep = max(1, (memory_mb << 20) // (2 * max(per_sample, 1)))
    samples = np.concatenate(batches)[:keep]
    size = len(batches[0])
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def _qdq_neighbours(qdq: onnx.ModelProto) -> tuple[dict, dict, dict]:
    """For each quantized activation X: the node that writes X, the nodes that read its
    dequantized copy, and the quantized activations that node reads."""
    quantize_of = {n.output[0]: n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    dequantized = {
        n.output[0]: quantize_of[n.input[0]]
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantize_of
    }
    quantized = set(quantize_of.values())
    producers: dict[str, list[str]] = {}
    readers: dict[str, list[str]] = {}
    sources: dict[str, list[str]] = {}
    for node in qdq.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        inputs = [dequantized[i] for i in node.input if i in dequantized]
        for inp in inputs:
            readers.setdefault(inp, []).append(node.name)
        for out in node.output:
            if out in quantized:
                producers.setdefault(out, []).append(node.name)
                sources[out] = inputs
    return producers, readers, sources


def search_exclusions(
    units: list[dict],
    drop_with: Callable[[list[str]], float],
    max_drop: float,
    max_excluded: int,
    log: Callable[[str], None] = print,
) -> tuple[list[str], list[dict]]:
    """The fewest worst units to keep in float so the accuracy drop is within `max_drop`.

    `drop_with(nodes)` re-quantizes keeping those nodes float and returns the accuracy drop in
    points. The number of units doubles (1, 2, 4, …) until the budget holds or the nodes would
    exceed `max_excluded`, then a bisection finds the smallest number that holds. Returns the
    nodes chosen (the best tried if none held) and every attempt.
    """
    prefixes = []  # prefixes[k - 1]: the nodes of the k worst units
    nodes: list[str] = []
    for unit in units:
        nodes = nodes + [n for n in unit["nodes"] if n not in nodes]
        if len(nodes) > max_excluded:
            break
        prefixes.append(nodes)
    tried: dict[int, float] = {}

    def holds(k: int) -> bool:
        if k not in tried:
            tried[k] = drop_with(prefixes[k - 1])
            log(
                f"accuracy-aware: {len(prefixes[k - 1])} node(s) kept float -> drop "
                f"{tried[k]:.2f} points"
            )
        return tried[k] <= max_drop

    limit = len(prefixes)
    low, high, k = 0, None, 1
    while k <= limit:
        if holds(k):
            high = k
            break
        low = k
        if k == limit:
            break
        k = min(2 * k, limit)
    if high is None:
        best = min(tried, key=tried.get) if tried else 0
    else:
        while high - low > 1:
            mid = (low + high) // 2
            if holds(mid):
                high = mid
            else:
                low = mid
        best = high
    chosen = prefixes[best - 1] if best else []
    attempts = [
        {"units": k, "nodes": len(prefixes[k - 1]), "drop_points": round(d, 3)}
        for k, d in sorted(tried.items())
    ]
    return chosen, attempts
