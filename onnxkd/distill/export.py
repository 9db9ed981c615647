"""Exporting a trained student to ONNX that carries its own preprocessing, and checking it.

Students go through torch's torch.export-based exporter (`dynamo=True`, built on onnxscript), the
maintained one; the TorchScript-based exporter is kept only for what the former cannot export
yet. benchmarks/export_compare.py measures both on every registered student.
"""

from __future__ import annotations

import ast
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from onnxkd import __version__
from onnxkd.data.spec import InputSpec
from onnxkd.metadata import EXPORTER, INPUT_SPEC, STUDENT, VERSION, write_metadata
from onnxkd.runtime import ort_session

# The torch.export-based exporter has no translations below opset 18 (asked for 17 it writes 18
# and onnx's down-converter fails on its Reduce* axes inputs); onnxruntime-training takes <= 21.
OPSET = 18
DYNAMO_MIN_OPSET = 18
# Legacy (TorchScript-based) is kept for fake-quantized models only: torch.export has no
# fake-tensor kernel for fake_quantize_*_cachemask, so with a dynamic batch dynamo fails on them
# (torch 2.13); QAT's QDQ export is to pass exporter="legacy".
EXPORTERS = ("dynamo", "legacy")


def export_student(
    model: torch.nn.Module,
    spec: InputSpec,
    path: Path,
    student_name: str,
    extra_metadata: dict[str, str] | None = None,
    opset: int = OPSET,
    passes: Sequence[Callable[[onnx.ModelProto], bool]] = (),
    exporter: str = "dynamo",
) -> Path:
    """Write `model` as ONNX with a dynamic batch and the input spec in `metadata_props`.

    The graph has one input `input` and one output `logits`, both with a dynamic batch axis.
    `passes` edit the exported graph in place, in order, before it is checked and saved (QAT
    uses them to store int8 weights). The file is written beside the target and renamed into
    place, so a crash never leaves a half-written `student.onnx` that looks complete.

    Args:
        exporter: "dynamo" (torch.export-based, opset >= 18) or "legacy" (TorchScript-based,
            for fake-quantized models).

    Example:
        >>> export_student(model, spec, Path("run/student.onnx"), "resnet8")  # doctest: +SKIP
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ValueError(
            f"the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer, not {opset}; "
            f"pass opset>={DYNAMO_MIN_OPSET} or exporter='legacy'"
        )
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    dummy = torch.zeros((2, *spec.input_shape), dtype=torch.float32)
    proto = _dynamo(model, dummy, opset) if exporter == "dynamo" else _legacy(model, dummy, opset)
    for graph_pass in passes:
        graph_pass(proto)
    meta = {
        INPUT_SPEC: spec.to_json(),
        STUDENT: student_name,
        VERSION: __version__,
        EXPORTER: exporter,
        **(extra_metadata or {}),
    }
    write_metadata(proto, meta)
    proto.producer_name = "onnxkd"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def _dynamo(model: torch.nn.Module, dummy: torch.Tensor, opset: int) -> onnx.ModelProto:
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)  # "torchvision is not installed" notices, once per run
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pytree notices inside torch
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                model,
                (dummy,),
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
    finally:
        torch_onnx.setLevel(level)
    proto = program.model_proto
    for graph_pass in DYNAMO_PASSES:
        graph_pass(proto)
    return proto


def _legacy(model: torch.nn.Module, dummy: torch.Tensor, opset: int) -> onnx.ModelProto:
    # Exported to a file and read back: the legacy exporter has no in-memory result.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        out = Path(tmp) / "student.onnx"
        torch.onnx.export(
            model,
            dummy,
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        return onnx.load(str(out))


def quick_onnx(model: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """The model as ONNX in a fraction of a second, to time it (`distill`'s header): the
    TorchScript-based exporter, 5-50x faster than torch.export for a small student."""
    return _legacy(model, example, opset)


def name_nodes_by_module(model: onnx.ModelProto) -> bool:
    """Name each node after the module that made it, as the legacy exporter did
    (`/stage1/stage1.0/conv1/conv1.0/Conv`), instead of dynamo's `node_Conv_142`.

    Node names are what `quantize` reports and excludes by, so they should say where in the
    network a node sits. A node with a weight is named after the weight's module (a Conv that
    absorbed its BatchNorm carries the BatchNorm's scope); others after the module scopes the
    dynamo exporter records in the node's metadata. Run before `drop_node_metadata`.
    """
    params = {i.name for i in model.graph.initializer}
    taken: set[str] = set()
    changed = False
    for node in model.graph.node:
        weight = next((n for n in node.input[1:2] if n in params and n.endswith(".weight")), None)
        if weight is not None:
            parts = weight.removesuffix(".weight").split(".")
            scopes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        else:
            meta = {p.key: p.value for p in node.metadata_props}
            try:
                scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))[1:-1]
            except (ValueError, SyntaxError):
                continue
        name = "/" + "/".join([*map(_scope_label, scopes), node.op_type]).lstrip("/")
        if not scopes:
            name = f"/{node.op_type}"
        unique, n = name, 0
        while unique in taken:
            n += 1
            unique = f"{name}_{n}"
        taken.add(unique)
        changed |= node.name != unique
        node.name = unique
    return changed


def _scope_label(scope: str) -> str:
    """A module's label in a legacy node name: its attribute name with any indices after it
    (`conv1` for `stage1.0.conv1`, `conv.0.0` for `stage1.0.conv.0.0`)."""
    parts = scope.split(".")
    start = len(parts) - 1
    while start > 0 and parts[start].isdigit():
        start -= 1
    return ".".join(parts[start:])


def drop_node_metadata(model: onnx.ModelProto) -> bool:
    """Remove the per-node provenance the dynamo exporter writes (in place).

    Each node carries its Python stack trace and fx node: the exporting machine's source paths,
    and 7-15% of a small student's file. Model-level `metadata_props` stay.
    """
    changed = False
    for node in model.graph.node:
        if node.metadata_props:
            del node.metadata_props[:]
            changed = True
    return changed


def name_folded_biases(model: onnx.ModelProto) -> bool:
    """Rename the bias a BatchNorm fold created, `<layer>.weight_bias`, to `<layer>.bias`.

    onnxscript's BatchNorm fusion names the new bias after the weight; the legacy path (through
    `onnxkd ondevice`'s naming) called it `<layer>.bias`, which is what `--freeze` matches.
    """
    taken = {i.name for i in model.graph.initializer} | {v.name for v in model.graph.input}
    taken |= {out for node in model.graph.node for out in node.output}
    renamed: dict[str, str] = {}
    for init in model.graph.initializer:
        stem = init.name.removesuffix(".weight_bias")
        if stem != init.name and f"{stem}.bias" not in taken:
            renamed[init.name] = init.name = f"{stem}.bias"
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            if name in renamed:
                node.input[slot] = renamed[name]
    return bool(renamed)


def pool_globally(model: onnx.ModelProto) -> bool:
    """Turn a ReduceMean over H and W of a 4-D map (keepdims) back into GlobalAveragePool.

    torch.export decomposes `AdaptiveAvgPool2d(1)` into a mean. onnxruntime pools globally in its
    blocked NCHWc layout, but reduces only after reordering to NCHW: measured 1.15x the legacy
    export's batch-1 latency on resnet20, 1.02x with this pass (benchmarks/export_compare.py).
    """
    inits = {i.name: i for i in model.graph.initializer}
    values = (*model.graph.input, *model.graph.value_info)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.HasField("tensor_type")
    }
    changed = False
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) != 2 or node.input[1] not in inits or ranks.get(node.input[0]) != 4:
            continue
        axes = sorted(int(a) % 4 for a in onnx.numpy_helper.to_array(inits[node.input[1]]).ravel())
        if axes != [2, 3] or attrs.get("keepdims", 1) != 1:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        changed = True
    if changed:  # drop the axes tensors nothing reads any more
        read = {name for node in model.graph.node for name in node.input}
        read |= {o.name for o in model.graph.output}
        unread = [i for i in model.graph.initializer if i.name not in read]
        for init in unread:
            model.graph.initializer.remove(init)
    return changed


# Applied in order to every dynamo export, before the caller's passes.
DYNAMO_PASSES: tuple[Callable[[onnx.ModelProto], bool], ...] = (
    name_folded_biases,
    pool_globally,
    name_nodes_by_module,  # after pool_globally, which changes op types; needs the metadata
    drop_node_metadata,
)


def check_export(
    model: torch.nn.Module,
    path: Path,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
) -> dict:
    """onnxruntime vs torch over (input, label) batches: max abs difference and accuracies.

    Batches are streamed, so the validation split never has to fit in memory at once.
    """
    session = ort_session(path)
    model = model.eval().to("cpu")
    max_diff = 0.0
    n = ort_hits = torch_hits = agree = 0
    with torch.inference_mode():
        for inputs, labels in batches:
            x = inputs.astype(np.float32, copy=False)
            ours = session.run(None, {"input": x})[0]
            ref = model(torch.from_numpy(x)).numpy()
            max_diff = max(max_diff, float(np.abs(ours - ref).max()))
            ort_hits += int((ours.argmax(1) == labels).sum())
            torch_hits += int((ref.argmax(1) == labels).sum())
            agree += int((ours.argmax(1) == ref.argmax(1)).sum())
            n += len(labels)
    n = max(n, 1)
    return {
        "onnx": str(path),
        "max_abs_diff": max_diff,
        "onnxruntime_accuracy": ort_hits / n,
        "torch_accuracy": torch_hits / n,
        "top1_agreement": agree / n,
        "samples": n,
    }
