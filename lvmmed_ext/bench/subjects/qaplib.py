"""``lvmmed bench qaplib DIR``: :func:`lvmmed_ext.solve_qap` on QAPLIB, the QAP field's own benchmark, beside scipy's
``quadratic_assignment`` (FAQ and 2-opt), at one or more budgets per instance.

The instances are read from DIR (``*.dat`` with their ``*.sln`` best known solutions; none ship with this package,
see :mod:`lvmmed_ext.qaplib`), those of size ``n <= --max-n`` (default 50) that have a best known value. Every method
solves every instance once, one instance per call; that answer-producing call is timed (wall clock, synchronised).
Ours: ``its`` at each budget of ``--budgets`` (``10ms``: a time limit per instance; ``5000it``: a move budget, the
same answer on any machine), and ``ls`` / ``ils`` at their defaults; scipy's FAQ and 2-opt at theirs (2-opt seeded).

Rows: one per instance and method (objective, best known, gap in percent, exact: 1 when the best known was reached)
and one per method and budget with ``case: "all"``: ``gap_pct`` (mean over the instances), ``median_gap_pct``,
``max_gap_pct``, ``exact_frac``, ``time_s`` (mean per instance). ``--quick``: the first budget, instances of
``n <= 20``.
"""

from __future__ import annotations

import re
import statistics
import time
from functools import partial

import numpy as np
import torch

from ... import qap_objective, qaplib, solve_qap
from ..report import fmt_time, row
from ..timing import sync

try:
    from scipy.optimize import quadratic_assignment
except ImportError:  # optional peer
    quadratic_assignment = None

DEFAULT_BUDGETS = ("1ms", "3ms", "10ms")
DEFAULT_MAX_N = 50
QUICK_MAX_N = 20


