"""Affinity ops vs their best pure-PyTorch peers, forward and forward+backward."""

from __future__ import annotations

from functools import partial

import torch

from ... import global_affinity, reference
from ..report import row


def _cosine_peer(z_s, z_t):
    return torch.nn.functional.normalize(z_s, dim=-1) @ torch.nn.functional.normalize(z_t, dim=-1).transpose(1, 2)


def _fwd(fn, *args):
    with torch.no_grad():
        return fn(*args)


def _fwd_bwd(fn, *args):
    return torch.autograd.grad(fn(*args).sum(), [a for a in args if a.requires_grad])


def run(ctx) -> list[dict]:
    rows = []
    shapes = [(12, 16, 128)] if ctx.quick else [(12, 16, 128), (64, 32, 128), (4, 256, 256)]
    for G, N, F in shapes:
        gen = torch.Generator(device="cpu").manual_seed(G * 1000 + N)
        z_s = torch.randn(G, N, F, generator=gen).to(ctx.device).requires_grad_()
        z_t = torch.randn(G, N, F, generator=gen).to(ctx.device).requires_grad_()
        ctx.check("global_affinity", global_affinity(z_s, z_t), reference.global_affinity(z_s, z_t), 1e-5, 1e-4)
        for mode, runner, flop_mult in (("fwd", _fwd, 2), ("fwd+bwd", _fwd_bwd, 6)):
            case = f"global_affinity G={G} N={N} F={F} {mode}"
            t_ours = ctx.time(case + " lvmmed", partial(runner, global_affinity, z_s, z_t))
            t_peer = ctx.time(case + " torch", partial(runner, _cosine_peer, z_s, z_t))
            flops = flop_mult * G * N * N * F
            params = {"G": G, "N": N, "F": F, "mode": mode}
            rows.append(
                row(
                    "affinity",
                    case,
                    "lvmmed",
                    t_ours,
                    gate=True,
                    params=params,
                    graphs_per_s=G / t_ours,
                    gflop_per_s=flops / t_ours / 1e9,
                    peak_fraction=ctx.peak_fraction(flops, t_ours),
                    speedup={"torch": t_peer / t_ours},
                )
            )
            rows.append(
                row(
                    "affinity",
                    case,
                    "torch",
                    t_peer,
                    gate=False,
                    params=params,
                    graphs_per_s=G / t_peer,
                    gflop_per_s=flops / t_peer / 1e9,
                )
            )
    return rows
