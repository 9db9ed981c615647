"""Loading a teacher `.onnx`: what it takes, what it outputs, and the passes it needs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxkd.data.preprocessing import Preprocessing, find_preprocessing
from onnxkd.errors import TeacherError
from onnxkd.files import sha256_file
from onnxkd.metadata import INPUT_SPEC, TEACHER_ACCURACY, read_metadata
from onnxkd.model_file import load_model_file
from onnxkd.teacher import passes

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _shape(value: onnx.ValueInfoProto) -> list[int | str | None]:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return []
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value.type.tensor_type.shape.dim
    ]


def _type_name(value: onnx.ValueInfoProto) -> str:
    t = value.type
    if t.HasField("tensor_type"):
        return f"tensor({TensorProto.DataType.Name(t.tensor_type.elem_type).lower()})"
    if t.HasField("sequence_type"):
        return "sequence"
    if t.HasField("map_type"):
        return "map"
    return "unknown"


def _is_class_scores(value: onnx.ValueInfoProto) -> bool:
    t = value.type
    return t.HasField("tensor_type") and t.tensor_type.elem_type in FLOAT_TYPES


@dataclass
class Teacher:
    """A loaded teacher, with the graph passes it needed already applied to `model`."""

    path: Path
    sha256: str
    model: onnx.ModelProto  # edited copy: what the runner executes
    original: onnx.ModelProto  # as loaded: the reference for batching checks
    input_name: str
    input_shape: list[int | str | None]
    input_dtype: str
    output: str  # the class-score output to cache
    features: list[str]
    metadata_spec: str | None
    passes: list[str] = field(default_factory=list)
    # Settings from timm/Hugging Face configs beside the file or plain metadata keys.
    preprocessing: Preprocessing | None = None
    # Its measured top-1 accuracy where one is on record (TEACHER_ACCURACY in its metadata,
    # else the model card beside the file, if the card's sha256 is the file's), and where.
    recorded_accuracy: float | None = None
    accuracy_recorded_by: str | None = None

    def describe(self) -> dict:
        """What the manifest records about the teacher."""
        return {
            "path": str(self.path.resolve()),
            "sha256": self.sha256,
            "ir_version": self.original.ir_version,
            "opset": {o.domain or "ai.onnx": o.version for o in self.original.opset_import},
            "producer": f"{self.original.producer_name} {self.original.producer_version}".strip(),
            "inputs": [
                {"name": i.name, "shape": _shape(i), "type": _type_name(i)}
                for i in passes.graph_inputs(self.original)
            ],
            "outputs": [
                {"name": o.name, "shape": _shape(o), "type": _type_name(o)}
                for o in self.original.graph.output
            ],
            "output_used": self.output,
            "passes": self.passes,
        }


def _choose_output(model: onnx.ModelProto, requested: str | None) -> str:
    outputs = list(model.graph.output)
    names = [o.name for o in outputs]
    if requested is not None:
        if requested not in names:
            raise TeacherError(f"teacher has no output {requested!r}; its outputs are {names}")
        if not _is_class_scores(outputs[names.index(requested)]):
            raise TeacherError(
                f"teacher output {requested!r} is {_type_name(outputs[names.index(requested)])}, "
                "not a float tensor of class scores"
            )
        return requested
    candidates = [o.name for o in outputs if _is_class_scores(o)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        described = ", ".join(f"{o.name}: {_type_name(o)}" for o in outputs)
        raise TeacherError(f"teacher has no float tensor output of class scores ({described})")
    raise TeacherError(
        f"teacher has outputs {candidates}; pass --teacher-output {candidates[-1]} "
        "(or the one that holds the class scores)"
    )


def load_teacher(
    path: Path, output: str | None = None, features: list[str] | None = None
) -> Teacher:
    """Load a teacher `.onnx` and apply the passes it needs to run in batches.

    Example:
        >>> t = load_teacher(Path("models/digits_cnn.onnx"))  # doctest: +SKIP
        >>> t.output, t.input_shape
        ('logits', ['batch', 1, 8, 8])
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"teacher file {path} does not exist")
    original = load_model_file(path, TeacherError)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    renamed = passes.strip_zipmap(model)
    applied = [f"strip_zipmap: {old} -> {new} (ZipMap removed)" for old, new in renamed.items()]
    # A user naming the ZipMap output means the probabilities it held.
    inputs = passes.graph_inputs(model)
    if len(inputs) != 1:
        raise TeacherError(
            f"teacher has {len(inputs)} inputs {[i.name for i in inputs]}; onnxkd supports "
            "teachers with one data input"
        )
    chosen = _choose_output(model, renamed.get(output, output) if output else None)
    features = list(features or [])
    if passes.expose_tensors(model, [f for f in features if f != chosen]):
        applied.append(f"expose_tensors: {', '.join(features)}")
    # Keep only the outputs onnxkd fetches so the session skips label post-processing.
    keep = [chosen, *features]
    by_name = {o.name: o for o in model.graph.output}
    del model.graph.output[:]
    model.graph.output.extend(by_name[name] for name in keep)
    inp = inputs[0]
    if not inp.type.HasField("tensor_type"):
        raise TeacherError(f"teacher input {inp.name!r} is {_type_name(inp)}, not a tensor")
    elem = inp.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name
    except Exception as e:
        raise TeacherError(f"teacher input {inp.name!r} has unsupported type {elem}") from e
    meta = read_metadata(original)
    digest = sha256_file(path)
    recorded, recorded_by = recorded_accuracy(path, meta.get(TEACHER_ACCURACY), digest)
    return Teacher(
        path=path,
        sha256=digest,
        model=model,
        original=original,
        input_name=inp.name,
        input_shape=_shape(inp),
        input_dtype=dtype,
        output=chosen,
        features=features,
        metadata_spec=meta.get(INPUT_SPEC),
        passes=applied,
        preprocessing=find_preprocessing(path, meta),
        recorded_accuracy=recorded,
        accuracy_recorded_by=recorded_by,
    )


