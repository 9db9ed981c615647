"""`quantize`: onnxruntime static INT8 quantization (QDQ), calibrated on the student's own data,
with an accuracy check against the float model and an accuracy-aware mode."""

from onnxkd.quantize.config import QuantizeConfig

__all__ = ["QuantizeConfig"]
