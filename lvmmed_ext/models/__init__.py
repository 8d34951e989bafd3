"""Backbones for pretraining and evaluation (torchvision-compatible parameter names) and weight loading.

Every backbone exposes ``features(x) -> (pooled [B, D], fmap [B, D, R, S])``, ``forward_features(x) -> fmap``,
``feature_grid(H, W) -> (R, S)``, ``out_dim`` (D), ``stride``, ``in_chans`` and ``stages(x)`` (the maps a U-Net
decoder takes as skip connections). ``build_unet`` wraps one (or the 3D encoder) into a U-Net.
"""

from __future__ import annotations

from .backbones import BACKBONES, build_backbone
from .pretrained import LoadReport, backbone_state_dict, load_pretrained
from .resnet import ResNet, resnet18, resnet50
from .unet import SEG_ARCHS, UNet, build_encoder, build_unet
from .unet3d import UNet3DEncoder
from .vit import VisionTransformer, vit_b_16

__all__ = [
    "BACKBONES",
    "LoadReport",
    "ResNet",
    "SEG_ARCHS",
    "UNet",
    "UNet3DEncoder",
    "VisionTransformer",
    "backbone_state_dict",
    "build_backbone",
    "build_encoder",
    "build_unet",
    "load_pretrained",
    "resnet18",
    "resnet50",
    "vit_b_16",
]
