"""Quantization-aware training: a trained float student, BatchNorm folded into its convs, with
PyTorch's fake quantization inserted, fine-tuned on the same cached targets and exported as a
QDQ model that onnxruntime runs with int8 kernels.

    best.pt of a float run -> fold_batchnorm -> prepare (FakeQuantize) -> train -> export_qat

Quantization is U8S8, the combination onnxruntime's x86 kernels are fast with: activations
unsigned 8-bit, asymmetric, per tensor; weights signed 8-bit, symmetric, per output channel.
A ReLU6 right after a conv or linear layer is quantized as TFLite does it: a ReLU fused into
the layer, whose output range is fixed to [0, 6], so that the quantization itself clamps at 6.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from torch import fx, nn
from torch.ao import quantization as tq
from torch.ao.nn.intrinsic import _FusedModule
from torch.ao.quantization.quantize_fx import fuse_fx, prepare_qat_fx

from onnxkd.data.spec import InputSpec
from onnxkd.distill.checkpoint import BEST, load_weights
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.export import export_student
from onnxkd.distill.qdq import QDQ_PASSES
from onnxkd.errors import OnnxkdError
from onnxkd.files import read_json
from onnxkd.metadata import QUANTIZED
from onnxkd.workspace import Workspace

QAT_ONNX = "student.int8.onnx"
# Per-channel QuantizeLinear needs opset 13; the legacy exporter is verified there (DESIGN.md).
QAT_OPSET = 13
# The uint8 grid of a ReLU6 output: 0 .. 255 steps of 6/255, so that 255 means 6.
RELU6_SCALE = 6.0 / 255.0

# Layers that torch.ao fuses with a following ReLU, and the BatchNorm it folds between them.
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FUSES_WITH_RELU = (*_CONVS, nn.Linear)
_FOLDED_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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


def relu6_qconfig() -> tq.QConfig:
    """`qconfig()` with the activation fixed to ReLU6's range: scale 6/255, zero point 0.

    For a layer with a fused ReLU, this fake quantization computes min(relu(x), 6) on the
    uint8 grid: ReLU6 without a Clip op, and with all 256 codes spent on [0, 6].
    """
    activation = tq.FixedQParamsFakeQuantize.with_args(
        observer=tq.FixedQParamsObserver.with_args(
            scale=RELU6_SCALE, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255
        )
    )
    return tq.QConfig(activation=activation, weight=qconfig().weight)


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


def relu6_to_relu(graph: fx.GraphModule) -> list[str]:
    """Replace each ReLU6 module that directly follows a conv (+ BatchNorm) or linear layer with
    a ReLU, in place, so that `fuse_fx` fuses it into that layer; the names of those layers.

    The function is kept only once `relu6_qconfig()` clamps each named layer's output at 6.
    torch.ao has no Conv + ReLU6 fusion: left alone, the layer's output is fake-quantized
    before the ReLU6, on a range with its negative values, and the export keeps a Clip.
    """
    modules = dict(graph.named_modules())
    calls = Counter(n.target for n in graph.graph.nodes if n.op == "call_module")

    def called_once(node: object, types: tuple[type, ...]) -> bool:
        # A module called in several places must stay what it is in all of them.
        return (
            isinstance(node, fx.Node)
            and node.op == "call_module"
            and isinstance(modules[node.target], types)
            and calls[node.target] == 1
        )

    def feeds_only(node: object, types: tuple[type, ...]) -> bool:
        return called_once(node, types) and len(node.users) == 1

    layers = []
    for node in list(graph.graph.nodes):
        if not called_once(node, (nn.ReLU6,)) or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if feeds_only(source, _FOLDED_NORMS):
            source = source.args[0]
            if not feeds_only(source, _CONVS):
                continue
        elif not feeds_only(source, _FUSES_WITH_RELU):
            continue
        relu6 = modules[node.target]
        parent, _, name = node.target.rpartition(".")
        setattr(graph.get_submodule(parent), name, nn.ReLU(relu6.inplace).train(relu6.training))
        layers.append(source.target)
    return layers


def fold_batchnorm(student: nn.Module) -> tuple[nn.Module, list[str]]:
    """The student as an FX graph with each BatchNorm folded into the conv or linear before it
    (running statistics, so in eval mode), and each conv + ReLU fused into one module; with the
    names of the fused layers whose ReLU stands for a ReLU6 (`relu6_to_relu`).

    Folding before QAT means the weights that get fake-quantized are the ones the export
    carries: a Conv with the BN scale in its weights, as onnxruntime will run it. The student
    itself is not modified.
    """
    graph = fx.symbolic_trace(student.eval())  # its own module tree: swaps stay in it
    relu6_layers = relu6_to_relu(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao's notice to move to torchao
        fused = fuse_fx(graph)
    modules = dict(fused.named_modules())
    for name in relu6_layers:  # a ReLU left unfused would now compute ReLU, not ReLU6
        layer = modules.get(name)
        if not (isinstance(layer, _FusedModule) and isinstance(layer[-1], nn.ReLU)):
            raise QATError(f"torch.ao did not fuse {name} with the ReLU that stands for its ReLU6")
    return fused, relu6_layers


def prepare(student: nn.Module, example: torch.Tensor) -> QATStudent:
    """Fold BatchNorm and insert fake quantization (FX graph mode): `qconfig()` everywhere,
    `relu6_qconfig()` on the layers whose fused ReLU stands for a ReLU6."""
    folded, relu6_layers = fold_batchnorm(student)
    mapping = tq.QConfigMapping().set_global(qconfig())
    for name in relu6_layers:
        mapping.set_module_name(name, relu6_qconfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        prepared = prepare_qat_fx(folded.train(), mapping, (example,))
    observe_inputs(prepared, relu6_layers)
    return QATStudent(prepared).train()


def observe_inputs(prepared: fx.GraphModule, relu6_layers: list[str]) -> None:
    """Give back an observed range to each fixed [0, 6] fake quantization that is not on the
    output of one of `relu6_layers`.

    torch.ao quantizes a layer's input with that layer's activation qconfig where nothing
    before it did (the model's input, for a ReLU6 stem): fixed to [0, 6], it would clamp
    normalized pixels.
    """
    observers = {
        node.target: prepared.get_submodule(node.target)
        for node in prepared.graph.nodes
        if node.op == "call_module" and node.target.startswith("activation_post_process")
    }
    layers = set(relu6_layers)
    # One observer module may serve several tensors (ops that keep their input's range).
    outputs = {
        id(observers[node.target])
        for node in prepared.graph.nodes
        if node.target in observers and getattr(node.args[0], "target", None) in layers
    }
    for target, observer in observers.items():
        if not isinstance(observer, tq.FixedQParamsFakeQuantize) or id(observer) in outputs:
            continue
        parent, _, name = target.rpartition(".")
        setattr(prepared.get_submodule(parent), name, qconfig().activation())


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
            {**(extra_metadata or {}), QUANTIZED: "qat"},
            opset=QAT_OPSET,
            passes=QDQ_PASSES,
        )
