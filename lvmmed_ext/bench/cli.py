"""``lvmmed bench [solver|affinity|loss|data|all] --device cpu|cuda --json OUT.json [--baseline OLD.json
--max-regression 10%]``: the benchmark suite, peers side by side, with a regression gate. ``lvmmed bench qaplib DIR
[--budgets 1ms,10ms] [--max-n 50]``: the QAP solver on the QAPLIB instances of DIR (not part of ``all``).

Every subject checks correctness first (a disagreement stops the run with exit code 1), then times with proper
synchronisation (CUDA events on GPU; warm-up; medians of repeats; interleaved rounds where ratios are reported).
``--markdown`` prints the tables, ``--write-md BENCHMARKS.md`` pastes them between the file's generated-section
markers for the device kind, ``--from-json R.json`` renders / gates / plots a saved result without running.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

import torch

from . import plots, report
from .context import BenchmarkCorrectnessError, Context
from .subjects import ALL, NEEDS_DATA, SUBJECTS
from .timing import environment


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lvmmed bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "subjects",
        nargs="*",
        default=["all"],
        help=f"any of {sorted(SUBJECTS)} or 'all' (= {', '.join(ALL)}); a subject that reads data is followed by its "
        + "folder: "
        + ", ".join(f"'{k} DIR' ({v})" for k, v in NEEDS_DATA.items()),
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", metavar="OUT.json", help="write the results here")
    ap.add_argument("--baseline", metavar="OLD.json", help="compare against this earlier result (same device kind)")
    ap.add_argument("--max-regression", default="10%", help="allowed slowdown of our methods vs --baseline")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI smoke run)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per case (median reported)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (medians, per-round ratios)")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per case and method before stopping early")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch (and BLAS) threads; default 1 on CPU (meaningful comparisons on a shared machine), "
        "torch's default on CUDA",
    )
    ap.add_argument("--only", metavar="TEXT", help="run only the cases whose name contains TEXT (case-insensitive)")
    ap.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory probes")
    ap.add_argument("--plots", metavar="DIR", help="write time-vs-N and quality-vs-time PNGs here")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="a torch.profiler trace (and op summary) per subject in DIR, named ranges (NVTX on CUDA) per case and "
        "call (the trace holds only the timed calls; on CUDA each lvmmed op also opens an NVTX range lvmmed::<op> "
        "around its launches); at most 3 repeats/rounds per case",
    )
    ap.add_argument("--profile-peers", action="store_true", help="with --profile: trace the slow per-graph peers too")
    ap.add_argument(
        "--budgets",
        metavar="B,B",
        help="qaplib: budgets per instance of our anytime search, a time limit ('10ms', '0.5s') or a move budget "
        "('5000it'), comma-separated (default 1ms,3ms,10ms)",
    )
    ap.add_argument("--max-n", type=int, metavar="N", help="qaplib: the largest instances to run (default 50)")
    ap.add_argument("--markdown", action="store_true", help="print the results as Markdown tables")
    ap.add_argument("--write-md", metavar="FILE", help="replace the generated tables of this device kind in FILE")
    ap.add_argument("--from-json", metavar="R.json", help="do not run: render / gate / plot this saved result")
    return ap


def _profiled(name: str, ctx: Context, profile_dir: str, module) -> list[dict]:
    os.makedirs(profile_dir, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ctx.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        ctx.profiler = prof
        ctx.collect(False)  # on only inside timed calls (Context.ranged)
        if ctx.device.type == "cuda":  # `nsys profile --capture-range=cudaProfilerApi` captures exactly this
            torch.cuda.profiler.start()
        try:
            rows = module.run(ctx)
        finally:
            ctx.profiler = None
            if ctx.device.type == "cuda":
                torch.cuda.profiler.stop()
    trace = os.path.join(profile_dir, f"trace_{name}_{ctx.device.type}.json")
    prof.export_chrome_trace(trace)
    sort = "cuda_time_total" if ctx.device.type == "cuda" else "cpu_time_total"
    with open(os.path.join(profile_dir, f"summary_{name}_{ctx.device.type}.txt"), "w") as f:
        f.write(prof.key_averages().table(sort_by=sort, row_limit=40))
    ctx.log(f"lvmmed bench: profiler trace written to {trace} (open in chrome://tracing or Perfetto)")
    return rows


def run_subjects(names: list[str], ctx: Context, profile_dir: str | None) -> list[dict]:
    rows = []
    for name in names:
        module = importlib.import_module(SUBJECTS[name])
        rows += _profiled(name, ctx, profile_dir, module) if profile_dir else module.run(ctx)
    return rows


@contextlib.contextmanager
def _thread_limits(threads: int | None):
    """torch's intra-op pool and the BLAS/OpenMP pools of numpy-based peers (threadpoolctl, when installed) at
    `threads` for the run, restored afterwards so an in-process `main()` leaves the caller's settings alone."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(limits=threads)
        with limits:
            yield
    finally:
        torch.set_num_threads(before)


