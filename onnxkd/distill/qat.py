"""Quantization-aware training: a trained float student, BatchNorm folded into its convs, with
PyTorch's fake quantization inserted, fine-tuned on the same cached targets and exported as a
QDQ model that onnxruntime runs with int8 kernels.

    best.pt of a float run -> fold_batchnorm -> prepare (FakeQuantize) -> train -> export_qat

Quantization is U8S8, the combination onnxruntime's x86 kernels are fast with: activations
unsigned 8-bit, asymmetric, per tensor; weights signed 8-bit, symmetric, per output channel.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.quantization.quantize_fx import fuse_fx, prepare_qat_fx

from onnxkd.data.spec import InputSpec
from onnxkd.distill.checkpoint import BEST, load_weights
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.export import export_student
from onnxkd.distill.qdq import QDQ_PASSES
from onnxkd.errors import OnnxkdError
from onnxkd.teacher.cache_files import read_json
from onnxkd.workspace import Workspace

QAT_ONNX = "student.int8.onnx"
QUANTIZED_KEY = "onnxkd.quantized"
# Per-channel QuantizeLinear needs opset 13; the legacy exporter is verified there (DESIGN.md).
QAT_OPSET = 13


class QATError(OnnxkdError):
    """QAT cannot start from the float run it was given."""


def qconfig() -> tq.QConfig:
    """U8S8 fake quantization with plain `FakeQuantize` modules.

    PyTorch's default QAT qconfig uses the fused FusedMovingAvgObsFakeQuantize op, which the
    ONNX exporter rejects; these export to QuantizeLinear/DequantizeLinear. Weights use the
    full -128..127: the exporter refuses the narrow -127..127 range.
    """
    activation = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    weight = tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    return tq.QConfig(activation=activation, weight=weight)


class QATStudent(nn.Module):
    """A fake-quantized student whose observers learn ranges in training mode only.

    FakeQuantize observes whenever its observer is enabled, in eval mode too: tying observers
    to `train()` keeps validation data out of the ranges, and makes validation and export use
    exactly the scales the checkpoint holds.
    """

    def __init__(self, prepared: nn.Module) -> None:
        super().__init__()
        self.model = prepared

    def train(self, mode: bool = True) -> QATStudent:
        super().train(mode)
        self.model.apply(tq.enable_observer if mode else tq.disable_observer)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def fold_batchnorm(student: nn.Module) -> nn.Module:
    """The student as an FX graph with each BatchNorm folded into the conv or linear before it
    (running statistics, so in eval mode), and each conv + ReLU fused into one module.

    Folding before QAT means the weights that get fake-quantized are the ones the export
    carries: a Conv with the BN scale in its weights, as onnxruntime will run it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao's notice to move to torchao
        return fuse_fx(student.eval())


def prepare(student: nn.Module, example: torch.Tensor) -> QATStudent:
    """Fold BatchNorm and insert fake quantization (FX graph mode, `qconfig()` everywhere)."""
    folded = fold_batchnorm(student)
    mapping = tq.QConfigMapping().set_global(qconfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        prepared = prepare_qat_fx(folded.train(), mapping, (example,))
    return QATStudent(prepared).train()


def build(student: nn.Module, spec: InputSpec, init: Path | None) -> QATStudent:
    """The QAT model of `student`, starting from the float weights in `init`/best.pt.

    With `init=None` (a resumed QAT run) the structure alone is built: the run's own
    checkpoint then fills every weight and observer.
    """
    if init is not None:
        try:
            load_weights(init / BEST, student)
        except RuntimeError as e:  # load_state_dict: the weights are for another architecture
            raise QATError(
                f"{init / BEST} does not fit this student ({str(e).splitlines()[0]}); QAT needs "
                "the float run's own student and cache"
            ) from e
    return prepare(student, torch.zeros((2, *spec.input_shape)))


def resolve_init(cfg: DistillConfig, ws: Workspace) -> DistillConfig:
    """The float run a QAT run starts from, and the student and cache it inherits from it.

    Given a QAT run (the workspace's latest run after `distill --qat`), QAT starts again from
    that run's own float run.
    """
    if cfg.init is not None:
        init = cfg.init
    elif "run" not in ws.state():
        raise QATError(
            f"--qat continues a float run, and the workspace {ws.root} has none; run "
            "`onnxkd distill --student …` first or pass --init RUN_DIR"
        )
    else:
        init = ws.latest("run")
    record = read_json(init / "config.json") if (init / "config.json").exists() else None
    if record is not None and record["config"].get("qat"):
        init = Path(record["config"]["init"])
        record = read_json(init / "config.json")
    if not (init / BEST).exists():
        raise QATError(
            f"{init} has no {BEST}: --init needs a float distill run that finished an epoch"
        )
    if record is None:
        raise QATError(f"{init} has no config.json: --init needs a float distill run folder")
    student = record["config"]["student"]
    if cfg.student is not None and cfg.student != student:
        raise QATError(
            f"--student {cfg.student} does not match the float run {init}, which trained "
            f"{student}; drop --student"
        )
    cache = cfg.cache or Path(record["cache"])
    return replace(cfg, init=init.resolve(), student=student, cache=cache)


def export_qat(
    model: QATStudent,
    spec: InputSpec,
    path: Path,
    student_name: str,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write the fake-quantized model as QDQ ONNX with int8 weights, like `export_student`.

    Example:
        >>> export_qat(model, spec, Path("run/student.int8.onnx"), "resnet8")  # doctest: +SKIP
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return export_student(
            model,
            spec,
            path,
            student_name,
            {**(extra_metadata or {}), QUANTIZED_KEY: "qat"},
            opset=QAT_OPSET,
            passes=QDQ_PASSES,
        )
