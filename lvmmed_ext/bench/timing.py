"""Timing for the benchmark suite: warm-up, synchronised repeats (CUDA events on GPU), median; NVTX ranges."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone

import torch

# Dense peak rates used for "fraction of peak" (datasheet figures, FLOP/s and bytes/s); None where unknown.
DEVICE_PEAKS = {
    "H100": {"fp32_flops": 67e12, "tf32_flops": 495e12, "bf16_flops": 990e12, "hbm_bytes_per_s": 3.35e12},
    "H200": {"fp32_flops": 67e12, "tf32_flops": 495e12, "bf16_flops": 990e12, "hbm_bytes_per_s": 4.8e12},
    "A100": {"fp32_flops": 19.5e12, "tf32_flops": 156e12, "bf16_flops": 312e12, "hbm_bytes_per_s": 2.0e12},
}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, *, warmup: int = 3, repeats: int = 20, budget_s: float = 5.0) -> dict:
    """Median seconds per call of ``fn()`` after ``warmup`` calls; CUDA events on GPU, perf_counter on CPU.

    Stops early once ``budget_s`` is spent (at least 3 timed calls). Returns median, min and the count.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < repeats:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        if len(times) >= 3 and time.perf_counter() - began > budget_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def peak_memory(fn, device) -> int | None:
    """Peak bytes allocated by torch during one ``fn()`` on CUDA; None on CPU (see ``cpu_peak_rss``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads"


def device_kind(device) -> str:
    """A coarse key for comparing runs: 'cpu' or the GPU model family (e.g. 'H100')."""
    name = device_name(device)
    for family in DEVICE_PEAKS:
        if family in name:
            return family
    return "cpu" if torch.device(device).type == "cpu" else name


def peaks(device) -> dict | None:
    return DEVICE_PEAKS.get(device_kind(device))


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device) -> dict:
    """Device, versions, date and commit: what every benchmark result is tagged with."""
    from .. import __version__

    return {
        "device": device_name(device),
        "device_kind": device_kind(device),
        "torch": torch.__version__,
        "lvmmed_ext": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "commit": git_commit(),
    }


@contextlib.contextmanager
def nvtx_range(name: str, enabled: bool):
    """An NVTX range (visible in Nsight) around a region when profiling on CUDA; a no-op otherwise."""
    if enabled and torch.cuda.is_available():
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
    else:
        yield
