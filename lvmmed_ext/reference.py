"""Slow, obviously-correct float64 PyTorch references of every lvmmed op: the oracle of the tests.

Each function mirrors the documented semantics of the op of the same name in ``lvmmed_ext.ops`` and is
differentiable through plain autograd. Results are float64.
"""

from __future__ import annotations

import itertools
import math

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


# ----------------------------------------------------------------------------------------------------- QAP
def qap_objective(
    X: Tensor,
    unary: Tensor,
    quad: Tensor | None = None,
    edges_s: Tensor | None = None,
    edges_t: Tensor | None = None,
    *,
    A: Tensor | None = None,
    B: Tensor | None = None,
) -> Tensor:
    """Reference of :func:`lvmmed_ext.qap_objective` (float64, differentiable): ``[G]``.

    ``sum unary X + sum_{p=(i,j), q=(a,b)} quad[p,q] X[i,a] X[j,b] + sum A[i,j] B[a,b] X[i,a] X[j,b]``.
    """
    X, unary = X.double(), unary.double()
    f = (unary * X).sum((1, 2))
    if quad is not None and quad.shape[1] > 0 and quad.shape[2] > 0:
        G = X.shape[0]
        g = torch.arange(G, device=X.device).view(G, 1, 1)
        i, j = edges_s[..., 0].unsqueeze(2), edges_s[..., 1].unsqueeze(2)  # [G,Es,1]
        a, b = edges_t[..., 0].unsqueeze(1), edges_t[..., 1].unsqueeze(1)  # [G,1,Et]
        f = f + (quad.double() * X[g, i, a] * X[g, j, b]).sum((1, 2))
    if A is not None:
        f = f + (A.double() * (X @ B.double() @ X.transpose(1, 2))).sum((1, 2))
    return f


def assignment_count(N: int, M: int, partial: bool) -> int:
    """Number of feasible assignments: ``M! / (M-N)!`` (every row matched) or, with ``partial``,
    ``sum_k C(N, k) M! / (M-k)!`` (any number of matched pairs)."""
    if not partial:
        return math.perm(M, N) if N <= M else 0
    return sum(math.comb(N, k) * math.perm(M, k) for k in range(min(N, M) + 1))


def assignments(N: int, M: int, partial: bool, device=None) -> Tensor:
    """Every feasible assignment as ``[P, N]`` int64 (the column of each row, -1 = unmatched), in a fixed order."""
    if not partial:
        rows = list(itertools.permutations(range(M), N))
    else:
        rows = []

        def extend(prefix, used):
            if len(prefix) == N:
                rows.append(tuple(prefix))
                return
            extend(prefix + [-1], used)
            for a in range(M):
                if a not in used:
                    extend(prefix + [a], used | {a})

        extend([], frozenset())
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(len(rows), N)


def _objective_of_assignments(P: Tensor, unary, quad, edges_s, edges_t, A, B) -> Tensor:
    """Objective of every assignment P [K, N] (-1 unmatched) of one graph (float64) -> [K]."""
    N, M = unary.shape
    Pc = torch.where(P < 0, torch.full_like(P, M), P)  # column M = "unmatched" (zero)
    U = torch.cat([unary.double(), unary.new_zeros(N, 1).double()], 1)
    f = U.gather(1, Pc.T).T.sum(1)
    if quad is not None and quad.shape[0] > 0 and quad.shape[1] > 0:
        W = torch.zeros(quad.shape[0], M + 1, M + 1, dtype=torch.float64, device=unary.device)
        p = torch.arange(quad.shape[0], device=unary.device).view(-1, 1).expand(quad.shape)
        a = edges_t[:, 0].view(1, -1).expand(quad.shape)
        b = edges_t[:, 1].view(1, -1).expand(quad.shape)
        W.index_put_((p, a, b), quad.double(), accumulate=True)  # W[p, a, b] = sum of quad[p, q=(a,b)]
        pa, pb = Pc[:, edges_s[:, 0]], Pc[:, edges_s[:, 1]]  # [K, Es]
        f = f + W[torch.arange(quad.shape[0], device=unary.device).view(1, -1), pa, pb].sum(1)
    if A is not None:
        Bp = torch.zeros(M + 1, M + 1, dtype=torch.float64, device=unary.device)
        Bp[:M, :M] = B.double()
        f = f + (A.double().unsqueeze(0) * Bp[Pc.unsqueeze(2), Pc.unsqueeze(1)]).sum((1, 2))
    return f


def qap_bruteforce(
    unary: Tensor,
    quad: Tensor | None = None,
    edges_s: Tensor | None = None,
    edges_t: Tensor | None = None,
    *,
    A: Tensor | None = None,
    B: Tensor | None = None,
    partial: bool = False,
    chunk: int = 1 << 16,
) -> Tensor:
    """Exact QAP by enumeration (the test oracle of :func:`lvmmed_ext.solve_qap`): ``X [G,N,M]`` float64 0/1.

    Ties go to the first assignment in the order of :func:`assignments`. Only for tiny problems.
    """
    G, N, M = unary.shape
    P = assignments(N, M, partial, device=unary.device)
    out = torch.zeros(G, N, M, dtype=torch.float64, device=unary.device)
    for g in range(G):
        args = (
            unary[g],
            None if quad is None else quad[g],
            None if edges_s is None else edges_s[g],
            None if edges_t is None else edges_t[g],
            None if A is None else A[g],
            None if B is None else B[g],
        )
        best_f, best_k = -math.inf, 0
        for start in range(0, P.shape[0], chunk):
            f = _objective_of_assignments(P[start : start + chunk], *args)
            k = int(torch.argmax(f))
            if f[k].item() > best_f:
                best_f, best_k = f[k].item(), start + k
        for i, a in enumerate(P[best_k].tolist()):
            if a >= 0:
                out[g, i, a] = 1.0
    return out


def linear_assignment(score: Tensor, *, maximize: bool = True, partial: bool = False) -> Tensor:
    """Reference of :func:`lvmmed_ext.linear_assignment` by enumeration (tiny problems): ``X [G,N,M]`` float64.

    Without ``partial`` and with ``N > M`` every column is matched (the transposed problem)."""
    G, N, M = score.shape
    if not partial and N > M:
        return linear_assignment(score.transpose(1, 2), maximize=maximize).transpose(1, 2)
    s = score.double() if maximize else -score.double()
    return qap_bruteforce(s, partial=partial)
