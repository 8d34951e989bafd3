"""Perturb-and-MAP gradients (IMLE) through a combinatorial solver, batched over graphs and samples.

Forward: X̃_s = MAP(θ + ε_s) for S noise samples ε_s (one batched solver call), returns the mean of the X̃_s.
Backward, given g = ∂L/∂X̄: the target problem θ + ε_s − λ·g is solved once more (same noise, one batched call,
warm-started from X̃_s), and ∂L/∂θ ≈ mean_s (X̃_s − X'_s)/λ. For a quadratic term the gradient is the same
difference of the edge-pair indicators X[i,a]·X[j,b]. With ``lam`` as in LVM-Med (80) and the noise of
``lvmmed_ext.noise``. Every sample's target uses the full g, so λ means the same for any number of samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import noise as _noise
from . import qap

# solve(unary [B,N,M], quad [B,Es,Et] or None, init [B,N,M] or None) -> X [B,N,M] in {0,1}
Solver = Callable[[Tensor, "Tensor | None", "Tensor | None"], Tensor]


def edge_pair_indicators(X: Tensor, edges_s: Tensor, edges_t: Tensor) -> Tensor:
    """``[G,N,M]`` matchings, ``[G,Es,2]``/``[G,Et,2]`` edges -> ``[G,Es,Et]`` with entry (p=(i,j), q=(a,b)) =
    X[i,a]·X[j,b]: whether the matching pays quadratic term (p, q)."""
    G, Es, Et, M = X.shape[0], edges_s.shape[1], edges_t.shape[1], X.shape[2]

    def pick(src_col: int, dst_col: int) -> Tensor:
        rows = X.gather(1, edges_s[:, :, src_col, None].expand(G, Es, M))  # [G,Es,M]
        return rows.gather(2, edges_t[:, None, :, dst_col].expand(G, Es, Et))  # [G,Es,Et]

    return pick(0, 0) * pick(1, 1)


class _PerturbAndMAP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary, quad, eps_v, eps_e, solve, pairs, lam, stats):
        S = eps_v.shape[0]
        work = eps_v.dtype  # float64 for float64 scores, else float32 (half-precision scores are upcast)
        theta = unary.detach().to(work).unsqueeze(0) + eps_v  # [S,G,N,M]
        q = None if quad is None else (quad.detach().to(work).unsqueeze(0) + eps_e).flatten(0, 1)
        X = solve(theta.flatten(0, 1), q, None).to(work).view_as(theta)
        ctx.save_for_backward(theta, X)
        ctx.q, ctx.solve, ctx.pairs, ctx.lam, ctx.S, ctx.stats = q, solve, pairs, lam, S, stats
        ctx.quad_dtype = None if quad is None else quad.dtype
        return X.mean(0).to(unary.dtype)

    @staticmethod
    def backward(ctx, grad):
        theta, X = ctx.saved_tensors
        lam = ctx.lam
        target = theta - lam * grad.to(theta.dtype).unsqueeze(0)
        X2 = ctx.solve(target.flatten(0, 1), ctx.q, X.flatten(0, 1)).to(theta.dtype).view_as(X)
        g_unary = ((X - X2).mean(0) / lam).to(grad.dtype)
        if ctx.stats is not None:  # rows where the two solves differ: the only ones with a gradient
            ctx.stats["grad_nodes"] = float((X != X2).any(-1).float().mean())
        g_quad = None
        if ctx.quad_dtype is not None and ctx.needs_input_grad[1]:
            diff = ctx.pairs(X.flatten(0, 1)) - ctx.pairs(X2.flatten(0, 1))
            g_quad = (diff.view(ctx.S, -1, *diff.shape[1:]).mean(0) / lam).to(ctx.quad_dtype)
        return g_unary, g_quad, None, None, None, None, None, None


def _builtin_solver(name: str, edges_s, edges_t, S: int, solver_kwargs: dict) -> Solver:
    if name not in ("lap", "qap"):
        raise ValueError(f"solver must be 'qap', 'lap' or a callable, got {name!r}")
    if name == "lap":

        def solve(u, q, init):
            return qap.linear_assignment(u, maximize=True, partial=solver_kwargs.get("partial", False))

        return solve
    es = None if edges_s is None else edges_s.repeat(S, 1, 1)
    et = None if edges_t is None else edges_t.repeat(S, 1, 1)

    def solve(u, q, init):
        return qap.solve_qap(u, q, es, et, init=init, **solver_kwargs)

    return solve


def imle(
    unary: Tensor,
    quad: Tensor | None = None,
    edges_s: Tensor | None = None,
    edges_t: Tensor | None = None,
    *,
    solver: str | Solver = "qap",
    lam: float = 80.0,
    noise: str = "gumbel",
    noise_scale: float = 1.0,
    samples: int = 1,
    generator: torch.Generator | None = None,
    stats: dict | None = None,
    quad_noise_scale: float | None = None,
    **solver_kwargs,
) -> Tensor:
    """Differentiable MAP matching by perturb-and-MAP with the IMLE gradient estimator.

    Args:
        unary: ``[G,N,M]`` scores to maximise (e.g. vertex affinities); gets a gradient.
        quad: optional ``[G,Es,Et]`` quadratic scores over the edge lists (QAP only); gets a gradient.
        edges_s, edges_t: int64 ``[G,Es,2]`` / ``[G,Et,2]`` edges (with ``quad``).
        solver: ``"qap"`` (:func:`lvmmed_ext.solve_qap`, forwarding ``solver_kwargs`` such as ``partial``,
            ``method``, ``max_iter``), ``"lap"`` (:func:`lvmmed_ext.linear_assignment`), or a callable
            ``solve(unary [B,N,M], quad [B,Es,Et] | None, init [B,N,M] | None) -> X [B,N,M]``.
        lam: λ > 0, the target step (LVM-Med: 80).
        noise, noise_scale: perturbation of both unary and quadratic scores (see :mod:`lvmmed_ext.noise`).
        quad_noise_scale: scale of the quadratic scores' noise when it differs from ``noise_scale`` (None: the same).
        samples: S >= 1 noise samples, solved in one batched call; the result is their mean.
        generator: a ``torch.Generator`` on the device of ``unary`` (reproducible noise).
        stats: optional dict; the backward sets ``stats["grad_nodes"]``, the fraction of rows (over samples and
            graphs) whose perturbed and target matchings differ, i.e. that carry gradient.

    Returns:
        ``[G,N,M]`` mean of the S sampled matchings (0/1 when S = 1), dtype of ``unary``.

    Example:
        >>> X = imle(scores.requires_grad_(), solver="lap")
        >>> (X * (1 - 2 * torch.eye(N))).sum().backward()   # Hamming loss to the identity
    """
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be an integer >= 1, got {samples}")
    if unary.dim() != 3:
        raise ValueError(f"unary must be [G,N,M], got shape {list(unary.shape)}")
    if quad is not None and (edges_s is None or edges_t is None):
        raise ValueError("quad needs edges_s and edges_t")
    S, dev = samples, unary.device
    work = torch.float64 if unary.dtype == torch.float64 else torch.float32
    draw = dict(scale=noise_scale, generator=generator, device=dev, dtype=work)
    eps_v = _noise.sample(noise, (S, *unary.shape), **draw)
    if quad is not None and quad_noise_scale is not None:
        draw_e = {**draw, "scale": quad_noise_scale}
    else:
        draw_e = draw
    eps_e = None if quad is None else _noise.sample(noise, (S, *quad.shape), **draw_e)
    solve = solver if callable(solver) else _builtin_solver(solver, edges_s, edges_t, S, solver_kwargs)

    def pairs(X):
        return edge_pair_indicators(X, edges_s.repeat(S, 1, 1), edges_t.repeat(S, 1, 1))

    return _PerturbAndMAP.apply(
        unary, quad, eps_v, eps_e, solve, pairs if quad is not None else None, float(lam), stats
    )
