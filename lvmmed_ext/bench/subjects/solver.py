"""QAP solvers side by side on the same instances: :func:`lvmmed_ext.solve_qap` (every method) vs pygmtools (numpy
and torch backends: SM / RRWM / IPFP + Hungarian on the dense Lawler matrix K), scipy's
``quadratic_assignment(method="faq")`` (dense Koopmans-Beckmann problems only: it has no unary term) and the LAP-only
floor.

Families (:mod:`lvmmed_ext.problems`):

* ``lvmmed``: the LVM-Med shape, N=16 (batches of 64) and N=32 (batches of 32), kNN k=5, unary + edge cosines, view
  noise from ``easy`` (the unary alone finds the planted matching) to ``noisy``;
* ``planted`` / ``uniform`` Koopmans-Beckmann problems at N=64, 128, 256, 512 (batches 16, 8, 4, 2);
* ``timing``: the default method at N=16 by batch size and thread count (median and best of many repeats);
* ``throughput`` (CUDA only): N=16 graphs/s at batches of 4096 and 65536, and an N=256 batch of 64.

Per (cell, method): time per graph (batched methods: the median over interleaved rounds of all batched methods of the
cell; per-graph peers -- pygmtools' Hungarian, scipy -- their single answer-producing run), the CPU time per graph of
all threads, mean objective, mean objective / best (best = the best objective any method found on that instance) and
the fraction of instances where the method found the best. pygmtools and scipy are optional: without them their rows
are skipped and the run says so. ``--quick`` keeps N=16 (G=8, easy and noisy) and one N=64 KB cell of 2 problems.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from functools import partial

import numpy as np
import torch

from ... import linear_assignment, qap_objective, reference, solve_qap
from ...problems import NOISE_LEVELS, lvmmed_problem, planted_kb_problem, uniform_kb_problem
from ..report import fmt_time, row
from ..timing import ratio, sync, time_fn

try:
    import pygmtools as pygm
except ImportError:  # optional peer
    pygm = None
try:
    from scipy.optimize import quadratic_assignment
except ImportError:  # optional peer
    quadratic_assignment = None
try:
    import lpmp_py  # noqa: F401  (LPMP's Python bindings, the solver LVM-Med used)
except ImportError:
    lpmp_py = None

OURS_LVMMED = [  # (row name, solve_qap keyword arguments)
    ("ours_ls", {"method": "ls"}),
    ("ours_ls_fast", {"method": "ls", "max_iter": 0}),
    ("ours_ils", {"method": "ils"}),
    ("ours_sm", {"method": "sm"}),
    ("ours_rrwm", {"method": "rrwm"}),
    ("ours_ipfp", {"method": "ipfp"}),
    ("lap_only", {"method": "lap"}),
]
LABELS = {
    "ours_ls": "**ours_ls** (default)",
    "ours_ga": "**ours_ga** (default)",
    "lap_only": "LAP only (floor)",
    "scipy_faq": "scipy FAQ",
    **{
        f"pygm_{b}_{s}": f"pygm {lib} {s.upper()}"
        for b, lib in (("np", "numpy"), ("pt", "torch"))
        for s in ("sm", "rrwm", "ipfp")
    },
}
KB_CELLS = [(64, 16), (128, 8), (256, 4), (512, 2)]  # N, batch


def dense_lawler(p) -> torch.Tensor:
    """pygmtools' affinity K [G, NM, NM] (column-major vec(X), unary on the diagonal) of an edge problem."""
    G, N, M = p.unary.shape
    K = torch.zeros(G, M, N, M, N, dtype=torch.float32)
    for g in range(G):
        q = p.quad[g].float().cpu()
        es, et = p.edges_s[g].cpu(), p.edges_t[g].cpu()
        i, j = (es[:, c].view(-1, 1).expand(q.shape) for c in (0, 1))
        a, b = (et[:, c].view(1, -1).expand(q.shape) for c in (0, 1))
        K[g].index_put_((a, i, b, j), q, accumulate=True)
    K = K.reshape(G, N * M, N * M)
    K.diagonal(dim1=1, dim2=2).add_(p.unary.float().cpu().transpose(1, 2).reshape(G, -1))
    return K


def pygm_solve(K, N, M, backend, solver):
    """One pygmtools solver + Hungarian on the batch K (numpy array or torch tensor): ``X [G, N, M]`` float32."""
    f = {"sm": pygm.sm, "rrwm": pygm.rrwm, "ipfp": pygm.ipfp}[solver]
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        X = f(K, n1max=N, n2max=M, backend=backend)
        X = pygm.hungarian(X, backend=backend)
    return torch.as_tensor(np.asarray(X) if backend == "numpy" else X).float()


