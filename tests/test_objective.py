"""The distill config's loss settings reach the loss terms: KD's α ramp and DKD's warm-up
(both through the losses' `set_epoch`), and `loss_args` by argument name."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
from torch import nn

from onnxkd.distill.config import DistillConfig
from onnxkd.distill.losses import LOSSES, LossConfigError
from onnxkd.distill.objective import DistillModule, build_objective
from onnxkd.registry import UnknownNameError


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


def test_loss_args_reach_the_loss_by_name_and_override_the_shared_settings():
    cfg = DistillConfig(loss="dkd", dkd_beta=8.0, loss_args={"beta": 2.0, "ce_weight": 0.5})
    dkd = _module(cfg).objective.terms[0]
    assert (dkd.beta, dkd.ce_weight, dkd.temperature) == (2.0, 0.5, 4.0)
    kd = _module(DistillConfig(loss="kd", alpha=0.5, loss_args={"temperature": 2.0}))
    assert (kd.objective.terms[0].alpha, kd.objective.terms[0].temperature) == (0.5, 2.0)


def test_a_loss_arg_the_loss_does_not_take_names_the_ones_it_does():
    with pytest.raises(LossConfigError, match=r"loss 'kd' has no argument beta; .*alpha"):
        build_objective(DistillConfig(loss="kd", loss_args={"beta": 1.0}))


def test_an_unknown_loss_lists_the_registered_ones():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'kdd'; did you mean kd"):
        build_objective(DistillConfig(loss="kdd"))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_shared_setting_a_loss_declares_is_a_distill_setting_and_an_argument(name):
    """`config_fields` is the loss's own declaration of which settings fill it: both ends exist."""
    cls = LOSSES.get(name)
    settings = {f.name for f in fields(DistillConfig)}
    arguments = set(inspect.signature(cls).parameters)
    for argument, setting in cls.config_fields.items():
        assert argument in arguments and setting in settings, (argument, setting)
