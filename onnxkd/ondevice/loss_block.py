"""The distillation loss as an onnxruntime-training block (needs the on-device environment).

`loss = (1 − α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`, KL summed over classes and
averaged over the batch: onnxkd's PyTorch `kd` loss, node for node.

The teacher input takes the cache's raw scores at temperature 1 (`CacheSection.scores`, what
`onnxkd distill` hands its `kd` loss), and the block applies `log_softmax(t / T)` itself. So
logits and log-probability caches (probability teachers, rebuilt top-k targets) need no
branch, since softmax ignores per-row constants; T lives in one place, the artifacts, and a
device cannot feed targets softened at another temperature than the one the loss was built
with; and the device does no softmax of its own in numpy.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.training import onnxblock

from onnxkd.ondevice.config import LABELS_INPUT, LOSS_OUTPUT, TEACHER_INPUT


class KDLoss(onnxblock.Block):
    """Adds the `kd` loss on top of the student's logits, with labels and teacher scores inputs.

    Args:
        alpha: α, the weight of the distillation term.
        temperature: T.
        classes: the number of classes (the logits' second axis).

    Example:
        >>> artifacts.generate_artifacts(model, loss=KDLoss(0.9, 4.0, 10), ...)  # doctest: +SKIP
    """

    def __init__(self, alpha: float, temperature: float, classes: int) -> None:
        super().__init__()
        self.alpha, self.temperature, self.classes = float(alpha), float(temperature), classes

    def build(self, logits: str) -> str:
        graph = self.base.graph
        graph.input.append(helper.make_tensor_value_info(LABELS_INPUT, TensorProto.INT64, ["N"]))
        graph.input.append(
            helper.make_tensor_value_info(TEACHER_INPUT, TensorProto.FLOAT, ["N", self.classes])
        )

        def const(name: str, value, dtype=np.float32) -> str:
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(value, dtype), f"kd/{name}")
            )
            return f"kd/{name}"

        def op(op_type: str, inputs: list[str], name: str, **attrs) -> str:
            graph.node.append(
                helper.make_node(op_type, inputs, [f"kd/{name}"], name=f"kd/{name}", **attrs)
            )
            return f"kd/{name}"

        T = const("temperature", self.temperature)
        # SoftmaxCrossEntropyLoss's gradient reads its log-prob output, so it must exist.
        ce = "kd/ce"
        graph.node.append(
            helper.make_node(
                "SoftmaxCrossEntropyLoss",
                [logits, LABELS_INPUT],
                [ce, "kd/ce_log_prob"],
                name="kd/ce",
                reduction="mean",
            )
        )
        log_q = op("LogSoftmax", [op("Div", [logits, T], "student_t")], "log_q", axis=1)
        log_p = op("LogSoftmax", [op("Div", [TEACHER_INPUT, T], "teacher_t")], "log_p", axis=1)
        # Every log_p is finite (caches floor probabilities), so p·(log p − log q) needs no
        # xlogy guard: exp underflowing to 0 gives a 0 term, as torch's where(p > 0) does.
        terms = op("Mul", [op("Exp", [log_p], "p"), op("Sub", [log_p, log_q], "log_ratio")], "kl")
        rows = op("ReduceSum", [terms, const("axes", [1], np.int64)], "kl_rows", keepdims=0)
        kl = op("ReduceMean", [rows], "kl_batchmean", keepdims=0)
        hard = op("Mul", [ce, const("ce_weight", 1 - self.alpha)], "ce_weighted")
        soft = op("Mul", [kl, const("kl_weight", self.alpha * self.temperature**2)], "kl_weighted")
        graph.node.append(helper.make_node("Add", [hard, soft], [LOSS_OUTPUT], name=LOSS_OUTPUT))
        return LOSS_OUTPUT
