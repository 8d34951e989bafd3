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


# ------------------------------------------------------------------------------------------------ local affinity
def local_affinity(
    y_s: Tensor,
    y_t: Tensor,
    pos_s: Tensor | None = None,
    pos_t: Tensor | None = None,
    *,
    top_loc: int = 20,
    top_feat: int | None = None,
) -> Tensor:
    """Region-aware ("local") affinity between the feature maps of the nodes of two batches of graphs.

    For the pair (node ``i`` of graph ``g`` in view s, node ``a`` in view t), with cells ``q_p = y_s[g, i, p]`` and
    ``q'_p' = y_t[g, a, p']``::

        feat(i->a) = mean over the top_feat cells p with the smallest ||q_p - q'_m'(p)|| of cos(q_p, q'_m'(p)),
                     m'(p) = argmin_p' ||q_p - q'_p'||                   (feature nearest neighbour)
        loc(i->a)  = mean over the top_loc cells p with the smallest ||pos_s[p] - pos_t[m(p)]|| of cos(q_p, q'_m(p)),
                     m(p) = argmin_p' ||pos_s[g, i, p] - pos_t[g, a, p']||   (location nearest neighbour)
        l(i->a)    = (loc + feat) / 2 with positions, feat without
        out[g, i, a] = (l(i->a) + l(a->i)) / 2          # a->i: the same with the roles of the maps swapped

    (LVM-Med's region-aware cost in its bounded form, spec section 7.1.) The nearest-neighbour and top-k indices
    are constants for autograd; the gradient flows into the selected vectors only.

    Args:
        y_s: ``[G, N, P, D]`` feature maps of the source nodes (``P`` cells of ``D`` channels each, e.g. a
            ResNet-50 layer-4 map: ``P = 7*7``, ``D = 2048``).
        y_t: ``[G, M, Q, D]`` feature maps of the target nodes (same device and dtype; ``Q`` may differ from ``P``).
        pos_s: optional ``[G, N, P, 2]`` position of every cell of ``y_s`` (e.g. cell centres in original-image
            pixels); any floating dtype, same device. Give both positions or neither.
        pos_t: optional ``[G, M, Q, 2]``.
        top_loc: cells kept by the location term, ``>= 1``; clamped to ``P`` (direction i->a) and ``Q`` (a->i).
            Ignored without positions.
        top_feat: cells kept by the feature term, ``>= 1``, clamped likewise; ``None`` keeps all.

    Returns:
        ``[G, N, M]`` in the dtype of ``y_s``, values in ``[-1, 1]``.

    Conventions: equal distances (in the argmins and in the top-k selections) go to the lower index. Feature
    distances are ``||q||^2 + ||q'||^2 - 2<q, q'>`` from the Gram matrix in the accumulation precision, so candidates
    closer than its rounding error may be ordered differently than by an exact computation; location distances are
    computed in float64. A zero vector has cosine 0 with everything (no NaN) and is a valid neighbour.
    NaN/Inf in ``y_s``, ``y_t`` or the positions (or a cell whose squared norm overflows) raise ``ValueError``:
    nearest neighbours are undefined there (on CUDA the check costs one device-to-host sync).

    Cost: one batched Gram product ``[N*P, D] x [D, M*Q]`` per graph (a library GEMM, in chunks of at most 2^24
    elements, never the whole ``G*N*M*P*Q`` tensor at once) plus O(P*Q) work per pair; memory ``O(G*N*M*(P+Q))`` for
    the saved match indices on top of the inputs. Backward: CPU gathers only the selected vectors; CUDA uses two
    dense GEMMs on tensor cores.

    Dtypes and devices: float32/float64 on CPU (float16/bfloat16 computed in float32); float32, float64, float16
    and bfloat16 on CUDA, with fp32 accumulation (fp64 for float64). Differentiable in ``y_s`` and ``y_t``.

    Example:
        >>> import torch, lvmmed_ext
        >>> y = torch.randn(2, 4, 49, 64)                    # 2 graphs, 4 nodes, 7x7 maps of 64 channels
        >>> grid = torch.stack(torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij"), -1)
        >>> pos = grid.reshape(1, 1, 49, 2).expand(2, 4, 49, 2)
        >>> out = lvmmed_ext.local_affinity(y, y + 0.1 * torch.randn_like(y), pos, pos, top_loc=20)
        >>> out.shape, bool((out.diagonal(dim1=1, dim2=2) > 0.9).all())
        (torch.Size([2, 4, 4]), True)
    """
    return _lib.local_affinity.default(y_s, y_t, pos_s, pos_t, top_loc, top_feat)[0]


