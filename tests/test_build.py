"""The package as installed: info command, build/run torch mismatch detection, CLI dispatch."""

import os
import subprocess
import sys
import types

import pytest
import torch

import lvmmed_ext
from lvmmed_ext import _loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("cwd", [REPO, "/"])
def test_info_runs_from_repo_root_and_elsewhere(cwd):
    out = subprocess.run([sys.executable, "-m", "lvmmed_ext.info", "--json"], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f'"torch_running": "{torch.__version__}"' in out.stdout
    assert "global_affinity" in out.stdout


def test_cli_info_and_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "lvmmed_ext", "info"], capture_output=True, text=True)
    assert ok.returncode == 0 and "backends" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "lvmmed_ext", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_build_info_is_consistent():
    built = lvmmed_ext._C.build_info()
    assert built["torch_version"] == _loader.build_info_file().torch_version
    assert built["version"] == lvmmed_ext.__version__
    assert _loader.mismatch(built["torch_version"], None, torch.__version__, torch.version.cuda) is None


def test_cpu_ops_run_on_torchs_thread_pool():
    """The CPU glue's at::parallel_for is parallel (the module is built with OpenMP) and follows
    torch.set_num_threads; on Linux the process maps a single OpenMP runtime (torch's)."""
    assert lvmmed_ext._C.build_info()["cpu_parallel"], "built without OpenMP: every CPU op would run on one thread"
    before = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert lvmmed_ext._C.cpu_parallel_threads() == n
    finally:
        torch.set_num_threads(before)
    if sys.platform.startswith("linux"):
        with open("/proc/self/maps") as f:
            runtimes = {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line or "libomp" in line}
        assert len(runtimes) <= 1, f"more than one OpenMP runtime loaded: {sorted(runtimes)}"


@pytest.mark.parametrize(
    "built, built_cuda, running, running_cuda, expected",
    [
        ("2.11.0", None, "2.13.0+cpu", None, "built against torch 2.11.0 but torch 2.13.0+cpu is running"),
        (
            "2.11.0+cu130",
            "13.0",
            "2.11.0+cpu",
            None,
            "built with CUDA 13.0 but the running torch 2.11.0+cpu has no CUDA",
        ),
        ("2.11.0+cu130", "13.0", "2.11.0+cu126", "12.6", "built with CUDA 13.0 but the running torch"),
        ("2.13.0", None, "2.13.1+cpu", None, None),
        ("2.11.0+cpu", None, "2.11.0+cu130", "13.0", None),
    ],
)
def test_mismatch_messages(built, built_cuda, running, running_cuda, expected):
    why = _loader.mismatch(built, built_cuda, running, running_cuda)
    assert (why is None) if expected is None else (expected in why)


def test_load_extension_reports_mismatch_readably(monkeypatch):
    fake = types.SimpleNamespace(torch_version="1.13.0", cuda_version=None)
    monkeypatch.setattr(_loader, "build_info_file", lambda: fake)
    with pytest.raises(ImportError, match=r"built against torch 1.13.0 but torch .* is running; rebuild"):
        _loader.load_extension()


def test_load_extension_reports_unbuilt_tree(monkeypatch):
    monkeypatch.setattr(_loader, "build_info_file", lambda: None)
    with pytest.raises(ImportError, match="compiled core is missing"):
        _loader.load_extension()


def test_ops_are_registered():
    assert hasattr(torch.ops.lvmmed, "global_affinity")
    assert hasattr(torch.ops.lvmmed, "global_affinity_backward")