def scipy_faq(p):
    """scipy's FAQ (maximising) per problem of a dense KB batch: ``X [G, N, N]``."""
    A64, B64 = p.A.double().cpu().numpy(), p.B.double().cpu().numpy()
    G, N = A64.shape[:2]
    X = torch.zeros(G, N, N)
    for g in range(G):
        res = quadratic_assignment(A64[g], B64[g], method="faq", options={"maximize": True})
        X[g, torch.arange(N), torch.from_numpy(res.col_ind)] = 1.0
    return X


def barycentre_lap(p):
    """The KB floor: one LAP on the objective's gradient at the barycentre."""
    X = torch.full_like(p.unary, 1.0 / p.unary.shape[2])
    grad = p.A @ X @ p.B + p.A.transpose(1, 2) @ X @ p.B.transpose(1, 2)
    return linear_assignment(grad)


def objective(X, p) -> np.ndarray:
    """The float64 reference objective of every graph of the batch."""
    inputs = {}
    for k, v in p.inputs().items():
        inputs[k] = None if v is None else (v.cpu() if k.startswith("edges") else v.cpu().double())
    return reference.qap_objective(X.cpu().double(), **inputs).numpy()


def _check_assignment(ctx, name, X, p) -> None:
    G, N, M = p.unary.shape
    ok = X.shape == (G, N, M) and bool(((X == 0) | (X == 1)).all())
    ok = ok and bool((X.sum(2) == 1).all()) and bool((X.sum(1) <= 1).all())
    ctx.require(name, ok, f"the answer is not a (partial) permutation matrix of shape {(G, N, M)}")


def _case(section, family, N, G) -> str:
    return f"{family} N={N} G={G}" + (" k=5" if section == "lvmmed" else "")


