"""Errors of the on-device stage; the CLI prints each as one line and exits 1."""

from onnxkd.errors import OnnxkdError


class OnDeviceError(OnnxkdError):
    """Artifacts, a cache or a setting that on-device training cannot use as given."""


class EnvironmentMissing(OnDeviceError):
    """The separate onnxruntime-training environment is not there or is incomplete."""
