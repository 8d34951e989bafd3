"""The convolution block shared by the U-Net decoders and a compact 3D U-Net encoder for volumes (its own module, so
its weights export and load on their own)."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBlock(nn.Sequential):
    """Two (3x3[x3] convolution, normalisation, ReLU) layers; 2D blocks use BatchNorm, 3D blocks InstanceNorm (with
    affine weights: volume batches are too small for batch statistics).

    ``[B, cin, *S] -> [B, cout, *S]`` with ``len(S) == dims``.
    """

    def __init__(self, cin: int, cout: int, dims: int = 2):
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else (lambda c: nn.InstanceNorm3d(c, affine=True))
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=False),
            norm(cout),
            nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1, bias=False),
            norm(cout),
            nn.ReLU(inplace=True),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class UNet3DEncoder(nn.Module):
    """The contracting path of a 3D U-Net: ``levels`` conv blocks, each after a 2x2x2 max-pool except the first.

    Level i has ``width * 2**i`` channels at stride ``2**i``. Parameter names: ``levels.<i>.block.<j>.*``.
    ``stages(x)`` gives every level's map (the skip connections), ``features(x)`` the pooled deepest map and the
    map itself, as the 2D backbones do.

    Args:
        in_chans: input channels (1 for CT/MR volumes).
        width: channels of the first level (16).
        levels: number of resolution levels (4: strides 1, 2, 4, 8; inputs need at least ``2**(levels-1)`` voxels
            per side).

    Example:
        >>> import torch
        >>> enc = UNet3DEncoder(in_chans=1, width=8, levels=3)
        >>> [tuple(m.shape) for m in enc.stages(torch.zeros(1, 1, 16, 16, 16))]
        [(1, 8, 16, 16, 16), (1, 16, 8, 8, 8), (1, 32, 4, 4, 4)]
    """

    spatial_dims = 3

    def __init__(self, in_chans: int = 1, width: int = 16, levels: int = 4):
        super().__init__()
        if in_chans < 1 or width < 1 or levels < 2:
            raise ValueError(f"in_chans, width must be >= 1 and levels >= 2, got {in_chans}, {width}, {levels}")
        self.arch, self.in_chans, self.width = "unet3d", in_chans, width
        self.stage_channels = [width * 2**i for i in range(levels)]
        self.stage_strides = tuple(2**i for i in range(levels))
        self.out_dim, self.stride = self.stage_channels[-1], self.stage_strides[-1]
        self.levels = nn.ModuleList()
        cin = in_chans
        for i, cout in enumerate(self.stage_channels):
            level = nn.Module()
            level.pool = nn.MaxPool3d(2) if i else nn.Identity()
            level.block = ConvBlock(cin, cout, dims=3)
            self.levels.append(level)
            cin = cout

    def stages(self, x: Tensor) -> list[Tensor]:
        """``[B, in_chans, D, H, W]`` -> ``[B, width * 2**i, D / 2**i, H / 2**i, W / 2**i]`` for each level i
        (sizes rounded down by each pooling)."""
        maps = []
        for level in self.levels:
            x = level.block(level.pool(x))
            maps.append(x)
        return maps

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, D, H, W]`` -> ``(pooled [B, out_dim], deepest map [B, out_dim, d, h, w])``."""
        fmap = self.stages(x)[-1]
        return fmap.mean(dim=(2, 3, 4)), fmap
