"""Checkpoints: atomic writes, validated reads, RNG state capture, and the backbone export."""

from __future__ import annotations

import json
import os
import random
import tempfile

import numpy as np
import torch

from ..errors import UsageError

FORMAT = "lvmmed-pretrain-checkpoint"
VERSION = 1


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it onto
    ``path``: readers see the old file or the new one, never a partial one (also if the process is killed)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj, path: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")

    atomic_write(path, write)


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


def load_checkpoint(path: str) -> dict:
    """Read and validate an ``lvmmed pretrain`` checkpoint; ``UsageError`` (one line) for anything else."""
    path = resolve_checkpoint_path(path)
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
