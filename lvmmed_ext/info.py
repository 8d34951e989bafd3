"""``python -m lvmmed_ext.info`` / ``lvmmed info``: what this install was built with and what is running."""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from . import _C
from ._loader import build_info_file


def collect() -> dict:
    """Build and runtime facts as a flat dict (see ``lvmmed info --json``)."""
    built = _C.build_info()
    info_file = build_info_file()
    cuda_ok = torch.cuda.is_available()
    return {
        "lvmmed_ext": built["version"],
        "location": os.path.dirname(os.path.abspath(__file__)),
        "python": platform.python_version(),
        "torch_built": built["torch_version"],
        "torch_running": torch.__version__,
        "cuda_built": info_file.cuda_version if built["cuda"] else None,
        "cuda_running": torch.version.cuda,
        "backends": ["cpu", "cuda"] if built["cuda"] else ["cpu"],
        "cuda_archs": built["cuda_archs"] or None,
        "gpu": torch.cuda.get_device_name() if cuda_ok else None,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda_ok else None,
        "compiler": built["compiler"],
        "build_type": info_file.build_type,
        "cpu_threads": torch.get_num_threads(),
        "cpu_parallel": "at::parallel_for on torch's thread pool" if built["cpu_parallel"] else "serial (no OpenMP)",
        "ops": sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("lvmmed::")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lvmmed info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    facts = collect()
    if args.json:
        print(json.dumps(facts, indent=1))
        return 0
    width = max(map(len, facts))
    for key, value in facts.items():
        shown = ", ".join(value) if isinstance(value, list) else ("-" if value is None else value)
        print(f"{key:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
