"""The LVM-Med graph-matching head: a projector, message passing over each view's kNN graph (GraphConv-style or
the paper's GCN), then :func:`lvmmed_ext.gm_loss`'s matching loss. Registered as ``"gm"``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..diagnostics import StepStats
from ..losses import _HEAD_LOSS_OPTIONS, _check_args, _graphs, _matching_loss
from .base import register_head


def _adjacency(edges: Tensor, n: int, dtype) -> Tensor:
    """int64 ``[G,E,2]`` directed edges (i, j) -> ``[G,n,n]`` 0/1 with ``A[g,i,j] = 1``."""
    G = edges.shape[0]
    A = torch.zeros(G, n, n, device=edges.device, dtype=dtype)
    g = torch.arange(G, device=edges.device)[:, None].expand_as(edges[..., 0])
    A[g, edges[..., 0], edges[..., 1]] = 1.0
    return A


class GCN(nn.Module):
    """Graph convolution over each graph's kNN edges (Kipf & Welling, the paper's Eq. 1): H ← Â H W with Â the
    symmetrically normalised (A + Aᵀ > 0) + I; ReLU between layers, none after the last (LVMMED_SPEC §7.6).

    On kNN graphs of 16 nodes with k = 5 the symmetrised degree is 6-10, so two layers average each node with most
    of its graph: its own view's identity is largely washed out (see docs/STUDY.md)."""

    def __init__(self, dim: int = 128, layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    @staticmethod
    def normalized_adjacency(edges: Tensor, n: int, dtype=torch.float32) -> Tensor:
        """int64 ``[G,E,2]`` edges -> ``[G,n,n]`` D^-1/2 (sym(A) + I) D^-1/2."""
        A = _adjacency(edges, n, dtype)
        A = torch.maximum(A, A.transpose(1, 2)) + torch.eye(n, device=edges.device, dtype=dtype)
        d = A.sum(-1).rsqrt()
        return d[:, :, None] * A * d[:, None, :]

    def forward(self, x: Tensor, edges: Tensor) -> Tensor:
        """``x [G,n,F]``, ``edges [G,E,2]`` -> ``[G,n,F]``."""
        adj = self.normalized_adjacency(edges, x.shape[1], x.dtype)
        for i, layer in enumerate(self.layers):
            x = adj @ layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


GNN_AGGREGATIONS = ("mean", "sum", "max")


class GraphConv(nn.Module):
    """GraphConv-style message passing (Morris et al. 2019; the form of the authors' later code, LVMMED_SPEC §1.4):
    ``x_i ← W_root x_i + W_nbr · aggr_{j ∈ kNN(i)} x_j`` over each node's own kNN edges (i, j), ReLU between layers,
    none after the last. The separate root weight keeps each node's own features, so message passing adds context
    without averaging the nodes of a graph together.

    Args:
        dim: node feature width. layers: number of layers. aggr: ``"mean"`` (default), ``"sum"`` (the authors'
            code) or ``"max"`` over the neighbours.
    """

    def __init__(self, dim: int = 128, layers: int = 2, aggr: str = "mean"):
        super().__init__()
        if aggr not in GNN_AGGREGATIONS:
            raise ValueError(f"gnn_aggr must be one of {GNN_AGGREGATIONS}, got {aggr!r}")
        self.aggr = aggr
        self.root = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.nbr = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(layers))

    def aggregate(self, x: Tensor, A: Tensor) -> Tensor:
        """``x [G,n,F]``, 0/1 adjacency ``A [G,n,n]`` (row i: the neighbours of i) -> ``[G,n,F]``."""
        if self.aggr == "max":
            masked = x[:, None, :, :].masked_fill(A[..., None] == 0, float("-inf"))  # [G,n,n,F]
            out = masked.amax(2)
            return torch.where(torch.isfinite(out), out, torch.zeros_like(out))  # a node without neighbours: 0
        out = A @ x
        return out / A.sum(-1, keepdim=True).clamp_min(1) if self.aggr == "mean" else out

    def forward(self, x: Tensor, edges: Tensor) -> Tensor:
        """``x [G,n,F]``, ``edges [G,E,2]`` -> ``[G,n,F]``."""
        A = _adjacency(edges, x.shape[1], x.dtype)
        for i, (root, nbr) in enumerate(zip(self.root, self.nbr)):
            x = root(x) + nbr(self.aggregate(x, A))
            if i < len(self.root) - 1:
                x = torch.relu(x)
        return x


GNN_KINDS = ("gcn", "graphconv")


