"""The training layer: ``pretrain`` (the ``lvmmed pretrain`` loop), loss heads, checkpoints and export.

Example:
    >>> from lvmmed_ext.train import TrainConfig, pretrain
    >>> cfg = TrainConfig(data="scans/", out="runs/r1", arch="resnet18", loss="infonce", steps=50)
    >>> result = pretrain(cfg)  # doctest: +SKIP
"""

from ..heads import Head, InfoNCEHead, VICRegHead, build_head, info_nce, register_head, vicreg
from .checkpoint import export_backbone, load_checkpoint
from .config import TrainConfig
from .trainer import RunResult, SSLModel, milestones, pretrain

__all__ = [
    "Head",
    "InfoNCEHead",
    "RunResult",
    "SSLModel",
    "TrainConfig",
    "VICRegHead",
    "build_head",
    "export_backbone",
    "info_nce",
    "load_checkpoint",
    "milestones",
    "pretrain",
    "register_head",
    "vicreg",
]
