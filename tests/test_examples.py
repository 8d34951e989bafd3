"""The scripts in examples/ run as documented (fresh processes, CPU)."""

import os
import re
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(name: str) -> str:
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_quickstart():
    assert "nearest-neighbour matching accuracy" in _run("quickstart.py")


def test_gm_loss_in_your_loop_learns_to_match():
    text = _run("gm_loss_in_your_loop.py")
    before = float(re.search(r"before training: probe loss ([\d.]+)", text).group(1))
    after = float(re.search(r"after training: probe loss ([\d.]+)", text).group(1))
    assert after < before / 2, text  # fewer than half the wrong matches after 60 steps
