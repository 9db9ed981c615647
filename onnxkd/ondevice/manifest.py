"""`ondevice.json` as a typed, frozen object, parsed once where an artifacts folder is opened.

As with the cache's `Manifest`, nobody else indexes the JSON: a renamed or new key is handled in
`from_dict`/`to_dict`, and a malformed file fails here in one line naming it. The JSON layout is
format v1 as earlier releases wrote it, so their artifacts folders keep opening.

This module imports neither torch nor onnxruntime: the onnxruntime-training environment's
worker reads it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnxkd.data.spec import InputSpec
from onnxkd.ondevice.errors import OnDeviceError

FORMAT = "onnxkd-ondevice-artifacts"
VERSION = 1


def _frozen(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class ParameterRow:
    """A parameter of the student: its ONNX initializer name, module path and shape."""

    name: str
    module: str
    shape: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: Mapping) -> ParameterRow:
        return cls(str(d["name"]), str(d["module"]), tuple(int(n) for n in d["shape"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "module": self.module, "shape": list(self.shape)}


@dataclass(frozen=True)
class StudentInfo:
    """The ONNX student the artifacts were built from."""

    path: str
    sha256: str
    name: str | None  # the registry name distill recorded, if any
    input_spec: InputSpec | None
    input_shape: tuple[int | str, ...]  # with its symbolic batch dimension
    metadata: Mapping[str, str]

    @property
    def file_name(self) -> str:
        return Path(self.path).name

    @classmethod
    def from_dict(cls, d: Mapping) -> StudentInfo:
        spec = d.get("input_spec")
        return cls(
            path=str(d["path"]),
            sha256=str(d["sha256"]),
            name=d.get("name"),
            input_spec=InputSpec.from_dict(spec) if spec is not None else None,
            input_shape=tuple(d["input_shape"]),
            metadata=_frozen(d.get("metadata", {})),
        )

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "name": self.name,
            "input_spec": self.input_spec.to_dict() if self.input_spec else None,
            "input_shape": list(self.input_shape),
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class ArtifactsManifest:
    """What an artifacts folder holds: the student, its graph's names, the loss and optimizer
    baked into the training graphs, and which parameters train.

    Example:
        >>> m = read_artifacts(Path("run/ondevice"))  # doctest: +SKIP
        >>> m.num_classes, m.optimizer, len(m.trainable)  # doctest: +SKIP
        (10, 'adamw', 12)
    """

    id: str  # names the graphs and initial weights: a run can tell it resumes these
    student: StudentInfo
    input: str
    output: str
    num_classes: int
    alpha: float
    temperature: float
    optimizer: str
    weight_decay: float
    trainable: tuple[ParameterRow, ...]
    frozen: tuple[ParameterRow, ...]
    opset: int
    ir_version: int
    converted: tuple[str, ...]  # what was changed for onnxruntime-training
    artifact_ir_versions: Mapping[str, int]
    config: Mapping[str, Any]  # the ArtifactsConfig they were made with
    versions: Mapping[str, str]
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys a newer release added

    @property
    def parameters(self) -> tuple[ParameterRow, ...]:
        return (*self.trainable, *self.frozen)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "the artifacts manifest") -> ArtifactsManifest:
        """Parse a manifest; a wrong format or a malformed one is an `OnDeviceError`."""
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise OnDeviceError(
                f"{where} has artifacts format {d.get('format')} v{d.get('version')}; "
                f"this onnxkd reads {FORMAT} v{VERSION}"
            )
        try:
            loss, optimizer, params = d["loss"], d["optimizer"], d["parameters"]
            return cls(
                id=str(d["id"]),
                student=StudentInfo.from_dict(d["student"]),
                input=str(d["input"]),
                output=str(d["output"]),
                num_classes=int(d["num_classes"]),
                alpha=float(loss["alpha"]),
                temperature=float(loss["temperature"]),
                optimizer=str(optimizer["name"]),
                weight_decay=float(optimizer["weight_decay"]),
                trainable=tuple(ParameterRow.from_dict(p) for p in params["trainable"]),
                frozen=tuple(ParameterRow.from_dict(p) for p in params["frozen"]),
                opset=int(d["opset"]),
                ir_version=int(d["ir_version"]),
                converted=tuple(str(n) for n in d.get("converted", ())),
                artifact_ir_versions=_frozen(d.get("artifact_ir_versions", {})),
                config=_frozen(d.get("config", {})),
                versions=_frozen(d.get("versions", {})),
                extra=_frozen({k: v for k, v in d.items() if k not in _KNOWN}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OnDeviceError(f"{where} is malformed ({type(e).__name__}: {e})") from e

    def to_dict(self) -> dict:
        return {
            **dict(self.extra),
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "student": self.student.to_dict(),
            "input": self.input,
            "output": self.output,
            "num_classes": self.num_classes,
            # the loss block's only loss so far; its name is kept for a reader that checks it
            "loss": {"name": "kd", "alpha": self.alpha, "temperature": self.temperature},
            "optimizer": {"name": self.optimizer, "weight_decay": self.weight_decay},
            "parameters": {
                "trainable": [p.to_dict() for p in self.trainable],
                "frozen": [p.to_dict() for p in self.frozen],
            },
            "opset": self.opset,
            "ir_version": self.ir_version,
            "converted": list(self.converted),
            "artifact_ir_versions": dict(self.artifact_ir_versions),
            "config": dict(self.config),
            "versions": dict(self.versions),
        }


_KNOWN = {
    "format", "version", "id", "student", "input", "output", "num_classes", "loss", "optimizer",
    "parameters", "opset", "ir_version", "converted", "artifact_ir_versions", "config",
    "versions",
}  # fmt: skip
