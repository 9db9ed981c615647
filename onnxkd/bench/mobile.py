"""What can be known about CoreML and NNAPI on a host that has neither.

CoreML runs only on Apple devices and NNAPI only on Android, so `onnxkd bench --ep coreml` or
`--ep nnapi` elsewhere cannot time anything. What it can do is what onnxruntime's own mobile
tooling does without a device: estimate how many nodes, in how many partitions, the provider
would take (the usability checker, read as data rather than as its log), convert the model to
the ORT format a mobile build loads, and say plainly what this leaves unknown.

Example:
    >>> from pathlib import Path
    >>> from onnxkd.bench.mobile import mobile_analysis
    >>> r = mobile_analysis(Path("models/digits_cnn.onnx"), "nnapi", Path("/tmp/mobile"))
    >>> r["verdict"], r["supported_nodes"], r["total_nodes"], r["timed"]
    ('YES', 10, 10, False)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

from onnxkd.errors import ProviderError
from onnxkd.providers import PROVIDERS, STATIC_CHECK_EPS

MOBILE_EPS = STATIC_CHECK_EPS

# The usability checker's op lists for the two model formats onnxruntime's CoreML EP can build.
# NeuralNetwork is what the EP builds unless given ModelFormat=MLProgram, so it leads.
COREML_FORMATS = {
    "NeuralNetwork": "coreml_supported_neuralnetwork_ops.md",
    "MLProgram": "coreml_supported_mlprogram_ops.md",
}

# The ONNX element types a quantized tensor can have, by their short names.
_QTYPES = {2: "u8", 3: "s8", 4: "u16", 5: "s16", 21: "u4", 22: "s4"}
_INT32 = 6
_QUANT_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1}


def mobile_analysis(model: Path, ep: str, out_dir: Path) -> dict:
    """Check `model` statically for CoreML or NNAPI and convert it to the ORT format.

    Runs onnxruntime's mobile usability checker on the model after the same basic
    optimization its converter applies, and writes the ORT-format model and the operator list
    for a reduced onnxruntime build into `out_dir`. Nothing is timed.

    Args:
        model: an ONNX file.
        ep: "coreml" or "nnapi".
        out_dir: where the `.ort` file and its `required_operators` config go (created if
            missing; files of the same names are replaced, each only once complete).

    Returns:
        A JSON-serializable dict: "ep", "model", "timed" (False), "verdict" (onnxruntime's
        "YES"/"MAYBE"/"NO"), "supported_nodes", "total_nodes", "partitions",
        "unsupported_ops" (sorted op types; a non-ONNX domain is kept as "domain:Op"),
        "ort_model", "required_operators" (path strings, the latter possibly None), "notes"
        (plain sentences on what this leaves unknown), "quantization" ("float", "u8s8",
        "s8s8", ...). Also "partition_sizes", "assumes_fixed_shapes", "dynamic_inputs",
        "caveats" (the op-level conditions the checker did not verify), "onnxruntime" (its
        version), and for CoreML "coreml_format" with "coreml_formats" (both formats' results).

    Raises:
        ProviderError: `ep` is not a mobile provider, `model` is not a readable ONNX model, or
            onnxruntime cannot load, analyze or convert it.

    Example:
        >>> r = mobile_analysis(Path("student.int8.onnx"), "nnapi", Path("bench/mobile"))
        >>> r["quantization"], r["verdict"]
        ('u8s8', 'YES')
    """
    key = ep.strip().lower()
    if key not in MOBILE_EPS:
        raise ProviderError(f"mobile analysis covers {', '.join(MOBILE_EPS)}, not {ep!r}")
    model, out_dir = Path(model), Path(out_dir)
    proto = _read(model)
    quant = quantization_of(proto)

    import onnxruntime as ort

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProviderError(f"cannot create the output folder {out_dir}: {_one_line(e)}") from e
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".mobile-") as tmp:
        staged = _stage(model, proto, Path(tmp) / "src")
        check = _check(model, staged, key, Path(tmp) / "check")
        ort_file, config = _convert(model, staged, Path(tmp) / "ort")
        # Each file appears under its final name only once it is complete.
        ort_path = out_dir / ort_file.name
        os.replace(ort_file, ort_path)
        config_path = None
        if config is not None:
            config_path = out_dir / config.name
            os.replace(config, config_path)

    main = check["formats"][check["primary"]]
    result = {
        "ep": key,
        "model": str(model),
        "timed": False,
        "verdict": main["verdict"],
        "supported_nodes": main["supported_nodes"],
        "total_nodes": main["total_nodes"],
        "partitions": main["partitions"],
        "unsupported_ops": main["unsupported_ops"],
        "ort_model": str(ort_path),
        "required_operators": None if config_path is None else str(config_path),
        "notes": _notes(key, check, quant, ort_path, config_path),
        "quantization": quant["scheme"],
        "partition_sizes": main["partition_sizes"],
        "assumes_fixed_shapes": main["assumes_fixed_shapes"],
        "dynamic_inputs": check["dynamic_inputs"],
        "caveats": main["caveats"],
        "onnxruntime": ort.__version__,
    }
    if key == "coreml":
        result["coreml_format"] = check["primary"]
        result["coreml_formats"] = check["formats"]
    return result


def quantization_of(model) -> dict:
    """How `model` is quantized, read from its graph.

    "scheme" is "float", "<activations><weights>" such as "u8s8" or "s8s8", "weights-s8" (no
    quantized activations), "dynamic" (DynamicQuantizeLinear) or "mixed"; "qdq" is the count of
    QuantizeLinear/DequantizeLinear nodes; "per_channel" whether any weight has several scales.
    """
    const = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            const[node.output[0]] = node.attribute[0].t
    nodes = list(model.graph.node)
    activations, weights, per_channel = set(), set(), False
    for node in nodes:
        if node.op_type == "QuantizeLinear" and node.input[0] not in const:
            activations.add(_quantized_type(node, const))
        elif node.op_type == "DequantizeLinear" and node.input[0] in const:
            if const[node.input[0]].data_type == _INT32:
                continue  # a bias, int32 whatever the scheme
            weights.add(_QTYPES.get(const[node.input[0]].data_type, "other"))
            scale = const.get(node.input[1]) if len(node.input) > 1 else None
            per_channel |= scale is not None and _numel(scale) > 1
        elif node.op_type in _QUANT_WEIGHT_INPUT:
            i = _QUANT_WEIGHT_INPUT[node.op_type]
            if len(node.input) > i and node.input[i] in const:
                weights.add(_QTYPES.get(const[node.input[i]].data_type, "other"))
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes)
    if any(n.op_type == "DynamicQuantizeLinear" for n in nodes):
        scheme = "dynamic"
    elif not activations and not weights:
        scheme = "float"
    elif len(activations) > 1 or len(weights) > 1:
        scheme = "mixed"
    elif not activations:
        scheme = f"weights-{weights.pop()}"
    else:
        scheme = activations.pop() + (weights.pop() if weights else "")
    return {"scheme": scheme, "qdq": qdq, "per_channel": per_channel}


def _quantized_type(node, const) -> str:
    """QuantizeLinear's output type: its zero point's, else `output_dtype`, else uint8."""
    if len(node.input) > 2 and node.input[2] in const:
        return _QTYPES.get(const[node.input[2]].data_type, "other")
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:
            return _QTYPES.get(attr.i, "other")
    return "u8"


def _numel(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _read(model: Path):
    """The model's graph without its external weights; refuses anything but an ONNX model."""
    from onnxkd.model_file import load_model_file

    return load_model_file(model, ProviderError)


def _stage(model: Path, proto, folder: Path) -> Path:
    """A copy of the model, with its external data, under a name the converter accepts.

    The converter skips files not ending in `.onnx` or ending in `.optimized.onnx`, and writes
    scratch files beside its input, so it only ever sees this private copy.
    """
    import onnx

    folder.mkdir()
    stem = model.name[:-5] if model.name.lower().endswith(".onnx") else model.name
    if stem.lower().endswith(".optimized"):
        stem = stem[: -len(".optimized")] + "_optimized"
    staged = folder / f"{stem}.onnx"
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    if not external:
        shutil.copyfile(model, staged)
        return staged
    try:
        full = onnx.load(str(model))
    except Exception as e:
        raise ProviderError(f"cannot read the external weights of {model} ({_one_line(e)})") from e
    onnx.save_model(full, str(staged), save_as_external_data=True, location=f"{stem}.onnx.data")
    return staged


def _quiet_logger() -> logging.Logger:
    """A logger for the checker's helpers that records nothing (we read their return values)."""
    logger = logging.getLogger("onnxkd.bench.mobile.checker")
    logger.propagate = False
    logger.handlers[:] = [logging.NullHandler()]
    logger.setLevel(logging.CRITICAL)
    return logger


def _check(model: Path, staged: Path, ep: str, work: Path) -> dict:
    """The usability checker's estimate for `ep`, per model format, as data.

    Follows `usability_checker.checker`: basic optimization first (what the ORT conversion bakes
    in), shape inference, a check requiring fixed-size inputs, and, when that is not a YES and
    the model has dynamic inputs, a second check as if the shapes were fixed (see `_judge`).
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    work.mkdir()
    optimized = work / staged.name
    try:
        optimize_model(staged, optimized, use_external_initializers=True)
    except Exception as e:
        raise ProviderError(f"onnxruntime cannot load {model}: {_one_line(e)}") from e
    try:
        shaped = ModelProtoWithShapeInfo(optimized)
        graph_model = shaped.model_with_shape_info
    except Exception as e:
        raise ProviderError(f"ONNX shape inference failed on {model}: {_one_line(e)}") from e
    if not graph_model.graph.node:
        raise ProviderError(f"{model} has no nodes left after basic optimization: nothing to run")

    dynamic, _ = uc.check_shapes(graph_model.graph, _quiet_logger())
    if ep == "nnapi":
        checkers = {"NNAPI": uc.check_nnapi_partitions}
    else:
        checkers = {
            fmt: (lambda m, fixed, f=filename: uc.check_coreml_partitions(m, fixed, f))
            for fmt, filename in COREML_FORMATS.items()
        }
    formats = {}
    for fmt, checker in checkers.items():
        try:
            formats[fmt] = _judge(checker, graph_model, bool(dynamic), uc.PartitioningInfo)
        except Exception as e:  # the checker is a script's internals: any failure is its own
            raise ProviderError(
                f"onnxruntime's usability checker failed on {model}: {_one_line(e)}"
            ) from e
    return {
        "formats": formats,
        "primary": next(iter(formats)),
        "dynamic_inputs": [_describe_input(i) for i in dynamic],
    }


def _judge(checker, model, dynamic: bool, info_type) -> dict:
    """One format's result. The verdict is the checker's (the better of as-is and fixed-shape);
    on a tie the fixed-shape counts are kept, since the notes tell the user to fix the shapes
    and counts that only reflect a dynamic batch axis would hide what the op types allow."""
    as_is = checker(model, True)
    chosen, verdict = as_is, as_is.suitability()
    if verdict != info_type.TryWithEP.YES and dynamic:
        fixed = checker(model, False)
        if fixed.suitability() >= verdict:
            chosen, verdict = fixed, fixed.suitability()
    summary = _summary(chosen, verdict.name)
    summary["assumes_fixed_shapes"] = chosen is not as_is
    if chosen is not as_is:
        summary["as_is"] = _summary(as_is, as_is.suitability().name)
    return summary


def _summary(info, verdict: str) -> dict:
    return {
        "verdict": verdict,
        "supported_nodes": info.num_supported_nodes,
        "total_nodes": info.num_nodes,
        "partitions": info.num_partitions,
        "partition_sizes": [len(g) for g in info.supported_groups],
        "unsupported_ops": sorted(_op_name(op) for op in info.unsupported_ops),
        "unsupported_due_to_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
        "unsupported_due_to_rank": info.num_unsupported_nodes_due_to_rank,
        "caveats": [_op_name(c) for c in info.supported_ops_checker.get_caveats()],
    }


def _op_name(domain_op: str) -> str:
    return domain_op.removeprefix("ai.onnx:")


def _describe_input(value) -> dict:
    dims = [
        d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
        for d in value.type.tensor_type.shape.dim
    ]
    return {"name": value.name, "shape": dims}


def _convert(model: Path, staged: Path, out: Path) -> tuple[Path, Path | None]:
    """The ORT-format model and its required-operators config, converted for an ARM device.

    The Runtime optimization style is onnxruntime's advice for NNAPI and CoreML: only basic
    optimizations are baked in, so fusions into CPU-only contrib ops do not take nodes away
    from the provider.
    """
    try:
        with _quiet_tools():
            from onnxruntime.tools.convert_onnx_models_to_ort import (
                OptimizationStyle,
                convert_onnx_models_to_ort,
            )

            convert_onnx_models_to_ort(
                staged,
                output_dir=out,
                optimization_styles=[OptimizationStyle.Runtime],
                target_platform="arm",
            )
    except Exception as e:
        raise ProviderError(f"converting {model} to the ORT format failed: {_one_line(e)}") from e
    ort_files = sorted(out.glob("*.ort"))
    if len(ort_files) != 1:
        raise ProviderError(
            f"converting {model} to the ORT format wrote {len(ort_files)} .ort files, expected 1"
        )
    configs = sorted(out.glob("*.config"))
    return ort_files[0], configs[0] if configs else None


@contextlib.contextmanager
def _quiet_tools():
    """Keep the converter's prints and INFO logs off the terminal, and the root logger as found.

    Importing onnxruntime's tools calls `logging.basicConfig`, which would make every later
    INFO message of the process print; the handler it adds is removed again on the way out.
    """
    root = logging.getLogger()
    handlers = list(root.handlers)
    import onnxruntime.tools.convert_onnx_models_to_ort  # noqa: F401  (sets its loggers up)

    tools_log = logging.getLogger("ort_format_model.utils")
    level = tools_log.level
    tools_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tools_log.setLevel(level)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)


def _one_line(e: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _notes(ep: str, check: dict, quant: dict, ort_path: Path, config: Path | None) -> list[str]:
    title = PROVIDERS[ep].title
    main = check["formats"][check["primary"]]
    notes = [
        f"Nothing was timed: the {title} execution provider runs only on {PROVIDERS[ep].only_on} "
        f"devices and this is a static analysis made on {platform.system()} "
        f"{platform.machine()}; measure on a device before counting on a speed-up.",
        "The analysis judges op types only, not shapes, data types or attributes, so a YES can "
        "still fall back to the CPU EP at runtime; the caveats list the conditions it did not "
        "check.",
    ]
    if main["assumes_fixed_shapes"]:
        as_is = main["as_is"]
        inputs = ", ".join(f"{i['name']} {i['shape']}" for i in check["dynamic_inputs"])
        param = next(
            (d for i in check["dynamic_inputs"] for d in i["shape"] if isinstance(d, str)),
            None,
        )
        how = (
            f"python -m onnxruntime.tools.make_dynamic_shape_fixed --dim_param {param} "
            "--dim_value 1 in.onnx fixed.onnx"
            if param
            else "python -m onnxruntime.tools.make_dynamic_shape_fixed"
        )
        why = (
            "NNAPI runs only fixed-size tensors"
            if ep == "nnapi"
            else "CoreML accepts dynamic shapes but usually runs them slower"
        )
        notes.append(
            f"The model has dynamic input shapes ({inputs}): as is, the checker counts "
            f"{as_is['supported_nodes']}/{as_is['total_nodes']} nodes for {title} (verdict "
            f"{as_is['verdict']}), since it takes nodes with dynamic inputs as unsupported; the "
            f"numbers here assume fixed shapes. {why}: fix them before deploying, e.g. `{how}`."
        )
    scheme = quant["scheme"]
    if ep == "nnapi":
        notes.append(
            "NNAPI runs quantized nodes only with unsigned INT8 (QUInt8) activations; "
            "int8 activations fall back to the CPU EP."
        )
        notes.append(
            "NNAPI is deprecated from Android 15 (API level 35): on newer devices plan on "
            "onnxruntime's CPU or XNNPACK execution provider."
        )
        if scheme.startswith("s8"):
            notes.append(
                f"This model's activations are int8 ({scheme.upper()}): NNAPI will not run its "
                "quantized nodes; quantize with `onnxkd quantize --target x86` (U8S8: uint8 "
                "activations, int8 weights) for NNAPI."
            )
        if quant["per_channel"]:
            notes.append(
                "This model's weights are quantized per channel, which NNAPI accepts only from "
                "Android 10 (API level 29), and not for MatMul."
            )
    else:
        notes.append(
            "The CoreML checker does not accept QuantizeLinear/DequantizeLinear, so INT8 QDQ "
            "models show as poorly supported on CoreML."
        )
        if quant["qdq"]:
            notes.append(
                f"This model is QDQ-quantized ({scheme.upper()}, {quant['qdq']} "
                "QuantizeLinear/DequantizeLinear nodes): under CoreML those nodes, and the "
                "partitions they split, run on the CPU EP; give CoreML the float model instead."
            )
        other = [f for f in check["formats"] if f != check["primary"]]
        for fmt in other:
            r = check["formats"][fmt]
            missing = (
                f", unsupported: {', '.join(r['unsupported_ops'])}" if r["unsupported_ops"] else ""
            )
            notes.append(
                f"CoreML figures are for the {check['primary']} format, which onnxruntime's CoreML "
                f"EP builds by default; with ModelFormat={fmt} (iOS 15+, macOS 12+) the checker "
                f"says {r['verdict']}: {r['supported_nodes']}/{r['total_nodes']} nodes in "
                f"{r['partitions']} partitions{missing}."
            )
    notes.append(
        f"{ort_path.name} is an ORT-format model for onnxruntime mobile, converted for ARM with "
        "the Runtime optimization style: basic optimizations are baked in, the others replay at "
        "load time only with session option session.enable_saved_runtime_optimizations=1."
        + (
            f" {config.name} lists the operators a reduced onnxruntime build needs "
            "(build.py --include_ops_by_config)."
            if config is not None
            else ""
        )
    )
    return notes
