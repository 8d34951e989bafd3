"""Benchmark plots (PNG, matplotlib Agg).

* ``solver_time_vs_n.png``: time per graph against N, one line per method, one panel per problem family (the
  LVM-Med family averaged over its noise levels: geometric mean of the times);
* ``solver_quality_vs_time.png``: the quality-vs-time frontier, one panel per (family, N): mean objective / best
  against time per graph, one labelled point per method, the Pareto frontier dashed;
* ``time_vs_n.png``: the other subjects' rows that carry an N (e.g. global_affinity), per method and mode.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(methods):
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(sorted(methods))}


def _marker(method: str) -> str:
    if method.startswith("ours"):
        return "o"
    return {"lap_only": "D", "scipy_faq": "^"}.get(method, "s")


def _tidy_log_x(ax) -> None:
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())


def _family_group(r) -> str:
    p = r["params"]
    return "LVM-Med shape (k=5, mean over noise levels)" if p["section"] == "lvmmed" else f"{p['family']} KB"


def _solver_points(rows):
    """{(group, N, method): (geometric-mean time per graph, mean quality)} over the cells of the group."""
    acc = defaultdict(list)
    for r in rows:
        if r["subject"] != "solver" or r["params"].get("section") not in ("lvmmed", "kb"):
            continue
        p = r["params"]
        acc[(_family_group(r), p["N"], r["method"])].append((r["time_s"] / p["G"], r["metrics"].get("quality")))
    out = {}
    for key, vals in acc.items():
        t = math.exp(sum(math.log(v[0]) for v in vals) / len(vals))
        q = [v[1] for v in vals if v[1] is not None]
        out[key] = (t, sum(q) / len(q) if q else None)
    return out


def solver_time_vs_n(rows: list[dict], path: str) -> str | None:
    pts = _solver_points(rows)
    if not pts:
        return None
    groups = list(dict.fromkeys(k[0] for k in pts))
    colours = _colours({k[2] for k in pts})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.6), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for method in sorted({k[2] for k in pts if k[0] == group}):
            series = sorted((k[1], v[0]) for k, v in pts.items() if k[0] == group and k[2] == method)
            ax.plot(
                [s[0] for s in series],
                [s[1] for s in series],
                marker=_marker(method),
                color=colours[method],
                lw=2.2 if method.startswith("ours") else 1.2,
                ls="-" if method.startswith("ours") or method == "lap_only" else "--",
                label=method,
            )
        ns = sorted({k[1] for k in pts if k[0] == group})
        ax.set(xscale="log", yscale="log", xlabel="N (nodes per graph)", ylabel="seconds per graph", title=group)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pareto(points):
    """Indices of the points not dominated (faster and at least as good) by another point."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    keep, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            keep.append(i)
            best = points[i][1]
    return keep


def solver_quality_frontier(rows: list[dict], path: str) -> str | None:
    pts = {k: v for k, v in _solver_points(rows).items() if v[1] is not None}
    if not pts:
        return None
    panels = list(dict.fromkeys((k[0], k[1]) for k in pts))
    colours = _colours({k[2] for k in pts})
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (group, n) in zip(axes.flat, panels):
        mine = [(k[2], v) for k, v in pts.items() if k[0] == group and k[1] == n]
        for method, (t, q) in mine:
            big = method.startswith("ours")
            ax.scatter([t], [q], color=colours[method], marker=_marker(method), s=40 if big else 20, zorder=3)
            ax.annotate(method, (t, q), fontsize=6, xytext=(3, 2), textcoords="offset points")
        front = [mine[i][1] for i in _pareto([v for _, v in mine])]
        ax.plot([f[0] for f in front], [f[1] for f in front], ls="--", color="grey", lw=1, zorder=2)
        ax.set(xscale="log", xlabel="seconds per graph", ylabel="objective / best", title=f"{group}, N={n}")
        ax.title.set_fontsize(8)
        _tidy_log_x(ax)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_vs_n(rows: list[dict], path: str) -> str | None:
    """Per subject and method, time per graph against N for the non-solver rows that carry an N."""
    series = defaultdict(list)
    for r in rows:
        n = r["params"].get("N")
        if n is None or r["subject"] == "solver":
            continue
        per_graph = r["time_s"] / max(1, r["params"].get("G", 1))
        key = (r["subject"], r["params"].get("op", ""), r["method"], r["params"].get("mode", ""))
        series[key].append((n, per_graph))
    series = {k: v for k, v in series.items() if len({p[0] for p in v}) > 1}  # a line needs two sizes
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (subject, op, method, mode), pts in sorted(series.items()):
        pts = sorted(pts)
        label = " ".join(x for x in (f"{subject}:", op, method, mode) if x)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="N (nodes per graph)", ylabel="seconds per graph")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(rows: list[dict], folder: str) -> list[str]:
    """Every plot the rows support, written into ``folder``; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    made = [
        solver_time_vs_n(rows, os.path.join(folder, "solver_time_vs_n.png")),
        solver_quality_frontier(rows, os.path.join(folder, "solver_quality_vs_time.png")),
        time_vs_n(rows, os.path.join(folder, "time_vs_n.png")),
    ]
    return [p for p in made if p]
