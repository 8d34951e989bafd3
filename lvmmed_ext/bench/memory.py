"""Peak memory of one call, measured in a fresh Python process (so nothing earlier in the run pollutes the peak).

``fresh_process_peak_mb("pkg.module:prepare", {...})`` starts ``python -m lvmmed_ext.bench.memory`` which imports
``pkg.module``, calls ``prepare(**kwargs)`` (it builds the inputs and returns a zero-argument callable), resets the
peak counter, calls the callable once and prints the extra peak in MiB:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the call (the caching allocator's view);
* CPU (Linux): the growth of the peak resident set size ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``. Includes the returned values and gradients.

Returns None (the row shows no memory figure) where this cannot be measured, e.g. on a non-Linux CPU.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import torch


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_peak_mb(fn, device) -> float:
    """Extra peak memory (MiB) of one ``fn()`` in this process (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident size to the current one
        f.write("5")
    base = _status_kb("VmHWM")
    fn()
    return (_status_kb("VmHWM") - base) / 2**10


def fresh_process_peak_mb(target: str, kwargs: dict, *, timeout_s: float = 600) -> float | None:
    """Run ``target`` (``"module:prepare"``) with JSON-serialisable ``kwargs`` in a fresh process; see above.

    ``kwargs`` must contain ``device``; ``threads`` (optional) sets torch's thread count in the child.
    """
    cmd = [sys.executable, "-m", "lvmmed_ext.bench.memory", target, json.dumps(kwargs)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    try:
        return float(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _child(target: str, kwargs_json: str) -> None:
    kwargs = json.loads(kwargs_json)
    if "threads" in kwargs:
        torch.set_num_threads(int(kwargs.pop("threads")))
    module, func = target.split(":")
    fn = getattr(importlib.import_module(module), func)(**kwargs)
    print(measure_peak_mb(fn, kwargs["device"]))


if __name__ == "__main__":
    _child(*sys.argv[1:3])
