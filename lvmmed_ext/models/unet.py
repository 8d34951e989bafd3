"""U-Net encoder-decoders over our encoders: skip connections from every ResNet stage, progressive upsampling of
ViT patch tokens, and the 3D U-Net; the encoder keeps its own parameter names (``encoder.<torchvision name>``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heads.base import register_decoder
from .backbones import build_backbone
from .pretrained import LoadReport, load_pretrained
from .unet3d import ConvBlock, UNet3DEncoder

SEG_ARCHS = ("resnet18", "resnet50", "vit_b_16", "unet3d")


class UpBlock(nn.Module):
    """Upsample to ``size`` (bilinear / trilinear), concatenate the skip map if there is one, then a ``ConvBlock``."""

    def __init__(self, cin: int, skip: int, cout: int, dims: int):
        super().__init__()
        self.mode = "bilinear" if dims == 2 else "trilinear"
        self.block = ConvBlock(cin + skip, cout, dims)

    def forward(self, x: Tensor, skip: Tensor | None, size: Sequence[int]) -> Tensor:
        x = F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)
        return self.block(x if skip is None else torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """An encoder-decoder that maps ``[B, C, *S]`` to ``out_channels`` maps ``[B, out_channels, *S]`` at input
    resolution (logits of a segmentation, or the channels of a restored image).

    The decoder climbs from the encoder's deepest map to stride 1 in x2 steps; the step that arrives at stride s
    concatenates the encoder's map of stride s when there is one (ResNet: stem at 2, layer1..3 at 4, 8, 16; 3D
    encoder: every level) and has ``decoder_channels`` channels; a 1x1 convolution gives the output. A ViT (one map
    at stride 16) is thus upsampled progressively without skips. Works for any input size the encoder accepts
    (each step upsamples to the skip's size, or to ``ceil(S / s)``).

    ``encoder`` is any module with ``stages(x) -> list of maps``, ``stage_channels`` and ``stage_strides`` (powers
    of 2, increasing): ``ResNet``, ``VisionTransformer``, ``UNet3DEncoder``. Its ``state_dict`` keys are unchanged
    (``backbone_state_dict(unet.encoder)`` is an ``lvmmed export`` backbone); ``load_encoder`` loads exported weights.

    Args:
        encoder: the encoder module (kept as ``self.encoder``).
        out_channels: output maps (classes, background included, for segmentation).
        decoder_channels: channels of each decoder step, deepest first; default ``16 * s`` for the step arriving
            at stride s, capped at 256 (ResNet: 256, 128, 64, 32, 16).

    Example:
        >>> import torch
        >>> from lvmmed_ext.models import resnet18
        >>> net = UNet(resnet18(width=8), out_channels=3, decoder_channels=(32, 16, 16, 8, 8))
        >>> net(torch.zeros(2, 1, 64, 48)).shape
        torch.Size([2, 3, 64, 48])
    """

    def __init__(self, encoder: nn.Module, out_channels: int, decoder_channels: Sequence[int] | None = None):
        super().__init__()
        strides, channels = tuple(encoder.stage_strides), list(encoder.stage_channels)
        if any(s < 1 or s & (s - 1) for s in strides) or list(strides) != sorted(set(strides)):
            raise ValueError(f"encoder stage_strides must be increasing powers of 2, got {strides}")
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        self.dims = getattr(encoder, "spatial_dims", 2)
        self.block_strides = [strides[-1] >> k for k in range(1, int(math.log2(strides[-1])) + 1)]
        if decoder_channels is None:
            decoder_channels = [min(256, 16 * s) for s in self.block_strides]
        if len(decoder_channels) != len(self.block_strides):
            raise ValueError(
                f"decoder_channels must have {len(self.block_strides)} entries (steps to strides "
                f"{self.block_strides}), got {list(decoder_channels)}"
            )
        self.encoder, self.out_channels, self.decoder_channels = encoder, out_channels, list(decoder_channels)
        skip_channels = dict(zip(strides, channels))
        self.blocks = nn.ModuleList()
        cin = channels[-1]
        for s, cout in zip(self.block_strides, self.decoder_channels):
            self.blocks.append(UpBlock(cin, skip_channels.get(s, 0), cout, self.dims))
            cin = cout
        self.head = (nn.Conv2d if self.dims == 2 else nn.Conv3d)(cin, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, *S]`` -> ``[B, out_channels, *S]``."""
        return self.decode(self.encoder.stages(x), x.shape[2:])

    def decode(self, maps: list[Tensor], size: Sequence[int]) -> Tensor:
        """The decoder alone: the encoder's ``stages`` maps of an input of spatial size ``size`` ->
        ``[B, out_channels, *size]`` (lets a module that owns the encoder elsewhere reuse the decoder)."""
        skips = dict(zip(self.encoder.stage_strides, maps))
        y = maps[-1]
        for s, block in zip(self.block_strides, self.blocks):
            skip = skips.get(s)
            step = skip.shape[2:] if skip is not None else [-(-n // s) for n in size]
            y = block(y, skip, step)
        return self.head(y)

    def load_encoder(self, weights, **kwargs) -> LoadReport:
        """``load_pretrained(self.encoder, weights, **kwargs)``: an ``lvmmed export`` backbone, a checkpoint or a
        torchvision state_dict into the encoder; the report lists what did not fit."""
        return load_pretrained(self.encoder, weights, **kwargs)


@register_decoder("unet")
def unet_decoder(encoder, out_channels: int, decoder_channels: Sequence[int] | None = None) -> UNet:
    """The U-Net over ``encoder`` (anything with ``stage_strides``, ``stage_channels``, ``spatial_dims``): the
    decoder that restoration heads own (registered for :mod:`lvmmed_ext.heads`, which sits below the models)."""
    return UNet(encoder, out_channels=out_channels, decoder_channels=decoder_channels)


def build_encoder(arch: str, in_chans: int = 1, width: int | None = None, **kwargs) -> nn.Module:
    """An encoder of ``SEG_ARCHS``: a 2D backbone (``build_backbone``) or ``"unet3d"`` (``UNet3DEncoder``,
    ``width`` default 16, ``levels`` in ``kwargs``). Raises ``ValueError`` for an unknown name."""
    if arch == "unet3d":
        return UNet3DEncoder(in_chans, 16 if width is None else width, **kwargs)
    if arch not in SEG_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(SEG_ARCHS)}, got {arch!r}")
    return build_backbone(arch, in_chans=in_chans, width=width, **kwargs)


def build_unet(
    arch: str,
    out_channels: int,
    in_chans: int = 1,
    width: int | None = None,
    decoder_channels: Sequence[int] | None = None,
    **kwargs,
) -> UNet:
    """A U-Net by encoder name: ``resnet18`` / ``resnet50`` (any ``width``; skips from every stage), ``vit_b_16``
    (progressive upsampling; ``image_size`` in ``kwargs`` sets the stored position grid) or ``unet3d`` (volumes).

    Args:
        arch: one of ``SEG_ARCHS``.
        out_channels: output maps (number of classes, or image channels for restoration).
        in_chans: input channels.
        width: ResNet base width (64) or the 3D encoder's first-level width (16).
        decoder_channels: see ``UNet``.

    Returns:
        ``UNet`` on the CPU in float32; ``unet.encoder`` is the backbone with torchvision parameter names.

    Example:
        >>> import torch
        >>> build_unet("unet3d", out_channels=2, width=4)(torch.zeros(1, 1, 16, 16, 16)).shape
        torch.Size([1, 2, 16, 16, 16])
    """
    return UNet(build_encoder(arch, in_chans, width, **kwargs), out_channels, decoder_channels)
