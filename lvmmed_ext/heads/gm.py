"""The LVM-Med graph-matching head: a projector, message passing over each view's kNN graph (GraphConv-style or
the paper's GCN), then :func:`lvmmed_ext.gm_loss`'s matching loss. Registered as ``"gm"``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from ..losses import GMOptions, check_gm_inputs, gm_graphs, graph_matching_loss
from ..ops import knn_graph
from .base import Head, Recipe, register_head


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


@dataclass(frozen=True)
class GMHeadOptions(GMOptions):
    """Every option of the gm head: the loss's (:class:`lvmmed_ext.losses.GMOptions`) and its own: the projector
    (``dim``, ``projector_hidden``), message passing (``use_gnn``, ``gnn``, ``gnn_layers``, ``gnn_aggr``) and
    ``normalize``."""

    dim: int = 128
    projector_hidden: int | None = None
    use_gnn: bool = True
    gnn: str = "graphconv"
    gnn_layers: int = 2
    gnn_aggr: str = "mean"
    normalize: bool = False


_LOSS_KEYS = tuple(f.name for f in fields(GMOptions))
_HEAD_KEYS = tuple(f.name for f in fields(GMHeadOptions))


@register_head("gm")
class LVMMedHead(Head):
    """Projector (``in_dim`` → ``dim``), 2 layers of message passing over each view's kNN graph, then the
    graph-matching loss (:func:`lvmmed_ext.losses.graph_matching_loss`, as :func:`gm_loss`).

    Message passing: ``gnn="graphconv"`` (default; :class:`GraphConv`, the kNN neighbours aggregated plus a separate
    root weight; ``gnn_aggr`` "mean" (ours, the default), "sum" (the authors' related code) or "max") or
    ``gnn="gcn"`` (:class:`GCN`, the paper's Eq. 1), with
    ``gnn_layers`` layers; ``normalize=True`` makes the node embeddings unit vectors before the affinities. The GCN
    averages each node with most of its 16-node graph, and the two views' kNN graphs differ, so its embeddings
    matched at chance in the study (docs/STUDY.md); the GraphConv form learns.

    ``forward(h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None) -> loss`` with h_* the pooled backbone
    features ``[B,in_dim]`` of the two views, y_* the backbone feature maps ``[B,P,D]`` and pos_* their cell
    centres ``[B,P,2]`` (read only when ``alpha < 1``; see ``needs_maps``). The kNN graphs are built on the
    projector outputs (LVMMED_SPEC §1.3) and reused as the QAP's edges. The options are those of
    :class:`GMHeadOptions` (``self.options``); ``generator`` seeds the loss's noise. ``use_gnn=False`` skips message
    passing (the paper's "w/o message passing" ablation). ``distributed=True`` forms graphs over the global batch of
    all ranks (see :func:`gm_loss`).

    Example:
        >>> head = LVMMedHead(in_dim=512)
        >>> loss = head(torch.randn(32, 512), torch.randn(32, 512))
    """

    options_class = GMHeadOptions
    symmetric = True  # swapping the views transposes the QAP: the trainer evaluates each pair of views once
    recipes = {
        "authors-views": Recipe(
            about="the views of the authors' related code: 2 x 224 px crops (area 0.4-1) + 2 x 96 px crops "
            "(0.08-0.4), jitter 0.8 with p 0.8, blur p 0.5, flips p 0.5",
            settings={
                "image_size": 224,
                "crop_scale": (0.4, 1.0),
                "local_crops": 2,
                "local_size": 96,
                "local_scale": (0.08, 0.4),
                "jitter": 0.8,
            },  # fmt: skip
        )
    }

    def chance_loss(self) -> float:
        """A random matching of N images has one fixed point on average: Hamming distance 2 (N - 1) per graph."""
        return 2.0 * (self.options.graph_size - 1)

    def __init__(self, in_dim: int = 2048, dim: int = GMHeadOptions.dim, *, generator=None, **options):
        super().__init__()
        unknown = sorted(set(options) - set(_HEAD_KEYS))
        if unknown:
            raise TypeError(f"LVMMedHead got unknown options {unknown}; its options are {sorted(_HEAD_KEYS)}")
        o = self.options = GMHeadOptions(dim=dim, **options)
        if o.projector_hidden:
            self.projector = nn.Sequential(
                nn.Linear(in_dim, o.projector_hidden),
                nn.BatchNorm1d(o.projector_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(o.projector_hidden, dim),
            )
        else:
            self.projector = nn.Linear(in_dim, dim)
        if o.gnn not in GNN_KINDS:
            raise ValueError(f"gnn must be one of {GNN_KINDS}, got {o.gnn!r}")
        if o.use_gnn:
            self.gnn = GCN(dim, o.gnn_layers) if o.gnn == "gcn" else GraphConv(dim, o.gnn_layers, o.gnn_aggr)
        else:
            self.gnn = None
        self.generator = generator
        self.graph_size, self.k, self.alpha, self.distributed = o.graph_size, o.k, o.alpha, o.distributed
        self.normalize = bool(o.normalize)

    @property
    def loss_kwargs(self) -> dict:
        """The loss options (with the noise generator), as keywords of :func:`gm_loss`."""
        return {**{k: v for k, v in asdict(self.options).items() if k in _LOSS_KEYS}, "generator": self.generator}

    @property
    def needs_maps(self) -> bool:
        return self.options.alpha < 1.0

    def forward(self, h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None) -> Tensor:
        o = self.options
        z_s, z_t = self.projector(h_s), self.projector(h_t)
        check_gm_inputs(z_s, z_t, o)
        maps = [y_s, y_t, pos_s, pos_t] if self.needs_maps and y_s is not None else [None] * 4
        (zs, zt, *maps), world, fraction = gm_graphs([z_s, z_t, *maps], o.graph_size, o.distributed)
        zs, zt = zs.float(), zt.float()
        es, et = knn_graph(zs.detach(), o.k), knn_graph(zt.detach(), o.k)
        if self.gnn is not None:
            zs, zt = self.gnn(zs, es), self.gnn(zt, et)
        if self.normalize:  # unit node embeddings: edge vectors become differences of unit vectors
            zs, zt = nn.functional.normalize(zs, dim=-1), nn.functional.normalize(zt, dim=-1)
        loss, _ = graph_matching_loss(zs, zt, *maps, es, et, options=o, generator=self.generator, world=world,
                                      fraction=fraction, stats=self.stats.record())  # fmt: skip
        return loss