@torch.library.register_fake("lvmmed::local_affinity")
def _local_affinity_fake(y_s, y_t, pos_s, pos_t, top_loc, top_feat):
    torch._check(y_s.dim() == 4 and y_t.dim() == 4, lambda: "y_s must be [G,N,P,D] and y_t [G,M,Q,D]")
    G, N, P, _ = y_s.shape
    M, Q = y_t.shape[1], y_t.shape[2]
    width = (1 if pos_s is None else 2) * (P + Q)
    return y_s.new_empty((G, N, M)), y_s.new_empty((G, N, M, width), dtype=torch.int32)


@torch.library.register_fake("lvmmed::local_affinity_backward")
def _local_affinity_backward_fake(grad, y_s, y_t, matches, with_positions, top_loc, top_feat):
    return torch.empty_like(y_s, memory_format=torch.contiguous_format), torch.empty_like(
        y_t, memory_format=torch.contiguous_format
    )


def _local_affinity_setup(ctx, inputs, output) -> None:
    y_s, y_t, pos_s, _, top_loc, top_feat = inputs
    ctx.save_for_backward(y_s, y_t, output[1])
    ctx.with_positions = pos_s is not None
    ctx.top_loc, ctx.top_feat = top_loc, top_feat


def _local_affinity_grad(ctx, grad: Tensor, _grad_matches):
    y_s, y_t, matches = ctx.saved_tensors
    grad_s, grad_t = _lib.local_affinity_backward.default(
        grad, y_s, y_t, matches, ctx.with_positions, ctx.top_loc, ctx.top_feat
    )
    return grad_s, grad_t, None, None, None, None


torch.library.register_autograd("lvmmed::local_affinity", _local_affinity_grad, setup_context=_local_affinity_setup)


# ------------------------------------------------------------------------------------------------ kNN graph
def knn_graph(z: Tensor, k: int) -> Tensor:
    """Directed k-nearest-neighbour graph of every point set of a batch (Euclidean, no self loops).

    Args:
        z: ``[G, N, F]`` node embeddings (float32/float64; float16/bfloat16 are compared in float32). Must be finite.
        k: neighbours per node, ``1 <= k <= N - 1``.

    Returns:
        ``int64 [G, N*k, 2]`` edges ``(i, j)`` on the device of ``z``: rows ``i*k .. i*k+k-1`` hold the ``k`` nearest
        ``j != i`` of node ``i``, nearest first; equal distances go to the lower index. Not symmetrised (mutual
        neighbours give both ``(i, j)`` and ``(j, i)``), so every graph has exactly ``N*k`` edges (LVM-Med spec 1.3).
        Squared distances are computed from explicit differences in the accumulation precision.

    Not differentiable (indices). Raises ``ValueError`` for ``k`` outside ``[1, N-1]`` or NaN/Inf in ``z``.
    On CUDA, ``N`` is at most 4096.

    Example:
        >>> import torch, lvmmed_ext
        >>> z = torch.tensor([[[0.0], [1.0], [3.0], [7.0]]])     # one graph of 4 points on a line
        >>> lvmmed_ext.knn_graph(z, 2)[0].tolist()
        [[0, 1], [0, 2], [1, 0], [1, 2], [2, 1], [2, 0], [3, 2], [3, 1]]
    """
    return _lib.knn_graph.default(z, k)


@torch.library.register_fake("lvmmed::knn_graph")
def _knn_graph_fake(z: Tensor, k: int) -> Tensor:
    torch._check(z.dim() == 3, lambda: "z must be [G,N,F]")
    return z.new_empty((z.shape[0], z.shape[1] * k, 2), dtype=torch.int64)


# ------------------------------------------------------------------------------------------------ edge affinity
def edge_affinity(z_s: Tensor, edges_s: Tensor, z_t: Tensor, edges_t: Tensor) -> Tensor:
    """Cosine affinity between the edges of two batches of graphs, an edge's vector being ``z[i] - z[j]``.

    Args:
        z_s: ``[G, N, F]`` node embeddings of the source graphs.
        edges_s: ``int64 [G, Es, 2]`` edges ``(i, j)`` of the source graphs, indices in ``[0, N)`` (e.g. from
            :func:`knn_graph`).
        z_t: ``[G, M, F]`` node embeddings of the target graphs (same device and dtype as ``z_s``).
        edges_t: ``int64 [G, Et, 2]``, indices in ``[0, M)``.

    Returns:
        ``[G, Es, Et]``, ``out[g, e, f] = cos(z_s[g, i] - z_s[g, j], z_t[g, a] - z_t[g, b])`` for ``e = (i, j)``,
        ``f = (a, b)``. A zero edge vector (self loop, duplicated nodes) has cosine 0 with everything; NaN/Inf in the
        embeddings propagate to the affected entries. Edge indices are validated (shape, dtype, device, range).

    Dtypes and devices: as :func:`global_affinity` (same kernels on the gathered edge vectors). Differentiable in
    ``z_s`` and ``z_t``; the gradient of an edge vector is scattered into both endpoints.

    Example:
        >>> import torch, lvmmed_ext
        >>> z = torch.randn(2, 16, 128)
        >>> e = lvmmed_ext.knn_graph(z, 5)                                # [2, 80, 2]
        >>> lvmmed_ext.edge_affinity(z, e, z, e).shape
        torch.Size([2, 80, 80])
    """
    return _lib.edge_affinity.default(z_s, edges_s, z_t, edges_t)


