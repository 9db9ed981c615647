"""One pruning step: the smallest channel ratio whose pruned student meets the step's goal.

Torch-Pruning takes a channel ratio, not a parameter count or a latency, so the ratio is found
by bisection on copies of the student: parameters and MACs fall monotonically with it, and a
latency goal is checked by exporting each candidate and timing it under onnxruntime at batch
1, as it will be deployed.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnxkd.data.spec import InputSpec
from onnxkd.prune.config import PruneConfig, PruneConfigError
from onnxkd.students.pruned import classifier_layers, example_input

# Beyond this, layers are left with a handful of channels: the network is destroyed, not pruned.
MAX_RATIO = 0.95
GRID = {"params": 0.02, "macs": 0.02, "latency": 0.1}  # latency: each point is timed
REFINEMENTS = {"params": 6, "macs": 6, "latency": 3}


@dataclass(frozen=True)
class Size:
    """What a target measures of a student."""

    params: int
    macs: int
    latency_ms: float | None = None

    def of(self, kind: str) -> float:
        value = {"params": self.params, "macs": self.macs, "latency": self.latency_ms}[kind]
        assert value is not None, f"{kind} was not measured"
        return float(value)

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "latency_ms": self.latency_ms}


@dataclass
class Pruned:
    student: nn.Module
    ratio: float
    removals: list  # Torch-Pruning's history of this step
    size: Size


def measure(student: nn.Module, spec: InputSpec, latency_threads: int | None = None) -> Size:
    """Parameters and MACs (Torch-Pruning's counter), and with `latency_threads` the median
    onnxruntime batch-1 latency of the exported student."""
    import torch_pruning as tp

    was_training = student.training
    student.eval()
    macs, params = tp.utils.count_ops_and_params(student, example_input(spec))
    latency = None if latency_threads is None else _latency_ms(student, spec, latency_threads)
    student.train(was_training)
    return Size(int(params), int(macs), latency)


def _latency_ms(student: nn.Module, spec: InputSpec, threads: int) -> float:
    from onnxkd.bench.timing import time_session
    from onnxkd.distill.export import export_student
    from onnxkd.runtime import ort_session, session_options

    with tempfile.TemporaryDirectory(prefix="onnxkd-prune-") as tmp:
        path = export_student(student, spec, Path(tmp) / "candidate.onnx", "candidate")
        session = ort_session(path, "cpu", options=session_options(threads))
    x = example_input(spec).numpy().astype(np.float32)
    feeds = {session.get_inputs()[0].name: x}
    return float(np.median(time_session(session, feeds, runs=60, warmup=10)) * 1e3)


def prune_once(
    student: nn.Module, spec: InputSpec, num_classes: int, ratio: float, cfg: PruneConfig
) -> tuple[nn.Module, list]:
    """A pruned copy of `student` at channel `ratio`, and Torch-Pruning's history of it."""
    import torch_pruning as tp

    model = copy.deepcopy(student).eval()
    importance = {
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "bn": tp.importance.BNScaleImportance,
    }[cfg.importance]()
    pruner = tp.pruner.MetaPruner(
        model,
        example_input(spec),
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=cfg.global_pruning,
        ignored_layers=classifier_layers(model, num_classes),
        round_to=cfg.round_to,
    )
    with torch.no_grad():
        pruner.step()
    return model, [list(r) for r in pruner.pruning_history()]


def prune_to(
    student: nn.Module,
    spec: InputSpec,
    num_classes: int,
    kind: str,
    goal: float,
    cfg: PruneConfig,
    log: Callable[[str], None] = print,
) -> Pruned:
    """The least-pruned copy of `student` whose `kind` is at most `goal`."""
    threads = cfg.latency_threads if kind == "latency" else None

    def attempt(ratio: float) -> Pruned:
        model, removals = prune_once(student, spec, num_classes, ratio, cfg)
        return Pruned(model, ratio, removals, measure(model, spec, threads))

    # Not a bisection over the whole range: past some ratio, rounding leaves a layer with no
    # channels, Torch-Pruning skips it, and the student grows again. The least ratio on a grid
    # that meets the goal brackets the answer with the grid point before it.
    grid = GRID[kind]
    ratios = [round(grid * i, 6) for i in range(1, int(MAX_RATIO / grid) + 1)]
    smallest, low, best = None, 0.0, None
    for ratio in ratios:
        candidate = attempt(ratio)
        value = candidate.size.of(kind)
        smallest = value if smallest is None else min(smallest, value)
        if kind == "latency":
            log(f"  ratio {ratio:.3f}: {_shown(kind, value)}")
        if value <= goal:
            best = candidate
            break
        low = ratio
    if best is None:
        raise PruneConfigError(
            f"the target cannot be reached: at channel ratios up to {MAX_RATIO} the pruned "
            f"student has at least {_shown(kind, smallest)} against a goal of "
            f"{_shown(kind, goal)}; pick a smaller student or a looser --target"
        )
    high = best.ratio
    for _ in range(REFINEMENTS[kind]):
        mid = (low + high) / 2
        candidate = attempt(mid)
        if candidate.size.of(kind) <= goal:
            best, high = candidate, mid
        else:
            low = mid
    return best


def _shown(kind: str, value: float) -> str:
    if kind == "latency":
        return f"{value:.4g} ms"
    return f"{value / 1e6:.3f} M {kind}"
