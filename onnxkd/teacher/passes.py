"""Graph passes that make teachers found in the wild runnable in batches.

Each pass edits a model in place and says whether it changed anything (and what), so the runner
can record the list of applied passes in the cache manifest. None of them touches weights.
"""

from __future__ import annotations

import difflib

import onnx
from onnx import TensorProto, ValueInfoProto, helper

from onnxkd.errors import TeacherError

BATCH_DIM = "batch"


def graph_inputs(model: onnx.ModelProto) -> list[ValueInfoProto]:
    """Real inputs: old IR versions also list every initializer as a graph input."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def strip_zipmap(model: onnx.ModelProto) -> dict[str, str]:
    """Replace ZipMap outputs (scikit-learn's sequence of maps) by the probability tensor.

    Returns {replaced output: tensor now output}. A sequence of maps cannot be batched into an
    array; the tensor that feeds ZipMap holds the same probabilities.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    replaced = {}
    for i, output in enumerate(list(graph.output)):
        node = producers.get(output.name)
        if node is None or node.op_type != "ZipMap":
            continue
        source = node.input[0]
        graph.node.remove(node)
        new_output = helper.make_tensor_value_info(source, TensorProto.FLOAT, None)
        graph.output.remove(output)
        graph.output.insert(i, new_output)
        replaced[output.name] = source
    return replaced


def fixed_batch_of_one(model: onnx.ModelProto) -> bool:
    """Whether the (first) input's batch dimension is fixed to 1."""
    inputs = graph_inputs(model)
    if not inputs:
        return False
    dims = inputs[0].type.tensor_type.shape.dim
    return len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def make_batch_dynamic(model: onnx.ModelProto) -> bool:
    """Turn a batch dimension fixed to 1 into a symbolic one on inputs and outputs.

    Stale intermediate shapes are dropped so onnxruntime re-infers them. This is only a guess
    at the graph's intent: a Reshape with a hard-coded batch of 1 still breaks, which the runner
    detects by comparing a batched run with single-sample runs.
    """
    if not fixed_batch_of_one(model):
        return False
    for value in [*graph_inputs(model), *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = BATCH_DIM
    del model.graph.value_info[:]
    return True


def expose_tensors(model: onnx.ModelProto, names: list[str]) -> bool:
    """Add intermediate tensors as graph outputs, so their values can be fetched and cached."""
    if not names:
        return False
    graph = model.graph
    produced = {out for node in graph.node for out in node.output}
    existing = {o.name for o in graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v for v in inferred.graph.value_info}
    except Exception:  # shape inference is best effort on odd models
        types = {}
    changed = False
    for name in names:
        if name in existing:
            continue
        if name not in produced:
            close = difflib.get_close_matches(name, sorted(produced), n=5, cutoff=0.4)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise TeacherError(f"teacher has no tensor named {name!r} for --features{hint}")
        if name in types:
            graph.output.append(types[name])
        else:
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        changed = True
    return changed


def producer_chain(model: onnx.ModelProto, tensor: str, depth: int = 6) -> list[str]:
    """Op types that produce `tensor`, walking back through shape-only ops."""
    producers = {out: node for node in model.graph.node for out in node.output}
    passthrough = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
    chain = []
    for _ in range(depth):
        node = producers.get(tensor)
        if node is None:
            break
        chain.append(node.op_type)
        if node.op_type not in passthrough:
            break
        tensor = node.input[0]
    return chain