def parse_budget(text: str) -> dict:
    """``"10ms"`` / ``"0.5s"`` -> ``{"time_limit": seconds}``, ``"5000it"`` -> ``{"max_iter": 5000}``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|it)\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"a budget is a time per instance ('10ms', '0.5s') or a move budget ('5000it'), got {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "it":
        if value != int(value):
            raise ValueError(f"a move budget is a whole number of moves, got {text!r}")
        return {"max_iter": int(value)}
    return {"time_limit": value / 1e3 if unit == "ms" else value}


def _family(name: str) -> str:
    return re.match(r"[a-z]+", name).group(0)


def _ours(inst, device, **kw):
    X = solve_qap(**inst.inputs(device=device), generator=torch.Generator().manual_seed(0), **kw)
    return X[0].argmax(1).cpu()


def _scipy(inst, method):
    options = {"rng": np.random.default_rng(0)} if method == "2opt" else {}
    res = quadratic_assignment(inst.A.numpy(), inst.B.numpy(), method=method, options=options)
    return torch.from_numpy(res.col_ind).long()


def methods(ctx, budgets: list[str]) -> list[tuple[str, str, object, bool]]:
    """``(name, budget, solve(instance) -> permutation, ours)`` of every method of the run."""
    out = [("ours_its", b, partial(_ours, device=ctx.device, method="its", **parse_budget(b)), True) for b in budgets]
    out += [(f"ours_{m}", "default", partial(_ours, device=ctx.device, method=m), True) for m in ("ls", "ils")]
    if quadratic_assignment is not None:
        out += [(f"scipy_{m}", "default", partial(_scipy, method=m), False) for m in ("faq", "2opt")]
    return out


def run(ctx) -> list[dict]:
    folder = ctx.data.get("qaplib")
    if folder is None:
        raise ValueError("the qaplib subject needs the folder of QAPLIB .dat/.sln files: lvmmed bench qaplib DIR")
    budgets = list(ctx.budgets or DEFAULT_BUDGETS)[: 1 if ctx.quick else None]
    for b in budgets:
        parse_budget(b)
    max_n = min(ctx.max_n or DEFAULT_MAX_N, QUICK_MAX_N) if ctx.quick else (ctx.max_n or DEFAULT_MAX_N)
    instances = qaplib.load_folder(folder, max_n=max_n)
    unsolved = [i.name for i in instances if i.best_value is None]
    if unsolved:
        ctx.note(f"qaplib: {len(unsolved)} instance(s) of n <= {max_n} without a .sln best known value left out")
    instances = [i for i in instances if i.best_value is not None]
    if not instances:
        raise ValueError(f"{folder} holds no QAPLIB instance of n <= {max_n} with a .sln best known value")
    for inst in instances:
        for text in inst.notes:
            ctx.note(f"qaplib: {text}")
    if quadratic_assignment is None:
        ctx.note("scipy is not importable: its FAQ and 2-opt peers are skipped (pip install scipy)")
    rows = []
    for name, budget, solve, ours in methods(ctx, budgets):
        ctx.log(f"qaplib: {name} ({budget}) on {len(instances)} instances")
        gaps, times = [], []
        for inst in instances:
            call = partial(solve, inst)
            if ours:
                call = ctx.ranged(f"qaplib {inst.name} | {name} {budget}", call)
            t0 = time.perf_counter()
            perm = call()
            sync(ctx.device)
            t = time.perf_counter() - t0
            ctx.require(
                f"qaplib {inst.name} {name}",
                torch.equal(torch.sort(perm).values, torch.arange(inst.n)),
                "the answer is not a permutation",
            )
            f = inst.objective(perm)
            if ours and not rows:  # our objective op agrees with the float64 one on the first answer
                X = torch.zeros(1, inst.n, inst.n, dtype=torch.float64)
                X[0, torch.arange(inst.n), perm] = 1
                ctx.check("qaplib qap_objective", -qap_objective(X, **inst.inputs()), torch.tensor([f]), 1e-9, 1e-9)
            gap = qaplib.gap_pct(f, inst.best_value)
            if gap < 0:
                ctx.note(
                    f"qaplib: {name} ({budget}) found {f:g} on {inst.name}, below the best known {inst.best_value:g}"
                )
            gaps.append(gap)
            times.append(t)
            params = {"n": inst.n, "family": _family(inst.name), "budget": budget}
            rows.append(
                row(
                    "qaplib",
                    inst.name,
                    name,
                    t,
                    gate=False,
                    params=params,
                    objective=f,
                    best_known=inst.best_value,
                    gap_pct=gap if gap != float("inf") else None,
                    exact=float(gap <= 0),
                )
            )
        worst = max(range(len(gaps)), key=lambda k: gaps[k])
        mean_gap = statistics.fmean(gaps)
        params = {"budget": budget, "instances": len(instances), "max_n": max_n, "worst": instances[worst].name}
        rows.append(
            row(
                "qaplib",
                "all",
                name,
                statistics.fmean(times),
                gate=ours,
                params=params,
                gap_pct=mean_gap,
                median_gap_pct=statistics.median(gaps),
                max_gap_pct=gaps[worst],
                exact_frac=sum(g <= 0 for g in gaps) / len(gaps),
                quality=1 - mean_gap / 100 if ours else None,
            )
        )
    return rows


# ------------------------------------------------------------------------------------------ Markdown
LABELS = {"ours_its": "**ours_its**", "scipy_faq": "scipy FAQ", "scipy_2opt": "scipy 2-opt"}


def markdown(rows: list[dict]) -> str:
    """The QAPLIB tables: the summary per method and budget, and the mean gap by instance family."""
    summary = [r for r in rows if r["case"] == "all"]
    if not summary:
        return ""
    p0 = summary[0]["params"]
    out = [
        f"#### QAPLIB, n <= {p0['max_n']}: {p0['instances']} instances with a best known value, one call per instance",
        "",
        "Gap: (objective - best known) / best known, in percent; exact: the fraction of instances solved to the best "
        "known value; time: mean wall time of the answer-producing call per instance. `its` budgets: a time limit "
        "per instance (`ms`) or a move budget (`it`); the other methods run to their own ends.",
        "",
        "| method | budget | mean gap | median gap | exact | max gap (instance) | time / instance |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in summary:
        m, p = r["metrics"], r["params"]
        out.append(
            f"| {LABELS.get(r['method'], r['method'])} | {p['budget']} | {m['gap_pct']:.2f} % | "
            f"{m['median_gap_pct']:.2f} % | {m['exact_frac']:.2f} | {m['max_gap_pct']:.2f} % ({p['worst']}) | "
            f"{fmt_time(r['time_s'])} |"
        )
    per = [r for r in rows if r["case"] != "all"]
    keys = list(dict.fromkeys((r["method"], r["params"]["budget"]) for r in per))
    count = {}
    for r in per:
        if (r["method"], r["params"]["budget"]) == keys[0]:
            count[r["params"]["family"]] = count.get(r["params"]["family"], 0) + 1
    families = sorted(count)
    out += [
        "",
        "Mean gap by instance family (percent; instances in brackets):",
        "",
        "| method | budget | " + " | ".join(f"{f} ({count[f]})" for f in families) + " |",
        "| --- | --- |" + " ---: |" * len(families),
    ]
    for method, budget in keys:
        cells = []
        for f in families:
            gaps = [
                r["metrics"].get("gap_pct", float("inf"))
                for r in per
                if r["method"] == method and r["params"]["budget"] == budget and r["params"]["family"] == f
            ]
            cells.append(f"{statistics.fmean(gaps):.2f}" if gaps else "-")
        out.append(f"| {LABELS.get(method, method)} | {budget} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)
