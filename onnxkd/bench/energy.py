"""Energy per inference, from the hardware's own cumulative energy counters where the host has any.

Latency says how long a model takes; on a battery or a power budget the question is how many
joules it costs. Only counters the hardware keeps can say that without a power meter: Linux
RAPL (powercap) for the CPU package, NVML for NVIDIA GPUs. Both count a whole device, not one
process, so each figure carries the sentence that says what it covers, and the idle draw is
measured so a figure above idle can be given too. Where no counter can be read (a VM, a
container without /sys/class/powercap, RAPL locked to root, no NVML), the result says "not
available here" and why, and no figure: an estimate from a TDP would be made up.

The model is given as a callable, so this module needs neither torch nor onnxruntime.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")
# Package domains only: sub-domains (intel-rapl:0:0 core, :0:1 dram) are parts of their
# package and would count twice; intel-rapl-mmio:N repeats the package counter on some Intel
# CPUs. AMD on recent kernels uses the intel-rapl name as well.
_PACKAGE_DOMAIN = re.compile(r"intel-rapl:(\d+)")
# psys (platform) sits beside the packages on some laptops but already includes them.
_SKIPPED_DOMAIN_NAMES = {"psys"}
_GPU_EPS = {"cuda", "tensorrt"}

# Looked up through the module so tests can give a clock and a sleep they control.
_clock: Callable[[], float] = time.perf_counter
_sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class EnergyCounter:
    """One cumulative energy counter: a Linux RAPL (powercap) domain or an NVIDIA GPU via NVML."""

    kind: str
    name: str
    read_joules: Callable[[], float]
    wrap_joules: float | None
    scope: str


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def energy_counters(ep: str, powercap: Path = POWERCAP) -> tuple[list[EnergyCounter], str | None]:
    """The counters that can measure a model running on `ep`, and, when there are none, why not.

    "cpu" gets the RAPL package domains, "cuda" and "tensorrt" the NVML GPUs; nothing else is
    counted for a GPU run, since the host CPU's share is not the model's alone to claim.
    """
    if ep == "cpu":
        return _rapl_counters(powercap)
    if ep in _GPU_EPS:
        return _nvml_counters()
    return [], f"not available here: no energy counter is known for execution provider {ep!r}"


def _read_file(path: Path) -> str:
    return path.read_text().strip()


def _rapl_domains(powercap: Path) -> list[Path]:
    found = [(int(m[1]), p) for p in powercap.iterdir() if (m := _PACKAGE_DOMAIN.fullmatch(p.name))]
    return [path for _, path in sorted(found)]


def _rapl_counters(powercap: Path) -> tuple[list[EnergyCounter], str | None]:
    if not powercap.is_dir():
        return [], (
            f"not available here: {powercap} does not exist (no RAPL interface exposed to this"
            " machine)"
        )
    counters = []
    for domain in _rapl_domains(powercap):
        counter = _rapl_counter(domain)
        if isinstance(counter, str):
            # All packages or none: a sum over some of them would understate the figure.
            return [], counter
        if counter is not None:
            counters.append(counter)
    if not counters:
        return [], f"not available here: {powercap} has no RAPL package domain (intel-rapl:N)"
    return counters, None


def _rapl_counter(domain: Path) -> EnergyCounter | str | None:
    """The package counter in `domain`, None for a domain not to count, or why it can't be read."""
    try:
        name = _read_file(domain / "name")
    except OSError:
        name = domain.name
    if name in _SKIPPED_DOMAIN_NAMES:
        return None
    energy = domain / "energy_uj"
    try:
        float(_read_file(energy))
    except PermissionError:
        return (
            f"not available here: {energy} is not readable by this user (RAPL counters are"
            " root-only since Linux 5.10; run as root or `chmod o+r`)"
        )
    except (OSError, ValueError) as err:
        return f"not available here: {energy} cannot be read ({err})"
    return EnergyCounter(
        kind="rapl",
        name=name,
        read_joules=lambda: float(_read_file(energy)) / 1e6,
        wrap_joules=_rapl_range_joules(domain),
        scope=(
            f"RAPL {name} covers the whole CPU package: other processes' work and idle power"
            " are included"
        ),
    )


def _rapl_range_joules(domain: Path) -> float | None:
    try:
        return float(_read_file(domain / "max_energy_range_uj")) / 1e6
    except (OSError, ValueError):
        return None


def _visible_gpu_indices(count: int) -> list[int]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to the model, by index; all of them otherwise.

    Its indices are CUDA's, which match NVML's only in PCI bus order (CUDA_DEVICE_ORDER=
    PCI_BUS_ID); UUIDs or anything else are not parsed, and every GPU is counted then.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    parts = [part.strip() for part in visible.split(",") if part.strip()]
    if not all(re.fullmatch(r"\d+", part) for part in parts):
        return list(range(count))
    return [index for index in map(int, parts) if index < count]


