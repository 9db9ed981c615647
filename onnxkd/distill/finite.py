"""Divergence stops a run where it happens: a non-finite loss ends training with the epoch, the
batch and the value, and a student whose weights are not all finite is never saved as a good
checkpoint nor exported (a NaN student exports and runs, and predicts class 0 for everything).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from onnxkd.errors import OnnxkdError

LIKELY_CAUSES = (
    "a learning rate too high for this student or optimizer, or non-finite or extreme values "
    "in the cache (check it with `onnxkd cache-info`)"
)


class DivergedError(OnnxkdError):
    """Training produced a non-finite loss or non-finite weights."""


def kept_checkpoint(run_dir: Path, finished_epochs: int) -> str:
    """What a stopped run still holds, for the error that stops it."""
    if finished_epochs <= 0:
        return f"no epoch had finished, so {run_dir} holds no checkpoint"
    return (
        f"epoch {finished_epochs}, the last finished one, is kept in "
        f"{run_dir / 'checkpoints' / 'last.pt'}"
    )


def check_loss(
    value: float, epoch: int, batch: int, batches: int, lr: float, peak_lr: float, kept: str
) -> None:
    """Stop at the first batch whose loss is NaN or infinite, before it reaches the weights.

    Args:
        epoch, batch: 1-based, as the progress lines count them.
        lr, peak_lr: the learning rate at this step, and the schedule's peak (--lr).
        kept: what the run folder still holds (`kept_checkpoint`).
    """
    if math.isfinite(value):
        return
    raise DivergedError(
        f"training diverged at epoch {epoch}, batch {batch} of {batches}: the loss is {value} "
        f"(learning rate {lr:.3g} of peak {peak_lr:.3g}); likely causes: {LIKELY_CAUSES}; "
        f"{kept}; start over with --overwrite and a lower --lr (e.g. {peak_lr / 10:.3g})"
    )


def first_non_finite(module: nn.Module) -> str | None:
    """The name of the first parameter or buffer holding a NaN or an infinity, if any."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_weights(module: nn.Module, when: str, consequence: str) -> None:
    """Refuse a student with non-finite weights.

    Args:
        when: where the weights came from, e.g. "after epoch 3".
        consequence: what is (not) done because of it, and how to go on.
    """
    name = first_non_finite(module)
    if name is not None:
        raise DivergedError(
            f"the student's weights are not finite {when} ({name} holds NaN or Inf); "
            f"likely causes: {LIKELY_CAUSES}; {consequence}"
        )
