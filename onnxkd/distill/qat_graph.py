"""Where QAT's fake quantization goes: two passes over a student traced with torch.fx.

    fuse_layers: conv/linear [-> BatchNorm] [-> ReLU | ReLU6]  ->  one QATLayer
    insert_fake_quant: a FakeQuant on each value an int8 kernel reads or writes

The placement is that of PyTorch's native QAT backend, which onnxruntime's QDQ fusion reads
well: the model's input, each layer's output, each residual sum gets a range of its own; an op
that cannot leave its input's grid (pooling, reshapes, a ReLU after a quantized value, concat)
has its output re-observed with its input's quantizer, so that both sides of it share one scale
and onnxruntime can drop the pair around it; an op not in these tables (nn.Flatten, slicing,
index_select) is left in float, and a quantizer goes on its output where a known op reads it.
"""

from __future__ import annotations

import copy
import itertools
import operator
from collections import Counter
from collections.abc import Iterator

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn import functional as F

from onnxkd.distill import bn_fold
from onnxkd.distill.fake_quant import LAYERS, QATLayer, activation_quant, relu6_quant

OWN, SHARED = "own", "shared"

# Ops whose output gets a range of its own.
_OWN_MODULES = (
    QATLayer,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Dropout,
    nn.ELU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.PReLU,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
)
_OWN_FUNCTIONS = {F.dropout, F.elu, F.hardswish, F.leaky_relu, torch.matmul}
# Sums and products: a range of their own for two tensors, the tensor's for one (x + 1).
_BINARY = {operator.add, torch.add, operator.mul, torch.mul}
# Ops whose output stays on their input's grid.
_SHARED_MODULES = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.Hardtanh,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ReLU,
    nn.ReLU6,
)
_SHARED_FUNCTIONS = {
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.hardtanh,
    F.interpolate,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    F.relu,
    F.relu6,
    torch.cat,  # its inputs share the range too
    torch.clamp,
    torch.flatten,
    torch.mean,
    torch.narrow,
    torch.repeat_interleave,
    torch.squeeze,
    torch.stack,
    torch.transpose,
    torch.unsqueeze,
}
_SHARED_METHODS = {
    "clamp",
    "contiguous",
    "detach",
    "mean",
    "permute",
    "relu",
    "repeat",
    "repeat_interleave",
    "reshape",
    "squeeze",
    "transpose",
    "unsqueeze",
    "view",
}
# Ops whose ReLU (the op's only reader) runs inside their int8 kernel: one range, after it.
_FUSES_RELU = (*_BINARY, nn.BatchNorm2d, nn.BatchNorm3d)


def _module(gm: fx.GraphModule, node: object, types: tuple[type, ...]) -> nn.Module | None:
    """The module `node` calls, if it is exactly one of `types` (not a subclass)."""
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    return module if type(module) in types else None


def _calls_relu(gm: fx.GraphModule, node: object) -> bool:
    """`node` is nn.ReLU or F.relu on one argument."""
    if not isinstance(node, fx.Node) or len(node.args) != 1:
        return False
    return node.target is F.relu or _module(gm, node, (nn.ReLU,)) is not None


def _calls_relu6(gm: fx.GraphModule, node: object) -> bool:
    """`node` is nn.ReLU6 on one argument."""
    if not isinstance(node, fx.Node) or len(node.args) != 1 or node.kwargs:
        return False
    return _module(gm, node, (nn.ReLU6,)) is not None


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _replace(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent), name, module)


def fuse_layers(gm: fx.GraphModule) -> list[str]:
    """Turn each conv or linear layer of `gm` (in eval mode) into a `QATLayer`, in place: the
    BatchNorm that only it feeds folded in, the ReLU or ReLU6 that only they feed fused. Returns
    the layers whose fused ReLU stands for a ReLU6 (their output quantizer must clamp at 6).

    Only modules called once are fused: a module called in several places must stay what it
    is in all of them.
    """
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")

    def once(node: fx.Node | None) -> bool:
        return node is not None and (node.op != "call_module" or calls[node.target] == 1)

    relu6_layers = []
    for node in list(gm.graph.nodes):
        layer = _module(gm, node, LAYERS)
        if layer is None or not once(node):
            continue
        chain, folded = [node], layer
        after = _sole_user(node)
        norm = _module(gm, after, bn_fold.NORMS)
        alone = once(after) and len(after.args) == 1 and not after.kwargs
        if norm is not None and alone and bn_fold.can_fold(layer, norm):
            chain.append(after)
            folded = bn_fold.fold(layer, norm)
        after = _sole_user(chain[-1])
        relu = once(after) and _calls_relu(gm, after)
        relu6 = once(after) and _calls_relu6(gm, after)
        if relu or relu6:
            chain.append(after)
        if folded is layer:  # the student keeps its own layers
            folded = copy.deepcopy(layer)
        _replace(gm, node.target, QATLayer(folded, relu=relu or relu6))
        if relu6:
            relu6_layers.append(node.target)
        if len(chain) > 1:
            chain[-1].replace_all_uses_with(node)
            for fused in reversed(chain[1:]):
                gm.graph.erase_node(fused)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return relu6_layers


