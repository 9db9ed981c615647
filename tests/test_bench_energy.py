"""onnxkd.bench.energy against a fake powercap tree and a fake pynvml, whose counters advance by
known amounts, so every figure is checked against one worked out by hand."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from onnxkd.bench import energy

MAX_RANGE_UJ = 262_143_328_850


def _domain(root: Path, dirname: str, name: str, energy_uj: int) -> Path:
    domain = root / dirname
    domain.mkdir(parents=True)
    (domain / "name").write_text(f"{name}\n")
    (domain / "energy_uj").write_text(f"{energy_uj}\n")
    (domain / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    return domain


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """A package domain plus the two kinds of directory that must not be counted beside it."""
    root = tmp_path / "powercap"
    _domain(root, "intel-rapl:0", "package-0", 1_000_000)
    _domain(root, "intel-rapl:0:0", "core", 500_000)
    _domain(root, "intel-rapl-mmio:0", "package-0", 1_000_000)
    return root


def _advance(domain: Path, uj: int) -> None:
    path = domain / "energy_uj"
    path.write_text(f"{int(path.read_text()) + uj}\n")


class FakeClock:
    """A clock that moves only when told, so seconds, runs and watts are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(energy, "_clock", fake)
    return fake


def _stepping_run(clock: FakeClock, domain: Path, seconds: float, uj: int):
    def run() -> None:
        clock.now += seconds
        _advance(domain, uj)

    return run


def test_only_package_domains_are_counted(powercap: Path) -> None:
    counters, reason = energy.energy_counters("cpu", powercap)
    assert reason is None
    assert [(c.kind, c.name) for c in counters] == [("rapl", "package-0")]
    assert counters[0].read_joules() == pytest.approx(1.0)
    assert counters[0].wrap_joules == pytest.approx(MAX_RANGE_UJ / 1e6)
    assert "whole CPU package" in counters[0].scope


