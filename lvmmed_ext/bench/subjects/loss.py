"""gm_loss forward+backward vs the InfoNCE (SimCLR) loss on the same embeddings, at the paper's per-GPU shape
(200 images, graphs of 16, 7x7x2048 feature maps); gm_loss with and without the local term."""

from __future__ import annotations

import warnings
from functools import partial

import torch

from ...losses import gm_loss
from ...train.heads import info_nce
from ..report import row


def _inputs(B, F, P, D, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(B, F, generator=gen)
    y = torch.randn(B, P, D, generator=gen)
    side = int(round(P**0.5))
    grid = torch.stack(torch.meshgrid(torch.arange(side * 1.0), torch.arange(side * 1.0), indexing="ij"), -1)
    grid = 32.0 * grid.reshape(1, P, 2)
    out = {}
    for view in ("s", "t"):
        out[f"z_{view}"] = (z + 0.3 * torch.randn(B, F, generator=gen)).to(device).requires_grad_()
        out[f"y_{view}"] = (y + 0.3 * torch.randn(B, P, D, generator=gen)).to(device).requires_grad_()
        out[f"pos_{view}"] = (grid + 8.0 * torch.rand(B, 1, 2, generator=gen)).to(device)
    return out


def _gm_local(x, gen):
    return gm_loss(x["z_s"], x["z_t"], y_s=x["y_s"], y_t=x["y_t"], pos_s=x["pos_s"], pos_t=x["pos_t"], generator=gen)


def _gm_global(x, gen):
    return gm_loss(x["z_s"], x["z_t"], alpha=1.0, generator=gen)


def _infonce(x, gen):
    return info_nce(x["z_s"], x["z_t"], gather=False)


def _fwd_bwd(loss_fn, x, gen):
    leaves = [v for v in x.values() if v.requires_grad]
    return torch.autograd.grad(loss_fn(x, gen), leaves, allow_unused=True)


def run(ctx) -> list[dict]:
    warnings.filterwarnings("ignore", message="gm_loss: batch of")  # 200 = 12 graphs of 16 + 8 ignored, as in the paper
    B, F, P, D = (32, 128, 49, 64) if ctx.quick else (200, 128, 49, 2048)
    x = _inputs(B, F, P, D, ctx.device)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    loss, X = gm_loss(
        x["z_s"],
        x["z_t"],
        y_s=x["y_s"],
        y_t=x["y_t"],
        pos_s=x["pos_s"],
        pos_t=x["pos_t"],
        noise="none",
        return_matching=True,
    )
    n = X.shape[1]
    hamming = ((X * (1 - 2 * torch.eye(n, device=X.device))).sum((1, 2)) + n).mean()
    ctx.check("gm_loss", loss.detach(), hamming, 1e-6, 0)
    params = {"B": B, "F": F, "P": P, "D": D, "G": B // 16, "N": 16, "mode": "fwd+bwd"}
    times = {}
    for name, fn in (("gm_loss", _gm_local), ("gm_loss (alpha=1)", _gm_global), ("infonce", _infonce)):
        times[name] = ctx.time(f"loss {name} B={B}", partial(_fwd_bwd, fn, x, gen))
    rows = []
    for name, t in times.items():
        ours = name.startswith("gm_loss")
        metrics = {"graphs_per_s": params["G"] / t}
        if ours:
            metrics["overhead_vs_infonce"] = t / times["infonce"]
        case = f"loss B={B} N=16 maps {int(P**0.5)}x{int(P**0.5)}x{D} fwd+bwd"
        rows.append(row("loss", case, name, t, gate=ours, params=params, **metrics))
    return rows
