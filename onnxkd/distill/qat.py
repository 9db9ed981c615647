"""Quantization-aware training: a trained float student, BatchNorm folded into its convs, with
fake quantization inserted, fine-tuned on the same cached targets and exported as a QDQ model
that onnxruntime runs with int8 kernels.

    best.pt of a float run -> fold_batchnorm -> prepare (FakeQuant) -> train -> export_qat

Quantization is U8S8, the combination onnxruntime's x86 kernels are fast with: activations
unsigned 8-bit, asymmetric, per tensor; weights signed 8-bit, symmetric, per output channel.
A ReLU6 right after a conv or linear layer is quantized as TFLite does it: a ReLU fused into
the layer, whose output range is fixed to [0, 6], so that the quantization itself clamps at 6.
It is built on torch.fx and torch's core fake-quantize ops: fake_quant.py, bn_fold.py and
qat_graph.py. (onnxkd 0.1.0 used the deprecated torch.ao.quantization; the numbers are the same.)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import fx, nn

from onnxkd.data.spec import InputSpec
from onnxkd.distill.checkpoint import BEST, load_weights
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.export import export_student
from onnxkd.distill.qat_graph import fuse_layers, insert_fake_quant
from onnxkd.distill.qdq import QDQ_PASSES
from onnxkd.errors import OnnxkdError
from onnxkd.files import read_json
from onnxkd.metadata import QUANTIZED
from onnxkd.students.custom import same_origin
from onnxkd.workspace import Workspace

QAT_ONNX = "student.int8.onnx"
# Per-channel QuantizeLinear needs opset 13; the legacy exporter is verified there (DESIGN.md).
QAT_OPSET = 13
# torch.export cannot export torch's fake-quantize ops with a dynamic batch (torch 2.13).
QAT_EXPORTER = "legacy"


class QATError(OnnxkdError):
    """QAT cannot start from the float run it was given."""


class QATStudent(nn.Module):
    """A fake-quantized student: its quantizers learn ranges in training mode only.

    Validation data never moves a range, and validation and export use exactly the scales the
    checkpoint holds.
    """

    def __init__(self, prepared: fx.GraphModule) -> None:
        super().__init__()
        self.model = prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def fold_batchnorm(student: nn.Module) -> tuple[fx.GraphModule, list[str]]:
    """The student as an FX graph with each BatchNorm folded into the conv or linear before it
    (running statistics, so in eval mode), each such layer and the ReLU after it fused into one
    `QATLayer` with fake-quantized weights; with the names of the layers whose ReLU stands for
    a ReLU6.

    Folding before QAT means the weights that get fake-quantized are the ones the export
    carries: a Conv with the BN scale in its weights, as onnxruntime will run it. The student
    itself is not modified.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6())
        >>> fold_batchnorm(net)[1]
        ['0']
    """
    graph = fx.symbolic_trace(student.eval())  # its own module tree: swaps stay in it
    return graph, fuse_layers(graph)


def prepare(student: nn.Module, example: torch.Tensor) -> QATStudent:
    """Fold BatchNorm and insert fake quantization: U8S8 everywhere, and the fixed [0, 6] range
    on the output of each layer whose fused ReLU stands for a ReLU6.

    `example` is a batch of the student's input (any values), run once to trace the shapes.
    """
    folded, relu6_layers = fold_batchnorm(student)
    insert_fake_quant(folded, relu6_layers, example)
    return QATStudent(folded).train()


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
    origin = record.get("student_origin")
    if cfg.student is not None and cfg.student != student and not same_origin(origin, cfg.student):
        raise QATError(
            f"--student {cfg.student} does not match the float run {init}, which trained "
            f"{student}; drop --student"
        )
    cache = cfg.cache or Path(record["cache"])
    # A pruned float run's student is its pruned architecture, not the registry's.
    architecture = cfg.architecture or record["config"].get("architecture")
    return replace(
        cfg,
        init=init.resolve(),
        student=student,
        cache=cache,
        architecture=Path(architecture) if architecture else None,
    )


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
    return export_student(
        model,
        spec,
        path,
        student_name,
        {**(extra_metadata or {}), QUANTIZED: "qat"},
        opset=QAT_OPSET,
        passes=QDQ_PASSES,
        exporter=QAT_EXPORTER,
    )
