"""What a model needs in memory to run, read from its graph: its weights (parameters × dtype)
and the peak of its activations at a batch size, beside the resident memory bench measures.

The activation peak walks the graph in its stored (topological) order with shapes inferred at
that batch: a tensor is live from the node that makes it to the last node that reads it, and
the peak is the largest sum of live tensors while one node runs (its inputs and its outputs
at once). Tensors computed from weights alone are left out (onnxruntime folds or fuses them),
and so are the float tensors of a QDQ graph that onnxruntime's INT8 kernels replace.
It is an estimate of what an allocator that frees each tensor after its last use
must hold, not onnxruntime's own plan: onnxruntime fuses nodes (fewer intermediates), may
reuse buffers in place and keeps an arena that rounds up. Tensors whose shape cannot be
inferred are left out and counted, so a partial figure never passes for a whole one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxkd.files import in_private_cwd

MB = 2**20


@dataclass(frozen=True)
class GraphMemory:
    """Weights and the activation peak of one model at one batch size, in bytes."""

    batch: int
    weights_bytes: int
    weights_by_dtype: dict[str, int]
    peak_activation_bytes: int
    peak_after_node: str | None  # the node running at the peak: where a user would look
    unknown_tensors: int  # intermediate tensors whose size could not be inferred
    notes: list[str] = field(default_factory=list)

    @property
    def dominated_by(self) -> str | None:
        """Which needs more memory; None when tensors of unknown size could tip the balance."""
        if self.peak_activation_bytes > self.weights_bytes:
            return "activations"
        return None if self.unknown_tensors else "weights"

    def to_dict(self) -> dict:
        return {
            "batch": self.batch,
            "weights_mb": round(self.weights_bytes / MB, 3),
            "weights_mb_by_dtype": {k: round(v / MB, 3) for k, v in self.weights_by_dtype.items()},
            "peak_activations_mb": round(self.peak_activation_bytes / MB, 3),
            "peak_at_node": self.peak_after_node,
            "dominated_by": self.dominated_by,
            "unknown_tensors": self.unknown_tensors,
            "notes": self.notes,
        }


def graph_memory(path: Path, batch: int) -> GraphMemory:
    """Weights and activation peak of the model at `path` when it runs `batch` samples."""
    return graph_memories(path, (batch,))[0]


def graph_memories(path: Path, batches) -> list[GraphMemory]:
    """`graph_memory` at each batch size, reading the model and its weights once."""
    model = onnx.load(str(path), load_external_data=False)
    weights = _weights_by_dtype(model.graph)
    ops = {n.op_type for n in model.graph.node}
    general = []
    if {"QuantizeLinear", "DequantizeLinear"} <= ops:
        general.append(
            "QDQ graphs: the float tensors around a node between DequantizeLinear and "
            "QuantizeLinear are not counted (onnxruntime runs it as one INT8 kernel, such as "
            "QLinearConv, on the 8-bit tensors, which are)"
        )
    if any(a.type == onnx.AttributeProto.GRAPH for n in model.graph.node for a in n.attribute):
        general.append("nodes with subgraphs (If, Loop, Scan): their inner tensors are not counted")
    return [_at_batch(model, batch, weights, general) for batch in batches]


def _at_batch(model: onnx.ModelProto, batch: int, weights: dict, general: list) -> GraphMemory:
    notes = []
    inferred, how = _infer_shapes(_with_batch(model, batch, notes))
    if how:
        notes.append(how)
    sizes = _tensor_bytes(inferred.graph)
    sizes.update(dict.fromkeys(_fused_by_qdq(inferred.graph), 0))
    peak, at, unknown = _activation_peak(inferred.graph, sizes)
    total = sum(weights.values())
    return GraphMemory(batch, total, weights, peak, at, unknown, [*notes, *general])


def _weights_by_dtype(graph: onnx.GraphProto) -> dict[str, int]:
    """Bytes of the initializers and Constant nodes, per element type."""
    totals: Counter[str] = Counter()
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        totals[dtype.name] += int(np.prod(t.dims, dtype=np.int64)) * dtype.itemsize
    return dict(totals)


def _with_batch(model: onnx.ModelProto, batch: int, notes: list[str]) -> onnx.ModelProto:
    """A copy whose graph inputs have `batch` as their first dimension where it is not fixed."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    weights = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in weights or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
        elif dims and dims[0].dim_value != batch:
            notes.append(f"input {value.name} has a fixed batch of {dims[0].dim_value}")
    return fixed


