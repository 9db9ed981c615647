"""The accuracy benchmarks' results files say what the runs trained in: distill falls back to
float32 where bf16 was asked for on a CPU without bf16 arithmetic, and a file that still said
"bf16 autocast" would mislabel every figure in it."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import distill_accuracy  # noqa: E402


@pytest.mark.parametrize(
    ("fp32", "lacks_bf16", "expected"),
    [
        (True, False, "fp32"),
        (True, True, "fp32"),
        (False, False, "bf16 autocast, channels-last"),
        (False, True, "fp32, channels-last (bf16 asked for; this CPU has no bf16 arithmetic)"),
    ],
)
def test_precision_names_what_trained(monkeypatch, fp32, lacks_bf16, expected):
    monkeypatch.setattr(distill_accuracy, "lacks_native_bf16", lambda: lacks_bf16)
    assert distill_accuracy.precision(fp32) == expected
