"""One way to open an onnxruntime session: the provider resolved strictly, threads and log
level set, and a load failure turned into one clear error.

Every stage that runs an ONNX model goes through `ort_session`, so a provider that is missing
or that onnxruntime silently replaced with the CPU is refused in one place. onnxruntime is
imported only when a session is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onnxkd.errors import OnnxkdError, ProviderError
from onnxkd.providers import ExecutionProvider, resolve_provider

if TYPE_CHECKING:
    import onnx
    import onnxruntime

QUIET = 3  # errors only: probing a batch-1 teacher or NCHWc notices would log expected lines


def session_options(
    threads: int | None = None,
    *,
    log_level: int = QUIET,
    optimized_model_path: Path | None = None,
    profile_prefix: str | None = None,
) -> onnxruntime.SessionOptions:
    """Session options with the settings every stage chooses the same way."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def ort_session(
    model: Path | str | bytes | onnx.ModelProto,
    ep: str | ExecutionProvider = "cpu",
    threads: int | None = None,
    *,
    options: onnxruntime.SessionOptions | None = None,
    error: type[OnnxkdError] = OnnxkdError,
    failure: str | None = None,
    purpose: str = "run",
) -> onnxruntime.InferenceSession:
    """An onnxruntime session on exactly the provider asked for.

    Args:
        model: a path, serialized bytes or an `onnx.ModelProto`.
        ep: a short provider name (`cpu`, `cuda`, …) or a resolved `ExecutionProvider`.
        threads: intra-op threads; None lets onnxruntime choose.
        options: prepared `session_options(...)`; `threads` is ignored when given.
        error: the error type a load failure raises (the caller's stage error).
        failure: the start of that error's message, before onnxruntime's first line;
            defaults to "onnxruntime cannot load <file name>".
        purpose: what the caller does with the session ("run", "timed"), for the message
            when onnxruntime dropped the provider.

    Example:
        >>> session = ort_session("models/digits_cnn.onnx", "cpu", threads=1)  # doctest: +SKIP
    """
    import onnxruntime as ort

    provider = ep if isinstance(ep, ExecutionProvider) else resolve_provider(ep)
    if options is None:
        options = session_options(threads)
    if isinstance(model, Path | str):
        source, name = str(model), Path(model).name
    else:
        source = model if isinstance(model, bytes) else model.SerializeToString()
        name = "the model"
    try:
        session = ort.InferenceSession(source, options, providers=[provider.ort_name])
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{failure or f'onnxruntime cannot load {name}'}: {first}") from e
    # onnxruntime falls back to CPU when a provider fails to initialise (a missing CUDA library,
    # say) and only logs it: anything measured on that session under the EP's name would lie.
    if provider.ort_name not in session.get_providers():
        raise ProviderError(
            f"onnxruntime fell back to {session.get_providers()} instead of {provider.ort_name} "
            f"(its libraries failed to load?); nothing was {purpose} on {provider.name}"
        )
    return session
