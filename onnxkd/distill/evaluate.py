"""Validation: student accuracy, top-1 agreement with the teacher and KL(teacher‖student)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def evaluate(
    student: nn.Module,
    batches,
    device: torch.device,
    channels_last: bool = False,
    batch_size: int = 512,
) -> dict:
    """Metrics over the cache's eval section (one clean view) at temperature 1."""
    was_training = student.training
    student.eval()
    hits = agree = 0
    kl_sum = 0.0
    with torch.inference_mode():
        for batch in batches.epoch(0, batch_size, shuffle=False):
            x = torch.from_numpy(batch.x).to(device)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = student(x).float().cpu()
            teacher = torch.from_numpy(batch.teacher["logits"]).float()
            labels = torch.from_numpy(batch.labels)
            hits += int((logits.argmax(1) == labels).sum())
            agree += int((logits.argmax(1) == teacher.argmax(1)).sum())
            t_log = F.log_softmax(teacher, dim=1)
            kl_sum += float(
                F.kl_div(F.log_softmax(logits, 1), t_log, log_target=True, reduction="sum")
            )
    student.train(was_training)
    n = max(len(batches), 1)
    return {"val_accuracy": hits / n, "val_agreement": agree / n, "val_kl": kl_sum / n}
