"""Typed wrappers of the compiled ``torch.ops.lvmmed`` operators, with their fake kernels and autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _C  # loaded, after the torch-version check, by lvmmed_ext/__init__.py

_lib = torch.ops.lvmmed


def global_affinity(z_s: Tensor, z_t: Tensor) -> Tensor:
    """Cosine affinity between the nodes of two batches of graphs.

    Args:
        z_s: ``[G, N, F]`` node embeddings of the source graphs.
        z_t: ``[G, M, F]`` node embeddings of the target graphs (same device and dtype as ``z_s``).

    Returns:
        ``[G, N, M]`` tensor, ``out[g, i, a] = cos(z_s[g, i], z_t[g, a])``, same dtype and device as the inputs.
        A zero vector has cosine 0 with everything and receives zero gradient; NaN/Inf in the inputs
        propagate to the affected entries. ``G``, ``N`` or ``M`` may be 0 (empty result); ``F`` must be >= 1.

    Dtypes and devices: float32/float64 on CPU (float16/bfloat16 computed in float32); float32, float64,
    float16 and bfloat16 on CUDA, accumulated in float32 (float64 in float64). Differentiable in both inputs.

    Example:
        >>> import torch, lvmmed_ext
        >>> z = torch.randn(2, 4, 8)
        >>> lvmmed_ext.global_affinity(z, z).diagonal(dim1=1, dim2=2)
        tensor([[1.0000, 1.0000, 1.0000, 1.0000],
                [1.0000, 1.0000, 1.0000, 1.0000]])
    """
    return _lib.global_affinity.default(z_s, z_t)


@torch.library.register_fake("lvmmed::global_affinity")
def _global_affinity_fake(z_s: Tensor, z_t: Tensor) -> Tensor:
    torch._check(z_s.dim() == 3 and z_t.dim() == 3, lambda: "z_s must be [G,N,F] and z_t [G,M,F]")
    return z_s.new_empty((z_s.shape[0], z_s.shape[1], z_t.shape[1]))


@torch.library.register_fake("lvmmed::global_affinity_backward")
def _global_affinity_backward_fake(grad: Tensor, z_s: Tensor, z_t: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(z_s, memory_format=torch.contiguous_format), torch.empty_like(
        z_t, memory_format=torch.contiguous_format
    )


def _global_affinity_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _global_affinity_grad(ctx, grad: Tensor):
    z_s, z_t = ctx.saved_tensors
    return tuple(_lib.global_affinity_backward.default(grad, z_s, z_t))


torch.library.register_autograd("lvmmed::global_affinity", _global_affinity_grad, setup_context=_global_affinity_setup)


_missing_cuda = torch.library.Library("lvmmed", "IMPL")


def _register_missing_cuda_backend() -> None:
    """Without a compiled CUDA backend, a CUDA call names the cause instead of torch's dispatcher error."""
    if _C.build_info()["cuda"]:
        return
    msg = (
        "lvmmed_ext was built without its CUDA backend (nvcc or a CUDA build of torch was missing at build time, "
        "or LVMMED_WITH_CUDA=OFF), so torch.ops.lvmmed.{op} cannot run on CUDA tensors; rebuild with "
        "LVMMED_WITH_CUDA=ON scripts/setup.sh"
    )
    for qualname in torch._C._dispatch_get_all_op_names():
        if not qualname.startswith("lvmmed::"):
            continue
        op = qualname.split("::", 1)[1]

        def _raise(*args, _op=op, **kwargs):
            raise NotImplementedError(msg.format(op=_op))

        _missing_cuda.impl(op, _raise, "CUDA")


_register_missing_cuda_backend()
