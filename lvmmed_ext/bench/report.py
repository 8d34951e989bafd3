"""Benchmark results: the JSON schema, Markdown tables, and the regression gate against a baseline.

A result file is ``{"schema": 1, "env": {...}, "rows": [row, ...]}``; a row is::

    {"subject": "solver", "case": "lvmmed N=16 k=5 G=64", "method": "lvmmed", "gate": true,
     "params": {"N": 16, ...}, "time_s": 1.2e-3,
     "metrics": {"graphs_per_s": ..., "gflop_per_s": ..., "gb_per_s": ..., "peak_fraction": ..., "quality": ...}}

Rows with ``gate: true`` (our own methods) are compared against a baseline; peers are context only.
"""

from __future__ import annotations

import json
import os

SCHEMA = 1


def row(subject: str, case: str, method: str, time_s: float, *, gate: bool, params=None, **metrics) -> dict:
    return {
        "subject": subject,
        "case": case,
        "method": method,
        "gate": gate,
        "params": dict(params or {}),
        "time_s": time_s,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
    }


def save(path: str, env: dict, rows: list[dict]) -> None:
    """Write atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"schema": SCHEMA, "env": env, "rows": rows}, f, indent=1)
    os.replace(tmp, path)


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "rows" not in data:
        raise ValueError(f"{path} is not an lvmmed benchmark result (schema {SCHEMA})")
    return data


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if value < 0:
        raise ValueError(f"--max-regression must be >= 0, got {text}")
    return value


def _fmt_time(t: float) -> str:
    return f"{t * 1e6:.1f} us" if t < 1e-3 else (f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s")


def compare(baseline: dict, current: dict, max_regression: float, quality_tolerance: float = 0.005):
    """Gate `current` against `baseline`: returns (ok, report_text).

    A gated row regresses when its time grows by more than ``max_regression`` (fraction) or its quality metric
    drops by more than ``quality_tolerance`` (absolute). Results from different device kinds are not compared.
    """
    kb, kc = baseline["env"].get("device_kind"), current["env"].get("device_kind")
    if kb != kc:
        return False, f"baseline ran on {kb!r} but this run on {kc!r}: results from different devices are not compared"
    base = {(r["subject"], r["case"], r["method"]): r for r in baseline["rows"] if r.get("gate")}
    lines = ["| subject | case | method | baseline | current | change | verdict |", "|---|---|---|---|---|---|---|"]
    ok = True
    seen = set()
    for r in current["rows"]:
        key = (r["subject"], r["case"], r["method"])
        if not r.get("gate") or key not in base:
            continue
        seen.add(key)
        b = base[key]
        change = r["time_s"] / b["time_s"] - 1 if b["time_s"] > 0 else 0.0
        verdict = "ok"
        if change > max_regression:
            verdict, ok = f"SLOWER (limit +{max_regression:.0%})", False
        qb, qc = b["metrics"].get("quality"), r["metrics"].get("quality")
        if qb is not None and qc is not None and qc < qb - quality_tolerance:
            verdict, ok = f"WORSE quality {qb:.4f} -> {qc:.4f}", False
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_fmt_time(b['time_s'])} | {_fmt_time(r['time_s'])} "
            f"| {change:+.1%} | {verdict} |"
        )
    missing = sorted(set(base) - seen)
    for key in missing:
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {_fmt_time(base[key]['time_s'])} | - | - | not run |")
    head = "benchmark regression gate: " + ("PASSED" if ok else "FAILED")
    return ok, head + "\n" + "\n".join(lines)


def markdown_table(data: dict) -> str:
    """The rows of one result as a Markdown table, tagged with device, date and commit."""
    env = data["env"]
    lines = [
        f"Device: {env.get('device')} · torch {env.get('torch')} · date {env.get('date')} · commit {env.get('commit')}",
        "",
        "| subject | case | method | time | throughput | quality | vs peers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        m = r["metrics"]
        thr = ", ".join(
            f"{m[k]:.3g} {unit}"
            for k, unit in (("graphs_per_s", "graphs/s"), ("gflop_per_s", "GFLOP/s"), ("gb_per_s", "GB/s"))
            if k in m
        )
        if "peak_fraction" in m:
            thr += f" ({m['peak_fraction']:.1%} of peak)"
        quality = f"{m['quality']:.4f}" if "quality" in m else ""
        ratios = ", ".join(f"{v:.2f}x vs {k}" for k, v in m.get("speedup", {}).items())
        if "overhead_vs_infonce" in m:
            ratios += f"{m['overhead_vs_infonce']:.1f}x the time of infonce"
        cells = [r["subject"], r["case"], r["method"], _fmt_time(r["time_s"]), thr, quality, ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
