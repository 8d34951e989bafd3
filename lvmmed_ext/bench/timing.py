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

from .. import __version__

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
        times.append(_time_one(fn, device))
        if len(times) >= 3 and time.perf_counter() - began > budget_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def _time_one(fn, device) -> float:
    """Seconds of one synchronised call of ``fn()`` (CUDA events on GPU, perf_counter on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(fns: dict, device, *, rounds: int = 7, warmup: int = 1, budget_s: float | None = None) -> dict:
    """Time several implementations in interleaved rounds: each round calls every ``fns[name]()`` once, in order.

    On a shared or thermally drifting machine the load changes slowly compared with one round, so a ratio taken
    within a round (see :func:`ratio`) is far more stable than a ratio of two separately measured medians.
    Stops after ``budget_s`` seconds once at least 3 rounds ran. Returns ``{name: [seconds per round, ...]}``.
    """
    device = torch.device(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    began = time.perf_counter()
    for r in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_time_one(fn, device))
        if budget_s is not None and r + 1 >= 3 and time.perf_counter() - began > budget_s:
            break
    return samples


def ratio(num: list[float], den: list[float]) -> float:
    """The median over rounds of ``num[r] / den[r]`` (both from the same :func:`interleaved` call)."""
    n = min(len(num), len(den))
    return statistics.median(num[r] / den[r] for r in range(n))


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


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores), torch threads: {torch.get_num_threads()}"


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


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: the peer is skipped
        return None


def environment(device) -> dict:
    """Device, versions, threads, load, date and commit: what every benchmark result is tagged with."""
    env = {
        "device": device_name(device),
        "device_kind": device_kind(device),
        "torch": torch.__version__,
        "lvmmed_ext": __version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "peers": {name: _version(name) for name in ("pygmtools", "scipy", "lpmp_py")},
    }
    if os.environ.get("OMP_WAIT_POLICY"):
        env["omp_wait_policy"] = os.environ["OMP_WAIT_POLICY"]
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return env


@contextlib.contextmanager
def nvtx_range(name: str, enabled: bool):
    """When profiling: an NVTX range (Nsight Systems) on CUDA and a ``record_function`` range (the torch.profiler
    trace, any device) named ``name`` around the region; a no-op otherwise."""
    if not enabled:
        yield
        return
    with torch.profiler.record_function(name):
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_push(name)
            try:
                yield
            finally:
                torch.cuda.nvtx.range_pop()
        else:
            yield
