"""The distill config's loss settings reach the loss terms: KD's α ramp and DKD's warm-up
(both through the losses' `set_progress`), α and T schedules, and `loss_args` by argument name."""

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
    for done, alpha in [(0.5, 0.1), (1, 0.2), (2, 0.4), (4, 0.8), (10, 0.8)]:
        module.objective.set_progress(done, 30)
        assert kd.alpha == pytest.approx(alpha)


def test_dkd_warmup_ramps_its_distillation_part_not_kd_alpha():
    """DKD's α weighs TCKD (1 by default); KD's α (0.9) must not overwrite it."""
    cfg = DistillConfig(loss="dkd", alpha_warmup_epochs=2.5, dkd_beta=2.0)
    module = _module(cfg)
    dkd = module.objective.terms[0]
    assert (dkd.warmup_epochs, dkd.beta) == (2.5, 2.0)
    module.objective.set_progress(1, 30)
    assert dkd.alpha == 1.0
    assert dkd.warmup_factor == pytest.approx(0.4)
    module.objective.set_progress(3, 30)
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


def test_alpha_and_temperature_follow_their_schedules_step_by_step():
    cfg = DistillConfig(
        loss="kd",
        alpha=0.2,
        alpha_end=0.8,
        alpha_schedule="linear",
        temperature=8.0,
        temperature_end=2.0,
        temperature_schedule="cosine",
    )
    objective = _module(cfg).objective
    kd = objective.terms[0]
    for done, alpha, temperature in [(0, 0.2, 8.0), (5, 0.4, 6.5), (10, 0.6, 3.5), (15, 0.8, 2.0)]:
        objective.set_progress(done, 15)
        assert (kd.alpha, kd.temperature) == pytest.approx((alpha, temperature))
    assert objective.schedule_state() == pytest.approx({"alpha": 0.8, "temperature": 2.0})
    assert kd.hparams["alpha_schedule"] == "linear" and kd.hparams["temperature_end"] == 2.0


def test_the_schedule_scales_with_the_alpha_ramp():
    cfg = DistillConfig(loss="kd", alpha=0.4, alpha_end=0.8, alpha_schedule="linear")
    kd = _module(DistillConfig(**{**cfg.__dict__, "alpha_warmup_epochs": 2})).objective.terms[0]
    kd.set_progress(1, 10)  # half-way up the ramp, a tenth of the way along the schedule
    assert kd.alpha == pytest.approx(0.5 * 0.44)


def test_dkd_takes_the_temperature_schedule_and_reports_its_warmup_weight():
    cfg = DistillConfig(loss="dkd", temperature_end=1.0, temperature_schedule="linear")
    objective = _module(cfg).objective
    objective.set_progress(1.25, 30)
    state = objective.schedule_state()
    assert state["distill_weight"] == pytest.approx(0.5)
    assert state["temperature"] == pytest.approx(4.0 - 3.0 * 1.25 / 30)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha_end": 0.5}, "needs a linear or cosine schedule"),
        ({"alpha_schedule": "cosine"}, "needs an end value"),
        ({"temperature_schedule": "linear"}, "--temperature-schedule: a linear schedule"),
        ({"alpha_schedule": "step", "alpha_end": 0.1}, "must be one of constant"),
        ({"alpha_end": 1.5, "alpha_schedule": "linear"}, "--alpha-end must be in [0, 1]"),
        ({"temperature_end": 0.0, "temperature_schedule": "linear"}, "--temperature-end"),
    ],
)
def test_bad_schedules_are_refused_in_one_line(settings, message):
    from onnxkd.distill.config import DistillConfigError

    with pytest.raises(DistillConfigError) as error:
        DistillConfig(loss="kd", **settings)
    assert message in str(error.value)


def test_an_alpha_schedule_on_a_loss_without_kds_alpha_is_refused():
    """DKD's α weighs TCKD: a schedule for KD's α would be a setting that silently does
    nothing, so the objective refuses it."""
    cfg = DistillConfig(loss="dkd", alpha_end=0.1, alpha_schedule="linear")
    with pytest.raises(LossConfigError, match="alpha_schedule"):
        build_objective(cfg)


def test_dkd_defaults_to_a_fifth_of_kds_sgd_learning_rate():
    """DKD's gradient runs 4-6x KD's on the 10-class suites: its SGD default is 0.01 (x batch
    /128), an explicit --lr wins, and AdamW (whose steps ignore the loss's scale) keeps its."""
    assert DistillConfig(loss="dkd").resolved_lr == pytest.approx(0.01)
    assert DistillConfig(loss="dkd", batch_size=256).resolved_lr == pytest.approx(0.02)
    assert DistillConfig(loss="kd").resolved_lr == pytest.approx(0.05)
    assert DistillConfig(loss="dkd", lr=0.03).resolved_lr == 0.03
    assert DistillConfig(loss="dkd", optimizer="adamw").resolved_lr == pytest.approx(2e-3)
