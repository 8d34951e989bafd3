"""Affinity ops vs their best pure-PyTorch peers, forward and forward+backward, in interleaved rounds.

* ``local_affinity`` at the ResNet-50 shape (G=12 graphs, N=M=16 nodes, 7x7 maps of D=2048 channels, top_loc=20,
  all feature matches) -- a Gram product of 12 x [784 x 2048] x [2048 x 784] = 30.2 GFLOP -- against the natural
  PyTorch version (``torch``: Gram by ``bmm``, argmin/``topk``, gathered cosines, autograd through the Gram), the
  same forward with a hand-written sparse CSR backward (``torch_sparse_bwd``), and the floor: the bare batched Gram
  product the op cannot avoid. ``x floor`` and speedups are medians of per-round ratios; peak memory is measured
  in a fresh process per implementation (:mod:`lvmmed_ext.bench.memory`).
* ``global_affinity`` (cosine matrices of [G, N, F] embeddings) against ``normalize`` + ``bmm``.

``--quick`` uses a small local shape (G=4, 3x3 maps of 256 channels) and one global shape, no memory probes.
"""

from __future__ import annotations

import warnings
from functools import partial

import torch

from ... import global_affinity, local_affinity, reference
from ..memory import fresh_process_peak_mb
from ..report import fmt_time, row
from ..timing import ratio

SHAPES = {  # G, N, M, P, Q, D
    "resnet50": (12, 16, 16, 49, 49, 2048),
    "vit": (10, 16, 16, 196, 196, 768),
    "small": (4, 16, 16, 9, 9, 256),
}
TOP_LOC, TOP_FEAT = 20, None
GLOBAL_SHAPES = [(12, 16, 128), (64, 32, 128), (4, 256, 256)]  # G, N, F


def make_inputs(shape, device, dtype=torch.float32, seed=0):
    """Feature maps ``y_s [G,N,P,D]``, ``y_t [G,M,Q,D]`` and cell positions ``[G,N,P,2]``/``[G,M,Q,2]`` (grids of
    crops at random offsets and scales), reproducible from ``seed``."""
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


def _gram_chunk(ys, yt):
    g, N, P, D = ys.shape
    M, Q = yt.shape[1:3]
    S = torch.bmm(ys.reshape(g, N * P, D), yt.reshape(g, M * Q, D).transpose(1, 2))
    return S.view(g, N, P, M, Q).transpose(2, 3)  # [g,N,M,P,Q]


def _cosines(S, ys, yt):
    inv_s = 1 / torch.linalg.vector_norm(ys, dim=-1).clamp_min(1e-30)
    inv_t = 1 / torch.linalg.vector_norm(yt, dim=-1).clamp_min(1e-30)
    return S * inv_s[:, :, None, :, None] * inv_t[:, None, :, None, :]


def torch_local_affinity(y_s, y_t, pos_s, pos_t, top_loc=TOP_LOC, top_feat=TOP_FEAT, chunk=4):
    """Natural PyTorch: per chunk of graphs one bmm Gram product, argmin/topk on it, cosines gathered from it;
    autograd differentiates through the Gram product (dense GEMMs backward)."""
    out = []
    for g0 in range(0, y_s.shape[0], chunk):
        ys, yt = y_s[g0 : g0 + chunk], y_t[g0 : g0 + chunk]
        S = _gram_chunk(ys, yt)
        with torch.no_grad():
            sel = _torch_selections(S, ys, yt, pos_s[g0 : g0 + chunk], pos_t[g0 : g0 + chunk], top_loc, top_feat)
        out.append(_means(_cosines(S, ys, yt), sel))
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
            dev = y_s.device
            for g0 in range(0, G, 4):
                ys, yt = y_s[g0 : g0 + 4], y_t[g0 : g0 + 4]
                g = ys.shape[0]
                S = _gram_chunk(ys, yt)
                sel = _torch_selections(S, ys, yt, pos_s[g0 : g0 + 4], pos_t[g0 : g0 + 4], top_loc, top_feat)
                out.append(_means(_cosines(S, ys, yt), sel))
                # Entries (source row, target row, weight) of every kept selection, cells numbered over the batch.
                gi = torch.arange(g0, g0 + g, device=dev)[:, None, None, None]
                i = torch.arange(N, device=dev)[None, :, None, None]
                a = torch.arange(M, device=dev)[None, None, :, None]
                for k, (nn, keep) in enumerate(sel):
                    x = torch.arange(nn.shape[-1], device=dev)  # the cell the selection starts from
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
    """The ``torch`` peer's forward with a sparse CSR backward (see :class:`_SparseBackward`)."""
    return _SparseBackward.apply(y_s, y_t, pos_s, pos_t, top_loc, top_feat)