@torch.library.register_fake("lvmmed::edge_affinity")
def _edge_affinity_fake(z_s: Tensor, edges_s: Tensor, z_t: Tensor, edges_t: Tensor) -> Tensor:
    torch._check(edges_s.dim() == 3 and edges_t.dim() == 3, lambda: "edges_s and edges_t must be [G,E,2]")
    return z_s.new_empty((z_s.shape[0], edges_s.shape[1], edges_t.shape[1]))


@torch.library.register_fake("lvmmed::edge_affinity_backward")
def _edge_affinity_backward_fake(grad, z_s, edges_s, z_t, edges_t):
    return torch.empty_like(z_s, memory_format=torch.contiguous_format), torch.empty_like(
        z_t, memory_format=torch.contiguous_format
    )


def _edge_affinity_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _edge_affinity_grad(ctx, grad: Tensor):
    z_s, edges_s, z_t, edges_t = ctx.saved_tensors
    grad_s, grad_t = _lib.edge_affinity_backward.default(grad, z_s, edges_s, z_t, edges_t)
    return grad_s, None, grad_t, None


torch.library.register_autograd("lvmmed::edge_affinity", _edge_affinity_grad, setup_context=_edge_affinity_setup)


# ------------------------------------------------------------------------------------------------ vertex affinity
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
    """LVM-Med vertex affinity ``alpha * global_affinity(z_s, z_t) + (1 - alpha) * local_affinity(y_s, y_t, ...)``.

    Args:
        z_s: ``[G, N, F]`` node embeddings (post-GNN) of the source graphs; z_t: ``[G, M, F]``.
        y_s: optional ``[G, N, P, D]`` feature maps of the source nodes; y_t: ``[G, M, Q, D]`` (both or neither).
        pos_s, pos_t: optional cell positions ``[G, N, P, 2]`` / ``[G, M, Q, 2]``, see :func:`local_affinity`.
        alpha: weight of the global term, in ``[0, 1]`` (paper: 0.8).
        top_loc, top_feat: see :func:`local_affinity`.

    Returns:
        ``[G, N, M]`` in the dtype of ``z_s``. Without feature maps, or with ``alpha == 1``, it is exactly
        ``global_affinity(z_s, z_t)`` and the maps are not read; with ``alpha == 0`` only the local term is computed.
        Composed from the registered ops, so differentiable and ``torch.compile``-able like them.

    Example:
        >>> import torch, lvmmed_ext
        >>> z, y = torch.randn(2, 4, 128), torch.randn(2, 4, 9, 32)
        >>> lvmmed_ext.vertex_affinity(z, z, y, y, alpha=0.8).shape
        torch.Size([2, 4, 4])
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if (y_s is None) != (y_t is None):
        raise ValueError(
            f"y_s and y_t must both be given or both be None, got y_s {'None' if y_s is None else 'given'} and "
            f"y_t {'None' if y_t is None else 'given'}"
        )
    if y_s is None or alpha == 1.0:
        return global_affinity(z_s, z_t)
    for y, z, name, zname in ((y_s, z_s, "y_s", "z_s"), (y_t, z_t, "y_t", "z_t")):
        if y.dim() != 4 or z.dim() != 3 or y.shape[:2] != z.shape[:2]:
            raise ValueError(
                f"{name} [G,N,P,D] must have the graphs and nodes of {zname} [G,N,F], got {name} {list(y.shape)} and "
                f"{zname} {list(z.shape)}"
            )
    local = local_affinity(y_s, y_t, pos_s, pos_t, top_loc=top_loc, top_feat=top_feat)
    if alpha == 0.0:
        return local.to(z_s.dtype)
    return alpha * global_affinity(z_s, z_t) + (1.0 - alpha) * local.to(z_s.dtype)


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
