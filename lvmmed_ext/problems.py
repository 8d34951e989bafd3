"""Random graph-matching (QAP) problem generators shared by the tests, the benchmarks and ``lvmmed bench``.

Three families, all batched over ``G`` graphs and reproducible from a ``torch.Generator``:

* :func:`lvmmed_problem` -- the LVM-Med shape: two noisy views of ``N`` random embeddings, a kNN graph per view,
  unary = node cosine, quadratic = ``0.5 *`` cosine of edge-difference vectors over the two edge lists. The view
  noise moves the instances from easy (the planted matching is optimal and the unary alone finds it) to noisy.
* :func:`planted_kb_problem` -- dense Koopmans-Beckmann similarity graphs of two noisy views (``A``, ``B``), target
  nodes shuffled, optional unary term: pairwise-dominated problems with a planted solution.
* :func:`uniform_kb_problem` -- dense symmetric ``U(0, 1)`` ``A`` and ``B`` (QAPLIB ``tai-a`` like, unstructured).

Every generator returns a :class:`QAPProblem`; ``solve_qap(**p.inputs())`` solves it and ``p.planted`` holds the
planted assignment where there is one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["QAPProblem", "knn_edges", "lvmmed_problem", "planted_kb_problem", "uniform_kb_problem", "NOISE_LEVELS"]

# View-noise levels of lvmmed_problem from easy to noisy (relative to unit-norm embeddings, dim=128); at N=16, k=5
# the unary-only LAP recovers about 100 %, 80 %, 45 % and 17 % of the planted matching (N=32: 100, 65, 33, 10 %).
NOISE_LEVELS = {"easy": 1.0, "medium": 2.0, "hard": 2.5, "noisy": 4.0}


@dataclass
class QAPProblem:
    """A batch of ``G`` QAP instances in the form :func:`lvmmed_ext.solve_qap` takes.

    Attributes:
        unary: ``[G, N, M]`` node affinities.
        quad: ``[G, Es, Et]`` edge-pair affinities over ``edges_s`` x ``edges_t`` (or None).
        edges_s: ``[G, Es, 2]`` int64 source-graph edges ``(i, j)`` (or None).
        edges_t: ``[G, Et, 2]`` int64 target-graph edges ``(a, b)`` (or None).
        A: ``[G, N, N]`` dense source-graph matrix of the Koopmans-Beckmann term (or None).
        B: ``[G, M, M]`` dense target-graph matrix (or None).
        planted: ``[G, N]`` int64, the planted target node of every source node (or None).
    """

    unary: Tensor
    quad: Tensor | None = None
    edges_s: Tensor | None = None
    edges_t: Tensor | None = None
    A: Tensor | None = None
    B: Tensor | None = None
    planted: Tensor | None = None

    def inputs(self) -> dict:
        """The keyword arguments of :func:`lvmmed_ext.solve_qap` / :func:`lvmmed_ext.qap_objective`."""
        return {
            "unary": self.unary,
            "quad": self.quad,
            "edges_s": self.edges_s,
            "edges_t": self.edges_t,
            "A": self.A,
            "B": self.B,
        }

    @property
    def planted_matrix(self) -> Tensor | None:
        """The planted assignment as a ``[G, N, M]`` 0/1 matrix in the dtype of ``unary`` (or None)."""
        if self.planted is None:
            return None
        G, N, M = self.unary.shape
        X = torch.zeros(G, N, M, dtype=self.unary.dtype, device=self.unary.device)
        return X.scatter_(2, self.planted.unsqueeze(2), 1.0)

    def slice(self, start: int, stop: int) -> QAPProblem:
        """Graphs ``start:stop`` of the batch."""

        def cut(t):
            return None if t is None else t[start:stop]

        return QAPProblem(*(cut(getattr(self, f)) for f in self.__dataclass_fields__))


def knn_edges(z: Tensor, k: int) -> Tensor:
    """Directed kNN edges of each graph: ``z [G, N, F] -> [G, N*k, 2]`` int64, rows ``(i, j)``, ``j`` one of the
    ``k`` nearest other nodes of ``i`` (Euclidean), grouped by ``i`` and nearest first; equal distances go to the
    lower index (a stable sort of the distances, i.e. ``topk`` with a lower-index tie-break). No self loops.

    Example:
        >>> knn_edges(torch.tensor([[[0.0], [1.0], [3.0]]]), 1).tolist()
        [[[0, 1], [1, 0], [2, 1]]]
    """
    G, N, _ = z.shape
    if not 1 <= k <= N - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {N - 1}], got {k}")
    d = torch.cdist(z, z)
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    nbr = torch.sort(d, dim=2, stable=True).indices[:, :, :k]  # [G,N,k]
    src = torch.arange(N, device=z.device).view(1, N, 1).expand(G, N, k)
    return torch.stack([src, nbr], dim=3).reshape(G, N * k, 2)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def lvmmed_problem(
    G: int,
    N: int,
    *,
    M: int | None = None,
    k: int = 5,
    dim: int = 128,
    noise: float = NOISE_LEVELS["medium"],
    quad_weight: float = 0.5,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> QAPProblem:
    """LVM-Med-shaped instances: unary node cosines + ``quad_weight`` x edge cosines on per-view kNN graphs.

    ``N`` unit embeddings ``x_i`` (``dim``-D Gaussian, normalised) give two views
    ``z_i = normalise(x_i + noise * eps_i / sqrt(dim))``; the target view has ``M - N`` extra distractor nodes
    (fresh embeddings) when ``M > N``. Per view, ``k``-NN edges (:func:`knn_edges`); ``unary[g, i, a] =
    cos(zs_i, zt_a)``, ``quad[g, p, q] = quad_weight * cos(zs_i - zs_j, zt_a - zt_b)`` for ``p = (i, j)``,
    ``q = (a, b)`` -- the per-graph ``(N k) x (M k)`` matrix of LVM-Med (80 x 80 for ``N = 16, k = 5``).
    The planted matching is ``i -> i`` (``shuffle=True`` relabels the target nodes randomly).

    Args:
        G, N: number of graphs and of source nodes; ``M`` target nodes (default ``N``, must be ``>= N``).
        k: neighbours per node, in ``[1, min(N, M) - 1]``.
        noise: view noise, e.g. :data:`NOISE_LEVELS` (``easy`` 1.0 ... ``noisy`` 4.0).
        generator: a CPU ``torch.Generator`` (sampling happens on the CPU, then moves to ``device``).

    Returns:
        :class:`QAPProblem` with ``unary [G,N,M]``, ``quad [G,N*k,M*k]``, ``edges_s [G,N*k,2]``,
        ``edges_t [G,M*k,2]`` and ``planted [G,N]``, in ``dtype`` on ``device``.

    Example:
        >>> p = lvmmed_problem(4, 16, noise=NOISE_LEVELS["easy"], generator=torch.Generator().manual_seed(0))
        >>> p.unary.shape, p.quad.shape, p.edges_s.shape
        (torch.Size([4, 16, 16]), torch.Size([4, 80, 80]), torch.Size([4, 80, 2]))
    """
    M = N if M is None else M
    if M < N:
        raise ValueError(f"M must be >= N = {N}, got {M}")
    if not 1 <= k <= N - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {N - 1}], got {k}")
    x = _unit(torch.randn(G, M, dim, generator=generator, dtype=torch.float64))
    zs = _unit(x[:, :N] + noise * torch.randn(G, N, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim))
    zt = _unit(x + noise * torch.randn(G, M, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim))
    planted = torch.arange(N).expand(G, N).clone()
    if shuffle:
        perm = torch.stack([torch.randperm(M, generator=generator) for _ in range(G)])  # new label of old node
        zt = torch.empty_like(zt).scatter_(1, perm.unsqueeze(2).expand_as(zt), zt)
        planted = perm[:, :N]
    es, et = knn_edges(zs, k), knn_edges(zt, k)
    unary = _unit(zs) @ _unit(zt).transpose(1, 2)
    ds = _unit(_gather_nodes(zs, es[..., 0]) - _gather_nodes(zs, es[..., 1]))
    dt = _unit(_gather_nodes(zt, et[..., 0]) - _gather_nodes(zt, et[..., 1]))
    quad = quad_weight * (ds @ dt.transpose(1, 2))
    return QAPProblem(
        unary=unary.to(device, dtype),
        quad=quad.to(device, dtype),
        edges_s=es.to(device),
        edges_t=et.to(device),
        planted=planted.to(device),
    )


def _gather_nodes(z: Tensor, idx: Tensor) -> Tensor:
    """z [G,N,F], idx [G,E] -> [G,E,F]."""
    return torch.gather(z, 1, idx.unsqueeze(2).expand(-1, -1, z.shape[2]))


def planted_kb_problem(
    G: int,
    N: int,
    *,
    dim: int = 64,
    noise: float = 0.25,
    tau: float = 0.3,
    unary_noise: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> QAPProblem:
    """Planted Koopmans-Beckmann instances: similarity graphs of two noisy views, target nodes shuffled.

    ``A[i, j] = exp((cos(x_i, x_j) - 1) / tau)`` on unit embeddings ``x``, ``B`` the same on the noisy view
    ``y = normalise(x + noise * eps / sqrt(dim))`` with the nodes randomly relabelled; zero diagonals. Without
    ``unary_noise`` the unary is zero (the ``planted`` family of ``SOLVERS.md``); with it, ``unary = lam *
    exp((cos(x~_i, y_a) - 1) / tau)`` from much noisier features ``x~`` (noise ``unary_noise``), ``lam`` making
    unary and pairwise terms equal at the planted matching (``planted_u``).

    Returns:
        :class:`QAPProblem` with ``unary [G,N,N]``, ``A [G,N,N]``, ``B [G,N,N]``, ``planted [G,N]``.

    Example:
        >>> p = planted_kb_problem(2, 32, generator=torch.Generator().manual_seed(0))
        >>> p.A.shape, p.planted.shape
        (torch.Size([2, 32, 32]), torch.Size([2, 32]))
    """
    x = _unit(torch.randn(G, N, dim, generator=generator, dtype=torch.float64))
    y = _unit(x + noise * torch.randn(G, N, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim))
    perm = torch.stack([torch.randperm(N, generator=generator) for _ in range(G)])  # node i of x -> perm[i] of y
    y = torch.empty_like(y).scatter_(1, perm.unsqueeze(2).expand_as(y), y)
    A = torch.exp((x @ x.transpose(1, 2) - 1) / tau)
    B = torch.exp((y @ y.transpose(1, 2) - 1) / tau)
    A.diagonal(dim1=1, dim2=2).zero_()
    B.diagonal(dim1=1, dim2=2).zero_()
    unary = torch.zeros(G, N, N, dtype=torch.float64)
    if unary_noise is not None:
        xu = _unit(x + unary_noise * torch.randn(G, N, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim))
        C = torch.exp((xu @ y.transpose(1, 2) - 1) / tau)
        Bp = torch.gather(torch.gather(B, 1, perm.unsqueeze(2).expand(G, N, N)), 2, perm.unsqueeze(1).expand(G, N, N))
        pair = (A * Bp).sum((1, 2))
        un = torch.gather(C, 2, perm.unsqueeze(2)).squeeze(2).sum(1)
        unary = C * (pair / un.clamp_min(1e-12)).view(G, 1, 1)
    return QAPProblem(
        unary=unary.to(device, dtype), A=A.to(device, dtype), B=B.to(device, dtype), planted=perm.to(device)
    )


def uniform_kb_problem(
    G: int,
    N: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> QAPProblem:
    """Unstructured Koopmans-Beckmann instances: ``A``, ``B`` symmetric ``U(0, 1)`` with zero diagonal, zero unary.

    Example:
        >>> p = uniform_kb_problem(2, 8, generator=torch.Generator().manual_seed(0))
        >>> bool((p.A == p.A.transpose(1, 2)).all()), p.planted is None
        (True, True)
    """

    def sym():
        a = torch.rand(G, N, N, generator=generator, dtype=torch.float64)
        a = (a + a.transpose(1, 2)) / 2
        a.diagonal(dim1=1, dim2=2).zero_()
        return a.to(device, dtype)

    A, B = sym(), sym()
    return QAPProblem(unary=torch.zeros(G, N, N, dtype=dtype, device=device), A=A, B=B)
