"""Shared test setup: hypothesis profiles (derandomised by default), the `device` and `gpu` fixtures.

CUDA tests run on two backends: the real device (marker ``cuda``, skipped without a GPU) and the CUDA kernels and glue
executed on the CPU by the emulator of csrc/emu (marker ``cuda_emulated``, tests/emulator.py). ``pytest -q`` leaves
the emulated suite out (pyproject's addopts); ``pytest -q -m cuda_emulated`` runs it.
"""

import os
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path

import emulator
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
GPU_BACKENDS = [
    pytest.param("cuda", marks=pytest.mark.cuda),
    pytest.param("emulated", marks=pytest.mark.cuda_emulated),
]
DEVICES = ["cpu", *GPU_BACKENDS]
LAST = "test_emulated_kernel_coverage"  # needs the launch counts of the whole emulated suite: runs last


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.name == LAST)
    tests_dir = Path(__file__).parent.resolve()
    whole_tree = all(Path(a.split("::")[0]).resolve() in (tests_dir, tests_dir.parent) for a in config.args)
    config.stash[emulator.FULL_SUITE] = whole_tree and not config.option.keyword
    no_compile = pytest.mark.skip(
        reason="torch.compile does not trace through the emulator's dispatch mode (the fake kernels it needs are "
        "device-independent and compiled on the cpu)"
    )
    for item in items:
        params = getattr(item, "callspec", None)
        if params is not None and params.params.get("device") == "emulated" and "compile" in item.name:
            item.add_marker(no_compile)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class Gpu:
    """A CUDA backend of the op tests: ``cuda`` (the device) or ``emulated`` (CPU tensors; inside ``with gpu:`` the
    lvmmed ops run the CUDA glue and kernels under the CPU emulator, which fails the test on any race or divergence).
    Compute CPU baselines outside ``with gpu:``."""

    def __init__(self, kind: str):
        self.kind = kind
        self.emulated = kind == "emulated"
        self.device = torch.device("cpu" if self.emulated else "cuda")
        self._ctx = None
        self.emu = emulator.load() if self.emulated else None

    def __enter__(self):
        self._ctx = emulator.emulated_cuda() if self.emulated else nullcontext()
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def pick(self, real, emulated):
        """A shape (or anything) for the real device, or a smaller one for the emulator."""
        return emulated if self.emulated else real

    @contextmanager
    def device_limits(self, **attrs):
        """Lower attributes of the emulated device (e.g. max_grid_y=2, smem_per_block_optin=8192) inside; the real
        device keeps its own (the test then runs at its real limits)."""
        if not self.emulated:
            yield
            return
        self.emu.set_device(**attrs)
        try:
            yield
        finally:
            self.emu.reset_device()


def _reset_emulator(emu):
    emu.reset_device()
    emu.set_schedule("forward", 0)
    emu.set_checks(True)
    emu.take_reports()


@pytest.fixture(params=GPU_BACKENDS)
def gpu(request):
    g = Gpu(request.param)
    if g.emulated:
        _reset_emulator(g.emu)
        # threads and blocks in a seeded random order (fixed per test): a race-free kernel gives the same result
        g.emu.set_schedule("shuffle", zlib.crc32(request.node.nodeid.encode()))
    yield g
    if g.emulated:
        _reset_emulator(g.emu)


@pytest.fixture(params=DEVICES)
def device(request):
    """cpu, cuda, or emulated: CPU tensors with the whole test inside the emulated CUDA backend."""
    if request.param != "emulated":
        yield torch.device(request.param)
        return
    emu = emulator.load()
    _reset_emulator(emu)
    with emulator.emulated_cuda():
        yield torch.device("cpu")
