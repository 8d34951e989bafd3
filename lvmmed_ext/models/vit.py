"""ViT-B/16 (and smaller configurations for tests) with torchvision's parameter layout.

Names: ``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_{i}.{ln_1,self_attention,ln_2,mlp}``, ``encoder.ln``, ``heads.head``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPBlock(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (keys ``0`` and ``3`` hold the weights, as in torchvision)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float):
        super().__init__(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, heads: int, dim: int, mlp_dim: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, layers: int, heads: int, dim: int, mlp_dim: int, dropout: float, attn: float):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            OrderedDict((f"encoder_layer_{i}", EncoderBlock(heads, dim, mlp_dim, dropout, attn)) for i in range(layers))
        )
        self.ln = nn.LayerNorm(dim, eps=1e-6)


class VisionTransformer(nn.Module):
    """Vision transformer with a class token and learned absolute position embeddings (torchvision layout).

    ``features(x)`` returns ``(pooled [B, D], fmap [B, D, H/p, W/p])``: the class token and the patch tokens
    after the final LayerNorm. Inputs of another size than ``image_size`` get a bicubically interpolated
    position embedding (the stored parameter keeps the ``image_size`` layout). ``forward(x)`` returns
    ``heads(pooled)`` when ``num_classes > 0``, else ``pooled``.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
        in_chans: int = 1,
        num_classes: int = 0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        arch: str = "vit",
    ):
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if image_size % patch_size:
            raise ValueError(f"image_size must be a multiple of patch_size = {patch_size}, got {image_size}")
        self.arch, self.in_chans, self.num_classes = arch, in_chans, num_classes
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.stride, self.out_dim = patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(in_chans, hidden_dim, patch_size, stride=patch_size)
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1.0 / (in_chans * patch_size * patch_size)))
        nn.init.zeros_(self.conv_proj.bias)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        grid = image_size // patch_size
        self.encoder = Encoder(grid * grid + 1, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        if num_classes > 0:
            self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))
            nn.init.zeros_(self.heads.head.weight)
            nn.init.zeros_(self.heads.head.bias)

    def feature_grid(self, height: int, width: int | None = None) -> tuple[int, int]:
        """(R, S) = (H/p, W/p); the input sides must be multiples of the patch size."""
        width = height if width is None else width
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input sides must be multiples of patch_size = {self.patch_size}, got {height}x{width}")
        return height // self.patch_size, width // self.patch_size

    def _pos_embedding(self, rows: int, cols: int) -> Tensor:
        pos = self.encoder.pos_embedding
        grid = self.image_size // self.patch_size
        if (rows, cols) == (grid, grid):
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, H, W]`` -> ``(pooled [B, D], fmap [B, D, H/p, W/p])``."""
        rows, cols = self.feature_grid(x.shape[-2], x.shape[-1])
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)  # [B, R*S, D]
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.encoder.dropout(tokens + self._pos_embedding(rows, cols))
        tokens = self.encoder.ln(self.encoder.layers(tokens))
        fmap = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, rows, cols)
        return tokens[:, 0], fmap

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> patch-token map ``[B, D, H/p, W/p]``."""
        return self.features(x)[1]

    @property
    def stage_channels(self) -> list[int]:
        """``[D]``: one stage, the patch-token map (a U-Net decoder upsamples it without skips)."""
        return [self.hidden_dim]

    @property
    def stage_strides(self) -> tuple[int]:
        return (self.patch_size,)

    def stages(self, x: Tensor) -> list[Tensor]:
        """``[B, C, H, W]`` -> ``[fmap [B, D, H/p, W/p]]`` (the list form of ``forward_features``, as ResNets give)."""
        return [self.forward_features(x)]

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.features(x)[0]
        return self.heads(pooled) if self.num_classes > 0 else pooled


def vit_b_16(in_chans: int = 1, num_classes: int = 0, image_size: int = 224, **kwargs) -> VisionTransformer:
    """ViT-B/16: 12 layers, 12 heads, D = 768, MLP 3072 (86,567,656 parameters with a 3-channel stem and the
    1000-class head at 224x224).

    Example:
        >>> from lvmmed_ext.models import vit_b_16
        >>> pooled, fmap = vit_b_16(in_chans=1).features(torch.zeros(1, 1, 224, 224))
        >>> pooled.shape, fmap.shape
        (torch.Size([1, 768]), torch.Size([1, 768, 14, 14]))
    """
    return VisionTransformer(image_size, 16, 12, 12, 768, 3072, in_chans, num_classes, arch="vit_b_16", **kwargs)
