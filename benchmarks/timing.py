"""Timing helpers for benchmark scripts: the suite's own (``lvmmed_ext.bench.timing``) plus JSON output.

The benchmarks themselves live in ``lvmmed_ext/bench/subjects/`` and run with ``lvmmed bench``; the scripts in this
folder are thin wrappers of it.
"""

from __future__ import annotations

import json
import os

from lvmmed_ext.bench.timing import environment, interleaved, ratio, sync, time_fn  # noqa: F401  (re-exported)


def write_json(path: str | None, payload: dict) -> None:
    """Print the payload and, with a path, also write it atomically."""
    text = json.dumps(payload, indent=1)
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(text)
