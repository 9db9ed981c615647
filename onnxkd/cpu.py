"""What this CPU can do, read from Linux's /proc/cpuinfo: its model and ISA flags, and the two
questions stages ask of them (does int8 saturate, is bf16 native)."""

from __future__ import annotations

import platform
from pathlib import Path

# x86 int8 dot products that sum in int32 (without them, U8S8 pairs sum in int16 and saturate).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
# bf16 arithmetic in hardware; without it torch's CPU autocast runs emulated, slower kernels.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_flags() -> set[str] | None:
    """This CPU's ISA flags as Linux lists them; None where they cannot be read."""
    _, flags = cpuinfo()
    return flags or None


def cpuinfo() -> tuple[str | None, set[str]]:
    """The CPU's model name (None if unknown) and its flags (empty if unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    cpu, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and cpu is None:
            cpu = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return cpu, flags


def lacks_native_bf16() -> bool:
    """Known to have no bf16 arithmetic (flags read and none of BF16_FLAGS); False if unknown."""
    flags = cpu_flags()
    return flags is not None and not any(f in flags for f in BF16_FLAGS)