@register_head("gm")
class LVMMedHead(nn.Module):
    """Projector (``in_dim`` → ``dim``), 2 layers of message passing over each view's kNN graph, then
    :func:`gm_loss`.

    Message passing: ``gnn="graphconv"`` (default; :class:`GraphConv`, mean over the kNN neighbours plus a separate
    root weight, ``gnn_aggr`` "mean", "sum" or "max") or ``gnn="gcn"`` (:class:`GCN`, the paper's Eq. 1), with
    ``gnn_layers`` layers; ``normalize=True`` makes the node embeddings unit vectors before the affinities. The GCN
    averages each node with most of its 16-node graph, and the two views' kNN graphs differ, so its embeddings
    matched at chance in the study (docs/STUDY.md); the GraphConv form learns.

    ``forward(h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None) -> loss`` with h_* the pooled backbone
    features ``[B,in_dim]`` of the two views, y_* the backbone feature maps ``[B,P,D]`` and pos_* their cell
    centres ``[B,P,2]`` (read only when ``alpha < 1``; see ``needs_maps``). The kNN graphs are built on the
    projector outputs (LVMMED_SPEC §1.3) and reused as the QAP's edges. Other keyword arguments are those of
    :func:`gm_loss`. ``use_gnn=False`` skips message passing (the paper's "w/o message passing" ablation).
    ``distributed=True`` forms graphs over the global batch of all ranks (see :func:`gm_loss`).

    Example:
        >>> head = LVMMedHead(in_dim=512)
        >>> loss = head(torch.randn(32, 512), torch.randn(32, 512))
    """

    def __init__(
        self,
        in_dim: int = 2048,
        dim: int = 128,
        *,
        projector_hidden: int | None = None,
        use_gnn: bool = True,
        gnn: str = "graphconv",
        gnn_layers: int = 2,
        gnn_aggr: str = "mean",
        normalize: bool = False,
        graph_size: int = 16,
        k: int = 5,
        alpha: float = 0.8,
        distributed: bool = False,
        **loss_kwargs,
    ):
        super().__init__()
        if projector_hidden:
            self.projector = nn.Sequential(
                nn.Linear(in_dim, projector_hidden),
                nn.BatchNorm1d(projector_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(projector_hidden, dim),
            )
        else:
            self.projector = nn.Linear(in_dim, dim)
        if gnn not in GNN_KINDS:
            raise ValueError(f"gnn must be one of {GNN_KINDS}, got {gnn!r}")
        if use_gnn:
            self.gnn = GCN(dim, gnn_layers) if gnn == "gcn" else GraphConv(dim, gnn_layers, gnn_aggr)
        else:
            self.gnn = None
        self.normalize = bool(normalize)
        self.graph_size, self.k, self.alpha, self.distributed = graph_size, k, alpha, distributed
        unknown = sorted(set(loss_kwargs) - set(_HEAD_LOSS_OPTIONS))
        if unknown:
            raise TypeError(
                f"LVMMedHead got unknown options {unknown}; gm_loss options are {sorted(_HEAD_LOSS_OPTIONS)}"
            )
        self.loss_kwargs = {**_HEAD_LOSS_OPTIONS, **loss_kwargs}
        self.stats = StepStats()  # diagnostics of the evaluations since the last stats.pop()

    symmetric = True  # swapping the views transposes the QAP: the trainer evaluates each pair of views once

    @property
    def needs_maps(self) -> bool:
        return self.alpha < 1.0

    def forward(self, h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None) -> Tensor:
        from ..ops import knn_graph

        kw = self.loss_kwargs
        z_s, z_t = self.projector(h_s), self.projector(h_t)
        _check_args(
            z_s, z_t, self.graph_size, self.k, self.alpha, kw["lam"], kw["noise"], kw["samples"], kw["quad_weight"]
        )
        maps = [y_s, y_t, pos_s, pos_t] if self.needs_maps and y_s is not None else [None] * 4
        (zs, zt, *maps), world, fraction = _graphs([z_s, z_t, *maps], self.graph_size, self.distributed)
        zs, zt = zs.float(), zt.float()
        es, et = knn_graph(zs.detach(), self.k), knn_graph(zt.detach(), self.k)
        if self.gnn is not None:
            zs, zt = self.gnn(zs, es), self.gnn(zt, et)
        if self.normalize:  # unit node embeddings: edge vectors become differences of unit vectors
            zs, zt = nn.functional.normalize(zs, dim=-1), nn.functional.normalize(zt, dim=-1)
        loss, _ = _matching_loss(
            zs,
            zt,
            *maps,
            es,
            et,
            k=self.k,
            alpha=self.alpha,
            world=world,
            fraction=fraction,
            stats=self.stats.record(),
            **kw,
        )
        return loss
