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


def _mean_of_kept(dist: Tensor, cos: Tensor, k: int) -> Tensor:
    """``dist [..., P, Q]`` distances, ``cos [..., P, Q]`` cosines: every row p takes its nearest column (first on
    ties); the mean over the ``k`` rows with the smallest such distance (lower index first on ties) of its cosine."""
    nn = dist.argmin(-1, keepdim=True)  # argmin returns the first minimum
    nearest = dist.gather(-1, nn).squeeze(-1)
    kept = torch.sort(nearest, dim=-1, stable=True).indices[..., : min(k, dist.shape[-2])]
    return cos.gather(-1, nn).squeeze(-1).gather(-1, kept).mean(-1)


def local_affinity(
    y_s: Tensor,
    y_t: Tensor,
    pos_s: Tensor | None = None,
    pos_t: Tensor | None = None,
    *,
    top_loc: int = 20,
    top_feat: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Reference of :func:`lvmmed_ext.local_affinity`: ``[G,N,P,D], [G,M,Q,D] -> [G,N,M]``.

    Squared distances are computed from explicit differences, one source node at a time (memory M*P*Q*D). The maps
    are computed in ``dtype`` (float64: the oracle; float16/bfloat16: a same-precision PyTorch peer for the
    low-precision tests), positions always in float64."""
    ys, yt = y_s.to(dtype), y_t.to(dtype)
    P, Q = ys.shape[2], yt.shape[2]
    feat_k = P + Q if top_feat is None else top_feat
    rows = []
    for i in range(ys.shape[1]):
        yi = ys[:, i, None]  # [G,1,P,D]
        dist = ((yi[:, :, :, None, :] - yt[:, :, None, :, :]) ** 2).sum(-1)  # [G,M,P,Q]
        cos = (yi * safe_inverse_norm(yi)) @ (yt * safe_inverse_norm(yt)).transpose(-1, -2)  # [G,M,P,Q]
        l_st = _mean_of_kept(dist, cos, feat_k)
        l_ts = _mean_of_kept(dist.transpose(-1, -2), cos.transpose(-1, -2), feat_k)
        if pos_s is not None:
            pi = pos_s.double()[:, i, None]  # [G,1,P,2]
            loc = ((pi[:, :, :, None, :] - pos_t.double()[:, :, None, :, :]) ** 2).sum(-1)  # [G,M,P,Q]
            l_st = 0.5 * (l_st + _mean_of_kept(loc, cos, top_loc))
            l_ts = 0.5 * (l_ts + _mean_of_kept(loc.transpose(-1, -2), cos.transpose(-1, -2), top_loc))
        rows.append(0.5 * (l_st + l_ts))
    if not rows:
        return ys.new_zeros(ys.shape[0], 0, yt.shape[1])
    return torch.stack(rows, dim=1)


def knn_graph(z: Tensor, k: int) -> Tensor:
    """Reference of :func:`lvmmed_ext.knn_graph`: ``[G,N,F] -> int64 [G,N*k,2]``, nearest first, lower index on ties."""
    z = z.double()
    G, N, _ = z.shape
    dist = ((z[:, :, None, :] - z[:, None, :, :]) ** 2).sum(-1)  # [G,N,N]
    others = torch.tensor([[j for j in range(N) if j != i] for i in range(N)], dtype=torch.long).reshape(N, N - 1)
    others = others.to(z.device).expand(G, N, N - 1)
    order = torch.sort(dist.gather(-1, others), dim=-1, stable=True).indices[..., :k]
    j = others.gather(-1, order)  # [G,N,k]
    i = torch.arange(N, device=z.device)[None, :, None].expand_as(j)
    return torch.stack((i, j), dim=-1).reshape(G, N * k, 2)


def edge_vectors(z: Tensor, edges: Tensor) -> Tensor:
    """``z [G,N,F], edges [G,E,2] -> [G,E,F]``: ``z[g, i] - z[g, j]`` for every edge ``(i, j)``."""
    z = z.double()
    g = torch.arange(z.shape[0], device=z.device)[:, None]
    return z[g, edges[..., 0]] - z[g, edges[..., 1]]


def edge_affinity(z_s: Tensor, edges_s: Tensor, z_t: Tensor, edges_t: Tensor) -> Tensor:
    """Reference of :func:`lvmmed_ext.edge_affinity`: ``-> [G,Es,Et]`` cosines of the edge vectors."""
    return cosine_matrix(edge_vectors(z_s, edges_s), edge_vectors(z_t, edges_t))


def vertex_affinity(
    z_s: Tensor,
    z_t: Tensor,
    y_s: Tensor | None = None,
    y_t: Tensor | None = None,
    pos_s: Tensor | None = None,
    pos_t: Tensor | None = None,
    *,
    alpha: float = 0.8,
    top_loc: int = 20,
    top_feat: int | None = None,
) -> Tensor:
    """Reference of :func:`lvmmed_ext.vertex_affinity`: ``alpha * global + (1 - alpha) * local``."""
    glob = global_affinity(z_s, z_t)
    if y_s is None or alpha == 1:
        return glob
    loc = local_affinity(y_s, y_t, pos_s, pos_t, top_loc=top_loc, top_feat=top_feat)
    return alpha * glob + (1 - alpha) * loc
