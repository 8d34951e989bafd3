"""``lvmmed bench [solver|affinity|loss|all] --device cpu|cuda --json OUT.json [--baseline OLD.json
--max-regression 10%]``: the benchmark suite, peers side by side, with a regression gate."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from . import plots, report
from .context import BenchmarkCorrectnessError, Context
from .subjects import SUBJECTS
from .timing import environment


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lvmmed bench", description=__doc__)
    ap.add_argument("subjects", nargs="*", default=["all"], help=f"any of {sorted(SUBJECTS)} or 'all'")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", metavar="OUT.json", help="write the results here")
    ap.add_argument("--baseline", metavar="OLD.json", help="compare against this earlier result (same device kind)")
    ap.add_argument("--max-regression", default="10%", help="allowed slowdown of our methods vs --baseline")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI smoke run)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per case (median reported)")
    ap.add_argument("--plots", metavar="DIR", help="write time-vs-N and quality-vs-time PNGs here")
    ap.add_argument("--profile", metavar="DIR", help="NVTX ranges per case and a torch.profiler trace in DIR")
    ap.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    return ap


def run_subjects(names: list[str], ctx: Context, profile_dir: str | None) -> list[dict]:
    rows = []
    for name in names:
        module = importlib.import_module(SUBJECTS[name])
        if profile_dir:
            os.makedirs(profile_dir, exist_ok=True)
            activities = [torch.profiler.ProfilerActivity.CPU]
            if ctx.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
                rows += module.run(ctx)
            prof.export_chrome_trace(os.path.join(profile_dir, f"trace_{name}.json"))
        else:
            rows += module.run(ctx)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = sorted(SUBJECTS) if "all" in args.subjects else args.subjects
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown:
        print(f"lvmmed bench: unknown subject(s) {unknown}; choose from {sorted(SUBJECTS)} or 'all'", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("lvmmed bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    try:
        max_reg = report.parse_fraction(args.max_regression)
        baseline = report.load(args.baseline) if args.baseline else None
    except (OSError, ValueError) as err:
        print(f"lvmmed bench: {err}", file=sys.stderr)
        return 2
    ctx = Context(torch.device(args.device), quick=args.quick, profile=bool(args.profile), repeats=args.repeats)
    try:
        rows = run_subjects(names, ctx, args.profile)
    except BenchmarkCorrectnessError as err:
        print(f"lvmmed bench: {err}", file=sys.stderr)
        return 1
    result = {"schema": report.SCHEMA, "env": environment(ctx.device), "rows": rows}
    if args.json:
        report.save(args.json, result["env"], rows)
        print(f"lvmmed bench: results written to {args.json}")
    if args.markdown or not args.json:
        print(report.markdown_table(result))
    if args.plots:
        for path in plots.write_all(rows, args.plots):
            print(f"lvmmed bench: plot written to {path}")
    if baseline is not None:
        ok, text = report.compare(baseline, result, max_reg)
        print(text)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
