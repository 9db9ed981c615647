"""The graph passes of post-training quantization, each a small step from file to file.

    simplify (onnxsim) -> quant_pre_process (onnxruntime) -> quantize_static (QDQ)

Each pass reports whether it changed anything and why it was skipped, so the report can say
exactly what was done to the model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from onnxkd.errors import QuantizeError
from onnxkd.files import in_private_cwd
from onnxkd.model_file import load_model_file, non_finite_weights
from onnxkd.runtime import ort_session

# Op types that onnxruntime's static quantizer turns into integer kernels (the rest stay float).
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class PassResult:
    name: str
    changed: bool
    note: str = ""


def load_model(path: Path) -> onnx.ModelProto:
    """Load an ONNX file to quantize, refusing anything else (a missing path, a folder, a file
    that is not ONNX or is truncated, a model with no inputs) with a message that says what
    was found, and refusing weights that hold NaN or Inf."""
    model = load_model_file(path, QuantizeError)
    bad = non_finite_weights(model)
    if bad:
        name, count, size = bad[0]
        others = f"; {len(bad) - 1} more tensor(s) too" if len(bad) > 1 else ""
        raise QuantizeError(
            f"{path} has non-finite weights: tensor {name!r} holds {count} NaN/Inf of its "
            f"{size} values{others}; calibration ranges and INT8 scales would be garbage. "
            "Fix the model (a training run that diverged?) and export it again"
        )
    return model


def simplify(src: Path, dst: Path) -> PassResult:
    """onnxsim's constant folding and shape simplification; on failure the model passes as is."""
    import onnxsim

    model = onnx.load(str(src))
    before = len(model.graph.node)
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as e:  # onnxsim raises bare RuntimeErrors from C++
        onnx.save(model, str(dst))
        return PassResult("simplify", False, f"onnxsim failed ({e}); using the model unsimplified")
    if not ok:
        onnx.save(model, str(dst))
        return PassResult("simplify", False, "onnxsim's check failed; using the model unsimplified")
    onnx.save(simplified, str(dst))
    after = len(simplified.graph.node)
    return PassResult("simplify", after != before, f"{before} -> {after} nodes")


def preprocess(src: Path, dst: Path) -> PassResult:
    """onnxruntime's `quant_pre_process`: shape inference and graph optimization (BN folding)
    so that calibration sees the graph that will be quantized."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    before = len(onnx.load(str(src)).graph.node)
    try:
        with in_private_cwd():  # its symbolic inference writes a file into the cwd on failure
            quant_pre_process(str(src), str(dst))
    except Exception as e:  # symbolic shape inference fails on some exotic graphs
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception as e2:
            onnx.save(onnx.load(str(src)), str(dst))
            return PassResult("preprocess", False, f"quant_pre_process failed ({e2}); skipped")
        note = f"symbolic shape inference failed ({e}); ran without it"
        return PassResult("preprocess", True, note)
    after = len(onnx.load(str(dst)).graph.node)
    return PassResult("preprocess", True, f"{before} -> {after} nodes")


def quantize_qdq(
    src: Path,
    dst: Path,
    calibration_cache: Path,
    method,
    activation_type: str,
    weight_type: str,
    per_channel: bool,
    nodes_to_exclude: list[str] = (),
    reduce_range: bool = False,
) -> PassResult:
    """`quantize_static` in QDQ format from ranges already calibrated into `calibration_cache`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(dst),
        calibration_data_reader=None,
        calibration_cache_path=str(calibration_cache),
        quant_format=QuantFormat.QDQ,
        calibrate_method=method,
        activation_type=getattr(QuantType, activation_type),
        weight_type=getattr(QuantType, weight_type),
        per_channel=per_channel,
        reduce_range=reduce_range,  # 7-bit weights (see quantize.config.REDUCE_RANGE_CHOICES)
        nodes_to_exclude=list(nodes_to_exclude),
        # Bias as int32 and the graph's inputs and outputs in float: what the QDQ fusions expect.
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    counts = quantized_op_counts(onnx.load(str(dst)))
    if counts["quantized"] == 0:
        ops = sorted(Counter(n.op_type for n in onnx.load(str(src)).graph.node))
        raise QuantizeError(
            f"onnxruntime quantized no node of this model: it has {', '.join(ops)}; static "
            f"quantization covers {', '.join(QUANTIZABLE_OPS)} and the ops between them"
        )
    excluded = f", {len(nodes_to_exclude)} nodes kept float" if nodes_to_exclude else ""
    return PassResult(
        "quantize",
        True,
        f"{counts['quantized']} of {counts['candidates']} "
        f"Conv/MatMul/Gemm nodes quantized{excluded}",
    )


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many Conv/MatMul/Gemm nodes read a DequantizeLinear output (i.e. run in INT8)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    candidates = [n for n in model.graph.node if n.op_type in QUANTIZABLE_OPS]
    quantized = [n for n in candidates if n.input and n.input[0] in dq_outputs]
    return {"candidates": len(candidates), "quantized": len(quantized)}


def check_runs(path: Path) -> None:
    """Refuse a model onnxruntime cannot run (an op it has no kernel for), naming the op."""
    ort_session(
        path,
        error=QuantizeError,
        failure=f"onnxruntime cannot run {path.name}, so it cannot be calibrated",
    )


def name_nodes(path: Path) -> PassResult:
    """Give every unnamed node a unique name, so nodes can be excluded and reported by name."""
    model = onnx.load(str(path))
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    if named:
        onnx.save(model, str(path))
    return PassResult("name_nodes", named > 0, f"{named} unnamed nodes named")


def drop_zero_zero_points(model: onnx.ModelProto) -> PassResult:
    """Remove the all-zero zero points of DequantizeLinear nodes on constant int8/int32 tensors.

    Symmetric weights (int8, per channel) and biases (int32) have zero points that are all 0,
    one per output channel, stored next to their scales: in a small per-channel model they are
    5% of the file. ONNX defines an omitted zero point as 0 of the input's type, and
    onnxruntime fuses such nodes into QLinearConv as before; only those read by Conv alone are
    touched, since onnxruntime 1.32 no longer fuses a Gemm whose bias has no zero point.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    dropped: set[str] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or not node.input[2]:
            continue
        if readers.get(node.output[0]) != {"Conv"}:
            continue
        x, zero_point = inits.get(node.input[0]), inits.get(node.input[2])
        if (
            x is None
            or zero_point is None
            or x.data_type not in (TensorProto.INT8, TensorProto.INT32)
        ):
            continue
        if numpy_helper.to_array(zero_point).any():
            continue
        dropped.add(node.input[2])
        del node.input[2]
    still_read = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name in dropped and t.name not in still_read]
    saved = sum(len(t.SerializeToString()) for t in unused)
    for tensor in unused:
        graph.initializer.remove(tensor)
    return PassResult(
        "drop_zero_zero_points", bool(dropped), f"{len(unused)} zero points, {saved} bytes"
    )


def compact_tensor_names(model: onnx.ModelProto) -> PassResult:
    """Rename internal tensors to short ids and drop doc strings.

    A QDQ graph repeats each long exported tensor name (`/stage3/stage3.2/conv/…_QuantizeLinear
    _Output`) several times; in a small INT8 model these strings are a tenth of the file. Node
    names, the graph's inputs and outputs, and the metadata are kept.
    """
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names):x}"
        return names[name]

    before = model.ByteSize()
    for node in graph.node:
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for info in graph.value_info:
        info.name = short(info.name)
    graph.doc_string = ""
    return PassResult("compact_names", True, f"{before} -> {model.ByteSize()} bytes")
