"""What machine a number was measured on: CPU model, cores, ISA flags, library versions."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata

from onnxkd.cpu import cpuinfo

# The flags that decide which kernels onnxruntime and PyTorch pick (INT8 dot products, bf16).
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "bf16",
)


def host_info(threads: int | None, packages: Sequence[str] = ()) -> dict:
    """The machine and versions a measurement ran with, for a results file.

    `packages` adds the installed version of each named distribution (for example "torch"),
    read from its metadata so that the package itself is not imported.

    Example:
        >>> info = host_info(2, packages=("numpy",))
        >>> sorted(k for k in info if k in ("cpu", "intra_op_threads", "numpy"))
        ['cpu', 'intra_op_threads', 'numpy']
    """
    import onnxruntime as ort

    from onnxkd import __version__

    cpu, flags = cpuinfo()
    info = {
        "cpu": cpu or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "intra_op_threads": threads or "onnxruntime default",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "onnxkd": __version__,
    }
    for name in packages:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info