def _tensor_args(node: fx.Node) -> Iterator[fx.Node | list[fx.Node]]:
    """The tensors `node` reads, a list where it reads a list of them (torch.cat)."""
    for arg in (*node.args, *node.kwargs.values()):
        if isinstance(arg, list | tuple):
            tensors = [a for a in arg if _is_tensor(a)]
            if tensors:
                yield tensors
        elif _is_tensor(arg):
            yield arg


def _is_tensor(value: object) -> bool:
    return isinstance(value, fx.Node) and isinstance(value.meta.get("tensor_meta"), TensorMetadata)


def _kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """OWN, SHARED, or None for an op left in float, as the tables above say."""
    if node.op == "call_module":
        if _module(gm, node, _OWN_MODULES) is not None:
            return OWN
        return SHARED if _module(gm, node, _SHARED_MODULES) is not None else None
    if node.op == "call_function":
        if node.target in _BINARY:
            tensors = sum(1 for _ in _tensor_args(node))
            return {0: None, 1: SHARED}.get(tensors, OWN)
        if node.target in _OWN_FUNCTIONS:
            return OWN
        return SHARED if node.target in _SHARED_FUNCTIONS else None
    if node.op == "call_method" and node.target in _SHARED_METHODS:
        return SHARED
    return None


def _read_through(value: fx.Node, quant: fx.Node) -> None:
    """Every reader of `value` but `quant` reads `quant` instead."""
    value.replace_all_uses_with(quant, delete_user_cb=lambda user: user is not quant)


def insert_fake_quant(gm: fx.GraphModule, relu6_layers: list[str], example: torch.Tensor) -> None:
    """Insert activation fake quantization into `gm` (after `fuse_layers`), in place.

    `example` is a batch of the model's input, run once in eval mode to learn which values are
    tensors. The outputs of `relu6_layers` get the fixed [0, 6] grid.
    """
    ShapeProp(gm.eval()).propagate(example)
    graph = gm.graph
    relu6 = set(relu6_layers)
    names = (f"fake_quant_{i}" for i in itertools.count())
    quantizers: set[fx.Node] = set()
    input_quantizer: dict[fx.Node, fx.Node] = {}  # a float value -> the quantizer readers share

    def call(target: str, value: fx.Node) -> fx.Node:
        with graph.inserting_after(value):
            quant = graph.call_module(target, (value,))
        quant.meta["tensor_meta"] = value.meta["tensor_meta"]
        quantizers.add(quant)
        return quant

    def new(value: fx.Node, module: nn.Module) -> fx.Node:
        name = next(names)
        gm.add_submodule(name, module)
        return call(name, value)

    def quantized(value: fx.Node) -> fx.Node:
        if value in quantizers:
            return value
        if value not in input_quantizer:
            input_quantizer[value] = new(value, activation_quant())
        return input_quantizer[value]

    fused: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node in fused or (kind := _kind(gm, node)) is None:
            continue
        for arg in list(_tensor_args(node)):
            for value in arg if isinstance(arg, list) else [arg]:
                node.replace_input_with(value, quantized(value))
        last = node
        relu = _sole_user(node)
        fuses = node.target in _BINARY or _module(gm, node, _FUSES_RELU) is not None
        if kind == OWN and fuses and relu is not None:
            binary = node.op == "call_function" and len(relu.args) == 1
            if _calls_relu(gm, relu) or (binary and relu.target is torch.relu):
                fused.add(relu)
                last = relu
        if kind == OWN:
            module = relu6_quant() if node.target in relu6 else activation_quant()
            quant = new(last, module)
        else:
            arg = next(_tensor_args(node))
            first, *others = arg if isinstance(arg, list) else [arg]
            for other in others:  # torch.cat: every input on the first one's grid
                other.target = first.target
            quant = call(first.target, last)
        _read_through(last, quant)
    gm.delete_all_unused_submodules()
    graph.lint()
    gm.recompile()
