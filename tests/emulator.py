"""The emulated CUDA backend for the tests: csrc/cuda run on the CPU by the emulator of csrc/emu, behind the CUDA glue.

``scripts/setup.sh`` builds ``build/emu/_lvmmed_emu*.so`` (CMake option ``LVMMED_EMULATOR``; never installed). Loading
it registers ``torch.ops.lvmmed_emu.*``: the same schemas as ``torch.ops.lvmmed``, implemented by the CUDA glue on CPU
tensors. Inside ``with emulated_cuda():`` every ``torch.ops.lvmmed`` call (so every public function of lvmmed_ext,
autograd included) is routed to its ``lvmmed_emu`` twin; everything else runs as usual.

What this verifies and what it cannot: the kernels' and the glue's logic (results against the CPU kernels and the
float64 references), launch configurations, shared-memory limits, barriers and warp collectives, and races between
the threads of a block or between blocks (the access checker). It does not show timing, coalescing, occupancy, real
warp scheduling or nvcc's code generation; those need a GPU (scripts/gpu_check.sh).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
FULL_SUITE = pytest.StashKey[bool]()  # set by conftest when the session selected the whole emulated suite
_module = None


def module_path() -> str | None:
    """Path of the built emulator module (``$LVMMED_EMU_MODULE`` or build/emu), or None."""
    explicit = os.environ.get("LVMMED_EMU_MODULE")
    if explicit:
        return explicit
    found = sorted(glob.glob(str(ROOT / "build" / "emu" / "_lvmmed_emu*.so")))
    return found[-1] if found else None


def load():
    """The emulator's control module (importing it registers torch.ops.lvmmed_emu); raises if it is not built."""
    global _module
    if _module is None:
        path = module_path()
        if path is None:
            raise RuntimeError(
                "the emulated CUDA backend is not built (build/emu/_lvmmed_emu*.so): run scripts/setup.sh "
                "(LVMMED_EMULATOR=ON, the default there)"
            )
        import lvmmed_ext  # noqa: F401  (the lvmmed op library and its fake kernels first)

        spec = importlib.util.spec_from_file_location("_lvmmed_emu", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _register_fakes()
        _module = mod
    return _module


def _register_fakes() -> None:
    """Every lvmmed_emu op gets the fake kernel of its lvmmed twin (tracing inside the mode: opcheck, aot)."""
    for qualname in torch._C._dispatch_get_all_op_names():
        if not qualname.startswith("lvmmed::"):
            continue
        name = qualname.split("::", 1)[1]

        def fake(*args, _name=name, **kwargs):
            return getattr(torch.ops.lvmmed, _name).default(*args, **kwargs)

        torch.library.register_fake(f"lvmmed_emu::{name}")(fake)


class EmulatedCuda(TorchDispatchMode):
    """Routes every ``lvmmed::`` operator to its ``lvmmed_emu::`` twin (the CUDA glue and kernels, emulated)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "lvmmed" and not any(_is_fake(a) for a in pytree.tree_leaves((args, kwargs))):
            return getattr(torch.ops.lvmmed_emu, func._opname).default(*args, **kwargs)
        return func(*args, **kwargs)  # fake/meta tensors (opcheck, tracing): the lvmmed fake kernels


def _is_fake(x) -> bool:
    return isinstance(x, torch.Tensor) and (isinstance(x, FakeTensor) or x.device.type == "meta")


@contextmanager
def emulated_cuda(check: bool = True):
    """Runs the lvmmed ops inside on the emulated CUDA backend; with ``check``, fails (AssertionError) on any problem
    the emulator reported (races, uninitialised shared memory, divergence) even if no op raised."""
    emu = load()
    emu.take_reports()
    # fresh allocations (the glue's outputs and workspaces) filled with NaN / INT_MAX, as an undefined GPU buffer may
    # hold anything: a kernel that reads memory nobody wrote shows up in its results
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with EmulatedCuda():
            yield emu
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
    if check:
        reports = [r for r in emu.take_reports() if r["message"]]
        assert not reports, "the CUDA emulator reported:\n" + "\n".join(
            f"  [{r['kind']}] {r['kernel']}: {r['message']}" for r in reports[:10]
        )


def kernel_names() -> dict[str, str]:
    """Every ``__global__`` kernel declared in csrc/cuda: name -> file."""
    names = {}
    for path in sorted((ROOT / "csrc" / "cuda").glob("*.cu*")):
        text = path.read_text()
        for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", text):
            names[m.group(1)] = path.name
    return names
