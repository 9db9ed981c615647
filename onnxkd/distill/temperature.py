"""`distill --fit-temperature`: one temperature for the student's logits, fitted on the samples
held back from training, stored in the exported model's metadata (`--apply-temperature` also
divides the exported logits by it).

Distilled students are often over- or under-confident (they imitate softened targets); a
single temperature (Guo et al. 2017) fixes much of it without moving any prediction. It is
fitted on the validation split, never on the test split whose figures the reports give, so
bench and quantize can show calibration before and after it honestly.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from onnxkd.metadata import TEMPERATURE
from onnxkd.metrics import calibration as cal


def fit_on(student: nn.Module, batches, device: torch.device, channels_last: bool) -> dict:
    """The temperature minimising the student's NLL on `batches` (the held-back samples,
    unaugmented), with that split's NLL and ECE before and after."""
    was_training = student.training
    student.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for batch in batches.epoch(0, 512, shuffle=False):
            x = torch.from_numpy(batch.x).to(device)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            logits.append(student(x).float().cpu().numpy())
            labels.append(np.asarray(batch.labels))
    student.train(was_training)
    scores, truth = np.concatenate(logits).astype(np.float64), np.concatenate(labels)
    t = cal.fit_temperature(scores, truth)
    before = cal.calibration(cal.as_probabilities(scores), truth)
    after = cal.calibration(cal.as_probabilities(scores, "logits", t), truth)
    return {
        "temperature": round(t, 4),
        "fitted_on": f"the {len(truth)} validation samples held back from training",
        "nll_before": round(before.nll, 5),
        "nll_after": round(after.nll, 5),
        "ece_before": round(before.ece_equal_width, 5),
        "ece_after": round(after.ece_equal_width, 5),
    }


class Scaled(nn.Module):
    """The student with its logits divided by the fitted temperature, for `--apply-temperature`:
    exported as one Div after the logits, so every prediction stays as it was."""

    def __init__(self, student: nn.Module, temperature: float) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x) / self.temperature


def metadata_entry(fitted: dict) -> dict[str, str]:
    """The metadata_props entry that carries the fit into the exported model."""
    return {TEMPERATURE: json.dumps(fitted)}
