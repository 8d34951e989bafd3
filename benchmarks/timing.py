"""Timing helpers shared by the benchmark scripts: synchronised median-of-repeats timing and JSON output."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from datetime import datetime, timezone

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, warmup: int = 3, repeats: int = 20, budget_s: float = 5.0) -> dict:
    """Median wall time of fn() in seconds (CUDA events on GPU), after warm-up, within a time budget."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    for _ in range(repeats):
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
        if time.perf_counter() - start_all > budget_s and len(times) >= 3:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def environment(device) -> dict:
    """Device, versions, date and commit: what every benchmark row is tagged with."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "device": name,
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "commit": commit,
    }


def write_json(path: str | None, payload: dict) -> None:
    text = json.dumps(payload, indent=1)
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(text)
