"""Batched graph matching: the QAP solver ``solve_qap``, its objective ``qap_objective`` and the exact
``linear_assignment``, with their fake kernels and autograd.

Problem (per graph ``g``): maximise over assignments ``X`` (0/1, ``[N, M]``)

    f(X) = sum_ia unary[i,a] X[i,a]
         + sum_{p=(i,j) in edges_s, q=(a,b) in edges_t} quad[p,q] X[i,a] X[j,b]      (sparse edge term)
         + sum_{i,j,a,b} A[i,j] B[a,b] X[i,a] X[j,b]                                  (dense Koopmans-Beckmann term)

``partial=False``: every row is matched to a distinct column (``N <= M``); ``partial=True``: rows and columns are
matched at most once and an unmatched row contributes nothing (LPMP's "no assignment" semantics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import (
    _C,  # noqa: F401  (loads the operators)
    reference,
)

_lib = torch.ops.lvmmed

#: Methods of :func:`solve_qap` (``"auto"`` picks ``"ls"`` for ``max(N, M) <= 64``, ``"ga"`` above, ``"its"`` when
#: given a ``time_limit``).
METHODS = ("auto", "ls", "ils", "its", "ga", "faq", "sm", "rrwm", "ipfp", "lap", "bruteforce")
#: The search methods: the ones that take a ``time_limit``.
SEARCH_METHODS = ("ls", "ils", "its")
_AUTO_LS_MAX = 64
_BRUTEFORCE_MAX = 5_000_000  # assignments enumerated by method="bruteforce"


def linear_assignment(score: Tensor, *, maximize: bool = True, partial: bool = False) -> Tensor:
    """Exact batched linear assignment (the Hungarian method with shortest augmenting paths).

    Args:
        score: ``[G, N, M]`` floating scores (finite).
        maximize: maximise the total score of the matched pairs (False: minimise).
        partial: False matches ``min(N, M)`` pairs -- every row when ``N <= M``, every column otherwise (as
            ``scipy.optimize.linear_sum_assignment``); True matches any number of pairs, a pair only being taken
            when it beats leaving its row and column unmatched at score 0.

    Returns:
        ``X [G, N, M]``, 0/1 in the dtype of ``score``: ``X[g, i, a] = 1`` when row ``i`` is matched to column ``a``.
        Ties are broken deterministically (the same answer on every run and thread count).

    Devices: CPU (one thread per graph, graphs across torch's threads) and CUDA (one thread block per graph, the
    column scans of each shortest-path step parallel across its threads). float16/bfloat16 are solved in float32.

    Example:
        >>> import torch, lvmmed_ext
        >>> lvmmed_ext.linear_assignment(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]]))
        tensor([[[1., 0.],
                 [0., 1.]]])
    """
    return _lib.linear_assignment.default(score, maximize, partial)


def solve_qap(
    unary: Tensor,
    quad: Tensor | None = None,
    edges_s: Tensor | None = None,
    edges_t: Tensor | None = None,
    *,
    A: Tensor | None = None,
    B: Tensor | None = None,
    partial: bool = False,
    method: str = "auto",
    max_iter: int | None = None,
    time_limit: float | None = None,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Approximately maximise the QAP objective (see :func:`qap_objective`) of a batch of graphs.

    Args:
        unary: ``[G, N, M]`` node affinities.
        quad: ``[G, Es, Et]`` affinities of the edge pairs of ``edges_s`` x ``edges_t`` (dense per graph, e.g.
            80 x 80 for LVM-Med's N=16, k=5), with ``edges_s [G, Es, 2]`` and ``edges_t [G, Et, 2]`` int64 node
            pairs ``(i, j)`` / ``(a, b)`` (as produced by a kNN graph). All three or none; ``Es`` or ``Et`` may be 0.
            A pair of self loops acts as a unary term; duplicate edges add up.
        A, B: ``[G, N, N]`` and ``[G, M, M]`` dense Koopmans-Beckmann matrices (both or none).
        partial: False: every row matched (needs ``N <= M``); True: row/column sums <= 1, unmatched rows score 0.
        method: ``"auto"`` (``"ls"`` when ``max(N, M) <= 64``, else ``"ga"``; ``"its"`` with a ``time_limit``), or

            ========== ===========================================================================================
            ``ls``     multi-start local search: LAP on the unary, softassign starts, warm start; each polished by
                       best-improvement swaps / moves with exact O(deg) gains; then tabu search. ``max_iter``: tabu
                       moves (default ``1.5 max(N, 8)``). Deterministic and permutation-equivariant (up to ties).
            ``ils``    ``ls`` + ``max(N, 8)`` random-kick restarts (seeded by ``generator``).
            ``its``    the anytime search: ``ls``'s starts, then iterated tabu search until ``max_iter`` tabu moves
                       in all (default ``100 max(N, 8)``; with a ``time_limit`` and no ``max_iter``: until the time
                       limit). On dense Koopmans-Beckmann problems (``A``/``B``, no edges, ``N = M``, not
                       ``partial``; e.g. QAPLIB) a memetic robust tabu search on the O(N^2)-per-move table of all
                       swap gains: phases of robust tabu search (random tenures around N, aspiration) from the best
                       start, random starts, then crossovers of a population of 8; when ``A`` or ``B`` has at most
                       4N nonzeros off the diagonal (e.g. QAPLIB's tree-shaped ``chr`` flows) an iterated local
                       search on the same table instead: short tabu phases, each from the best of the current run
                       after random swaps (more the longer the run fails), new runs from crossovers. Otherwise
                       phases of ``ls``'s tabu search from kicked best assignments. Random choices seeded by
                       ``generator``.
            ``ga``     softassign (graduated assignment) -> Frank-Wolfe warm-started from it -> LAP -> local-search
                       polish; batched products, for large or dense (``A``/``B``) problems. ``max_iter``: annealing
                       steps (default 30).
            ``faq``    Frank-Wolfe on the doubly stochastic relaxation (FAQ) from the barycentre (or ``init``),
                       then a LAP. ``max_iter``: iterations (default 30).
            ``sm``     spectral matching (power iteration on the Lawler matrix K), then a LAP.
            ``rrwm``   reweighted random walks (alpha 0.2, beta 30, 20 Sinkhorn iterations), then a LAP.
            ``ipfp``   integer projected fixed point (LAP direction + exact line search), best discrete iterate.
            ``lap``    the linear assignment of ``unary`` alone (the quadratic terms are ignored).
            ``bruteforce`` exact enumeration in float64 (tiny problems only: at most 5e6 assignments).
            ========== ===========================================================================================

            ``sm``, ``rrwm`` and ``ipfp`` follow pygmtools' definitions (K with the unary on its diagonal, x0 =
            1/(N M), at most ``max_iter`` = 50 iterations) but never build the dense ``(N M)^2`` matrix K.
        max_iter: the iteration budget of the method (see above); None for its default. For a given ``max_iter``
            the search methods give the same answer on every run and thread count.
        time_limit: seconds per graph for the search methods (``ls``, ``ils``, ``its``; on CUDA per thread block,
            from when it starts the graph): the search stops once they are spent (the clock is read every 16
            moves; the answer is at least the first start's descent, as far as it got). The answer then depends on
            the machine's speed and load; use ``max_iter`` for reproducible answers. None (default): no limit.
        init: ``[G, N, M]`` warm start: a valid 0/1 (partial) assignment is used as is, anything else (a soft
            matrix) is rounded by a LAP (``partial``: maximising the sum of ``init - 0.5``). Used by ``ls``/``ils``
            as an extra start, by ``ga``/``faq`` as the starting point.
        generator: seeds the random kicks of ``ils`` and ``its`` (the other methods are deterministic and ignore it).

    Returns:
        ``X [G, N, M]``, 0/1 in the dtype of ``unary`` (never requires grad). The same input and generator give
        the same output, on any thread count.

    Raises ValueError for malformed input: NaN/Inf costs, edge indices out of range or of the wrong shape,
    ``N > M`` with ``partial=False``, an unknown method, a ``time_limit`` that is not a positive number or is given
    to a method that is not a search method. ``G = 0`` or ``N = 0`` give an empty/unmatched result.

    Devices and dtypes: CPU and CUDA; float32/float64 (float16/bfloat16 solved in float32).

    Example:
        >>> import torch, lvmmed_ext
        >>> from lvmmed_ext.problems import lvmmed_problem
        >>> p = lvmmed_problem(8, 16, noise=1.0, generator=torch.Generator().manual_seed(0))
        >>> X = lvmmed_ext.solve_qap(p.unary, p.quad, p.edges_s, p.edges_t)
        >>> X.shape, bool((X.sum(2) == 1).all()), bool((X.argmax(2) == p.planted).all())
        (torch.Size([8, 16, 16]), True, True)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}, got {method!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0):
        raise ValueError(f"max_iter must be None or an int >= 0, got {max_iter!r}")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))):
        raise ValueError(f"time_limit must be None or a number of seconds > 0, got {time_limit!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be None or a number of seconds > 0, got {time_limit!r}")
    N, M = (unary.shape[1], unary.shape[2]) if unary.dim() == 3 else (0, 0)
    if method == "auto":
        method = "its" if time_limit is not None else ("ls" if max(N, M) <= _AUTO_LS_MAX else "ga")
    if time_limit is not None and method not in SEARCH_METHODS:
        raise ValueError(
            f"time_limit applies to the search methods {', '.join(repr(m) for m in SEARCH_METHODS)}, "
            f"not to method={method!r}"
        )
    if method == "bruteforce":
        return _bruteforce(unary, quad, edges_s, edges_t, A, B, partial)
    seed = 0
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())

    def det(t):
        return None if t is None else t.detach()

    return _lib.solve_qap.default(
        unary.detach(),
        det(quad),
        det(edges_s),
        det(edges_t),
        det(A),
        det(B),
        det(init),
        partial,
        method,
        -1 if max_iter is None else max_iter,
        -1.0 if time_limit is None else float(time_limit),
        seed,
    )


def _bruteforce(unary, quad, edges_s, edges_t, A, B, partial) -> Tensor:
    # shapes, dtypes and edge indices are validated by the compiled objective (the same errors as solve_qap)
    _lib.qap_objective.default(unary.new_zeros(unary.shape), unary, quad, edges_s, edges_t, A, B)
    for name, t in (("unary", unary), ("quad", quad), ("A", A), ("B", B)):
        if t is not None and not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf values")
    G, N, M = unary.shape
    if not partial and N > M:
        raise ValueError(f"partial=False matches every row, so it needs N <= M, got N = {N} > M = {M}")
    count = reference.assignment_count(N, M, partial)
    if count > _BRUTEFORCE_MAX:
        raise ValueError(
            f"method='bruteforce' enumerates {count} assignments for N={N}, M={M}, partial={partial}; "
            f"at most {_BRUTEFORCE_MAX} are allowed"
        )
    X = reference.qap_bruteforce(unary, quad, edges_s, edges_t, A=A, B=B, partial=partial)
    return X.to(unary.dtype)


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
    """The QAP objective of ``X`` (0/1 or any real matrix) for each graph.

    ``f[g] = sum unary * X + sum_{p=(i,j), q=(a,b)} quad[p,q] X[i,a] X[j,b] + sum A[i,j] B[a,b] X[i,a] X[j,b]``,
    the objective :func:`solve_qap` maximises (inputs as there; ``X [G, N, M]`` like ``unary``).

    Returns:
        ``[G]`` in the dtype of ``unary`` (float16/bfloat16 computed in float32): the unary and edge terms are
        accumulated in float64, the dense ``A``/``B`` term by batched matrix products in the compute dtype.
        Differentiable in ``X``, ``unary``, ``quad``, ``A`` and ``B`` (not in the edge indices); the gradient is a
        separate op (``qap_objective_backward``). NaN/Inf in the inputs propagate. CPU and CUDA.

    Example:
        >>> import torch, lvmmed_ext
        >>> from lvmmed_ext.problems import lvmmed_problem
        >>> p = lvmmed_problem(2, 8, k=3, generator=torch.Generator().manual_seed(0))
        >>> f = lvmmed_ext.qap_objective(p.planted_matrix, **p.inputs())
        >>> f.shape
        torch.Size([2])
    """
    return _lib.qap_objective.default(X, unary, quad, edges_s, edges_t, A, B)


# ---------------------------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("lvmmed::linear_assignment")
def _linear_assignment_fake(score: Tensor, maximize: bool, partial: bool) -> Tensor:
    torch._check(score.dim() == 3, lambda: "score must be [G,N,M]")
    return score.new_empty(score.shape)


@torch.library.register_fake("lvmmed::solve_qap")
def _solve_qap_fake(unary, quad, edges_s, edges_t, A, B, init, partial, method, max_iter, time_limit, seed) -> Tensor:
    torch._check(unary.dim() == 3, lambda: "unary must be [G,N,M]")
    return unary.new_empty(unary.shape)


@torch.library.register_fake("lvmmed::qap_objective")
def _qap_objective_fake(X, unary, quad, edges_s, edges_t, A, B) -> Tensor:
    torch._check(unary.dim() == 3, lambda: "unary must be [G,N,M]")
    return unary.new_empty((unary.shape[0],))


def _grad_shapes(unary, quad, A, B):
    has_edges = quad is not None and quad.dim() == 3 and quad.shape[1] > 0 and quad.shape[2] > 0
    return (
        tuple(unary.shape),
        tuple(unary.shape),
        tuple(quad.shape) if has_edges else (0,),
        tuple(A.shape) if A is not None else (0,),
        tuple(B.shape) if B is not None else (0,),
    )


@torch.library.register_fake("lvmmed::qap_objective_backward")
def _qap_objective_backward_fake(grad, X, unary, quad, edges_s, edges_t, A, B):
    return [unary.new_empty(s) for s in _grad_shapes(unary, quad, A, B)]


def _qap_objective_setup(ctx, inputs, output) -> None:
    X, unary, quad, edges_s, edges_t, A, B = inputs
    ctx.has = (quad is not None, A is not None)
    ctx.save_for_backward(X, unary, quad, edges_s, edges_t, A, B)


def _qap_objective_grad(ctx, grad: Tensor):
    X, unary, quad, edges_s, edges_t, A, B = ctx.saved_tensors
    gX, gU, gQ, gA, gB = _lib.qap_objective_backward.default(grad.contiguous(), X, unary, quad, edges_s, edges_t, A, B)
    if quad is not None and gQ.numel() == 0 and quad.numel() > 0:
        gQ = torch.zeros_like(quad)
    if quad is not None and gQ.shape != quad.shape:
        gQ = gQ.reshape(quad.shape)
    return (
        gX,
        gU,
        gQ if quad is not None else None,
        None,
        None,
        gA if A is not None else None,
        gB if B is not None else None,
    )


torch.library.register_autograd("lvmmed::qap_objective", _qap_objective_grad, setup_context=_qap_objective_setup)