def split_subjects(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """The subject names of the command line and the folder that follows each subject in NEEDS_DATA."""
    names, data = [], {}
    k = 0
    while k < len(words):
        name = words[k]
        names += ALL if name == "all" else [name]
        if name in NEEDS_DATA:
            if k + 1 == len(words) or words[k + 1] in SUBJECTS or words[k + 1] == "all":
                raise ValueError(f"{name} needs {NEEDS_DATA[name]}: lvmmed bench {name} DIR")
            data[name] = words[k + 1]
            k += 1
        k += 1
    return list(dict.fromkeys(names)), data


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names, data = split_subjects(args.subjects)
    except ValueError as err:
        print(f"lvmmed bench: {err}", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown:
        print(f"lvmmed bench: unknown subject(s) {unknown}; choose from {sorted(SUBJECTS)} or 'all'", file=sys.stderr)
        return 2
    for name, folder in data.items():
        if not os.path.isdir(folder):
            print(f"lvmmed bench: {name}: {folder} is not a folder", file=sys.stderr)
            return 2
    if args.max_n is not None and args.max_n < 1:
        print(f"lvmmed bench: --max-n must be >= 1, got {args.max_n}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not args.from_json and not torch.cuda.is_available():
        print("lvmmed bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"lvmmed bench: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    try:
        max_reg = report.parse_fraction(args.max_regression)
        baseline = report.load(args.baseline) if args.baseline else None
        saved = report.load(args.from_json) if args.from_json else None
    except (OSError, ValueError) as err:
        print(f"lvmmed bench: {err}", file=sys.stderr)
        return 2

    if saved is not None:
        result = saved
    else:
        device = torch.device(args.device)
        threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
        ctx = Context(
            device,
            quick=args.quick,
            profile=bool(args.profile),
            repeats=min(args.repeats, 3) if args.profile else args.repeats,
            rounds=min(args.rounds, 3) if args.profile else args.rounds,
            budget_s=args.budget,
            memory=not args.no_memory,
            only=args.only,
            profile_peers=args.profile_peers,
            data=data,
            budgets=args.budgets.split(",") if args.budgets else None,
            max_n=args.max_n,
        )
        try:
            with _thread_limits(threads):
                rows = run_subjects(names, ctx, args.profile)
                env = environment(ctx.device)  # records the thread count the run used
        except BenchmarkCorrectnessError as err:
            print(f"lvmmed bench: {err}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as err:  # unreadable data of a NEEDS_DATA subject, a bad --budgets entry
            print(f"lvmmed bench: {err}", file=sys.stderr)
            return 2
        env.update(quick=args.quick, profiled=bool(args.profile), notes=ctx.notes, subjects=names)
        if args.json:
            env["json"] = args.json
        result = {"schema": report.SCHEMA, "env": env, "rows": rows}
        if args.json:
            report.save(args.json, env, rows)
            print(f"lvmmed bench: results written to {args.json}", file=sys.stderr)

    text = report.markdown_report(result, result["env"].get("json"))
    if args.markdown or not (args.json or args.write_md or args.baseline):
        print(text)
    if args.write_md:
        kind = "cpu" if result["env"].get("device_kind") == "cpu" else "cuda"
        if set(result["env"].get("subjects", [])) <= set(NEEDS_DATA):  # their own sections, e.g. "qaplib cpu"
            kind = " ".join(result["env"]["subjects"] + [kind])
        try:
            report.write_md(args.write_md, kind, text)
        except (OSError, ValueError) as err:
            print(f"lvmmed bench: {err}", file=sys.stderr)
            return 2
        print(f"lvmmed bench: {kind} tables written into {args.write_md}", file=sys.stderr)
    if args.plots:
        for path in plots.write_all(result["rows"], args.plots):
            print(f"lvmmed bench: plot written to {path}", file=sys.stderr)
    if baseline is not None:
        ok, text = report.compare(baseline, result, max_reg)
        print(text)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
