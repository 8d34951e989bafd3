"""The backbone an evaluation runs: weights from a file (an exported backbone or a pretraining checkpoint, with the
preprocessing recorded beside them) or a random initialisation."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..data.presets import Preprocessing
from ..errors import UsageError
from ..models import build_backbone, load_pretrained


def weights_info(weights: str) -> dict:
    """Architecture and preprocessing that go with ``weights``: the export's JSON beside it, or the config of an
    ``lvmmed pretrain`` checkpoint; ``{}`` when neither exists."""
    stem, _ = os.path.splitext(weights)
    if os.path.isfile(stem + ".json"):
        try:
            with open(stem + ".json") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {stem}.json beside the weights: {e}") from None
    if os.path.isfile(weights):
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"cannot read weights {weights}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            ) from None
        if isinstance(obj, dict) and obj.get("format") == "lvmmed-pretrain-checkpoint":
            cfg = obj["config"]
            return {
                "arch": cfg["arch"],
                "width": cfg.get("width"),
                "in_chans": cfg["preprocessing"]["in_chans"],
                "image_size": cfg["image_size"],
                "preprocessing": cfg["preprocessing"],
            }
    return {}


def backbone_for(
    weights: str,
    arch: str | None = None,
    width: int | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    build=build_backbone,
) -> tuple[nn.Module, Preprocessing, int]:
    """(backbone, preprocessing, input size) for ``weights`` (a path, or ``"random"`` for random init with
    ``seed``). Options left as None come from the weights' JSON/checkpoint, else resnet50 / 1 channel / 224.
    ``build(arch, in_chans=, width=)`` makes the module (``models.build_encoder`` for segmentation encoders).
    Raises ``UsageError`` when the weights are unreadable or do not fit the architecture."""
    info = {} if weights == "random" else weights_info(weights)
    if weights != "random" and not os.path.isfile(weights):
        raise UsageError(f"weights file {weights} does not exist (use --weights random for the random-init baseline)")
    arch = arch or info.get("arch") or "resnet50"
    width = width if width is not None else info.get("width")
    prep = Preprocessing.from_json(info.get("preprocessing", {}))
    if in_chans is not None:
        prep.in_chans = in_chans
    elif "in_chans" in info:
        prep.in_chans = int(info["in_chans"])
    size = image_size or int(info.get("image_size") or 224)
    torch.manual_seed(seed)
    try:
        backbone = build(arch, in_chans=prep.in_chans, width=width)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if weights != "random":
        report = load_pretrained(backbone, weights, verbose=False)
        if report.missing or report.mismatched:
            bad = report.missing + report.mismatched
            raise UsageError(
                f"weights {weights} do not fit {arch}: {len(report.missing)} missing and {len(report.mismatched)} "
                f"mismatched tensors (e.g. {bad[0]}); wrong --arch/--width?"
            )
    return backbone, prep, size
