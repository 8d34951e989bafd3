"""Slow, obviously-correct float64 PyTorch references of every lvmmed op: the oracle of the tests.

Each function mirrors the documented semantics of the op of the same name in ``lvmmed_ext.ops`` and is
differentiable through plain autograd. Results are float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def safe_inverse_norm(x: Tensor) -> Tensor:
    """``1/||x||`` over the last dim (keepdim), 0 where the norm is 0 (gradient 0 there too)."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.where(n > 0, 1.0 / n.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(n))


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``[..., N, F] x [..., M, F] -> [..., N, M]`` cosines; a zero vector has cosine 0 with everything."""
    a, b = a.double(), b.double()
    return (a * safe_inverse_norm(a)) @ (b * safe_inverse_norm(b)).transpose(-1, -2)


def global_affinity(z_s: Tensor, z_t: Tensor) -> Tensor:
    """Reference of :func:`lvmmed_ext.global_affinity`: ``[G,N,F], [G,M,F] -> [G,N,M]``."""
    return cosine_matrix(z_s, z_t)
