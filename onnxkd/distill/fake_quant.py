"""Fake quantization for QAT on torch's core ops: range observers, the fake quantizers that own
them, and the conv/linear layer whose weights they quantize.

`torch.fake_quantize_per_tensor_affine` and `torch.fake_quantize_per_channel_affine` round to the
integer grid in the forward pass and let the gradient through inside the range (the straight-
through estimator); the ONNX exporter writes each as a QuantizeLinear/DequantizeLinear pair.
Ranges are the moving-average min/max of PyTorch's QAT observers (constant 0.01, the first
batch taken as is), with scales and zero points derived from them by the same arithmetic, so
that QAT runs give the numbers they gave before onnxkd had its own fake quantization.

A range is learnt in training mode only: validation data never moves it, and validation and
export use exactly the scales a checkpoint holds.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# U8S8, the combination onnxruntime's x86 kernels are fast with: activations unsigned 8-bit
# asymmetric per tensor, weights signed 8-bit symmetric per output channel. Weights use the
# full -128..127: the exporter refuses the narrow -127..127 range.
ACTIVATION_RANGE = (0, 255)
WEIGHT_RANGE = (-128, 127)
AVERAGING = 0.01
# The smallest scale: a constant tensor would otherwise get scale 0 and divide by it.
EPS = torch.finfo(torch.float32).eps
# The uint8 grid of a ReLU6 output: 0 .. 255 steps of 6/255, so that 255 means 6.
RELU6_SCALE = 6.0 / 255.0

_CONV_FUNCTIONS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
LAYERS = (*_CONV_FUNCTIONS, nn.Linear)


class FakeQuant(nn.Module):
    """Fake quantization on a range observed with a moving average of each batch's min and max.

    Per tensor (`axis=None`) or per channel along `axis`; affine (a zero point that fits the
    range) or symmetric (zero point 0). In training mode each call first moves the range
    towards the batch's and recomputes the scale and zero point from it; in eval mode both stay
    fixed. One instance called on several tensors gives them one shared range.

    Example:
        >>> fq = FakeQuant(0, 255)
        >>> y = fq(torch.tensor([0.0, 1.0, 2.55]))  # range [0, 2.55]: a step of 0.01
        >>> round(float(fq.scale), 6), int(fq.zero_point)
        (0.01, 0)
    """

    def __init__(
        self, quant_min: int, quant_max: int, symmetric: bool = False, axis: int | None = None
    ) -> None:
        super().__init__()
        self.quant_min, self.quant_max = quant_min, quant_max
        self.symmetric, self.axis = symmetric, axis
        # Empty until the first batch; then one value (per tensor) or one per channel.
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() > 0:
            self.observe(x.detach())
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, self.scale, self.zero_point, self.quant_min, self.quant_max
            )
        return torch.fake_quantize_per_channel_affine(
            x, self.scale, self.zero_point, self.axis, self.quant_min, self.quant_max
        )

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Move the range towards `x`'s min and max, and derive the scale and zero point."""
        x = x.float()
        if self.axis is None:
            lo, hi = torch.aminmax(x)
        else:
            lo, hi = torch.aminmax(x.transpose(0, self.axis).flatten(1), dim=1)
        if self.min_val.numel():
            lo = self.min_val + AVERAGING * (lo - self.min_val)
            hi = self.max_val + AVERAGING * (hi - self.max_val)
        self.min_val.resize_(lo.shape).copy_(lo)
        self.max_val.resize_(hi.shape).copy_(hi)
        scale, zero_point = self.qparams()
        self.scale.resize_(scale.shape).copy_(scale)
        self.zero_point.resize_(zero_point.shape).copy_(zero_point)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point for the current range, which always includes 0 (so that zero
        padding is exact). Per tensor both have one element."""
        lo = torch.clamp(self.min_val, max=0.0).reshape(-1)
        hi = torch.clamp(self.max_val, min=0.0).reshape(-1)
        steps = float(self.quant_max - self.quant_min)
        if self.symmetric:
            scale = torch.clamp(torch.max(-lo, hi) / (steps / 2), min=EPS)
            return scale, torch.zeros_like(scale, dtype=torch.int32)
        scale = torch.clamp((hi - lo) / steps, min=EPS)
        zero_point = self.quant_min - torch.round(lo / scale).to(torch.int32)
        return scale, torch.clamp(zero_point, self.quant_min, self.quant_max)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The buffers change shape with the first batch: take the checkpoint's shapes.
        for name in ("min_val", "max_val", "scale", "zero_point"):
            if prefix + name in state_dict:
                getattr(self, name).resize_(state_dict[prefix + name].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "affine"
        where = "per tensor" if self.axis is None else f"per channel (axis {self.axis})"
        return f"{self.quant_min}..{self.quant_max}, {kind}, {where}"


class FixedFakeQuant(nn.Module):
    """Fake quantization on a fixed grid (ReLU6's [0, 6]): it clamps as well as rounds."""

    def __init__(self, scale: float, zero_point: int, quant_min: int, quant_max: int) -> None:
        super().__init__()
        self.quant_min, self.quant_max = quant_min, quant_max
        self.register_buffer("scale", torch.tensor([scale]))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max
        )

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}"


def activation_quant() -> FakeQuant:
    """uint8, asymmetric, one range per tensor."""
    return FakeQuant(*ACTIVATION_RANGE)


def weight_quant() -> FakeQuant:
    """int8, symmetric, one range per output channel."""
    return FakeQuant(*WEIGHT_RANGE, symmetric=True, axis=0)


def relu6_quant() -> FixedFakeQuant:
    """uint8 on [0, 6]: after a layer with a fused ReLU, min(relu(x), 6) without a Clip op."""
    return FixedFakeQuant(RELU6_SCALE, 0, *ACTIVATION_RANGE)


class QATLayer(nn.Module):
    """A conv or linear layer with fake-quantized weights and, optionally, a fused ReLU.

    The ReLU sits before the output's fake quantization, so the int8 kernel's output range does
    its work; with `relu6_quant()` on the output it stands for a ReLU6.
    """

    def __init__(self, layer: nn.Module, relu: bool = False) -> None:
        super().__init__()
        if type(layer) not in LAYERS:
            raise TypeError(f"QATLayer takes {', '.join(t.__name__ for t in LAYERS)}, not {layer}")
        if getattr(layer, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"QATLayer needs zero padding, not {layer.padding_mode!r}")
        self.layer = layer
        self.relu = relu
        self.weight_quant = weight_quant()
        # The weights' range from the start, so eval mode works before any training step; the
        # first step observes the same weights again, which leaves the range as it is.
        self.weight_quant.observe(layer.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        weight = self.weight_quant(layer.weight)
        if isinstance(layer, nn.Linear):
            y = F.linear(x, weight, layer.bias)
        else:
            conv = _CONV_FUNCTIONS[type(layer)]
            y = conv(
                x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return "relu" if self.relu else ""