# A model card (models/*.md, written by the zoo's training scripts) has these table rows.
CARD_ACCURACY = re.compile(r"^\| test accuracy \| \*\*([0-9.]+)\*\*", re.MULTILINE)
CARD_SHA256 = re.compile(r"^\| sha256 \| `([0-9a-f]{64})` \|", re.MULTILINE)


def recorded_accuracy(path: Path, metadata_value: str | None, digest: str):
    """(accuracy, who records it): the teacher's metadata, else its model card `NAME.md`
    beside it when the card describes this very file (same sha256); (None, None) if neither."""
    if metadata_value is not None:
        return _recorded_accuracy(path, metadata_value), "its metadata"
    card = path.with_suffix(".md")
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None, None
    accuracy, sha = CARD_ACCURACY.search(text), CARD_SHA256.search(text)
    if accuracy is None or sha is None or sha.group(1) != digest:
        return None, None  # no card for this file: another model, or retrained since
    value = float(accuracy.group(1))
    return (value, f"its model card {card.name}") if 0.0 <= value <= 1.0 else (None, None)


def _recorded_accuracy(path: Path, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        accuracy = float(value)
    except ValueError:
        accuracy = float("nan")
    if not 0.0 <= accuracy <= 1.0:
        raise TeacherError(
            f"{path}: metadata {TEACHER_ACCURACY} is {value!r}; it must be a fraction in "
            "0..1 (fix or remove it)"
        )
    return accuracy


def output_kind(model: onnx.ModelProto, output: str) -> str | None:
    """`probs`, `log_probs`, or None (unknown) from the op that produces the output."""
    chain = passes.producer_chain(model, output)
    for op in chain:
        if op == "Softmax":
            return "probs"
        if op == "LogSoftmax":
            return "log_probs"
    return None


def numeric_kind(scores: np.ndarray) -> str:
    """Tell probabilities and log-probabilities from logits by their values."""
    x = scores.astype(np.float64)
    if x.min() >= 0.0 and x.max() <= 1.0 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return "probs"
    if x.max() <= 0.0 and np.allclose(np.exp(x).sum(axis=1), 1.0, atol=1e-3):
        return "log_probs"
    return "logits"
