"""Benchmark plots (PNG, matplotlib Agg): time vs N per method, and the quality-vs-time frontier."""

from __future__ import annotations

import os
from collections import defaultdict


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def time_vs_n(rows: list[dict], path: str) -> str | None:
    """Per subject and method, time per graph against N (rows whose params carry N). Returns the path or None."""
    series = defaultdict(list)
    for r in rows:
        n = r["params"].get("N")
        if n is None:
            continue
        per_graph = r["time_s"] / max(1, r["params"].get("G", 1))
        series[(r["subject"], r["method"], r["params"].get("mode", ""))].append((n, per_graph))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (subject, method, mode), pts in sorted(series.items()):
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{subject}: {method} {mode}".strip())
    ax.set(xscale="log", yscale="log", xlabel="N (nodes per graph)", ylabel="seconds per graph")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def quality_frontier(rows: list[dict], path: str) -> str | None:
    """Quality (objective / best) against time per graph, one point per (case, method)."""
    pts = [
        (r["time_s"] / max(1, r["params"].get("G", 1)), r["metrics"]["quality"], r["method"])
        for r in rows
        if "quality" in r["metrics"]
    ]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({p[2] for p in pts}):
        mine = [p for p in pts if p[2] == method]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], label=method, s=18)
    ax.set(xscale="log", xlabel="seconds per graph", ylabel="objective / best")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(rows: list[dict], folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    made = [
        time_vs_n(rows, os.path.join(folder, "time_vs_n.png")),
        quality_frontier(rows, os.path.join(folder, "quality_vs_time.png")),
    ]
    return [p for p in made if p]
