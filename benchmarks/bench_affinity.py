"""local_affinity vs the best pure-PyTorch implementations, and the floor (the bare batched Gram product), same run.

Default shape: ResNet-50 (G=12 graphs, N=M=16 nodes, 7x7 maps of D=2048 channels, top_loc=20, all feature
matches), i.e. a Gram product of 12 x [784 x 2048] x [2048 x 784] = 30 GFLOP. Timings are interleaved (one call of
every implementation per round); times are medians over rounds and ratios medians of the per-round ratios, so a busy
machine slows all implementations of a round alike. Peak memory is the
extra peak resident (CPU, Linux VmHWM) or allocated (CUDA) memory of one call, in a fresh subprocess per
implementation; it includes the returned values and gradients.

python benchmarks/bench_affinity.py [--device cpu|cuda] [--shape resnet50|vit|small] [--dtype float32] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import warnings

import torch
from timing import environment, sync, time_fn, write_json

import lvmmed_ext

SHAPES = {  # G, N, M, P, Q, D
    "resnet50": (12, 16, 16, 49, 49, 2048),
    "vit": (10, 16, 16, 196, 196, 768),
    "small": (4, 16, 16, 9, 9, 256),
}
TOP_LOC, TOP_FEAT = 20, None


def make_inputs(shape, device, dtype, seed=0):
    """Feature maps and 7x7-style cell positions (grids of crops at random offsets and scales)."""
    G, N, M, P, Q, D = shape
    gen = torch.Generator().manual_seed(seed)
    y_s = torch.randn(G, N, P, D, generator=gen).to(device, dtype)
    y_t = torch.randn(G, M, Q, D, generator=gen).to(device, dtype)

    def grid(n, count):
        side = int(round(n**0.5))
        cells = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
        cells = torch.cat([cells, cells[: n - cells.shape[0]]]) if cells.shape[0] < n else cells[:n]
        scale = 16 + 32 * torch.rand(G, count, 1, 1, generator=gen)
        return (cells.float() * scale + 200 * torch.rand(G, count, 1, 2, generator=gen)).to(device)

    return y_s, y_t, grid(P, N), grid(Q, M)


# ------------------------------------------------------------------------------------------ pure-PyTorch peers
def _torch_selections(S, ys, yt, pos_s, pos_t, top_loc, top_feat):
    """Nearest neighbours and kept cells from a Gram chunk S [g,N,M,P,Q] (no autograd): per term and direction
    (nn index, kept mask), as in lvmmed_ext.local_affinity."""
    sq_s = ys.pow(2).sum(-1)  # [g,N,P]
    sq_t = yt.pow(2).sum(-1)  # [g,M,Q]
    d = sq_s[:, :, None, :, None] + sq_t[:, None, :, None, :] - 2 * S

    def one(dist, k):  # dist [..., X, Y]: nearest Y of every X, keep the k X with the smallest distance
        nn_d, nn = dist.min(-1)
        keep = torch.zeros_like(nn_d, dtype=torch.bool)
        if k is None or k >= dist.shape[-2]:
            keep.fill_(True)
        else:
            keep.scatter_(-1, nn_d.topk(k, dim=-1, largest=False).indices, True)
        return nn, keep

    sel = [one(d, top_feat), one(d.transpose(-1, -2), top_feat)]
    loc = (pos_s[:, :, None, :, None, :] - pos_t[:, None, :, None, :, :]).pow(2).sum(-1)
    sel += [one(loc, top_loc), one(loc.transpose(-1, -2), top_loc)]
    return sel


def _means(cos, sel):
    """local affinity [g,N,M] from the cosines cos [g,N,M,P,Q] at the selections."""
    (nf, kf), (nft, kft), (nl, kl), (nlt, klt) = sel
    cos_t = cos.transpose(-1, -2)

    def mean(c, nn, keep):
        return (c.gather(-1, nn[..., None]).squeeze(-1) * keep).sum(-1) / keep.sum(-1)

    return 0.5 * (0.5 * (mean(cos, nf, kf) + mean(cos, nl, kl)) + 0.5 * (mean(cos_t, nft, kft) + mean(cos_t, nlt, klt)))


def torch_local_affinity(y_s, y_t, pos_s, pos_t, top_loc=TOP_LOC, top_feat=TOP_FEAT, chunk=4):
    """Natural PyTorch: per chunk of graphs one bmm Gram product, argmin/topk on it, cosines gathered from it;
    autograd differentiates through the Gram product (dense GEMMs backward)."""
    G, N, P, D = y_s.shape
    M, Q = y_t.shape[1:3]
    out = []
    for g0 in range(0, G, chunk):
        ys, yt = y_s[g0 : g0 + chunk], y_t[g0 : g0 + chunk]
        g = ys.shape[0]
        S = torch.bmm(ys.reshape(g, N * P, D), yt.reshape(g, M * Q, D).transpose(1, 2))
        S = S.view(g, N, P, M, Q).transpose(2, 3)  # [g,N,M,P,Q]
        with torch.no_grad():
            sel = _torch_selections(S, ys, yt, pos_s[g0 : g0 + chunk], pos_t[g0 : g0 + chunk], top_loc, top_feat)
        inv_s = 1 / torch.linalg.vector_norm(ys, dim=-1).clamp_min(1e-30)
        inv_t = 1 / torch.linalg.vector_norm(yt, dim=-1).clamp_min(1e-30)
        out.append(_means(S * inv_s[:, :, None, :, None] * inv_t[:, None, :, None, :], sel))
    return torch.cat(out)


class _SparseBackward(torch.autograd.Function):
    """PyTorch forward as above (no autograd graph), backward as two sparse (CSR) x dense products: only the
    selected cells receive gradient."""

    @staticmethod
    def forward(ctx, y_s, y_t, pos_s, pos_t, top_loc, top_feat):
        with torch.no_grad():
            G, N, P, D = y_s.shape
            M, Q = y_t.shape[1:3]
            out, rows, cols, weights = [], [], [], []
            for g0 in range(0, G, 4):
                ys, yt = y_s[g0 : g0 + 4], y_t[g0 : g0 + 4]
                g = ys.shape[0]
                S = torch.bmm(ys.reshape(g, N * P, D), yt.reshape(g, M * Q, D).transpose(1, 2))
                S = S.view(g, N, P, M, Q).transpose(2, 3)
                sel = _torch_selections(S, ys, yt, pos_s[g0 : g0 + 4], pos_t[g0 : g0 + 4], top_loc, top_feat)
                inv_s = 1 / torch.linalg.vector_norm(ys, dim=-1).clamp_min(1e-30)
                inv_t = 1 / torch.linalg.vector_norm(yt, dim=-1).clamp_min(1e-30)
                out.append(_means(S * inv_s[:, :, None, :, None] * inv_t[:, None, :, None, :], sel))
                # Entries (source row, target row, weight) of every kept selection, cells numbered over the batch.
                gi = torch.arange(g0, g0 + g, device=y_s.device)[:, None, None, None]
                i = torch.arange(N, device=y_s.device)[None, :, None, None]
                a = torch.arange(M, device=y_s.device)[None, None, :, None]
                for k, (nn, keep) in enumerate(sel):
                    x = torch.arange(nn.shape[-1], device=y_s.device)  # the cell the selection starts from
                    src, dst = (x, nn) if k % 2 == 0 else (nn, x)
                    r = ((gi * N + i) * P + src).expand_as(nn)
                    c = ((gi * M + a) * Q + dst).expand_as(nn)
                    w = 0.25 / keep.sum(-1, keepdim=True)  # 1/2 (directions) x 1/2 (loc, feat) / kept
                    pair = ((gi * N + i) * M + a).expand_as(nn)
                    rows.append(r[keep])
                    cols.append(c[keep])
                    weights.append((w.expand_as(nn)[keep], pair[keep]))
        ctx.save_for_backward(y_s, y_t, torch.cat(rows), torch.cat(cols), *map(torch.cat, zip(*weights)))
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        y_s, y_t, rows, cols, w, pair = ctx.saved_tensors
        G, N, P, D = y_s.shape
        M, Q = y_t.shape[1:3]
        ys, yt = y_s.reshape(-1, D), y_t.reshape(-1, D)
        inv_s = 1 / torch.linalg.vector_norm(ys, dim=-1, keepdim=True).clamp_min(1e-30)
        inv_t = 1 / torch.linalg.vector_norm(yt, dim=-1, keepdim=True).clamp_min(1e-30)
        vals = w * grad.reshape(-1)[pair]
        size = (G * N * P, G * M * Q)
        C = torch.sparse_coo_tensor(torch.stack((rows, cols)), vals, size, check_invariants=False).coalesce()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            C = C.to_sparse_csr()
            ds = C @ (yt * inv_t)  # dL/d(yhat_s)
            dt = C.t().to_sparse_csr() @ (ys * inv_s)

        def project(d, y, inv):
            return inv * (d - (d * y).sum(-1, keepdim=True) * inv * inv * y)

        return project(ds, ys, inv_s).view_as(y_s), project(dt, yt, inv_t).view_as(y_t), None, None, None, None


def torch_sparse_backward(y_s, y_t, pos_s, pos_t, top_loc=TOP_LOC, top_feat=TOP_FEAT):
    return _SparseBackward.apply(y_s, y_t, pos_s, pos_t, top_loc, top_feat)


def ours(y_s, y_t, pos_s, pos_t, top_loc=TOP_LOC, top_feat=TOP_FEAT):
    return lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t, top_loc=top_loc, top_feat=top_feat)


def gram_floor(y_s, y_t, pos_s, pos_t):
    G, N, P, D = y_s.shape
    return torch.bmm(y_s.reshape(G, N * P, D), y_t.reshape(G, -1, D).transpose(1, 2))


IMPLS = {"lvmmed": ours, "torch": torch_local_affinity, "torch_sparse_bwd": torch_sparse_backward, "floor": gram_floor}
MODES = ("fwd", "fwd+bwd")


def run(name, mode, y_s, y_t, pos_s, pos_t):
    fn = IMPLS[name]
    if mode == "fwd" or name == "floor":
        with torch.no_grad():
            return fn(y_s, y_t, pos_s, pos_t)
    return torch.autograd.grad(fn(y_s, y_t, pos_s, pos_t).sum(), (y_s, y_t))


def peak_memory_probe(name, mode, shape, device, dtype) -> float:
    """Extra peak memory (MB) of one call, in this (fresh) process."""
    y_s, y_t, pos_s, pos_t = make_inputs(shape, device, dtype)
    y_s.requires_grad_(mode != "fwd")
    y_t.requires_grad_(mode != "fwd")
    if torch.device(device).type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(name, mode, y_s, y_t, pos_s, pos_t)
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak resident size (VmHWM) to the current one
        f.write("5")
    base = _status_kb("VmHWM")
    run(name, mode, y_s, y_t, pos_s, pos_t)
    return (_status_kb("VmHWM") - base) / 2**10


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory(name, mode, args) -> float | None:
    probe = [sys.executable, __file__, "--probe", name, mode, "--shape", args.shape, "--device", args.device]
    res = subprocess.run(probe + ["--dtype", args.dtype], capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None


def check_correctness(y_s, y_t, pos_s, pos_t):
    """Ours vs the PyTorch peers: values and gradients agree before anything is timed."""
    w = torch.randn(y_s.shape[0], y_s.shape[1], y_t.shape[1], device=y_s.device)
    results = {}
    for name in ("lvmmed", "torch", "torch_sparse_bwd"):
        a, b = y_s.detach().requires_grad_(), y_t.detach().requires_grad_()
        out = IMPLS[name](a, b, pos_s, pos_t)
        results[name] = (out.detach(), *torch.autograd.grad((out * w).sum(), (a, b)))
    low = y_s.dtype in (torch.float16, torch.bfloat16)
    for name in ("torch", "torch_sparse_bwd"):
        for x, y in zip(results["lvmmed"], results[name]):
            torch.testing.assert_close(x.float(), y.float(), atol=3e-2 if low else 2e-4, rtol=3e-2 if low else 2e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="resnet50")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median reported)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--probe", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    dtype, shape = getattr(torch, args.dtype), SHAPES[args.shape]
    if args.probe:
        print(peak_memory_probe(*args.probe, shape, args.device, dtype))
        return

    y_s, y_t, pos_s, pos_t = make_inputs(shape, args.device, dtype)
    check_correctness(y_s, y_t, pos_s, pos_t)
    y_s.requires_grad_()
    y_t.requires_grad_()
    plan = [(m, n) for m in MODES for n in IMPLS if not (n == "floor" and m != "fwd")]
    plan = [(m, n) for m, n in plan if not (m == "fwd" and n == "torch_sparse_bwd")]  # same forward as "torch"
    samples = {key: [] for key in plan}
    for m, n in plan:  # warm-up
        run(n, m, y_s, y_t, pos_s, pos_t)
    for _ in range(args.rounds):
        for m, n in plan:
            samples[(m, n)].append(
                time_fn(lambda m=m, n=n: run(n, m, y_s, y_t, pos_s, pos_t), args.device, 0, 1)["median_s"]
            )
    # Ratios are taken within each round (the implementations ran back to back), then the median over rounds: robust
    # to the load of a shared machine drifting during the run.
    med = {key: statistics.median(v) for key, v in samples.items()}
    floor = samples[("fwd", "floor")]

    def per_round(f):
        return statistics.median(f(r) for r in range(args.rounds))

    rows = []
    for m, n in plan:
        own = samples[(m, n)]
        peers = [samples[(m, p)] for p in ("torch", "torch_sparse_bwd") if (m, p) in samples]
        rows.append(
            {
                "impl": n,
                "mode": m,
                "median_ms": 1e3 * med[(m, n)],
                "x_floor": per_round(lambda r, own=own: own[r] / floor[r]),
                "speedup_vs_best_torch": (
                    per_round(lambda r, own=own, peers=peers: min(p[r] for p in peers) / own[r])
                    if n == "lvmmed"
                    else None
                ),
                "peak_mb": peak_memory(n, m, args),
            }
        )
    G, N, M, P, Q, D = shape
    payload = {
        "benchmark": "local_affinity",
        "shape": {"G": G, "N": N, "M": M, "P": P, "Q": Q, "D": D, "top_loc": TOP_LOC, "top_feat": TOP_FEAT},
        "gram_gflop": 2 * G * N * P * M * Q * D / 1e9,
        "dtype": args.dtype,
        "rounds": args.rounds,
        **environment(args.device),
        "rows": rows,
    }
    write_json(args.json, payload)
    print(json.dumps({f"{r['mode']} {r['impl']}": round(r["median_ms"], 1) for r in rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
