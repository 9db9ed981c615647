"""The `onnxkd.*` keys written into the `metadata_props` of every `.onnx` file onnxkd makes,
and the two helpers that read and write them.

A student carries its own preprocessing, the cache it was distilled from and how it was
quantized, so quantize and bench need no side files. Defining the keys once means a renamed key
fails here, not silently in every stage that reads it. onnx is imported only when a file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

INPUT_SPEC = "onnxkd.input_spec"  # the InputSpec as JSON: how raw samples become model input
CACHE_KEY = "onnxkd.cache_key"  # the key of the cache the model was trained on
STUDENT = "onnxkd.student"  # the registry name of the student architecture
VERSION = "onnxkd.version"  # the onnxkd release that wrote the file
EXPORTER = "onnxkd.exporter"  # the torch exporter that wrote a student: dynamo or legacy
QUANTIZED = "onnxkd.quantized"  # how it was quantized (ptq-minmax-…, qat); absent when float
ONDEVICE = "onnxkd.ondevice"  # on-device training: the settings of the last run, as JSON
# A teacher's measured top-1 accuracy (a fraction), if its maker recorded one: cache-teacher
# refuses data on which the teacher scores far below it (the wrong preprocessing, most often).
TEACHER_ACCURACY = "onnxkd.teacher_accuracy"
# A temperature fitted to the student's logits (`distill --fit-temperature`), as JSON: the value,
# the split it was fitted on and that split's NLL before and after. The graph is unchanged (the
# argmax does not move); bench and quantize report calibration with and without it.
TEMPERATURE = "onnxkd.temperature"


def read_metadata(model: Path | str | onnx.ModelProto) -> dict[str, str]:
    """The `metadata_props` of an ONNX file or model, read without loading external weights."""
    if isinstance(model, Path | str):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model: onnx.ModelProto, values: dict[str, str], replace: bool = False) -> None:
    """Set `values` in the model's `metadata_props` (in place); `replace` drops the old ones.

    A key already present takes the new value, so a key is never listed twice.
    """
    merged = {} if replace else read_metadata(model)
    merged.update(values)
    del model.metadata_props[:]
    for key, value in merged.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
