"""onnxkd: knowledge distillation around ONNX."""

__version__ = "0.1.0"