def _infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The model with every intermediate shape onnxruntime's symbolic inference can give (it
    knows onnxruntime's own ops, such as the QLinear ones of an INT8 model), else onnx's."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with in_private_cwd():  # on failure it saves the model into the current directory
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True), None
    except Exception as e:  # an op it does not know; onnx's inference skips such ops instead
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        return inferred, f"shapes from onnx's inference (onnxruntime's failed: {reason})"


def _tensor_bytes(graph: onnx.GraphProto) -> dict[str, int]:
    """The size of every tensor whose element type and dimensions are all known."""
    sizes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        t = value.type.tensor_type
        if not t.elem_type or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if any(d is None for d in dims):
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
        sizes[value.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    return sizes


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """The initializers and every tensor computed from them alone. Those are no activations:
    onnxruntime folds them into initializers when the session starts, or (DequantizeLinear of
    an INT8 weight) fuses them into the kernel that reads them, such as QLinearConv."""
    constant = {t.name for t in graph.initializer}
    for node in graph.node:
        if all(name in constant for name in node.input if name):
            constant.update(o for o in node.output if o)
    return constant


def _fused_by_qdq(graph: onnx.GraphProto) -> set[str]:
    """Float tensors of a QDQ graph that onnxruntime never holds: around a node that reads only
    DequantizeLinear outputs and whose outputs only QuantizeLinear reads, it runs one INT8
    kernel (QLinearConv, QLinearMatMul, …) from the 8-bit input to the 8-bit output."""
    constant = _constant_tensors(graph)
    producer = {o: n for n in graph.node for o in n.output if o}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                readers.setdefault(name, []).append(node)
    # A Relu or Clip read only by QuantizeLinear is dropped (onnxruntime's ReluQuantFusion and
    # ClipQuantFusion: the quantized range clips instead), so its input counts as quantized.
    dropped = [
        n
        for n in graph.node
        if n.op_type in ("Relu", "Clip")
        and readers.get(n.output[0])
        and all(r.op_type == "QuantizeLinear" for r in readers[n.output[0]])
    ]

    def quantized_by(reader) -> bool:
        return reader.op_type == "QuantizeLinear" or any(reader is d for d in dropped)

    fused_nodes, fused = [], {d.output[0] for d in dropped}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or any(
            node is d for d in dropped
        ):
            continue
        inputs = [n for n in node.input if n and n not in constant]
        outputs = [o for o in node.output if o]
        if not inputs or not outputs:
            continue
        from_dq = all(n in producer and producer[n].op_type == "DequantizeLinear" for n in inputs)
        to_q = all(readers.get(o) and all(quantized_by(r) for r in readers[o]) for o in outputs)
        if from_dq and to_q:
            fused_nodes.append(node)
            fused.update(outputs)
    for node in fused_nodes:
        for name in node.input:
            if name in producer and all(any(r is f for f in fused_nodes) for r in readers[name]):
                fused.add(name)
    return fused - constant


def _activation_peak(graph: onnx.GraphProto, sizes: dict[str, int]) -> tuple[int, str | None, int]:
    """The largest sum of live activations while one node runs, that node, and how many
    activations had no known size."""
    weights = _constant_tensors(graph)
    outputs = {v.name for v in graph.output}
    last_use = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = i
    end = len(graph.node)
    for name in outputs:
        last_use[name] = end  # what the caller is handed stays until the run ends
    live = {v.name for v in graph.input if v.name not in weights}
    unknown = {name for name in live if name not in sizes}
    current = sum(sizes.get(name, 0) for name in live)
    peak, at = current, None
    for i, node in enumerate(graph.node):
        if all(o in weights for o in node.output if o):
            continue
        made = [o for o in node.output if o and o not in live]
        unknown |= {o for o in made if o not in sizes}
        current += sum(sizes.get(o, 0) for o in made)
        live.update(made)
        if current > peak:
            peak, at = current, node.name or f"{node.op_type} #{i}"
        for name in [*node.input, *made]:
            if name in live and last_use.get(name, i) <= i:
                live.discard(name)
                current -= sizes.get(name, 0)
    return peak, at, len(unknown)
