"""The student as onnxruntime-training can take it: checked, at a readable opset and IR version,
with its parameters listed in graph order.

This runs in the main environment on purpose: its onnx knows every opset, while the on-device
environment's onnx (pinned so that artifacts are written at IR 10) cannot even check a model
newer than opset 21, let alone convert it down. Imports onnx, neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import onnx.version_converter

from onnxkd.metadata import INPUT_SPEC, read_metadata
from onnxkd.model_file import load_model_file
from onnxkd.ondevice.config import (
    LABELS_INPUT,
    LOSS_OUTPUT,
    MAX_IR,
    MAX_OPSET,
    MIN_OPSET,
    TEACHER_INPUT,
)
from onnxkd.ondevice.errors import OnDeviceError

TRAINABLE_TYPES = {onnx.TensorProto.FLOAT}
# BatchNormalization inputs 3 and 4 are running statistics, not parameters.
STATISTICS = {"BatchNormalization": (3, 4)}
SLOT_NAMES = {1: "weight", 2: "bias"}


@dataclass(frozen=True)
class Parameter:
    """A trainable initializer: its ONNX name, its module path where one is known, its shape."""

    name: str
    module: str
    shape: tuple[int, ...]

    def matches(self, prefix: str) -> bool:
        return self.name.startswith(prefix) or self.module.startswith(prefix)


def load_student(path: Path) -> onnx.ModelProto:
    """The ONNX model at `path`, or one clear error saying why it is not one."""
    return load_model_file(path, OnDeviceError)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise OnDeviceError("the student imports no default ONNX opset")


def normalize(model: onnx.ModelProto) -> list[str]:
    """Bring `model` (in place) to an opset in [13, 21] and IR <= 10; say what changed."""
    notes = []
    opset = default_opset(model)
    target = min(max(opset, MIN_OPSET), MAX_OPSET)
    if target != opset:
        try:
            converted = onnx.version_converter.convert_version(model, target)
        except Exception as e:
            raise OnDeviceError(
                f"the student is at opset {opset}, which onnxruntime-training 1.19 cannot train, "
                f"and onnx cannot convert it to opset {target} ({e}); export it at an opset "
                f"between {MIN_OPSET} and {MAX_OPSET} (onnxkd distill exports opset 18)"
            ) from e
        model.CopyFrom(converted)
        notes.append(f"opset {opset} -> {target}")
    ir = model.ir_version
    # The converter keeps the IR version; the opset may need a newer one (21 needs IR 10),
    # and opsets <= 21 need nothing from IR 11 on.
    wanted = min(max(ir, onnx.helper.find_min_ir_version_for(model.opset_import)), MAX_IR)
    if wanted != ir:
        notes.append(f"IR {ir} -> {wanted}")
        model.ir_version = wanted
    return notes


def describe_io(model: onnx.ModelProto, path: Path) -> dict:
    """The student's input and logits output; refuses graphs the loss block cannot sit on."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    outputs = list(model.graph.output)
    if len(inputs) != 1:
        raise OnDeviceError(
            f"{path.name} has inputs {[i.name for i in inputs]}; on-device training needs a "
            "student with one input"
        )
    if len(outputs) != 1:
        raise OnDeviceError(
            f"{path.name} has outputs {[o.name for o in outputs]}; on-device training needs a "
            "student with one (batch, classes) logits output"
        )
    (inp,), (out,) = inputs, outputs
    taken = {inp.name, out.name} & {LABELS_INPUT, TEACHER_INPUT, LOSS_OUTPUT}
    if taken:
        raise OnDeviceError(f"{path.name} already uses the names {sorted(taken)}: rename them")
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise OnDeviceError(f"{path.name}'s input {inp.name!r} is not float32")
    dims = out.type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        shape = [d.dim_value or d.dim_param or "?" for d in dims]
        raise OnDeviceError(
            f"{path.name}'s output {out.name!r} has shape {shape}; the loss needs (batch, "
            "classes) logits with a fixed number of classes"
        )
    shape = [d.dim_value or d.dim_param or None for d in inp.type.tensor_type.shape.dim]
    return {
        "input": inp.name,
        "output": out.name,
        "input_shape": shape,
        "classes": dims[1].dim_value,
    }


def parameters(model: onnx.ModelProto) -> list[Parameter]:
    """Float initializers that nodes read as weights, in the order the graph first reads them.

    Scalars and integer initializers are constants (shapes, axes), and BatchNormalization's
    running statistics are not learned: none of them is listed. Names the exporter invented
    (`onnx::Conv_43`, where BatchNorm was folded into a convolution) get the module path of
    the node reading them (`/stage1/stage1.0/Conv` reading slot 1 -> `stage1.0.weight`).
    """
    inits = {
        init.name: init
        for init in model.graph.initializer
        if init.data_type in TRAINABLE_TYPES and len(init.dims) >= 1
    }
    found: dict[str, Parameter] = {}
    for node in model.graph.node:
        skip = STATISTICS.get(node.op_type, ())
        for slot, name in enumerate(node.input):
            if name not in inits or name in found or slot in skip:
                continue
            found[name] = Parameter(name, _module_name(name, node, slot), tuple(inits[name].dims))
    return list(found.values())


def _module_name(name: str, node: onnx.NodeProto, slot: int) -> str:
    if "::" not in name:
        return name
    scopes = [s for s in node.name.split("/") if s]
    if len(scopes) < 2:
        return name
    return f"{scopes[-2]}.{SLOT_NAMES.get(slot, f'input{slot}')}"


def select_frozen(params: list[Parameter], freeze_prefix: int, freeze: tuple[str, ...]) -> set[str]:
    """The names to freeze: the first `freeze_prefix` parameters and those matching `freeze`."""
    if freeze_prefix > len(params):
        raise OnDeviceError(
            f"--freeze-prefix {freeze_prefix} is more than the student's {len(params)} parameters"
        )
    frozen = {p.name for p in params[:freeze_prefix]}
    for prefix in freeze:
        hits = {p.name for p in params if p.matches(prefix)}
        if not hits:
            listing = ", ".join(p.module for p in params)
            raise OnDeviceError(f"--freeze {prefix!r} matches no parameter; they are: {listing}")
        frozen |= hits
    if len(frozen) == len(params):
        raise OnDeviceError("every parameter would be frozen: leave at least one to train")
    return frozen


def prepare(path: Path, freeze_prefix: int = 0, freeze: tuple[str, ...] = ()) -> tuple:
    """The normalized model and a description for the artifacts manifest.

    Returns:
        `(model, info)`: `info` holds the input/output names, the input shape, the class count,
        the opset and IR notes, the student's metadata and the trainable and frozen parameters.
    """
    model = load_student(path)
    io = describe_io(model, path)
    notes = normalize(model)
    params = parameters(model)
    if not params:
        raise OnDeviceError(f"{path.name} has no float weights to train")
    frozen = select_frozen(params, freeze_prefix, freeze)
    metadata = read_metadata(model)
    info = {
        **io,
        "opset": default_opset(model),
        "ir_version": model.ir_version,
        "converted": notes,
        "metadata": metadata,
        "input_spec": json.loads(metadata[INPUT_SPEC]) if INPUT_SPEC in metadata else None,
        "trainable": [_row(p) for p in params if p.name not in frozen],
        "frozen": [_row(p) for p in params if p.name in frozen],
    }
    return model, info


def _row(p: Parameter) -> dict:
    d = asdict(p)
    d["shape"] = list(p.shape)
    return d
