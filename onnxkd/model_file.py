"""Checks on a model file given by a user, before any stage spends time on it.

onnx's protobuf decoder answers a text file, an .npz, random bytes and a half-copied .onnx
alike with "Wire format was corrupt" (or, for some, with an empty model and no error at all),
so the file is looked at first and the message says what it actually is.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxkd.errors import OnnxkdError

if TYPE_CHECKING:
    import onnx

# A ModelProto starts with field 1 (ir_version, a varint): tag byte 0x08. Exporters write it
# first, so a file that starts so but does not decode was an ONNX file, cut short or damaged.
ONNX_FIRST_BYTE = 0x08


def load_model_file(path: Path, error: type[OnnxkdError] = OnnxkdError) -> onnx.ModelProto:
    """The ONNX model in `path`, or `error` saying what the file is instead.

    Refuses a missing path, a folder, an empty file, a file that is not ONNX (naming what it
    looks like), a truncated ONNX file, and a model with no graph or no inputs.

    Example:
        >>> load_model_file(Path("models/digits_cnn.onnx")).graph.input[0].name  # doctest: +SKIP
        'input'
    """
    import onnx

    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file; pass the path of an .onnx model")
    if path.is_dir():
        raise error(f"{path} is a folder, not an ONNX file; pass the .onnx file inside it")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{path} is empty (0 bytes), not an ONNX model; export or copy it again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # the protobuf decoder's errors carry no useful type
        raise error(f"{path} is not a readable ONNX model: {_what_it_is(path, size)}") from e
    if not model.graph.node:
        # protobuf decodes some foreign files into an empty message without complaint
        raise error(f"{path} holds no ONNX graph: {_what_it_is(path, size)}")
    if not graph_inputs(model):
        outputs = [o.name for o in model.graph.output]
        raise error(
            f"{path} has no graph inputs (outputs {outputs}): it computes a constant, so there "
            "is nothing to feed, time or calibrate; export the model with its input"
        )
    _load_external_data(model, path, error)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path, error: type[OnnxkdError]) -> None:
    """Weights kept in files beside the model (models over 2 GB): refused by name if missing."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not any(uses_external_data(t) for t in model.graph.initializer):
        return
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(
            f"{path} keeps its weights in external data files that cannot be read ({first}); "
            "copy them beside the model"
        ) from e


def graph_inputs(model: onnx.ModelProto) -> list:
    """The inputs a caller feeds: before IR 4 every initializer was listed as an input too."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def _what_it_is(path: Path, size: int) -> str:
    """What a file that does not decode as ONNX looks like, and how to fix it."""
    with open(path, "rb") as f:
        head = f.read(512)
    if zipfile.is_zipfile(path):
        kind = "a zip archive (a NumPy .npz, a PyTorch checkpoint?)"
    elif head.startswith(b"\x93NUMPY"):
        kind = "a NumPy .npy array"
    elif head.startswith(b"\x89HDF"):
        kind = "an HDF5 file (a Keras .h5 model?)"
    elif _is_text(head):
        kind = f"a text file starting {head[:30].decode(errors='replace').strip()!r}"
    elif head[0] == ONNX_FIRST_BYTE:
        return (
            f"it starts like an ONNX model but is truncated or damaged ({size} bytes); "
            "copy or export it again"
        )
    else:
        kind = "binary data that is not ONNX"
    return f"it is {kind}, {size} bytes; pass a model exported to .onnx"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


def non_finite_weights(model: onnx.ModelProto) -> list[tuple[str, int, int]]:
    """(name, non-finite values, values) of every float weight holding NaN or Inf, in graph
    order: initializers, then Constant nodes' values."""
    from onnx import numpy_helper

    tensors = list(model.graph.initializer)
    tensors += [
        a.t for node in model.graph.node if node.op_type == "Constant" for a in node.attribute
    ]
    found = []
    for tensor in tensors:
        if not tensor.HasField("data_type") or tensor.data_location == 1:  # external: not loaded
            continue
        try:
            values = numpy_helper.to_array(tensor)
        except Exception:  # a type numpy cannot hold (float8, …) is left to onnxruntime
            continue
        if values.dtype.kind != "f":
            continue
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            found.append((tensor.name, bad, int(values.size)))
    return found
