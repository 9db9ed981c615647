"""What a run prints before its first epoch: what it trains, the student against its teacher
(parameters, size, batch-1 CPU latency), and warnings for settings known to give a worse model.

A student that is not smaller or faster than its teacher compresses nothing, and replaying a
few cached views for many epochs fits the teacher's exact outputs on them; both finish with
exit 0 and a plausible accuracy, so they are said before any time is spent. The check costs a
fraction of a second: a quick TorchScript export of the student, and a few dozen batch-1
inferences on zeros of each model.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnxkd.cache.reader import CacheReader
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.validation import Split
from onnxkd.errors import OnnxkdError

# More epochs than this many times the cached views replays each view too often.
REPLAY_LIMIT = 3
WARMUP_RUNS = 3
TIMED_RUNS = 20
# A large model is timed on fewer runs (at least 3), not for longer.
TIME_BUDGET_S = 0.25


@dataclass(frozen=True)
class Profile:
    """A model's size and batch-1 latency under onnxruntime (None, with `note` saying why, if
    not timed); a student's also under torch."""

    parameters: int
    megabytes: float
    latency_ms: float | None
    note: str = ""
    torch_ms: float | None = None


def median_ms(run: Callable[[], object]) -> float:
    """The median wall time of `run` after a warm-up, in milliseconds."""
    for _ in range(WARMUP_RUNS):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + TIME_BUDGET_S
    while len(times) < TIMED_RUNS and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def student_profile(student: nn.Module, input_shape: tuple[int, ...], threads: int) -> Profile:
    """The student's size and batch-1 latency on the CPU (where it must be), under torch and,
    exported, under onnxruntime like the teacher.

    torch's per-op overhead alone exceeds a small CNN's compute (0.13 ms against 0.015 ms under
    onnxruntime for small_cnn_s), so only onnxruntime's figure is compared with the teacher's.
    """
    from onnxkd.distill.export import OPSET, quick_onnx

    params = sum(p.numel() for p in student.parameters())
    tensors = [*student.parameters(), *student.buffers()]
    megabytes = sum(t.numel() * t.element_size() for t in tensors) / 1e6
    was_training = student.training
    student.eval()  # BatchNorm statistics must not move
    x = torch.zeros((1, *input_shape))
    try:
        with torch.inference_mode():
            torch_ms = median_ms(lambda: student(x))
        latency, note = _onnxruntime_ms(lambda: quick_onnx(student, x, OPSET), x.numpy(), threads)
    finally:
        student.train(was_training)
    return Profile(params, megabytes, latency, note, torch_ms)


def _onnxruntime_ms(
    build: Callable[[], object], x: np.ndarray, threads: int, input_name: str = "input"
) -> tuple[float | None, str]:
    """Batch-1 latency of the model `build` returns, or None and why it could not be timed."""
    from onnxkd.teacher.runner import make_session

    # Timing is information only: a model that cannot be exported or run on one sample (a
    # teacher with a fixed batch of 8, say) must not stop the training it describes.
    try:
        session = make_session(build(), "cpu", threads)
        return median_ms(lambda: session.run(None, {input_name: x})), ""
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"not timed at batch 1: {first[:120]}"


def teacher_profile(cache: CacheReader, threads: int) -> Profile | None:
    """The cached teacher's size (from its initializers) and batch-1 latency under
    onnxruntime on the CPU; None when its file is gone or changed since it was cached."""
    from onnxkd.teacher.model import load_teacher

    info = cache.manifest.teacher
    if not Path(info.path).is_file():
        return None
    try:
        teacher = load_teacher(Path(info.path), info.output_used)
    except OnnxkdError:
        return None
    if teacher.sha256 != info.sha256:
        return None
    params = megabytes = 0
    for init in teacher.original.graph.initializer:
        count = math.prod(init.dims)
        params += count
        megabytes += count * _itemsize(init.data_type) / 1e6
    spec = cache.input_spec
    x = np.zeros((1, *spec.input_shape), dtype=spec.dtype)
    latency, note = _onnxruntime_ms(lambda: teacher.model, x, threads, teacher.input_name)
    return Profile(params, megabytes, latency, note)


def _itemsize(onnx_type: int) -> int:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_type)).itemsize