def _nvml_counters() -> tuple[list[EnergyCounter], str | None]:
    try:
        import pynvml
    except ImportError:
        return [], "not available here: nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
        indices = _visible_gpu_indices(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as err:
        return [], f"not available here: NVML cannot start ({err}); is an NVIDIA driver loaded?"
    if not indices:
        return [], "not available here: no NVIDIA GPU is visible (CUDA_VISIBLE_DEVICES, or none)"
    counters = []
    for index in indices:
        counter = _nvml_counter(pynvml, index)
        if isinstance(counter, str):
            return [], counter
        counters.append(counter)
    return counters, None


def _nvml_counter(pynvml: Any, index: int) -> EnergyCounter | str:
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        model = pynvml.nvmlDeviceGetName(handle)
    except pynvml.NVMLError as err:
        return f"not available here: NVML cannot open GPU {index} ({err})"
    # Older pynvml releases return bytes.
    model = model.decode() if isinstance(model, bytes) else model
    name = f"GPU {index} ({model})"
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as err:
        return (
            f"not available here: {name}: the GPU does not report total energy (NVML needs"
            f" Volta or newer) ({err})"
        )
    return EnergyCounter(
        kind="nvml",
        name=name,
        # Millijoules since the driver loaded.
        read_joules=lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3,
        wrap_joules=None,
        scope=(
            f"NVML covers the whole of {name}: other processes' work on it and its idle power"
            " are included"
        ),
    )


class _CounterFailed(Exception):
    pass


def _read_all(counters: list[EnergyCounter]) -> list[float]:
    readings = []
    for counter in counters:
        try:
            readings.append(float(counter.read_joules()))
        # Any error: NVML raises its own class, and a reading that fails means no figure.
        except Exception as err:
            raise _CounterFailed(f"counter {counter.name} failed during reading: {err}") from err
    return readings


def _joules_between(
    counters: list[EnergyCounter], before: list[float], after: list[float]
) -> float:
    total = 0.0
    for counter, start, end in zip(counters, before, after, strict=True):
        delta = end - start
        if delta < 0:
            if counter.wrap_joules is None:
                raise _CounterFailed(f"counter {counter.name} went backwards and cannot wrap")
            # One wrap at most: RAPL's range lasts minutes even at full power, runs are seconds.
            delta += counter.wrap_joules
        total += delta
    return total


def _read_all_at(counters: list[EnergyCounter]) -> tuple[list[float], float]:
    """The readings and the clock at their midpoint.

    Reading a counter takes time (NVML: about a millisecond) and the process can be scheduled
    out during it; timing from the middle of the read keeps that from biasing the watts.
    """
    before = _clock()
    readings = _read_all(counters)
    return readings, (before + _clock()) / 2


def _idle_watts(counters: list[EnergyCounter], seconds: float) -> float | None:
    before, start = _read_all_at(counters)
    _sleep(seconds)
    after, end = _read_all_at(counters)
    elapsed = end - start
    joules = _joules_between(counters, before, after)
    return joules / elapsed if elapsed > 0 else None


def _run_for(
    counters: list[EnergyCounter], run: Callable[[], None], min_seconds: float
) -> tuple[int, float, float]:
    """(runs, seconds, joules) over repeated run() calls lasting at least min_seconds."""
    before, start = _read_all_at(counters)
    runs = 0
    while True:
        run()
        runs += 1
        if _clock() - start >= min_seconds:
            break
    after, end = _read_all_at(counters)
    return runs, end - start, _joules_between(counters, before, after)


def _limits(counters: list[EnergyCounter], idle_seconds: float) -> str:
    sentences = list(dict.fromkeys(counter.scope for counter in counters))
    if idle_seconds > 0:
        sentences.append(
            f"idle draw measured over {idle_seconds:g} s before, subtracted for the above-idle"
            " figure"
        )
    else:
        sentences.append("idle draw not measured, so no above-idle figure")
    kinds = {counter.kind for counter in counters}
    if "rapl" in kinds:
        sentences.append("RAPL updates about every ms, so short runs are coarse")
    if "nvml" in kinds:
        sentences.append("NVML's counter advances in steps, so short runs are coarse")
    return "; ".join(sentences)


def measure_energy(
    counters: list[EnergyCounter],
    run: Callable[[], None],
    batch: int,
    min_seconds: float = 2.0,
    idle_seconds: float | None = None,
) -> dict:
    """Joules per inference (per sample of `batch`) while run() repeats for at least min_seconds.

    The idle draw is measured first over idle_seconds (min_seconds when None; 0 skips it) so
    the figure above idle can be given. The caller warms the model up beforehand: every run()
    here counts. Returns a JSON-able dict; {"available": False, "reason": ...} when there is no
    counter or one fails while being read.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    if not counters:
        return unavailable("not available here: no energy counter to read")
    idle_seconds = min_seconds if idle_seconds is None else idle_seconds
    try:
        idle_watts = _idle_watts(counters, idle_seconds) if idle_seconds > 0 else None
        runs, seconds, joules = _run_for(counters, run, min_seconds)
    except _CounterFailed as err:
        return unavailable(f"not available here: {err}")
    samples = runs * batch
    above_idle = None
    if idle_watts is not None:
        above_idle = (joules - idle_watts * seconds) / samples
    return {
        "available": True,
        "counters": [counter.name for counter in counters],
        "kind": "+".join(sorted({counter.kind for counter in counters})),
        "runs": runs,
        "batch": batch,
        "seconds": seconds,
        "joules": joules,
        "joules_per_inference": joules / samples,
        "joules_per_run": joules / runs,
        "watts": joules / seconds if seconds > 0 else None,
        "idle_watts": idle_watts,
        "joules_per_inference_above_idle": above_idle,
        "limits": _limits(counters, idle_seconds),
    }
