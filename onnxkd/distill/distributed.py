"""DDP under torchrun (gloo on CPU, nccl on GPU), and a no-op stand-in for one process."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def broadcast_path(self, path: Path) -> Path:
        """Rank 0's choice of a path (names with timestamps differ between processes)."""
        if not self.active:
            return path
        box = [str(path)]
        torch.distributed.broadcast_object_list(box, src=0)
        return Path(box[0])

    def unless_any_non_finite(self, value: float) -> float:
        """`value`, or NaN where any rank's value is not finite: a rank that stopped alone
        would leave the others waiting in the gradient all-reduce."""
        if not self.active:
            return value
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        bad = torch.tensor([0.0 if math.isfinite(value) else 1.0], device=device)
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return value if float(bad) == 0.0 else math.nan

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.active:
            torch.distributed.destroy_process_group()


def setup() -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1 is set; otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(rank=torch.distributed.get_rank(), world=world, active=True)
