"""The distill config's loss settings reach the loss terms: KD's α ramp and DKD's warm-up,
both through the losses' `set_epoch`."""

from __future__ import annotations

import pytest
from torch import nn

from onnxkd.distill.config import DistillConfig
from onnxkd.distill.objective import DistillModule, build_objective


def _module(cfg: DistillConfig) -> DistillModule:
    return DistillModule(nn.Linear(4, 3), build_objective(cfg))


def test_kd_alpha_ramps_over_the_warmup_epochs():
    cfg = DistillConfig(loss="kd", alpha=0.8, alpha_warmup_epochs=4)
    module = _module(cfg)
    kd = module.objective.terms[0]
    for epoch, alpha in [(0, 0.2), (1, 0.4), (3, 0.8), (9, 0.8)]:
        module.objective.set_epoch(epoch)
        assert kd.alpha == pytest.approx(alpha)


def test_dkd_warmup_ramps_its_distillation_part_not_kd_alpha():
    """DKD's α weighs TCKD (1 by default); KD's α (0.9) must not overwrite it."""
    cfg = DistillConfig(loss="dkd", alpha_warmup_epochs=2.5, dkd_beta=2.0)
    module = _module(cfg)
    dkd = module.objective.terms[0]
    assert (dkd.warmup_epochs, dkd.beta) == (2.5, 2.0)
    module.objective.set_epoch(0)
    assert dkd.alpha == 1.0
    assert dkd.warmup_factor == pytest.approx(0.4)
    module.objective.set_epoch(2)
    assert dkd.warmup_factor == 1.0