def ours_local(y_s, y_t, pos_s, pos_t, top_loc=TOP_LOC, top_feat=TOP_FEAT):
    return local_affinity(y_s, y_t, pos_s, pos_t, top_loc=top_loc, top_feat=top_feat)


def gram_floor(y_s, y_t, pos_s, pos_t):
    """The bare batched Gram product ``bmm([G, N P, D], [G, D, M Q])``: the floor of any local_affinity."""
    G, N, P, D = y_s.shape
    return torch.bmm(y_s.reshape(G, N * P, D), y_t.reshape(G, -1, D).transpose(1, 2))


LOCAL_IMPLS = {
    "lvmmed": ours_local,
    "torch": torch_local_affinity,
    "torch_sparse_bwd": torch_sparse_backward,
    "floor": gram_floor,
}
LOCAL_PLAN = [  # (mode, implementation): the floor is forward only, the sparse-backward peer's forward is "torch"'s
    ("fwd", "lvmmed"),
    ("fwd", "torch"),
    ("fwd", "floor"),
    ("fwd+bwd", "lvmmed"),
    ("fwd+bwd", "torch"),
    ("fwd+bwd", "torch_sparse_bwd"),
]


def run_local(name, mode, y_s, y_t, pos_s, pos_t):
    """One call of implementation ``name`` in ``mode`` ("fwd": no_grad; "fwd+bwd": gradients of the sum)."""
    fn = LOCAL_IMPLS[name]
    if mode == "fwd" or name == "floor":
        with torch.no_grad():
            return fn(y_s, y_t, pos_s, pos_t)
    return torch.autograd.grad(fn(y_s, y_t, pos_s, pos_t).sum(), (y_s, y_t))


def memory_case(impl: str, mode: str, shape: str, device: str, dtype: str = "float32"):
    """For :func:`lvmmed_ext.bench.memory.fresh_process_peak_mb`: build the inputs, return the call to measure."""
    y_s, y_t, pos_s, pos_t = make_inputs(SHAPES[shape], device, getattr(torch, dtype))
    y_s.requires_grad_(mode != "fwd")
    y_t.requires_grad_(mode != "fwd")
    return partial(run_local, impl, mode, y_s, y_t, pos_s, pos_t)


def check_local(ctx, y_s, y_t, pos_s, pos_t) -> None:
    """Ours vs the float64 reference and vs the PyTorch peers: values and weighted gradients agree before anything
    is timed."""
    w = torch.randn(y_s.shape[0], y_s.shape[1], y_t.shape[1], device=y_s.device)
    results = {}
    for name in ("lvmmed", "torch", "torch_sparse_bwd"):
        a, b = y_s.detach().requires_grad_(), y_t.detach().requires_grad_()
        out = LOCAL_IMPLS[name](a, b, pos_s, pos_t)
        results[name] = (out.detach(), *torch.autograd.grad((out * w).sum(), (a, b)))
    if y_s.shape[-1] * y_s.shape[-2] <= 256 * 9:  # the float64 oracle only at small shapes (it is slow)
        ref = reference.local_affinity(y_s.double(), y_t.double(), pos_s.double(), pos_t.double(), top_loc=TOP_LOC)
        ctx.check("local_affinity vs reference", results["lvmmed"][0], ref, 2e-5, 1e-4)
    for name in ("torch", "torch_sparse_bwd"):
        for what, x, y in zip(("value", "grad y_s", "grad y_t"), results["lvmmed"], results[name]):
            ctx.check(f"local_affinity {what} vs {name}", x, y, 2e-4, 2e-3)


