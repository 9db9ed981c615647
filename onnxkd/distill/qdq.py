"""QDQ graph passes for a QAT export, and the check that onnxruntime runs it with int8 kernels.

PyTorch's exporter writes fake quantization as float weight -> QuantizeLinear ->
DequantizeLinear pairs with one-element scales. Each pass below is a small exact rewrite (the
model computes the same numbers after it) that moves the file towards what onnxruntime's QDQ
fusion turns into integer kernels:

    inline_identities -> scalar_qparams -> fold_weight_quantization -> integer_clip

No torch here: the int8 check serves any `.onnx` file.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxkd.runtime import ort_session, session_options

Pass = Callable[[onnx.ModelProto], bool]

# Integer kernels of onnxruntime's CPU provider besides the QLinear* family (QLinearConv,
# QLinearAdd, …) that its QDQ fusion and dynamic quantization emit.
INT8_OPS = frozenset(
    {"ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"}
)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _has_axis(node: onnx.NodeProto) -> bool:
    return any(a.name == "axis" for a in node.attribute)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Constants nothing reads, and shapes recorded for tensors nothing produces any more."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    produced = {name for node in graph.node for name in node.output}
    for info in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(info)


def inline_identities(model: onnx.ModelProto) -> bool:
    """Read initializers directly where the exporter copies them through Identity nodes (it
    does so for deduplicated constants such as shared zero points), so later passes see them."""
    graph = model.graph
    inits = _initializers(model)
    outputs = {o.name for o in graph.output}
    dropped = [
        n
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    ]
    for node in dropped:
        _rename_input(model, node.output[0], node.input[0])
        graph.node.remove(node)
    _drop_unused(model)
    return bool(dropped)


def scalar_qparams(model: onnx.ModelProto) -> bool:
    """Give per-tensor QuantizeLinear/DequantizeLinear scalar scales and zero points.

    torch exports them as one-element vectors, and onnxruntime's selectors for QLinearAdd (and
    other element-wise int8 ops) accept scalars only: with vectors every residual Add stays a
    float Add between a DequantizeLinear and a QuantizeLinear.
    """
    graph = model.graph
    inits = _initializers(model)
    changed = False
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or _has_axis(node):
            continue
        for i in (1, 2):
            if i >= len(node.input) or node.input[i] not in inits:
                continue
            tensor = inits[node.input[i]]
            if list(tensor.dims) != [1]:
                continue
            # A new name: the vector may also be read where a vector is wanted.
            name = f"{tensor.name}_scalar"
            if name not in inits:
                value = numpy_helper.to_array(tensor).reshape(())
                inits[name] = numpy_helper.from_array(value, name)
                graph.initializer.append(inits[name])
            node.input[i] = name
            changed = True
    _drop_unused(model)
    return changed


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_to_even(x / scale) + zero_point)."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zero_point.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def fold_weight_quantization(model: onnx.ModelProto) -> bool:
    """Store quantized weights as int8 initializers: float W -> QuantizeLinear becomes the int8
    tensor it computes. The file shrinks about 4x, and the DequantizeLinear -> Conv pattern left
    is the one onnxruntime's QDQ fusion expects for weights."""
    graph = model.graph
    inits = _initializers(model)
    folded = [
        n
        for n in graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) == 3 and all(i in inits for i in n.input)
    ]
    for node in folded:
        x, scale, zp = (numpy_helper.to_array(inits[name]) for name in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        name = f"{node.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(_quantize(x, scale, zp, axis), name))
        _rename_input(model, node.output[0], name)
        graph.node.remove(node)
    _drop_unused(model)
    return bool(folded)


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def integer_clip(model: onnx.ModelProto) -> bool:
    """DequantizeLinear -> Clip -> QuantizeLinear with one scale and zero point becomes a Clip
    on the integers, with the bounds quantized.

    This is a ReLU6 that QAT could not fuse into a layer: its output is re-observed with its
    input's quantizer (qat_graph.py), so the Clip sits between two identical quantizations,
    and onnxruntime would run it in float between a dequantize and a quantize. Clipping the
    integers is exact: quantization is monotonic and maps every value in range to itself.
    """
    graph = model.graph
    users = _consumers(model)
    producers = {out: node for node in graph.node for out in node.output}
    changed = False
    for clip in [n for n in graph.node if n.op_type == "Clip"]:
        dq = producers.get(clip.input[0])
        after = users.get(clip.output[0], [])
        q = after[0] if len(after) == 1 else None
        if (
            dq is None
            or q is None
            or dq.op_type != "DequantizeLinear"
            or q.op_type != "QuantizeLinear"
            or len(users[dq.output[0]]) != 1
            or len(dq.input) != 3
            or len(q.input) != 3
        ):
            continue
        qparams = [_constant(model, name) for name in (*dq.input[1:], *q.input[1:])]
        if any(p is None or p.size != 1 for p in qparams):
            continue
        scale, zero_point, q_scale, q_zero_point = (p.reshape(()) for p in qparams)
        if scale != q_scale or zero_point != q_zero_point:
            continue
        bound_names = (list(clip.input[1:]) + ["", ""])[:2]  # min and max are optional
        bounds = [_constant(model, name) if name else None for name in bound_names]
        if any(name and bound is None for name, bound in zip(bound_names, bounds, strict=True)):
            continue  # a bound computed at run time
        inputs = [dq.input[0]]
        for kind, bound in zip(("min", "max"), bounds, strict=True):
            name = ""
            if bound is not None:
                name = f"{q.output[0]}_{kind}"
                value = _quantize(bound.reshape(()), scale, zero_point, 0)
                graph.initializer.append(numpy_helper.from_array(value, name))
            inputs.append(name)
        index = list(graph.node).index(clip)
        graph.node.insert(index, onnx.helper.make_node("Clip", inputs, [q.output[0]], clip.name))
        for node in (dq, clip, q):
            graph.node.remove(node)
        changed = True
    _drop_unused(model)
    return changed


QDQ_PASSES: tuple[Pass, ...] = (
    inline_identities,
    scalar_qparams,
    fold_weight_quantization,
    integer_clip,
)


def apply_passes(model: onnx.ModelProto, passes: Sequence[Pass]) -> list[str]:
    """Run `passes` in order on `model` (in place); the names of those that changed it."""
    return [p.__name__ for p in passes if p(model)]


def optimized_op_types(path: Path) -> Counter:
    """Op types of the graph onnxruntime's CPU provider actually runs, after all its fusions."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        # Quiet: the NCHWc serialization notice is expected here.
        ort_session(path, options=session_options(optimized_model_path=optimized))
        graph = onnx.load(str(optimized)).graph
    return Counter(node.op_type for node in graph.node)


def count_int8_ops(path: Path) -> int:
    """How many nodes onnxruntime runs with integer kernels (QLinearConv, QGemm, …): zero means
    the file only looks quantized and every op still computes in float.

    Example:
        >>> count_int8_ops(Path("run/student.int8.onnx"))  # doctest: +SKIP
        14
    """
    ops = optimized_op_types(path)
    return sum(n for op, n in ops.items() if op in INT8_OPS or op.startswith("QLinear"))
