"""gm_loss forward+backward vs the InfoNCE (SimCLR) loss on the same embeddings, at the paper's per-GPU shape
(200 images, graphs of 16, 7x7x2048 feature maps); gm_loss with and without the local term."""

from __future__ import annotations

import warnings
from functools import partial

import torch

from ...heads import info_nce
from ...losses import gm_loss
from ..report import fmt_time, row
from ..timing import ratio


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
    B, F, P, D = (32, 128, 49, 64) if ctx.quick else (200, 128, 49, 2048)
    case = f"loss B={B} N=16 maps {int(P**0.5)}x{int(P**0.5)}x{D} fwd+bwd"
    if not ctx.selected(case):
        return []
    with warnings.catch_warnings():  # 200 = 12 graphs of 16 + 8 ignored, as in the paper
        warnings.filterwarnings("ignore", message="gm_loss: batch of")
        return _run(ctx, case, B, F, P, D)


def _run(ctx, case, B, F, P, D) -> list[dict]:
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
    ctx.log(f"loss: {case} (3 losses, interleaved)")
    fns = {name: partial(_fwd_bwd, fn, x, gen) for name, fn in LOSSES.items()}
    samples = ctx.interleave(case, fns)
    rows = []
    for name, s in samples.items():
        t = sorted(s)[len(s) // 2]
        ours = name.startswith("gm_loss")
        metrics = {"graphs_per_s": params["G"] / t, "images_per_s": B / t, "rounds": len(s)}
        if ours:
            metrics["overhead_vs_infonce"] = ratio(s, samples["infonce"])
        rows.append(row("loss", case, name, t, gate=ours, params=params, **metrics))
    return rows


LOSSES = {"gm_loss": _gm_local, "gm_loss (alpha=1)": _gm_global, "infonce": _infonce}


def markdown(rows: list[dict]) -> str:
    """The loss table of BENCHMARKS.md from this subject's rows."""
    if not rows:
        return ""
    p = rows[0]["params"]
    side = int(p["P"] ** 0.5)
    out = [
        f"#### Loss forward+backward, B={p['B']} images per device ({p['G']} graphs of N=16), embeddings F={p['F']}, "
        f"feature maps {side}x{side}x{p['D']} ({rows[0]['metrics']['rounds']} interleaved rounds)",
        "",
        "| loss | median | images/s | x InfoNCE |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        m = r["metrics"]
        over = f"{m['overhead_vs_infonce']:.2f}" if "overhead_vs_infonce" in m else "1.00"
        out.append(f"| {r['method']} | {fmt_time(r['time_s'])} | {m['images_per_s']:.0f} | {over} |")
    return "\n".join(out) + "\n"
