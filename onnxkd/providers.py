"""Execution providers: a closed set of short names mapped to onnxruntime's provider names and
the pip package that ships each, so an "unavailable" error can say what to install.

Importing this module does not import onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxkd.errors import ProviderError


@dataclass(frozen=True)
class ExecutionProvider:
    """One provider. `only_on` names the devices it exists on when that is not every host;
    `static_check` marks those that onnxruntime's mobile usability checker covers, so bench
    checks a model for them statically (and says nothing was timed) instead of timing it."""

    name: str
    ort_name: str
    package: str
    title: str = ""
    only_on: str | None = None
    static_check: bool = False


PROVIDERS: dict[str, ExecutionProvider] = {
    ep.name: ep
    for ep in [
        ExecutionProvider("cpu", "CPUExecutionProvider", "onnxruntime"),
        ExecutionProvider("cuda", "CUDAExecutionProvider", "onnxruntime-gpu"),
        ExecutionProvider(
            "tensorrt", "TensorrtExecutionProvider", "onnxruntime-gpu (with TensorRT)"
        ),
        ExecutionProvider("openvino", "OpenVINOExecutionProvider", "onnxruntime-openvino"),
        ExecutionProvider("dml", "DmlExecutionProvider", "onnxruntime-directml"),
        ExecutionProvider(
            "coreml",
            "CoreMLExecutionProvider",
            "onnxruntime (macOS/iOS build)",
            title="CoreML",
            only_on="Apple",
            static_check=True,
        ),
        ExecutionProvider(
            "nnapi",
            "NnapiExecutionProvider",
            "onnxruntime-android",
            title="NNAPI",
            only_on="Android",
            static_check=True,
        ),
        ExecutionProvider("qnn", "QNNExecutionProvider", "onnxruntime-qnn"),
        ExecutionProvider("rocm", "ROCMExecutionProvider", "onnxruntime-rocm"),
        ExecutionProvider("migraphx", "MIGraphXExecutionProvider", "onnxruntime-migraphx"),
        ExecutionProvider(
            "xnnpack", "XnnpackExecutionProvider", "onnxruntime (build with XNNPACK)"
        ),
        ExecutionProvider("webgpu", "WebGpuExecutionProvider", "onnxruntime-web / webgpu build"),
    ]
}

EP_NAMES = tuple(PROVIDERS)
# Device-only providers bench checks statically (onnxruntime's mobile usability checker).
STATIC_CHECK_EPS = tuple(ep.name for ep in PROVIDERS.values() if ep.static_check)


def available_ep_names() -> list[str]:
    """Short names of the providers this onnxruntime build has."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [ep.name for ep in PROVIDERS.values() if ep.ort_name in have]


def resolve_provider(name: str) -> ExecutionProvider:
    """The provider for a short name, checked against this onnxruntime build.

    Never falls back to CPU silently: a missing provider is an error naming the package that has
    it and the providers that are available.
    """
    key = name.strip().lower()
    if key not in PROVIDERS:
        raise ProviderError(f"unknown execution provider {name!r}; known: {', '.join(EP_NAMES)}")
    ep = PROVIDERS[key]
    have = available_ep_names()
    if key not in have:
        raise ProviderError(
            f"execution provider {key!r} ({ep.ort_name}) is not in this onnxruntime build; "
            f"available: {', '.join(have)}; install {ep.package} to get it"
        )
    return ep
