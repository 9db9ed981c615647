"""Vision Transformers: DeiT-Tiny and the Compact Convolutional Transformer (CCT).

- DeiT-Tiny (Touvron et al., "Training data-efficient image transformers", ICML 2021; reference
  facebookresearch/deit and timm's `vision_transformer.py`): the ViT of Dosovitskiy et al. 2021
  at width 192, depth 12, 3 heads, MLP ratio 4, a class token, learned position embeddings and
  pre-norm blocks. The patch is sized for the input: 16 px above 64 px (14×14 tokens at 224),
  else about an eighth of the shorter side (4 px at 32: 8×8 tokens, as CIFAR ViTs use).
- CCT (Hassani et al., "Escaping the Big Data Paradigm with Compact Transformers", 2021;
  reference SHI-Labs/Compact-Transformers): a convolutional tokenizer (conv, ReLU, max-pool,
  twice) instead of patches, and sequence pooling (attention-weighted mean of the tokens)
  instead of a class token, which is what lets it learn from small data sets and inputs.
  Up to 64 px the tokenizer is CCT's 3×3/stride-1 design (CCT-N/3x2: 8×8 tokens at 32 px),
  above its 7×7/stride-2 ImageNet design (CCT-14/7x2: 14×14 at 224).

Stochastic depth and dropout of the papers' training recipes are not applied. Feature taps:
`stage1`…`stage4` and `final` give the patch tokens (class token left out) as (B, D, H, W)
maps after a quarter, half, three quarters and all of the blocks, for hint and attention
transfer; the embedding (`head.flatten`) is the class token or the pooled tokens after the
final LayerNorm.

For INT8: the linear layers and the attention's two matrix products run with int8 kernels;
LayerNorm, GELU, Softmax and the attention scale stay in float between DequantizeLinear and
QuantizeLinear in onnxruntime, which is why a transformer gains less from INT8 than a CNN.
Torch-Pruning is not applied to them (`onnxkd.students.pruned`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onnxkd.students.common import SMALL_INPUT_MAX, STUDENTS, Size, Student, shorter_side


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection, written with torch.matmul so
    that QAT sees (and quantizes) both matrix products."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, dim)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenMap(nn.Module):
    """A feature tap: the patch tokens of (B, prefix + H·W, D) as a (B, D, H, W) map."""

    def __init__(self, grid: tuple[int, int], prefix: int) -> None:
        super().__init__()
        self.grid, self.prefix = grid, prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        return x[:, self.prefix :].transpose(1, 2).reshape(-1, x.shape[2], h, w)


class TokenHead(nn.Module):
    """The embedding from the final tokens (class token, or CCT's sequence pooling), then the
    classifier."""

    def __init__(self, dim: int, num_classes: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.attention_pool = nn.Linear(dim, 1) if pool == "sequence" else None
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention_pool is None:
            pooled = x[:, 0]
        else:
            weights = self.attention_pool(x).softmax(dim=1)  # (B, N, 1)
            pooled = torch.matmul(weights.transpose(1, 2), x)  # (B, 1, D)
        return self.fc(self.flatten(pooled))


class ConvTokenizer(nn.Module):
    """CCT's tokenizer: (conv, ReLU, 3×3/2 max-pool) per layer, no BatchNorm, as the paper."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, layers: int) -> None:
        super().__init__()
        widths = [in_chans] + [64] * (layers - 1) + [dim]
        blocks: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:], strict=False):
            blocks += [
                nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            ]
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).transpose(1, 2)


def _side(n: int, stride: int) -> int:
    """Output side of a padded conv or pool of this stride (ceil)."""
    return math.ceil(n / stride)


class VisionTransformer(Student):
    """Tokens (patches or CCT's tokenizer) -> position embedding -> blocks -> norm -> head."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        tokenizer: str,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Size = 32,
    ) -> None:
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        small = shorter_side(input_size) <= SMALL_INPUT_MAX
        if tokenizer == "patch":
            patch = max(1, round(shorter_side(input_size) / 8)) if small else 16
            grid = (_side(h, patch), _side(w, patch))
            pad = (0, grid[1] * patch - w, 0, grid[0] * patch - h)  # right, bottom
            self.tokens = PatchEmbed(in_chans, dim, patch, pad)
            prefix, pool = 1, "token"
        else:
            kernel, stride = (3, 1) if small else (7, 2)
            self.tokens = ConvTokenizer(in_chans, dim, kernel, stride, layers=2)
            grid = (h, w)
            for _ in range(2):
                grid = (_side(_side(grid[0], stride), 2), _side(_side(grid[1], stride), 2))
            prefix, pool = 0, "sequence"
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if prefix else None
        self.pos_embed = nn.Parameter(torch.zeros(1, prefix + grid[0] * grid[1], dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # Taps after a quarter, half, three quarters and all of the blocks.
        self.tap_after = [max(1, round(depth * q / 4)) for q in range(1, 5)]
        self.stage1, self.stage2, self.stage3, self.stage4 = (
            TokenMap(grid, prefix) for _ in range(4)
        )
        self.final = TokenMap(grid, prefix)
        self.head = TokenHead(dim, num_classes, pool)
        self.num_features = dim
        self.feature_modules = {
            **{f"stage{i}": f"stage{i}" for i in range(1, 5)},
            "final": "final",
            "embedding": "head.flatten",
        }
        self._init_weights()

    def _init_weights(self) -> None:
        # timm / DeiT: truncated normal (std 0.02) for linear layers and embeddings.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and isinstance(self.tokens, ConvTokenizer):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        taps = (self.stage1, self.stage2, self.stage3, self.stage4)
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            for tap, after in zip(taps, self.tap_after, strict=True):
                if after == i:
                    tap(x)  # feature taps: their outputs are for hooks only
        x = self.norm(x)
        self.final(x)
        return self.head(x)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv, the input zero-padded right and bottom to a
    whole number of patches."""

    def __init__(self, in_chans: int, dim: int, patch: int, pad: tuple[int, int, int, int]):
        super().__init__()
        self.pad = nn.ZeroPad2d(pad) if any(pad) else nn.Identity()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pad(x)).flatten(2).transpose(1, 2)


@STUDENTS.register()
def deit_tiny(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> Student:
    """DeiT-Tiny: ViT at width 192, depth 12, 3 heads, class token (5.7 M at 1000 classes)."""
    return VisionTransformer(192, 12, 3, 4.0, "patch", num_classes, in_chans, input_size)


@STUDENTS.register()
def cct_4(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> Student:
    """CCT-4/3x2: convolutional tokenizer, 4 blocks of width 128, 2 heads, MLP ratio 1."""
    return VisionTransformer(128, 4, 2, 1.0, "conv", num_classes, in_chans, input_size)


@STUDENTS.register()
def cct_7(num_classes: int = 10, in_chans: int = 3, input_size: Size = 32) -> Student:
    """CCT-7/3x2: convolutional tokenizer, 7 blocks of width 256, 4 heads, MLP ratio 2."""
    return VisionTransformer(256, 7, 4, 2.0, "conv", num_classes, in_chans, input_size)