def run_cell(ctx, section, family, N, G, p, methods, level=None) -> list[dict]:
    """Time every method on the same batch; rows with time per graph and objectives relative to the best.

    ``methods``: ``(name, fn, batched)``; batched methods are timed in interleaved rounds after their first call,
    per-graph loops (slow peers) by their single answer-producing run.
    """
    case = _case(section, family, N, G)
    ctx.log(f"solver: {case} ({len(methods)} methods)")
    answers, once, cpu = {}, {}, {}
    for name, fn, is_batched in methods:
        label = f"{case} | {name} (first call)"
        call = ctx.ranged(label, fn) if is_batched else ctx.peer(label, fn)
        t0, c0 = time.perf_counter(), time.process_time()
        X = call()
        sync(ctx.device)
        once[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        X = torch.as_tensor(X).cpu().float()
        _check_assignment(ctx, f"{case} {name}", X, p)
        answers[name] = X
    f = {name: objective(X, p) for name, X in answers.items()}
    if "ours_ls" in f and "lap_only" in f:  # ls starts from the unary LAP and only ever improves on it
        worse = f["ours_ls"] < f["lap_only"] - 1e-4 * np.abs(f["lap_only"]) - 1e-6
        detail = f"objective below its own LAP start on {int(worse.sum())} graphs"
        ctx.require(f"{case} ours_ls", not worse.any(), detail)
    first = next(n for n, _, _ in methods if n.startswith("ours"))
    inputs = p.inputs()
    ours_f = qap_objective(answers[first].to(p.unary), **inputs)
    ctx.check(f"{case} qap_objective", ours_f, torch.from_numpy(f[first]), 1e-4, 1e-4)
    batched = {name: fn for name, fn, b in methods if b}
    samples = ctx.interleave(case, batched) if batched else {}
    best = np.max(np.stack(list(f.values())), 0)
    rows = []
    for name, fn, is_batched in methods:
        t = sorted(samples[name])[len(samples[name]) // 2] if is_batched else once[name]
        if is_batched:  # CPU time of all threads for one more call (robust to other load on a shared machine)
            c0 = time.process_time()
            fn()
            sync(ctx.device)
            cpu[name] = time.process_time() - c0
        params = {"section": section, "family": family, "N": N, "G": G, "batched": is_batched}
        if level is not None:
            params["level"] = level
        metrics = {
            "graphs_per_s": G / t,
            "cpu_s_per_graph": cpu[name] / G,
            "objective": float(f[name].mean()),
            "quality": float(np.mean(f[name] / best)),
            "best_fraction": float(np.mean(f[name] >= best - 1e-5 * np.abs(best))),
            "rounds": len(samples[name]) if is_batched else 1,
        }
        if p.planted is not None:
            metrics["planted_accuracy"] = float((answers[name].argmax(2) == p.planted.cpu()).float().mean())
        if is_batched and name != "lap_only" and "lap_only" in samples:
            metrics["x_floor"] = ratio(samples[name], samples["lap_only"])
        gate = name.startswith("ours") or name == "lap_only"
        rows.append(row("solver", case, name, t, gate=gate, params=params, **metrics))
    return rows


def lvmmed_section(ctx) -> list[dict]:
    sizes = (16,) if ctx.quick else (16, 32)
    levels = ("easy", "noisy") if ctx.quick else tuple(NOISE_LEVELS)
    rows = []
    for N in sizes:
        G = 8 if ctx.quick else (64 if N <= 16 else 32)
        for level in levels:
            if not ctx.selected(_case("lvmmed", level, N, G)):
                continue
            li = list(NOISE_LEVELS).index(level)
            gen = torch.Generator().manual_seed(1000 * N + li)
            p = lvmmed_problem(G, N, noise=NOISE_LEVELS[level], generator=gen, device=ctx.device)
            inp = p.inputs()
            methods = [(name, partial(solve_qap, **inp, **kw), True) for name, kw in OURS_LVMMED]
            if pygm is not None:
                K = dense_lawler(p)
                # the torch backend runs on the benchmarked device (the GPU under --device cuda)
                for backend, Kb, lib in (("numpy", K.numpy(), "np"), ("pytorch", K.to(ctx.device), "pt")):
                    for solver in ("sm", "rrwm", "ipfp"):
                        methods.append((f"pygm_{lib}_{solver}", partial(pygm_solve, Kb, N, N, backend, solver), False))
            rows += run_cell(ctx, "lvmmed", level, N, G, p, methods, level=level)
    return rows


def kb_section(ctx) -> list[dict]:
    rows = []
    for N, G in [(64, 2)] if ctx.quick else KB_CELLS:
        for family, make in (("planted", planted_kb_problem), ("uniform", uniform_kb_problem)):
            if not ctx.selected(_case("kb", family, N, G)):
                continue
            p = make(G, N, generator=torch.Generator().manual_seed(N), device=ctx.device)
            inp = p.inputs()
            methods = [
                ("ours_ga", partial(solve_qap, **inp, method="ga"), True),
                ("ours_faq", partial(solve_qap, **inp, method="faq"), True),
                ("lap_only", partial(barycentre_lap, p), True),
            ]
            if quadratic_assignment is not None:
                methods.append(("scipy_faq", partial(scipy_faq, p), False))
            rows += run_cell(ctx, "kb", family, N, G, p, methods)
    return rows


def timing_section(ctx) -> list[dict]:
    """The default method at N=16, hard instances, by batch size and thread count: median and best of repeats (on
    a shared machine the gap between the two shows the load)."""
    rows = []
    threads_now = torch.get_num_threads()
    counts = [1] if ctx.quick or ctx.device.type == "cuda" else sorted({1, 2, threads_now})
    batches = (64,) if ctx.quick else (64, 1024)
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            for G in batches:
                case = f"timing N=16 G={G} threads={threads}"
                if not ctx.selected(case):
                    continue
                gen = torch.Generator().manual_seed(G)
                inp = lvmmed_problem(G, 16, noise=NOISE_LEVELS["hard"], generator=gen, device=ctx.device).inputs()
                ctx.log(f"solver: {case}")
                with_range = ctx.ranged(case, partial(solve_qap, **inp))
                res = time_fn(with_range, ctx.device, warmup=2, repeats=3 if ctx.quick else 25, budget_s=ctx.budget_s)
                t = res["median_s"]
                params = {"section": "timing", "family": "hard", "N": 16, "G": G, "threads": threads}
                rows.append(
                    row(
                        "solver",
                        case,
                        "ours_ls",
                        t,
                        gate=True,
                        params=params,
                        graphs_per_s=G / t,
                        best_s_per_graph=res["min_s"] / G,
                        rounds=res["repeats"],
                    )
                )
    finally:
        torch.set_num_threads(threads_now)
    return rows


def throughput_section(ctx) -> list[dict]:
    """CUDA only: N=16 graphs/s at large batches, and an N=256 batch of 64 planted KB problems."""
    rows = []
    cells = [("hard", 16, 4096), ("hard", 16, 65536), ("planted", 256, 64)]
    for family, N, G in cells[:1] if ctx.quick else cells:
        case = f"throughput {family} N={N} G={G}"
        if not ctx.selected(case):
            continue
        gen = torch.Generator().manual_seed(0)
        if family == "hard":
            inp = lvmmed_problem(G, N, noise=NOISE_LEVELS["hard"], generator=gen, device=ctx.device).inputs()
        else:
            inp = planted_kb_problem(G, N, generator=gen, device=ctx.device).inputs()
        ctx.log(f"solver: {case}")
        t = ctx.time(case, partial(solve_qap, **inp))
        params = {"section": "throughput", "family": family, "N": N, "G": G}
        method = "ours_ls" if N <= 64 else "ours_ga"
        rows.append(row("solver", case, method, t, gate=True, params=params, graphs_per_s=G / t))
    return rows


def run(ctx) -> list[dict]:
    if pygm is None:
        ctx.note("pygmtools is not importable: its SM/RRWM/IPFP peers are skipped (pip install pygmtools)")
    if quadratic_assignment is None:
        ctx.note("scipy is not importable: the scipy FAQ peer is skipped (pip install scipy)")
    if lpmp_py is None:
        ctx.note("LPMP (lpmp_py, the solver LVM-Med used) is not importable: not in the run")
    else:
        ctx.note("LPMP (lpmp_py) is importable but has no adapter in this suite yet: not in the run")
    rows = timing_section(ctx)
    rows += lvmmed_section(ctx)
    rows += kb_section(ctx)
    if ctx.device.type == "cuda":
        rows += throughput_section(ctx)
    return rows


# ------------------------------------------------------------------------------------------ Markdown
def _cell(r) -> str:
    m = r["metrics"]
    return f"{fmt_time(r['time_s'] / r['params']['G'])} · {m['quality']:.4f} · {m['best_fraction']:.2f}"


def _pivot(rows, columns, column_of, row_key, label):
    """A methods x columns table of ``_cell``s."""
    methods = list(dict.fromkeys(row_key(r) for r in rows))
    out = []
    for key in methods:
        cells = {column_of(r): _cell(r) for r in rows if row_key(r) == key}
        out.append(f"| {label(key)} | " + " | ".join(cells.get(c, "-") for c in columns) + " |")
    return out


def markdown(rows: list[dict]) -> str:
    """The solver tables of BENCHMARKS.md from this subject's rows."""
    out = []
    lv = [r for r in rows if r["params"].get("section") == "lvmmed"]
    for N in dict.fromkeys(r["params"]["N"] for r in lv):
        mine = [r for r in lv if r["params"]["N"] == N]
        levels = list(dict.fromkeys(r["params"]["level"] for r in mine))
        out += [
            f"#### LVM-Med-shaped graphs, N={N}, k=5 ({N * 5} x {N * 5} edge affinities per graph), "
            f"batches of {mine[0]['params']['G']}",
            "",
            "Cells: time per graph · mean objective / best · fraction of instances where the method found the best "
            "(best: the best objective any method found on that instance). Batched methods (ours, LAP): median over "
            "interleaved rounds; per-graph peers (pygmtools, building K excluded): their single answer-producing run.",
            "",
            "| method | " + " | ".join(levels) + " |",
            "| --- |" + " --- |" * len(levels),
        ]
        out += _pivot(mine, levels, lambda r: r["params"]["level"], lambda r: r["method"], lambda k: LABELS.get(k, k))
        out.append("")
    kb = [r for r in rows if r["params"].get("section") == "kb"]
    if kb:
        families = list(dict.fromkeys(r["params"]["family"] for r in kb))
        out += [
            "#### Dense Koopmans-Beckmann problems (no unary term), against scipy's FAQ",
            "",
            "Cells as above; scipy's FAQ runs per problem (its single run is its time).",
            "",
            "| N, batch | method | " + " | ".join(families) + " |",
            "| --- | --- |" + " --- |" * len(families),
        ]
        out += _pivot(
            kb,
            families,
            lambda r: r["params"]["family"],
            lambda r: (r["params"]["N"], r["params"]["G"], r["method"]),
            lambda k: f"{k[0]}, {k[1]} | {LABELS.get(k[2], k[2])}",
        )
        out.append("")
    tim = [r for r in rows if r["params"].get("section") == "timing"]
    if tim:
        out += [
            "#### Time per N=16 graph, default method, by batch size and threads (hard instances)",
            "",
            "| batch | threads | median per graph | best per graph | graphs/s |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in tim:
            p, m = r["params"], r["metrics"]
            out.append(
                f"| {p['G']} | {p['threads']} | {fmt_time(r['time_s'] / p['G'])} | {fmt_time(m['best_s_per_graph'])} "
                f"| {m['graphs_per_s']:.0f} |"
            )
        out.append("")
    thr = [r for r in rows if r["params"].get("section") == "throughput"]
    if thr:
        out += [
            "#### GPU throughput",
            "",
            "| family | N | batch | method | time per batch | graphs/s |",
            "| --- | ---: | ---: | --- | ---: | ---: |",
        ]
        for r in thr:
            p = r["params"]
            out.append(
                f"| {p['family']} | {p['N']} | {p['G']} | {r['method']} | {fmt_time(r['time_s'])} "
                f"| {r['metrics']['graphs_per_s']:.0f} |"
            )
        out.append("")
    return "\n".join(out)