def test_packages_in_numeric_order_and_psys_skipped(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    for n in (10, 2, 0):
        _domain(root, f"intel-rapl:{n}", f"package-{n}", 0)
    _domain(root, "intel-rapl:3", "psys", 0)
    counters, _ = energy.energy_counters("cpu", root)
    assert [c.name for c in counters] == ["package-0", "package-2", "package-10"]


def test_joules_per_sample_and_watts_exact(powercap: Path, clock: FakeClock) -> None:
    counters, _ = energy.energy_counters("cpu", powercap)
    # Each run: 0.25 s and 0.5 J, so 1 s needs 4 runs, 2 J, 2 W.
    run = _stepping_run(clock, powercap / "intel-rapl:0", 0.25, 500_000)
    result = energy.measure_energy(counters, run, batch=8, min_seconds=1.0, idle_seconds=0)
    assert result["available"] is True
    assert result["counters"] == ["package-0"]
    assert result["kind"] == "rapl"
    assert result["runs"] == 4
    assert result["batch"] == 8
    assert result["seconds"] == pytest.approx(1.0)
    assert result["joules"] == pytest.approx(2.0)
    assert result["joules_per_run"] == pytest.approx(0.5)
    assert result["joules_per_inference"] == pytest.approx(2.0 / 32)
    assert result["watts"] == pytest.approx(2.0)
    assert result["idle_watts"] is None
    assert result["joules_per_inference_above_idle"] is None
    assert "idle draw not measured" in result["limits"]
    assert "RAPL updates about every ms" in result["limits"]
    json.dumps(result)


def test_time_spent_reading_the_counter_does_not_bias_the_watts(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A counter that takes 0.1 s to read (NVML takes about a ms; a process scheduled out
    # mid-read, longer) of a constant 3 W draw: timing from the middle of each read keeps
    # the figure exact, where timing after the first read and before the last would not.
    def read_joules() -> float:
        clock.now += 0.05
        joules = 3.0 * clock.now
        clock.now += 0.05
        return joules

    counter = energy.EnergyCounter("rapl", "slow", read_joules, None, "a slow counter")

    def run() -> None:
        clock.now += 0.25

    monkeypatch.setattr(
        energy, "_sleep", lambda seconds: setattr(clock, "now", clock.now + seconds)
    )
    result = energy.measure_energy([counter], run, batch=1, min_seconds=1.0, idle_seconds=0.5)
    assert result["watts"] == pytest.approx(3.0)
    assert result["idle_watts"] == pytest.approx(3.0)
    assert result["joules_per_inference_above_idle"] == pytest.approx(0.0, abs=1e-9)


def test_idle_draw_subtracted(
    powercap: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    domain = powercap / "intel-rapl:0"

    def idle_sleep(seconds: float) -> None:
        # 0.3 W idle: 0.3 J over the 1 s idle phase.
        clock.now += seconds
        _advance(domain, round(300_000 * seconds))

    monkeypatch.setattr(energy, "_sleep", idle_sleep)
    counters, _ = energy.energy_counters("cpu", powercap)
    run = _stepping_run(clock, domain, 0.25, 500_000)
    result = energy.measure_energy(counters, run, batch=2, min_seconds=1.0)
    assert result["runs"] == 4
    assert result["joules"] == pytest.approx(2.0)
    assert result["idle_watts"] == pytest.approx(0.3)
    # (2 J - 0.3 W * 1 s) over 4 runs of 2 samples.
    assert result["joules_per_inference_above_idle"] == pytest.approx(1.7 / 8)
    assert "idle draw measured over 1 s before" in result["limits"]
    assert "whole CPU package" in result["limits"]


def test_two_packages_summed(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "powercap"
    zero = _domain(root, "intel-rapl:0", "package-0", 0)
    one = _domain(root, "intel-rapl:1", "package-1", 7_000_000)

    def run() -> None:
        clock.now += 0.5
        _advance(zero, 1_000_000)
        _advance(one, 3_000_000)

    counters, _ = energy.energy_counters("cpu", root)
    result = energy.measure_energy(counters, run, batch=1, min_seconds=0.5, idle_seconds=0)
    assert result["counters"] == ["package-0", "package-1"]
    assert result["joules"] == pytest.approx(4.0)
    assert result["watts"] == pytest.approx(8.0)


def test_wrap_around(powercap: Path, clock: FakeClock) -> None:
    domain = powercap / "intel-rapl:0"
    (domain / "energy_uj").write_text(f"{MAX_RANGE_UJ - 1_000_000}\n")

    def run() -> None:
        # 1 J to the top of the range, then 2 J more past zero.
        clock.now += 1.0
        (domain / "energy_uj").write_text("2000000\n")

    counters, _ = energy.energy_counters("cpu", powercap)
    result = energy.measure_energy(counters, run, batch=1, min_seconds=1.0, idle_seconds=0)
    assert result["joules"] == pytest.approx(3.0)


def test_backwards_without_wrap_is_unavailable(clock: FakeClock) -> None:
    readings = iter([5.0, 4.0])
    counter = energy.EnergyCounter("nvml", "GPU 0 (fake)", lambda: next(readings), None, "s")
    result = energy.measure_energy([counter], lambda: None, batch=1, min_seconds=0, idle_seconds=0)
    assert result == {
        "available": False,
        "reason": "not available here: counter GPU 0 (fake) went backwards and cannot wrap",
    }


def test_counter_failing_mid_run_is_unavailable(powercap: Path, clock: FakeClock) -> None:
    energy_uj = powercap / "intel-rapl:0" / "energy_uj"

    def run() -> None:
        energy_uj.unlink()

    counters, _ = energy.energy_counters("cpu", powercap)
    result = energy.measure_energy(counters, run, batch=1, min_seconds=0, idle_seconds=0)
    assert result["available"] is False
    assert result["reason"].startswith("not available here: counter package-0 failed")
    assert "energy_uj" in result["reason"]


def test_no_counters_and_bad_batch() -> None:
    assert energy.measure_energy([], lambda: None, batch=1)["available"] is False
    with pytest.raises(ValueError, match="batch"):
        energy.measure_energy([], lambda: None, batch=0)


def test_real_sleep_and_clock(powercap: Path) -> None:
    counters, _ = energy.energy_counters("cpu", powercap)
    result = energy.measure_energy(counters, lambda: None, batch=1, min_seconds=0.02)
    assert result["available"] is True
    assert result["joules"] == 0.0
    assert result["idle_watts"] == 0.0
    assert result["seconds"] >= 0.02


def test_missing_powercap(tmp_path: Path) -> None:
    missing = tmp_path / "powercap"
    assert energy.energy_counters("cpu", missing) == (
        [],
        f"not available here: {missing} does not exist (no RAPL interface exposed to this machine)",
    )


def test_no_package_domain(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    _domain(root, "intel-rapl-mmio:0", "package-0", 0)
    counters, reason = energy.energy_counters("cpu", root)
    assert counters == []
    assert reason == f"not available here: {root} has no RAPL package domain (intel-rapl:N)"


def test_permission_error(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 000 does not stop root, so the read itself is made to fail as for a user.
    real_read = energy._read_file

    def read(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(energy, "_read_file", read)
    counters, reason = energy.energy_counters("cpu", powercap)
    assert counters == []
    assert reason == (
        f"not available here: {powercap / 'intel-rapl:0' / 'energy_uj'} is not readable by this"
        " user (RAPL counters are root-only since Linux 5.10; run as root or `chmod o+r`)"
    )


def test_unreadable_energy_file(powercap: Path) -> None:
    energy_uj = powercap / "intel-rapl:0" / "energy_uj"
    energy_uj.unlink()
    energy_uj.mkdir()
    counters, reason = energy.energy_counters("cpu", powercap)
    assert counters == []
    assert reason.startswith(f"not available here: {energy_uj} cannot be read (")


def test_unknown_ep() -> None:
    counters, reason = energy.energy_counters("coreml")
    assert counters == []
    assert reason.startswith("not available here: no energy counter is known")


def test_pynvml_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert energy.energy_counters("cuda") == (
        [],
        "not available here: nvidia-ml-py (pynvml) is not installed",
    )


class FakeNVMLError(Exception):
    pass


def _fake_pynvml(millijoules: dict[int, float], unsupported: set[int] = frozenset()):
    """A pynvml whose GPU i reports millijoules[i], or raises for the indices in unsupported."""
    fake = types.ModuleType("pynvml")
    fake.NVMLError = FakeNVMLError
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: len(millijoules)
    fake.nvmlDeviceGetHandleByIndex = lambda index: index
    fake.nvmlDeviceGetName = lambda handle: b"NVIDIA H200" if handle else "NVIDIA H200"

    def total_energy(handle: int) -> float:
        if handle in unsupported:
            raise FakeNVMLError("Not Supported")
        return millijoules[handle]

    fake.nvmlDeviceGetTotalEnergyConsumption = total_energy
    return fake


def test_fake_nvml_counters(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    millijoules = {0: 1000.0, 1: 5000.0}
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(millijoules))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    counters, reason = energy.energy_counters("tensorrt")
    assert reason is None
    assert [(c.kind, c.name, c.wrap_joules) for c in counters] == [
        ("nvml", "GPU 0 (NVIDIA H200)", None),
        ("nvml", "GPU 1 (NVIDIA H200)", None),
    ]

    def run() -> None:
        clock.now += 0.5
        millijoules[0] += 150_000.0
        millijoules[1] += 50_000.0

    result = energy.measure_energy(counters, run, batch=4, min_seconds=1.0, idle_seconds=0)
    assert result["kind"] == "nvml"
    assert result["runs"] == 2
    assert result["joules"] == pytest.approx(400.0)
    assert result["joules_per_inference"] == pytest.approx(50.0)
    assert result["watts"] == pytest.approx(400.0)
    assert "NVML covers the whole of GPU 0 (NVIDIA H200)" in result["limits"]


def test_fake_nvml_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml({0: 1.0, 1: 2.0, 2: 3.0}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 0")
    counters, _ = energy.energy_counters("cuda")
    assert [c.name for c in counters] == ["GPU 2 (NVIDIA H200)", "GPU 0 (NVIDIA H200)"]
    assert counters[0].read_joules() == pytest.approx(0.003)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    counters, reason = energy.energy_counters("cuda")
    assert counters == []
    assert reason.startswith("not available here: no NVIDIA GPU is visible")


def test_fake_nvml_without_total_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml({0: 1.0}, unsupported={0}))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    counters, reason = energy.energy_counters("cuda")
    assert counters == []
    assert reason == (
        "not available here: GPU 0 (NVIDIA H200): the GPU does not report total energy (NVML"
        " needs Volta or newer) (Not Supported)"
    )


def test_fake_nvml_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml({})

    def init() -> None:
        raise FakeNVMLError("Driver Not Loaded")

    fake.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    counters, reason = energy.energy_counters("cuda")
    assert counters == []
    assert reason.startswith("not available here: NVML cannot start (Driver Not Loaded)")


def test_this_machine() -> None:
    counters, reason = energy.energy_counters("cpu")
    assert counters or reason
    assert not (counters and reason)
    if not counters:
        assert reason.startswith("not available here")
