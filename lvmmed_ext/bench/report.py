"""Benchmark results: the JSON schema, Markdown tables, and the regression gate against a baseline.

A result file is ``{"schema": 1, "env": {...}, "rows": [row, ...]}``; a row is::

    {"subject": "solver", "case": "lvmmed N=16 k=5 G=64", "method": "lvmmed", "gate": true,
     "params": {"N": 16, ...}, "time_s": 1.2e-3,
     "metrics": {"graphs_per_s": ..., "gflop_per_s": ..., "gb_per_s": ..., "peak_fraction": ..., "quality": ...}}

Rows with ``gate: true`` (our own methods) are compared against a baseline; peers are context only.
"""

from __future__ import annotations

import importlib
import json
import os

from .subjects import SUBJECTS

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


def fmt_time(t: float) -> str:
    """Seconds as a short human string: '83.4 µs', '5.60 ms', '1.21 s'."""
    if t < 1e-3:
        return f"{t * 1e6:.1f} µs"
    return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


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
            f"| {key[0]} | {key[1]} | {key[2]} | {fmt_time(b['time_s'])} | {fmt_time(r['time_s'])} "
            f"| {change:+.1%} | {verdict} |"
        )
    missing = sorted(set(base) - seen)
    for key in missing:
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {fmt_time(base[key]['time_s'])} | - | - | not run |")
    head = "benchmark regression gate: " + ("PASSED" if ok else "FAILED")
    return ok, head + "\n" + "\n".join(lines)


def markdown_table(data: dict, header: bool = True) -> str:
    """The rows of one result as one generic Markdown table, tagged with device, date and commit."""
    env = data["env"]
    lines = (
        [
            f"Device: {env.get('device')} · torch {env.get('torch')} · date {env.get('date')} "
            f"· commit {env.get('commit')}",
            "",
        ]
        if header
        else []
    )
    lines += [
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
        if "x_floor" in m:
            ratios += (", " if ratios else "") + f"{m['x_floor']:.2f}x floor"
        cells = [r["subject"], r["case"], r["method"], fmt_time(r["time_s"]), thr, quality, ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tag_line(env: dict, json_path: str | None = None) -> str:
    """Device, versions, threads, load, date and commit of a result: the line every table section starts with."""
    parts = [f"**{env.get('device_kind', '?').upper()}**: {env.get('device')}", f"torch {env.get('torch')}"]
    if env.get("omp_wait_policy"):
        parts.append(f"OMP_WAIT_POLICY={env['omp_wait_policy']}")
    if env.get("load_average"):
        parts.append(f"load average {env['load_average'][0]:.1f} at the end")
    peers = env.get("peers") or {}
    have = [f"{k} {v}" for k, v in peers.items() if v]
    if have:
        parts.append("peers: " + ", ".join(have))
    parts.append(f"date {env.get('date')}")
    parts.append(f"commit `{env.get('commit')}`")
    if env.get("quick"):
        parts.append("**--quick** (smoke sizes)")
    if env.get("profiled"):
        parts.append("**profiled** (timings include profiler overhead)")
    if json_path:
        parts.append(f"JSON `{json_path}`")
    return " · ".join(parts)


def subject_markdown(subject: str, rows: list[dict]) -> str:
    """The subject's own tables (its module's ``markdown(rows)``), or the generic table."""
    module = importlib.import_module(SUBJECTS[subject]) if subject in SUBJECTS else None
    if module is not None and hasattr(module, "markdown"):
        return module.markdown(rows).rstrip("\n")
    return markdown_table({"env": {}, "rows": rows}, header=False)


def markdown_report(data: dict, json_path: str | None = None) -> str:
    """All tables of one result, one section per subject, each starting with the tag line (device, date, commit).

    Deterministic in ``data``: ``lvmmed bench --from-json R.json --markdown`` prints exactly what the run that wrote
    R.json printed, and ``--write-md`` pastes exactly this text into BENCHMARKS.md.
    """
    env = data["env"]
    tag = tag_line(env, json_path)
    out = []
    for subject in dict.fromkeys(r["subject"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["subject"] == subject]
        out += [f"### {subject} ({env.get('device_kind')})", "", tag, "", subject_markdown(subject, rows), ""]
    for note in env.get("notes", []):
        out.append(f"- note: {note}")
    return "\n".join(out).rstrip("\n") + "\n"


def markers(kind: str) -> tuple[str, str]:
    """The comment lines that delimit the generated tables of a device kind ('cpu' or 'cuda'; 'qaplib cpu' for the
    tables of a subject that reads data) in BENCHMARKS.md."""
    return (
        f"<!-- lvmmed bench: {kind} tables begin (generated: do not edit by hand) -->",
        f"<!-- lvmmed bench: {kind} tables end -->",
    )


def write_md(path: str, kind: str, text: str) -> None:
    """Replace the text between ``markers(kind)`` in the Markdown file ``path`` (which must contain both)."""
    begin, end = markers(kind)
    with open(path) as f:
        doc = f.read()
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path} has no '{begin}' ... '{end}' section to write the {kind} tables into")
    doc = doc[: i + len(begin)] + "\n" + text + doc[j:]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, path)
