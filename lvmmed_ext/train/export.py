"""``lvmmed export CKPT OUT``: the backbone of a checkpoint as a torchvision-style state_dict plus its JSON."""

from .cli import export_main as main

__all__ = ["main"]