def header(cfg: DistillConfig, cache: CacheReader, device: torch.device, split: Split) -> str:
    """One line: what this run trains, on what, for how long."""
    views = cache.section("train").views
    data = "a fresh view each epoch (--online)" if cfg.online else f"{views} train view(s)"
    if split.val is None:
        chosen = "the best epoch chosen on the test split (--val-fraction 0)"
    else:
        chosen = f"{len(split.val)} held back to choose the best epoch on"
    line = (
        f"distill: {cfg.student}{' QAT' if cfg.qat else ''} on {device}; {_epochs(cfg.epochs)}, "
        f"batch {cfg.batch_size}, loss {cfg.loss}; cache {cache.path.name}: {data} of "
        f"{len(split.train)} samples, {chosen}"
    )
    for name, start, end, shape in (
        ("α", cfg.alpha, cfg.alpha_end, cfg.alpha_schedule),
        ("T", cfg.temperature, cfg.temperature_end, cfg.temperature_schedule),
    ):
        if end is not None:
            line += f"; {name} {start:g} -> {end:g} ({shape})"
    if cfg.unlabeled:
        line += f"; plus every sample of {len(cfg.unlabeled)} unlabeled cache(s), without labels"
    if cache.section("train").augmentation.mixes:
        line += "; mixed views (MixUp/CutMix), the label term mixed by each view's λ"
    return line


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def comparison(student: Profile, teacher: Profile | None, why_not: str) -> list[str]:
    """The student and the teacher side by side."""
    lines = [f"{'':10}{'parameters':>12}{'size':>11}  batch-1 CPU latency"]
    lines.append(_row("student", student))
    if teacher is None:
        lines.append(f"  teacher   not compared: {why_not}")
    else:
        lines.append(_row("teacher", teacher))
    return lines


def _row(label: str, p: Profile) -> str:
    latency = f"{p.latency_ms:.3f} ms (onnxruntime)" if p.latency_ms is not None else p.note
    if p.torch_ms is not None:
        latency += f", {p.torch_ms:.3f} ms (torch)"
    return f"  {label:8}{p.parameters:>12,}{p.megabytes:>8.2f} MB  {latency}"


def size_warnings(name: str, student: Profile, teacher: Profile | None) -> list[str]:
    """Loud lines when the student is not smaller, or not faster, than its teacher."""
    if teacher is None:
        return []
    fix = "pick a smaller student (`onnxkd students` lists them)"
    lines = []
    if teacher.parameters and student.parameters >= teacher.parameters:
        lines.append(
            f"warning: the student {name} has {student.parameters:,} parameters, "
            f"{student.parameters / teacher.parameters:.1f}x the teacher's "
            f"{teacher.parameters:,}: it is not smaller than the model it distils; {fix}"
        )
    ours, theirs = student.latency_ms, teacher.latency_ms
    if ours is not None and theirs is not None and ours >= theirs:
        lines.append(
            f"warning: the student {name} is {ours / theirs:.1f}x slower than the teacher at "
            f"batch 1 under onnxruntime on this CPU ({ours:.3f} ms vs {theirs:.3f} ms): it is "
            "not faster than "
            f"the model it distils; {fix}"
        )
    return lines


def replay_warning(cfg: DistillConfig, views: int) -> str | None:
    """A warning when the epochs replay each cached view more than REPLAY_LIMIT times."""
    if cfg.online or cfg.epochs <= REPLAY_LIMIT * views:
        return None
    needed = math.ceil(cfg.epochs / REPLAY_LIMIT)
    return (
        f"warning: {cfg.epochs} epochs replay the cache's {views} train view(s) "
        f"{cfg.epochs / views:.0f} times each: the student fits the teacher's exact outputs on "
        f"those views and generalizes worse; cache more views (`onnxkd cache-teacher … --views "
        f"{needed} --augment crop`) or train at most {REPLAY_LIMIT * views} epochs"
    )


def announce(
    cfg: DistillConfig,
    student: nn.Module,
    cache: CacheReader,
    device: torch.device,
    split: Split,
    log: Callable[[str], None],
) -> None:
    """Print the header, the size and speed comparison, and the warnings, before epoch 1.

    The student must still be on the CPU. A QAT run is not compared: its fake-quantized
    graph runs slower in torch than the int8 model it becomes, and its float run was compared.
    """
    log(header(cfg, cache, device, split))
    if not cfg.qat:
        threads = torch.get_num_threads()  # the same for both models
        ours = student_profile(student, cache.input_spec.input_shape, threads)
        theirs = teacher_profile(cache, threads)
        why_not = f"its file {cache.manifest.teacher.path} is gone or changed since it was cached"
        for line in comparison(ours, theirs, why_not) + size_warnings(cfg.student, ours, theirs):
            log(line)
    warning = replay_warning(cfg, cache.section("train").views)
    if warning:
        log(warning)
