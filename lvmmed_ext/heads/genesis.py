"""Models Genesis (Zhou et al., MICCAI 2019 / MedIA 2021) as a loss head, written from the papers and the authors'
public code (github.com/MrGiovanni/ModelsGenesis, read for its recipe, not copied): the data loader
corrupts each crop with the Genesis transformations (:mod:`lvmmed_ext.heads.genesis_transforms`: Bezier
intensity mapping, local pixel shuffling, in-/out-painting, flips) and the encoder + a U-Net decoder learn to
restore the original (MSE). 2D on the ResNet/ViT backbones, 3D with ``--arch unet3d`` on sub-volumes."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from .base import Head, Recipe, decoder_factory, register_head
from .genesis_transforms import PROCESSES, GenesisConfig

OUTPUTS = ("linear", "sigmoid")


@register_head("genesis")
class GenesisHead(Head):
    """Restoration: ``loss = mean((restored - x_original)**2)`` over pixels (voxels) and channels, where
    ``restored = decoder(encoder.stages(x_corrupted))`` in the network's normalised intensity units
    (``output="linear"``), or, as published, ``restored = sigmoid(decoder(...))`` compared with the original in
    [0, 1] (``output="sigmoid"``).

    The head owns only the decoder (a :class:`lvmmed_ext.models.unet.UNet` decoder built for the encoder's stage
    strides and channels, passed by the trainer as ``stages``); the encoder is the trainer's backbone, so its
    weights export like every other run. The transformation probabilities are head options and travel to the data
    loader as ``pair_config`` (a :class:`~lvmmed_ext.heads.genesis_transforms.GenesisConfig`).

    Args:
        in_dim: the backbone's feature width (unused: the decoder reads every stage).
        stages: ``{"strides": [...], "channels": [...], "dims": 2 | 3}`` of the encoder (filled by the trainer).
        decoder_channels: the decoder's widths, deepest first (default: ``UNet``'s).
        flip_p, nonlinear_p, shuffle_p, paint_p, outpaint_share: the transformations' probabilities (the published
            0.4, 0.9, 0.5, 0.9 and 0.8 of painting as out-painting).
        process: ``"paper"`` (the authors' transformation process) or ``"ours"`` (see
            :mod:`lvmmed_ext.heads.genesis_transforms`).
        output: ``"sigmoid"`` (published) or ``"linear"``.

    ``--recipe paper`` runs the published recipe (docs/METHODS.md): the authors' process, a sigmoid output, the CT
    window [-1000, 1000] HU, SGD (lr 1, momentum 0.9) and batch 6.
    """

    needs_encoder = True
    symmetric = True
    recipes = {
        "paper": Recipe(
            about="Models Genesis as published: the authors' transformation process, sigmoid output, HU window "
            "[-1000, 1000], SGD lr 1 momentum 0.9, batch 6",
            head_opts={"process": "paper", "output": "sigmoid"},
            settings={"window": (0.0, 2000.0), "optimizer": "sgd", "lr": 1.0, "momentum": 0.9, "batch_size": 6},
        )
    }

    def __init__(
        self,
        in_dim: int,
        stages: dict | None = None,
        decoder_channels: list[int] | None = None,
        flip_p: float = 0.4,
        nonlinear_p: float = 0.9,
        shuffle_p: float = 0.5,
        paint_p: float = 0.9,
        outpaint_share: float = 0.8,
        process: str = "ours",
        output: str = "linear",
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise UsageError(f"genesis output must be one of {OUTPUTS}, got {output!r}")
        if process not in PROCESSES:
            raise UsageError(f"genesis process must be one of {PROCESSES}, got {process!r}")
        if not stages:
            raise UsageError("genesis needs the encoder's stages (the trainer passes them; build it with stages=...)")
        try:
            self.pair_config = GenesisConfig(
                flip_p=flip_p, nonlinear_p=nonlinear_p, shuffle_p=shuffle_p, paint_p=paint_p,
                outpaint_share=outpaint_share, process=process,
            )  # fmt: skip
        except ValueError as e:
            raise UsageError(str(e)) from None
        shape = SimpleNamespace(
            stage_strides=tuple(stages["strides"]),
            stage_channels=list(stages["channels"]),
            spatial_dims=int(stages.get("dims", 2)),
        )
        self.in_chans = int(stages.get("in_chans", 1))
        self.output = output
        # the inputs' normalisation (x - mean) / std, undone for a sigmoid output's [0, 1] target
        self.mean, self.std = (float(v) for v in stages.get("norm", (0.0, 1.0)))
        self.decoder = decoder_factory("unet")(shape, out_channels=self.in_chans, decoder_channels=decoder_channels)

    def restore(self, encoder, x: Tensor) -> Tensor:
        """The restored image ``[B, C, *S]`` of a corrupted batch ``x`` through ``encoder`` and the decoder (in
        [0, 1] with a sigmoid output, else in normalised units)."""
        out = self.decoder.decode(encoder.stages(x), x.shape[2:])
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def forward(self, encoder, x_in: Tensor, x_target: Tensor) -> Tensor:
        out = self.restore(encoder, x_in).float()
        target = x_target.float()
        if self.output == "sigmoid":
            target = target * self.std + self.mean  # back to [0, 1]
        return F.mse_loss(out, target)
