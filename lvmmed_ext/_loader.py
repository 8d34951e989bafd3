"""Loads the compiled core `_C` after checking it was built for the torch that is running."""

from __future__ import annotations

import importlib

import torch

REBUILD_HINT = "rebuild it against the running torch: scripts/setup.sh (or pip install --no-build-isolation -e .)"


def _base(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0)."""
    core = version.split("+")[0]
    parts = []
    for p in core.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def build_info_file():
    """The generated `_build_info` module, or None when the package was never built."""
    try:
        return importlib.import_module("lvmmed_ext._build_info")
    except ImportError:
        return None


def mismatch(built_torch: str, built_cuda: str | None, running_torch: str, running_cuda: str | None) -> str | None:
    """Why a core built with (built_torch, built_cuda) cannot load under (running_torch, running_cuda), or None."""
    if _base(built_torch)[:2] != _base(running_torch)[:2]:
        return f"lvmmed_ext was built against torch {built_torch} but torch {running_torch} is running"
    if built_cuda is not None and running_cuda is None:
        return f"lvmmed_ext was built with CUDA {built_cuda} but the running torch {running_torch} has no CUDA"
    if built_cuda is not None and built_cuda.split(".")[0] != running_cuda.split(".")[0]:
        return (
            f"lvmmed_ext was built with CUDA {built_cuda} "
            f"but the running torch {running_torch} uses CUDA {running_cuda}"
        )
    return None


def load_extension():
    """Import and return `lvmmed_ext._C`, raising a readable ImportError instead of a loader crash."""
    info = build_info_file()
    if info is None:
        raise ImportError(
            "lvmmed_ext's compiled core is missing (no lvmmed_ext/_build_info.py): the package was imported from a "
            f"source tree that was never built; {REBUILD_HINT}"
        )
    why = mismatch(info.torch_version, info.cuda_version, torch.__version__, torch.version.cuda)
    if why:
        raise ImportError(f"{why}; {REBUILD_HINT}")
    try:
        return importlib.import_module("lvmmed_ext._C")
    except ImportError as err:
        raise ImportError(
            f"lvmmed_ext._C (built against torch {info.torch_version}, CUDA {info.cuda_version}) failed to load "
            f"under torch {torch.__version__} (CUDA {torch.version.cuda}): {err}; {REBUILD_HINT}"
        ) from err
