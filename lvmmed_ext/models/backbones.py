"""The 2D backbones by name."""

from __future__ import annotations

from torch import nn

from .resnet import resnet18, resnet50
from .vit import vit_b_16

BACKBONES = {"resnet50": resnet50, "resnet18": resnet18, "vit_b_16": vit_b_16}


def build_backbone(arch: str, in_chans: int = 1, width: int | None = None, num_classes: int = 0, **kwargs) -> nn.Module:
    """Build a backbone by name: ``"resnet50"`` (default of the CLI), ``"resnet18"`` or ``"vit_b_16"``.

    Args:
        arch: one of ``BACKBONES``.
        in_chans: 1 (grayscale stem, the default for medical images) or 3.
        width: ResNet base width (64 = torchvision; smaller values give tiny test models); ignored by ViT
            unless given, in which case it is an error.
        num_classes: > 0 adds the torchvision classifier (``fc`` / ``heads.head``); 0 gives a pure backbone.

    Returns:
        An ``nn.Module`` on the CPU in float32 with ``features``, ``forward_features``, ``feature_grid``,
        ``out_dim``, ``stride``, ``in_chans`` and ``arch``.

    Example:
        >>> import torch
        >>> from lvmmed_ext.models import build_backbone
        >>> net = build_backbone("resnet18", in_chans=1)
        >>> pooled, fmap = net.features(torch.zeros(2, 1, 96, 96))
        >>> pooled.shape, fmap.shape
        (torch.Size([2, 512]), torch.Size([2, 512, 3, 3]))
    """
    if arch not in BACKBONES:
        raise ValueError(f"arch must be one of {sorted(BACKBONES)}, got {arch!r}")
    if width is not None:
        if arch.startswith("vit"):
            raise ValueError(f"width applies to ResNets only, got width={width} for {arch}")
        kwargs["width"] = width
    return BACKBONES[arch](in_chans=in_chans, num_classes=num_classes, **kwargs)
