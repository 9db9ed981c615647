"""The learning-rate schedule, recorded at every optimizer step of a real `distill` run whose
training set ends in a partial batch: the cosine is sized by the batches actually taken (the
partial one is dropped), so it ends at 0 on the last step instead of part-way down.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import MODELS

from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.source import DataRef
from onnxkd.distill import objective, trainer
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.data import batches_per_epoch, rank_slice

BATCH = 100
EPOCHS = 3


@pytest.fixture
def recorded(monkeypatch):
    """(rate, batch size) at every optimizer step, read just before the step is taken."""
    steps: list[list] = []
    make_optimizer = trainer._optimizer

    def recording_optimizer(cfg, params):
        optimizer = make_optimizer(cfg, params)
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: steps[-1].insert(0, opt.param_groups[0]["lr"])
        )
        return optimizer

    forward = objective.DistillModule.forward

    def recording_forward(self, x, teacher, labels):
        if self.training:
            steps.append([len(labels)])
        return forward(self, x, teacher, labels)

    monkeypatch.setattr(trainer, "_optimizer", recording_optimizer)
    monkeypatch.setattr(objective.DistillModule, "forward", recording_forward)
    return steps


def test_the_cosine_ends_at_zero_on_the_last_batch_taken(tmp_path, recorded):
    torch.set_num_threads(1)
    ws = tmp_path / "ws"
    cache = cache_teacher(
        CacheConfig(MODELS / "digits_cnn.onnx", DataRef("digits"), workdir=ws), log=lambda s: None
    ).path
    cfg = DistillConfig(
        student="small_cnn_s",
        cache=cache,
        workdir=ws,
        out=tmp_path / "run",
        epochs=EPOCHS,
        warmup_epochs=1.0,
        val_fraction=0.0,
        batch_size=BATCH,
        threads=1,
        export=False,
    )
    result = trainer.distill(cfg, log=lambda s: None)
    samples = len(CacheReader(cache).section("train").labels())
    assert samples % BATCH, "the data must end in a partial batch for this test"
    per_epoch = samples // BATCH
    rates = [rate for rate, _ in recorded]
    assert len(recorded) == EPOCHS * per_epoch
    assert {size for _, size in recorded} == {BATCH}, "a partial last batch was taken"
    peak = cfg.resolved_lr
    total = EPOCHS * per_epoch
    warmup = per_epoch
    expected = [peak * (k + 1) / warmup for k in range(warmup)] + [
        peak * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))
        for k in range(warmup, total)
    ]
    assert rates == pytest.approx(expected, rel=1e-6)
    # The last step is taken at the bottom of the cosine (a tenth of a percent of the peak
    # here), and the rate the run ends on, after that step, is 0.
    assert rates[-1] < 0.01 * peak
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_batch_count_is_what_an_epoch_yields(world, drop_last):
    for samples in [0, 1, 7, 31, 32, 33, 100, 257]:
        for batch_size in [1, 8, 32, 64]:
            order = rank_slice(np.arange(samples), 0, world)
            yielded = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            if drop_last and len(yielded) > 1 and len(yielded[-1]) < batch_size:
                yielded = yielded[:-1]
            count = batches_per_epoch(samples, batch_size, world, drop_last)
            assert count == len(yielded), (samples, batch_size, world, drop_last)
