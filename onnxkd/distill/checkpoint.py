"""Checkpoints: written atomically each epoch (and the best one), loaded with weights_only.

A checkpoint holds the training state and the run's metric history, so a resumed run rewrites
metrics.jsonl from it and never loses or repeats an epoch.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from onnxkd.errors import OnnxkdError

LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(OnnxkdError):
    """A checkpoint is missing or cannot be read."""


@dataclass
class State:
    epoch: int = -1  # the last finished epoch
    best_accuracy: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


def save(run_dir: Path, module: nn.Module, optimizer, scheduler, state: State, best: bool) -> None:
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": state.epoch,
        "best_accuracy": state.best_accuracy,
        "best_epoch": state.best_epoch,
        "history": state.history,
    }
    tmp = ckpt_dir / (LAST + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, ckpt_dir / LAST)
    if best:
        shutil.copyfile(ckpt_dir / LAST, ckpt_dir / (BEST + ".tmp"))
        os.replace(ckpt_dir / (BEST + ".tmp"), ckpt_dir / BEST)
    # The best student's weights also sit at the top of the run, for export and users.
    if best:
        weights = {
            k.removeprefix("student."): v
            for k, v in payload["module"].items()
            if k.startswith("student.")
        }
        torch.save(weights, run_dir / (BEST + ".tmp"))
        os.replace(run_dir / (BEST + ".tmp"), run_dir / BEST)


def _read(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; nothing to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e})") from e


def finished_epochs(run_dir: Path) -> int:
    """How many epochs the run's last checkpoint holds (0 without one), read without loading
    its tensors (memory-mapped), so that a resume can be checked before anything is built."""
    path = run_dir / "checkpoints" / LAST
    if not path.exists():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e})") from e


def load(run_dir: Path, module: nn.Module, optimizer, scheduler) -> State:
    """Restore the last finished epoch's state into the given objects."""
    payload = _read(run_dir / "checkpoints" / LAST)
    module.load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return State(
        payload["epoch"], payload["best_accuracy"], payload["best_epoch"], payload["history"]
    )


def load_weights(path: Path, student: nn.Module) -> None:
    student.load_state_dict(_read(path))