def bench_local(ctx, shape_name: str) -> list[dict]:
    shape = SHAPES[shape_name]
    G, N, M, P, Q, D = shape
    case = f"local_affinity {shape_name} G={G} N={N} P={P} D={D}"
    if not ctx.selected(case):
        return []
    y_s, y_t, pos_s, pos_t = make_inputs(shape, ctx.device)
    check_local(ctx, y_s, y_t, pos_s, pos_t)
    y_s.requires_grad_()
    y_t.requires_grad_()
    ctx.log(f"affinity: {case} ({len(LOCAL_PLAN)} implementations, interleaved)")
    fns = {f"{m} {n}": partial(run_local, n, m, y_s, y_t, pos_s, pos_t) for m, n in LOCAL_PLAN}
    samples = ctx.interleave(case, fns, budget_s=max(ctx.budget_s * len(fns), 180.0))
    floor = samples["fwd floor"]
    gram_flop = 2.0 * G * N * P * M * Q * D
    rows = []
    for m, n in LOCAL_PLAN:
        own = samples[f"{m} {n}"]
        t = sorted(own)[len(own) // 2]
        params = {"op": "local_affinity", "shape": shape_name, "G": G, "N": N, "P": P, "D": D, "mode": m}
        metrics = {
            "gflop_per_s": gram_flop / t / 1e9,  # of the Gram product (the work every implementation must do)
            "peak_fraction": ctx.peak_fraction(gram_flop, t),
            "x_floor": ratio(own, floor),
            "rounds": len(own),
        }
        if n == "lvmmed":
            peers = [p for p in ("torch", "torch_sparse_bwd") if f"{m} {p}" in samples]
            metrics["speedup"] = {p: ratio(samples[f"{m} {p}"], own) for p in peers}
            best_peer = [min(samples[f"{m} {p}"][r] for p in peers) for r in range(len(own))]
            metrics["speedup_vs_best_peer"] = ratio(best_peer, own)
        if ctx.memory and not ctx.quick:
            kwargs = {"impl": n, "mode": m, "shape": shape_name, "device": str(ctx.device)}
            kwargs["threads"] = torch.get_num_threads()
            metrics["peak_mb"] = fresh_process_peak_mb("lvmmed_ext.bench.subjects.affinity:memory_case", kwargs)
        rows.append(row("affinity", f"{case} {m}", n, t, gate=n == "lvmmed", params=params, **metrics))
    return rows


# ------------------------------------------------------------------------------------------ global_affinity
def cosine_peer(z_s, z_t):
    """The PyTorch peer of global_affinity: ``normalize`` + ``bmm``."""
    return torch.nn.functional.normalize(z_s, dim=-1) @ torch.nn.functional.normalize(z_t, dim=-1).transpose(1, 2)


def _fwd(fn, *args):
    with torch.no_grad():
        return fn(*args)


def _fwd_bwd(fn, *args):
    return torch.autograd.grad(fn(*args).sum(), [a for a in args if a.requires_grad])


def bench_global(ctx, G, N, F) -> list[dict]:
    cases = {mode: f"global_affinity G={G} N={N} F={F} {mode}" for mode in ("fwd", "fwd+bwd")}
    if not any(ctx.selected(c) for c in cases.values()):
        return []
    gen = torch.Generator(device="cpu").manual_seed(G * 1000 + N)
    z_s = torch.randn(G, N, F, generator=gen).to(ctx.device).requires_grad_()
    z_t = torch.randn(G, N, F, generator=gen).to(ctx.device).requires_grad_()
    ctx.check("global_affinity", global_affinity(z_s, z_t), reference.global_affinity(z_s, z_t), 1e-5, 1e-4)
    rows = []
    for mode, runner, flop_mult, traffic in (("fwd", _fwd, 2, 1), ("fwd+bwd", _fwd_bwd, 6, 3)):
        case = cases[mode]
        if not ctx.selected(case):
            continue
        ctx.log(f"affinity: {case}")
        fns = {"lvmmed": partial(runner, global_affinity, z_s, z_t), "torch": partial(runner, cosine_peer, z_s, z_t)}
        s = ctx.interleave(case, fns)
        flops = flop_mult * G * N * N * F
        nbytes = traffic * 4 * (2 * G * N * F + G * N * N)  # compulsory traffic: inputs + output (x3 with backward)
        params = {"op": "global_affinity", "G": G, "N": N, "F": F, "mode": mode}
        for method in ("lvmmed", "torch"):
            t = sorted(s[method])[len(s[method]) // 2]
            metrics = {
                "graphs_per_s": G / t,
                "gflop_per_s": flops / t / 1e9,
                "gb_per_s": nbytes / t / 1e9,
                "peak_fraction": ctx.bandwidth_fraction(nbytes, t),  # small F: memory-bound
                "rounds": len(s[method]),
            }
            if method == "lvmmed":
                metrics["speedup"] = {"torch": ratio(s["torch"], s["lvmmed"])}
            rows.append(row("affinity", case, method, t, gate=method == "lvmmed", params=params, **metrics))
    return rows


def run(ctx) -> list[dict]:
    rows = []
    for G, N, F in GLOBAL_SHAPES[:1] if ctx.quick else GLOBAL_SHAPES:
        rows += bench_global(ctx, G, N, F)
    local_shapes = ["small"] if ctx.quick else (["resnet50", "vit"] if ctx.device.type == "cuda" else ["resnet50"])
    for shape_name in local_shapes:
        rows += bench_local(ctx, shape_name)
    return rows


# ------------------------------------------------------------------------------------------ Markdown
def markdown(rows: list[dict]) -> str:
    """The affinity tables of BENCHMARKS.md from this subject's rows."""
    out = []
    local = [r for r in rows if r["params"].get("op") == "local_affinity"]
    for shape in dict.fromkeys(r["params"]["shape"] for r in local):
        mine = [r for r in local if r["params"]["shape"] == shape]
        p = mine[0]["params"]
        gflop = mine[0]["metrics"]["gflop_per_s"] * mine[0]["time_s"]
        out += [
            f"#### local_affinity, {shape} shape: G={p['G']}, N=M={p['N']}, P=Q={p['P']}, D={p['D']}, float32, "
            f"top_loc={TOP_LOC} (Gram product {gflop:.3g} GFLOP; {mine[0]['metrics']['rounds']} interleaved rounds)",
            "",
            "| mode | implementation | median | GFLOP/s | x floor | speedup vs best PyTorch | peak MB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in mine:
            m = r["metrics"]
            name = {"lvmmed": "**lvmmed**", "floor": "floor (bare Gram `bmm`)"}.get(r["method"], r["method"])
            speed = f"**{m['speedup_vs_best_peer']:.2f}x**" if "speedup_vs_best_peer" in m else ""
            mem = f"{m['peak_mb']:.0f}" if m.get("peak_mb") is not None else "-"
            out.append(
                f"| {r['params']['mode']} | {name} | {fmt_time(r['time_s'])} | {m['gflop_per_s']:.1f} "
                f"| {m['x_floor']:.2f} | {speed} | {mem} |"
            )
        out.append("")
    glob = [r for r in rows if r["params"].get("op") == "global_affinity"]
    if glob:
        out += [
            "#### global_affinity vs `normalize` + `bmm` (interleaved rounds)",
            "",
            "| G, N, F | mode | lvmmed | torch | speedup | lvmmed GFLOP/s | lvmmed GB/s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in glob:
            if r["method"] != "lvmmed":
                continue
            p, m = r["params"], r["metrics"]
            peer = next(x for x in glob if x["case"] == r["case"] and x["method"] == "torch")
            out.append(
                f"| {p['G']}, {p['N']}, {p['F']} | {p['mode']} | {fmt_time(r['time_s'])} | {fmt_time(peer['time_s'])} "
                f"| {m['speedup']['torch']:.2f}x | {m['gflop_per_s']:.1f} | {m['gb_per_s']:.2f} |"
            )
        out.append("")
    return "\n".join(out)
