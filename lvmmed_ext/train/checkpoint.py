"""Checkpoints: atomic writes (:mod:`lvmmed_ext.system`), validated reads, RNG state, and the backbone export."""

from __future__ import annotations

import os
import random
import zipfile

import numpy as np
import torch

from ..errors import UsageError
from ..system import atomic_write, save_json, save_torch  # noqa: F401  (the checkpoint writers)

FORMAT = "lvmmed-pretrain-checkpoint"
VERSION = 1


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_checkpoint_path(path: str) -> str:
    """A checkpoint file, or a run folder holding ``checkpoint.pt``."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist")
    return path


# Leading bytes of files that are given by mistake where a checkpoint is expected.
_NOT_TORCH = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip file (e.g. .nii.gz)"),
    (b"{", "a JSON file"),
)


def _not_a_torch_file(path: str) -> str | None:
    """What ``path`` is when it is a known kind of file that ``torch.save`` never writes (an image, a gzip or JSON
    file), else None."""
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(132)
    if head[:1] == b"\x80":  # a legacy pickle
        return None
    if head[128:132] == b"DICM":
        return "a DICOM file"
    for magic, what in _NOT_TORCH:
        if head.startswith(magic):
            return what
    return None  # unknown content: torch.load says what is wrong with it


def load_checkpoint(path: str) -> dict:
    """Read and validate an ``lvmmed pretrain`` checkpoint; ``UsageError`` (one line) for anything else."""
    path = resolve_checkpoint_path(path)
    what = _not_a_torch_file(path)
    if what is not None:
        raise UsageError(f"{path} is not an lvmmed pretrain checkpoint (it looks like {what})")
    try:
        # Checkpoints hold numpy/python RNG states, which the weights-only unpickler rejects; they are our own files.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = "an exported backbone or another state_dict" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UsageError(f"{path} is not an lvmmed pretrain checkpoint (it looks like {what})")
    if ckpt.get("version", 0) > VERSION:
        raise UsageError(f"{path} was written by a newer lvmmed_ext (checkpoint version {ckpt['version']} > {VERSION})")
    missing = [k for k in ("step", "config", "backbone", "head", "optimizer", "scheduler", "rng") if k not in ckpt]
    if missing:
        raise UsageError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
    return ckpt


def export_paths(out: str) -> tuple[str, str]:
    """(weights path, JSON path): ``backbone.pth`` -> ``backbone.json``; a folder gets ``backbone.pth`` inside."""
    if out.endswith(os.sep) or os.path.isdir(out):
        out = os.path.join(out, "backbone.pth")
    stem, ext = os.path.splitext(out)
    return out, (stem if ext in (".pth", ".pt") else out) + ".json"


def export_info(ckpt: dict, source: str) -> dict:
    """The JSON that travels with exported weights: architecture, preprocessing, provenance."""
    cfg = ckpt["config"]
    return {
        "format": "lvmmed-backbone",
        "arch": cfg["arch"],
        "width": cfg.get("width") if cfg.get("width") is not None else ckpt.get("width"),
        "in_chans": cfg["preprocessing"]["in_chans"],
        "image_size": cfg["image_size"],
        "feature_dim": ckpt.get("feature_dim"),
        "key_names": "torchvision",
        "preprocessing": cfg["preprocessing"],
        "loss": cfg["loss"],
        "step": ckpt["step"],
        "total_steps": cfg.get("steps"),
        "source_checkpoint": os.path.abspath(source),
        "lvmmed_ext": ckpt.get("lvmmed_ext"),
    }


def export_backbone(checkpoint: str, out: str) -> tuple[str, str]:
    """Write the backbone of ``checkpoint`` as a plain state_dict with torchvision key names (no classifier) to
    ``out`` (``.pth``), and its preprocessing/provenance JSON beside it. Returns both paths.

    Load the result with ``lvmmed_ext.load_pretrained(model, out)`` or, for 3-channel models,
    ``torchvision.models.resnet50().load_state_dict(torch.load(out), strict=False)`` (only ``fc.*`` missing).

    Example:
        >>> export_backbone("runs/demo/checkpoint.pt", "runs/demo/backbone.pth")  # doctest: +SKIP
        ('runs/demo/backbone.pth', 'runs/demo/backbone.json')
    """
    ckpt = load_checkpoint(checkpoint)
    weights, info = export_paths(out)
    save_torch(ckpt["backbone"], weights)
    save_json(export_info(ckpt, resolve_checkpoint_path(checkpoint)), info)
    return weights, info
