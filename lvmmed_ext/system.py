"""Where work runs and how results reach the disk, decided in one place for every command: the device, the number of
data-loader and header-reading processes, and atomic file writes."""

from __future__ import annotations

import json
import os
import tempfile

import torch

from .errors import UsageError


def default_device() -> str:
    """``"cuda"`` when a CUDA device is visible, else ``"cpu"`` (the ``--device`` default of the commands)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The device of ``--device SPEC``: ``auto`` (this process's GPU, else the CPU), ``cpu``, ``cuda`` (this
    process's GPU under torchrun) or ``cuda:N``. ``UsageError`` when CUDA is asked for and none is visible."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is visible")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def device_type(spec: str) -> str:
    """``"cuda"`` or ``"cpu"``: the kind of device ``--device SPEC`` will give (before any process group exists)."""
    return "cuda" if (spec == "auto" and torch.cuda.is_available()) or spec.startswith("cuda") else "cpu"


def loader_workers(requested: int | None, world: int = 1) -> int:
    """Data-loader processes per training process: ``requested``, else ``min(4, cores / world - 1)``."""
    if requested is not None:
        return requested
    return min(4, max(0, (os.cpu_count() or 1) // world - 1))


def reader_processes(cap: int | None = None) -> int:
    """Processes that read file headers or write shards in parallel: every core, at most ``cap``."""
    n = os.cpu_count() or 1
    return n if cap is None else min(cap, n)


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
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj, path: str) -> None:
    """Indented JSON through :func:`atomic_write`."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")

    atomic_write(path, write)


def save_figure(fig, path: str) -> None:
    """A matplotlib figure as PNG through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
