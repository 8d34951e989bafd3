"""The LVM-Med graph-matching loss: :func:`gm_loss` on the rows of two views, and :func:`graph_matching_loss` on graphs
already formed (what the head :class:`lvmmed_ext.heads.gm.LVMMedHead` calls after its message passing); their
options are one dataclass, :class:`GMOptions`.

Two views of a batch are cut into graphs of ``graph_size`` consecutive images; each view gets a kNN graph;
vertex affinities (α·global cosine + (1−α)·local region-aware cost) and edge affinities (cosine of edge
difference vectors, weighted by ``quad_weight``) define a QAP; its perturbed MAP matching is compared with the
identity by the Hamming loss; gradients come from IMLE (see :mod:`lvmmed_ext.imle`). Spec: LVMMED_SPEC §1–2, §7.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from . import ops, qap
from .diagnostics import affinity_margin, matching_accuracy, tie_shuffle, unshuffled_solve
from .distributed import all_gather_with_grad, rank, world_size
from .imle import imle
from .noise import NOISE_KINDS


@dataclass(frozen=True)
class GMOptions:
    """The options of the graph-matching loss, with their defaults (the keywords of :func:`gm_loss`; see its
    docstring for each): graphs of ``graph_size`` images with ``k`` kNN edges per node, vertex affinity weight
    ``alpha``, IMLE step ``lam``, perturbation ``noise``/``noise_scale``/``samples``/``edge_noise_scale``, edge
    weight ``quad_weight``, ``partial`` matchings, the ``solver`` method, the local-affinity selections
    ``top_loc``/``top_feat``, the ``margin`` of the noise-free ablation and the ``distributed`` gather."""

    graph_size: int = 16
    k: int = 5
    alpha: float = 0.8
    lam: float = 80.0
    noise: str = "gumbel"
    noise_scale: float = 0.1
    samples: int = 1
    quad_weight: float = 0.5
    partial: bool = False
    solver: str = "auto"
    top_loc: int = 20
    top_feat: int | None = None
    margin: float = 0.0
    distributed: bool = False
    edge_noise_scale: float | None = None


_warned_remainder = False


def _warn_remainder_once(B: int, graph_size: int) -> None:
    global _warned_remainder
    if not _warned_remainder:
        _warned_remainder = True
        warnings.warn(
            f"gm_loss: batch of {B} is not a multiple of graph_size={graph_size}; the last {B % graph_size} "
            "samples are ignored by the loss (warned once)",
            stacklevel=3,
        )


def check_gm_inputs(z_s: Tensor, z_t: Tensor, o: GMOptions) -> None:
    """``ValueError`` naming the argument for embeddings or options the loss cannot use."""
    graph_size, k, alpha, lam, noise, samples, quad_weight = (
        o.graph_size, o.k, o.alpha, o.lam, o.noise, o.samples, o.quad_weight
    )  # fmt: skip
    if z_s.dim() != 2 or z_t.dim() != 2:
        raise ValueError(f"z_s and z_t must be [B,F], got {list(z_s.shape)} and {list(z_t.shape)}")
    if z_s.shape != z_t.shape:
        raise ValueError(
            f"z_s and z_t (the two views) must have the same shape, got {list(z_s.shape)} and {list(z_t.shape)}"
        )
    if not (isinstance(graph_size, int) and graph_size >= 2):
        raise ValueError(f"graph_size must be an integer >= 2, got {graph_size}")
    if z_s.shape[0] < graph_size:
        raise ValueError(f"the batch must hold at least one graph: B={z_s.shape[0]} < graph_size={graph_size}")
    if not (isinstance(k, int) and 1 <= k <= graph_size - 1):
        raise ValueError(f"k must be in [1, graph_size-1] = [1, {graph_size - 1}], got {k}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be an integer >= 1, got {samples}")
    if not (math.isfinite(quad_weight) and quad_weight >= 0):
        raise ValueError(f"quad_weight must be a finite number >= 0, got {quad_weight}")
    for name, z in (("z_s", z_s), ("z_t", z_t)):
        if not bool(torch.isfinite(z.detach()).all()):
            raise ValueError(f"{name} contains NaN or Inf values (embeddings of shape {list(z.shape)})")


def own_graphs(tensors: list[Tensor | None], graph_size: int) -> tuple[list[Tensor | None], int, float]:
    """Under torch.distributed: gather the per-rank batches (dim 0; equal sizes, gradients routed back to their
    owners), cut the global batch into graphs and keep this rank's share (graphs r, r+W, ...).

    Returns the kept rows per tensor, the world size W and the fraction of all graphs this rank holds. Without an
    initialised process group (or with a single rank): the inputs, 1 and 1.0."""
    world, me = world_size(), rank()
    if world == 1:
        return tensors, 1, 1.0
    ref = next(t for t in tensors if t is not None)
    sizes = [torch.zeros(1, dtype=torch.int64, device=ref.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([ref.shape[0]], device=ref.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"gather across ranks needs equal per-rank batch sizes, got {[int(s) for s in sizes]}")
    full = [None if t is None else all_gather_with_grad(t) for t in tensors]
    G = ref.shape[0] * world // graph_size
    if G < world:  # every rank sees the same G, so all of them raise together
        raise ValueError(
            f"the global batch of {ref.shape[0] * world} holds {G} graphs of {graph_size}, fewer than the "
            f"{world} ranks: each rank needs at least one graph"
        )
    mine = list(range(me, G, world))
    rows = torch.cat([torch.arange(g * graph_size, (g + 1) * graph_size) for g in mine]).to(ref.device)
    kept = [None if t is None else t.index_select(0, rows) for t in full]
    return kept, world, len(mine) / G


@torch.compiler.disable
def gm_loss(
    z_s: Tensor,
    z_t: Tensor,
    *,
    y_s: Tensor | None = None,
    y_t: Tensor | None = None,
    pos_s: Tensor | None = None,
    pos_t: Tensor | None = None,
    graph_size: int = GMOptions.graph_size,
    k: int = GMOptions.k,
    alpha: float = GMOptions.alpha,
    lam: float = GMOptions.lam,
    noise: str = GMOptions.noise,
    noise_scale: float = GMOptions.noise_scale,
    samples: int = GMOptions.samples,
    quad_weight: float = GMOptions.quad_weight,
    partial: bool = GMOptions.partial,
    solver: str = GMOptions.solver,
    generator: torch.Generator | None = None,
    return_matching: bool = False,
    edges_s: Tensor | None = None,
    edges_t: Tensor | None = None,
    top_loc: int = GMOptions.top_loc,
    top_feat: int | None = GMOptions.top_feat,
    margin: float = GMOptions.margin,
    distributed: bool = GMOptions.distributed,
    stats: dict | None = None,
    edge_noise_scale: float | None = GMOptions.edge_noise_scale,
):
    """LVM-Med second-order graph-matching loss with a perturb-and-MAP (IMLE) gradient.

    Args:
        z_s, z_t: ``[B,F]`` node embeddings of the two views (already through projector/GNN); row b of both views
            comes from the same image. Cut into ``B // graph_size`` graphs of consecutive rows (a remainder is
            ignored, with a one-time warning).
        y_s, y_t: optional ``[B,P,D]`` feature maps for the local (region-aware) affinity; read only if alpha < 1.
        pos_s, pos_t: optional ``[B,P,2]`` cell centres in original-image coordinates (location matches).
        graph_size: nodes per graph N (paper: 16). k: kNN neighbours per node, 1 <= k < graph_size (paper: 5).
        alpha: weight of the global cosine affinity vs the local one (paper: 0.8; 1 disables the local term).
        lam: IMLE step λ > 0 (paper: 80). noise, noise_scale, samples: perturbation (``lvmmed_ext.noise``). The
            default scale is 0.1, not the paper's 1: the affinities are cosines in [-1, 1], and Gumbel(0, 1) noise
            matches even perfect embeddings at little better than chance (docs/STUDY.md; the authors' code used
            0.05).
        quad_weight: weight of the edge affinities in the QAP (LVM-Med code: 0.5); 0 drops the second-order term
            and the problem becomes a linear assignment (the paper's "w/o second-order" ablation).
        partial: LPMP semantics (rows/columns may stay unmatched; affinities are offset by −0.5 so that a pair
            below 0.5 is better left unmatched). Default: permutations, no offset (the paper).
        solver: ``method`` of :func:`lvmmed_ext.solve_qap` ("auto" picks the fast default).
        generator: a ``torch.Generator`` on the embeddings' device, for reproducible noise.
        return_matching: also return the ``[G,N,N]`` matching (mean over samples).
        edges_s, edges_t: optional int64 ``[G, N*k, 2]`` kNN edges to use instead of computing them from z
            (LVMMedHead passes the graphs its GCN ran on).
        top_loc, top_feat: selection sizes of the local affinity (``lvmmed_ext.local_affinity``).
        margin: subtract this from the ground-truth (diagonal) affinities before solving: the "w/o Gumbel"
            ablation's margin (use with noise="none").
        distributed: under ``torch.distributed``, gather both views from all ranks so graphs span the global
            batch; each rank solves its share of graphs and gradients reach each rank's own rows.
        edge_noise_scale: scale of the noise on the edge-pair scores. None (default): ``noise_scale * quad_weight``,
            i.e. the edge affinities are perturbed like the vertex affinities and then weighted, so the noise keeps
            its proportion to the signal at any ``quad_weight``. The earlier behaviour, noise of the full
            ``noise_scale`` on the weighted scores, is ``edge_noise_scale=noise_scale`` (docs/STUDY.md).
        stats: optional dict that receives the training diagnostics of :mod:`lvmmed_ext.diagnostics`:
            ``match_acc`` (fraction of nodes the noise-free solve matches to their own other view), ``margin``
            (mean diagonal minus best off-diagonal vertex affinity) and, after ``backward``, ``grad_nodes``
            (fraction of nodes that carried gradient). Costs one extra noise-free solve.

    Returns:
        Scalar loss: Hamming distance between the matching and the identity, summed per graph, mean over graphs
        (and ``(loss, X)`` with ``return_matching``).

    Example:
        >>> z = torch.randn(32, 128)
        >>> loss = gm_loss(z + 0.1 * torch.randn_like(z), z + 0.1 * torch.randn_like(z))  # 2 graphs of 16
    """
    o = GMOptions(
        graph_size=graph_size, k=k, alpha=alpha, lam=lam, noise=noise, noise_scale=noise_scale, samples=samples,
        quad_weight=quad_weight, partial=partial, solver=solver, top_loc=top_loc, top_feat=top_feat, margin=margin,
        distributed=distributed, edge_noise_scale=edge_noise_scale,
    )  # fmt: skip
    check_gm_inputs(z_s, z_t, o)
    use_local = alpha < 1.0 and y_s is not None and y_t is not None
    maps = [y_s, y_t, pos_s, pos_t] if use_local else [None] * 4
    (zs, zt, *maps), world, fraction = gm_graphs([z_s, z_t, *maps], graph_size, distributed)
    loss, X = graph_matching_loss(zs.float(), zt.float(), *maps, edges_s, edges_t, options=o, generator=generator,
                                  world=world, fraction=fraction, stats=stats)  # fmt: skip
    return (loss, X) if return_matching else loss


def gm_graphs(tensors: list[Tensor | None], n: int, distributed: bool):
    """Rows -> graphs of n consecutive rows (``[B,...]`` -> ``[G,n,...]``), after the all-rank gather when
    ``distributed`` (:func:`own_graphs`); a remainder is dropped with a one-time warning. Returns (graphs, world,
    fraction)."""
    world, fraction = 1, 1.0
    if distributed:
        tensors, world, fraction = own_graphs(tensors, n)
    B = tensors[0].shape[0]
    if B % n:
        _warn_remainder_once(B, n)
    G = B // n
    return [None if t is None else t[: G * n].reshape(G, n, *t.shape[1:]) for t in tensors], world, fraction


@torch.compiler.disable
def graph_matching_loss(
    zs: Tensor,
    zt: Tensor,
    ys: Tensor | None = None,
    yt: Tensor | None = None,
    ps: Tensor | None = None,
    pt: Tensor | None = None,
    edges_s: Tensor | None = None,
    edges_t: Tensor | None = None,
    *,
    options: GMOptions = GMOptions(),
    generator: torch.Generator | None = None,
    world: int = 1,
    fraction: float = 1.0,
    stats: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """The graph-matching loss on graphs already formed: node embeddings ``zs, zt [G,n,F]`` (float32), optional maps
    ``ys, yt [G,n,P,D]`` with cell positions ``ps, pt [G,n,P,2]`` (used when ``options.alpha < 1``), optional kNN
    edges ``[G,n*k,2]`` (computed from the embeddings when None). Returns the loss and the matching ``[G,n,n]``.

    With W ranks each holding a fraction of the graphs (``world``, ``fraction`` from :func:`gm_graphs`), the rank's
    loss is W·fraction·(mean over its graphs), so the ranks' losses average to the global mean, and IMLE runs with
    λ/W: its target step equals the single-process one on the global batch and its gradient is W times the global
    one, which DDP's averaging over ranks brings back. ``stats`` (a dict or None) receives the diagnostics of
    :mod:`lvmmed_ext.diagnostics` (``grad_nodes`` once the backward has run)."""
    o = options
    k, alpha, noise, noise_scale, samples, quad_weight, partial, solver, margin = (
        o.k, o.alpha, o.noise, o.noise_scale, o.samples, o.quad_weight, o.partial, o.solver, o.margin
    )  # fmt: skip
    edge_noise_scale = o.edge_noise_scale
    if edge_noise_scale is not None and not (math.isfinite(edge_noise_scale) and edge_noise_scale >= 0):
        raise ValueError(f"edge_noise_scale must be None or a finite number >= 0, got {edge_noise_scale}")
    n = zs.shape[1]
    if edges_s is None:
        edges_s = ops.knn_graph(zs.detach(), k)
    if edges_t is None:
        edges_t = ops.knn_graph(zt.detach(), k)
    if ys is not None:
        unary = ops.vertex_affinity(zs, zt, ys, yt, ps, pt, alpha=alpha, top_loc=o.top_loc, top_feat=o.top_feat)
    else:
        unary = ops.global_affinity(zs, zt)
    eye = torch.eye(n, device=zs.device, dtype=unary.dtype)
    if partial:
        unary = unary - 0.5
    quad = None
    if quad_weight > 0:
        quad = ops.edge_affinity(zs, edges_s, zt, edges_t)
        quad = quad_weight * ((quad - 0.5) if partial else quad)
    with_quad = quad is not None
    if stats is not None:
        stats.update(_noise_free_stats(unary, quad, edges_s, edges_t, partial=partial, solver=solver))
    # Without noise and without a positive margin, exact ties (a collapsed embedding: every affinity equal) would
    # be broken towards the identity by the solvers' lower-index rule, i.e. collapse would cost nothing.
    deterministic = noise == "none" or noise_scale == 0
    if deterministic and margin <= 0:
        solve = _tie_safe_solver(
            edges_s if with_quad else None, edges_t if with_quad else None, samples, partial, solver
        )
    else:
        solve = "qap" if with_quad else "lap"
    X = imle(
        unary - margin * eye if margin else unary,
        quad,
        edges_s if with_quad else None,
        edges_t if with_quad else None,
        solver=solve,
        lam=o.lam / world,
        noise=noise,
        noise_scale=noise_scale,
        samples=samples,
        generator=generator,
        partial=partial,
        stats=stats,
        quad_noise_scale=(noise_scale * quad_weight if edge_noise_scale is None else edge_noise_scale),
        **({"method": solver} if with_quad else {}),
    )
    hamming = (X * (1.0 - 2.0 * eye)).sum((1, 2)) + n  # Σ X(1−I) + I(1−X) per graph
    return hamming.mean() * (world * fraction), X


def _tie_safe_solver(edges_s, edges_t, samples: int, partial: bool, method: str):
    """A solver for :func:`imle` (``solve(unary, quad, init)``) that solves with the columns in the fixed shuffled
    order of :func:`lvmmed_ext.diagnostics.unshuffled_solve`, so exact ties never favour the identity."""
    es = None if edges_s is None else edges_s.repeat(samples, 1, 1)
    et = None if edges_t is None else edges_t.repeat(samples, 1, 1)

    def solve(u, q, init):
        if q is None:
            return unshuffled_solve(lambda s, _: qap.linear_assignment(s, maximize=True, partial=partial), u)
        start = None if init is None else init.index_select(-1, tie_shuffle(u.shape[-1], u.device))
        return unshuffled_solve(
            lambda s, label: qap.solve_qap(s, q, es, label[et], partial=partial, method=method, init=start), u
        )

    return solve


@torch.no_grad()
def _noise_free_stats(unary, quad, edges_s, edges_t, *, partial, solver) -> dict[str, float]:
    """``match_acc`` of the unperturbed problem's solution (no noise, no margin; the same QAP or LAP the loss
    solves) and the vertex-affinity ``margin`` (see :mod:`lvmmed_ext.diagnostics`)."""
    u = unary.detach().float()
    if quad is None:
        X = unshuffled_solve(lambda s, _: qap.linear_assignment(s, maximize=True, partial=partial), u)
    else:
        q = quad.detach().float()
        X = unshuffled_solve(
            lambda s, label: qap.solve_qap(s, q, edges_s, label[edges_t], partial=partial, method=solver), u
        )
    return {"match_acc": float(matching_accuracy(X)), "margin": float(affinity_margin(u))}
