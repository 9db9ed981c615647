"""One error hierarchy. A message says what was wrong, what was found, and how to fix it.

The CLI turns any `OnnxkdError` into one line on stderr and exit code 1; anything else is a bug
and keeps its traceback.
"""


class OnnxkdError(Exception):
    """Base of every error a user can cause."""


class DataError(OnnxkdError):
    """A data source is missing, malformed, truncated or does not match what was recorded."""


class MissingSplitError(DataError):
    """The data has no such split at all (as opposed to a split that is there but broken)."""


class SpecError(OnnxkdError):
    """The input spec is missing, inconsistent, or does not fit the model's input."""


class TeacherError(OnnxkdError):
    """The teacher model cannot be loaded or run as given."""


class ProviderError(OnnxkdError):
    """An execution provider is unknown or not available in this onnxruntime build."""


class CacheError(OnnxkdError):
    """A cache is incomplete, corrupt, or was made from other inputs."""


class WorkspaceError(OnnxkdError):
    """The workspace has no record of what a command needs."""


class QuantizeError(OnnxkdError):
    """A model cannot be quantized as asked (not ONNX, no calibration data, nothing to quantize)."""
