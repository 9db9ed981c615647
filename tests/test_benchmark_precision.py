"""The accuracy benchmarks' results files say what the runs trained in, read from each run's
own record: distill falls back to float32 where bf16 was asked for on a CPU without bf16
arithmetic, and a file that still said "bf16 autocast" would mislabel every figure in it."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import distill_accuracy  # noqa: E402

# what each run folder recorded (None: not finished)
RECORDED = {
    "bf16-s0": (True, True),
    "fallback-s0": (False, True),
    "fp32-s0": (False, False),
    "killed-s0": None,
}


class RecordedRun:
    def __init__(self, run: Path):
        self.recorded = RECORDED[Path(run).name]
        self.finished = self.recorded is not None

    def record(self):
        bf16, channels_last = self.recorded
        return SimpleNamespace(config=SimpleNamespace(bf16=bf16, channels_last=channels_last))


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        (["bf16-s0"], "bf16 autocast, channels-last"),
        (["fallback-s0", "killed-s0"], "fp32, channels-last"),
        (["fp32-s0"], "fp32"),
        (["bf16-s0", "fallback-s0"], "bf16 autocast, channels-last; fp32, channels-last"),
        (["killed-s0"], "no finished runs"),
    ],
)
def test_precision_names_what_the_runs_recorded(monkeypatch, runs, expected):
    monkeypatch.setattr(distill_accuracy, "RunFolder", RecordedRun)
    assert distill_accuracy.precision(Path(r) for r in runs) == expected


def test_precision_of_a_real_run_folder_reads_its_record(tmp_path):
    # an empty folder is no finished run, whatever this host can do
    assert distill_accuracy.precision([tmp_path / "kd-s0"]) == "no finished runs"
