"""``lvmmed ablate``: the gm loss, its Table 6 ablations (LVMMED_SPEC §5) and the InfoNCE / VICReg baselines,
pretrained with one seed, data, views, optimiser and budget, each evaluated by the linear probe and kNN; writes a
Markdown table, a bar chart and a JSON of the results (timings go to a separate file so that the table of a run
is reproducible byte for byte on CPU)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field

from ..errors import UsageError
from . import cli as train_cli

METHODS = ("linear-probe", "knn")
_UNSET = object()


@dataclass
class Variant:
    """One configuration of the ablation: a loss head and the head options that differ from its defaults."""

    name: str
    loss: str
    options: dict = field(default_factory=dict)
    about: str = ""


# The default list, in table order: the paper's Table 6 rows, then the baselines.
VARIANTS = {
    v.name: v
    for v in (
        Variant("gm", "gm", {}, "graph matching, full: second-order QAP, GCN, Gumbel noise, local term"),
        Variant("gm-no-edge", "gm", {"quad_weight": 0.0}, "w/o second-order term: linear assignment"),
        Variant("gm-no-gnn", "gm", {"use_gnn": False}, "w/o message passing"),
        Variant("gm-no-noise", "gm", {"noise": "none", "margin": 1.0}, "w/o Gumbel noise: ground-truth margin 1"),
        Variant("gm-no-local", "gm", {"alpha": 1.0}, "w/o local similarity (alpha = 1)"),
        Variant("infonce", "infonce", {}, "InfoNCE (SimCLR) baseline"),
        Variant("vicreg", "vicreg", {}, "VICReg baseline"),
    )
}

# `lvmmed ablate --demo`: the pretrain demo's images, views, batch and steps (train.cli.DEMO) with a ResNet-18 of
# half width (4x fewer FLOPs), so that the 7 default configurations and 8 evaluations fit in 15 minutes on 2 CPU
# cores (measured about 0.5 s per step on one core, any loss).
ABLATE_DEMO = {"width": 32, "steps": 150, "ckpt_every": 150}


def parse_configs(text: str) -> list[Variant]:
    """Configurations from ``--configs``: comma-separated items ``NAME`` (one of ``VARIANTS``) or
    ``[LABEL=]BASE[:KEY=VALUE[:KEY=VALUE...]]`` with BASE a variant or a loss name and KEY=VALUE head options
    (values as in ``--head-opt``: Python literals, else strings).

    Example:
        >>> [v.name for v in parse_configs("gm,gm-a05=gm:alpha=0.5,vicreg:cov_weight=4")]
        ['gm', 'gm-a05', 'vicreg:cov_weight=4']
    """
    from .heads import head_names

    variants: list[Variant] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        head, *pairs = item.split(":")
        label, base = head.split("=", 1) if "=" in head else (None, head)
        label, base = (label or "").strip(), base.strip()
        if base in VARIANTS:
            parent = VARIANTS[base]
            loss, options, about = parent.loss, dict(parent.options), parent.about
        elif base in head_names():
            loss, options, about = base, {}, f"{base} loss"
        else:
            raise UsageError(
                f"--configs: unknown configuration {base!r} in {item!r}; use one of {', '.join(VARIANTS)} or a loss "
                f"({', '.join(head_names())}), optionally LABEL=BASE:KEY=VALUE"
            )
        for pair in pairs:
            if "=" not in pair:
                raise UsageError(f"--configs: expected KEY=VALUE after ':' in {item!r}, got {pair!r}")
            key, value = train_cli._head_opt(pair)
            options[key] = value
        if pairs:
            inherited = VARIANTS[base].options if base in VARIANTS else {}
            about = f"{base} with " + _options_text({k: v for k, v in options.items() if inherited.get(k, _UNSET) != v})
        variants.append(Variant(label or item, loss, options, about))
    if not variants:
        raise UsageError("--configs lists no configuration")
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"--configs: configuration names must be unique, {', '.join(dupes)} repeats")
    return variants


def folder_name(name: str) -> str:
    """A configuration's run folder: its name with anything outside [A-Za-z0-9._-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def parser() -> argparse.ArgumentParser:
    p = train_cli.parser(ablate=True)
    a = p.add_argument_group("ablation")
    a.add_argument(
        "--configs",
        default=",".join(VARIANTS),
        help="comma-separated configurations, each NAME or [LABEL=]BASE[:KEY=VALUE...] (BASE: a name below or a "
        "loss; KEY=VALUE: head options). Names: "
        + "; ".join(f"{v.name} = {v.about}" for v in VARIANTS.values())
        + " (default: all of them)",
    )
    a.add_argument("--eval-data", default=None, help="labelled images for the evaluation: a folder with one "
                   "sub-folder per class, or a CSV path,label[,split] (as lvmmed eval --data)")  # fmt: skip
    a.add_argument("--eval-k", type=int, default=20, help="kNN neighbours (20)")
    a.add_argument("--eval-test-frac", type=float, default=0.3, help="test fraction when --eval-data has no split")
    a.add_argument("--eval-l2", default="auto", help="linear-probe L2 penalty, or 'auto' (3-fold CV)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as e:
        print(f"lvmmed ablate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lvmmed ablate: interrupted; rerun the same command with --out <folder> to continue", file=sys.stderr)
        return 130


def _options_text(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(options.items())) or "-"


def _final_loss(run_dir: str) -> float:
    """Mean training loss over the last tenth of the steps (at least one) from the run's log."""
    from .progress import read_csv

    losses = [float(r["loss"]) for r in read_csv(os.path.join(run_dir, "log.csv"))]
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail) if tail else float("nan")


def _pretrain_or_reuse(cfg):
    """Pretrain ``cfg`` into ``cfg.out``; a finished run there with the same settings is reused, an interrupted
    one resumed. Returns (exported backbone path, "trained" | "resumed" | "reused", the RunResult or None)."""
    from . import checkpoint as ckpt_io
    from .trainer import _check_resume, pretrain

    ckpt = os.path.join(cfg.out, "checkpoint.pt")
    if not os.path.exists(ckpt):
        result = pretrain(cfg)
        return result.weights, "trained", result
    saved = ckpt_io.load_checkpoint(ckpt)
    cfg.global_batch = cfg.batch_size * cfg.accum
    try:
        _check_resume(cfg, saved["config"], ckpt)
    except UsageError as e:
        raise UsageError(f"{e}; pass another --out for a new ablation") from None
    if int(saved["step"]) < int(saved["config"]["steps"]):
        result = pretrain(cfg, resume=ckpt)
        return result.weights, "resumed", result
    weights = os.path.join(cfg.out, "backbone.pth")
    if not os.path.exists(weights):
        weights, _ = ckpt_io.export_backbone(ckpt, weights)
    return weights, "reused", None


def _check_variant(v: Variant, options: dict, batch_size: int) -> None:
    """Build the head once on a small input width so that a bad option fails before any training."""
    from .heads import build_head

    try:
        build_head(v.loss, 8, **options)
    except UsageError as e:
        raise UsageError(f"configuration {v.name!r}: {e}") from None
    if v.loss == "gm":
        graph_size = options.get("graph_size", train_cli.gm_defaults()["graph_size"])
        if graph_size > batch_size:
            raise UsageError(
                f"configuration {v.name!r}: graph_size {graph_size} exceeds --batch-size {batch_size} (a batch "
                "must hold at least one graph)"
            )


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.cli import evaluate
    from ..eval.probe import load_labelled

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("lvmmed ablate runs in one process (each configuration uses --device); not under torchrun")
    if args.demo and hasattr(args, "data"):
        raise UsageError("--demo uses the offline demo images; drop --data (or drop --demo to train on --data)")
    if args.demo and args.eval_data:
        raise UsageError("--demo evaluates on the demo's MNI152 tissue task; drop --eval-data")
    if not args.demo:
        missing = [f for f, ok in (("--data", hasattr(args, "data")), ("--eval-data", args.eval_data),
                                   ("--steps", hasattr(args, "steps"))) if not ok]  # fmt: skip
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (every configuration trains --steps steps), or use --demo")
    try:
        l2 = args.eval_l2 if args.eval_l2 == "auto" else float(args.eval_l2)
    except ValueError:
        raise UsageError(f"--eval-l2 must be a number or 'auto', got {args.eval_l2!r}") from None
    variants = parse_configs(args.configs)
    if args.demo:
        for key, value in ABLATE_DEMO.items():
            if not hasattr(args, key):
                setattr(args, key, value)
    base = train_cli.build_config(args, None)  # the gm flags become base.head_opts (for the gm configurations)
    base_gm, demo = dict(base.head_opts), base.data == "demo"
    base.validate()
    out = base.out or os.path.join("runs", f"ablate-{time.strftime('%Y%m%d-%H%M%S')}")
    plans = []
    for v in variants:
        options = {
            **(train_cli.DEMO_HEAD_OPTS.get(v.loss, {}) if demo else {}),
            **(base_gm if v.loss == "gm" else {}),
            **v.options,
        }
        _check_variant(v, options, base.batch_size)
        plans.append((v, options))

    if not demo:  # bad evaluation data stops the command before anything is written
        data, eval_name = load_labelled(args.eval_data, base.preprocessing), args.eval_data
    os.makedirs(out, exist_ok=True)
    if demo:
        data = train_cli.demo_task(os.path.join(out, "eval_mni152_tissue"), base.seed, base.preprocessing)
        if data is None:
            raise UsageError("the demo ablation needs nilearn for its evaluation task (run scripts/setup.sh)")
        eval_name = f"demo task: {train_cli.DEMO_TASK}"
    device = base.device if base.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    workers = base.workers if base.workers is not None else (0 if demo else min(4, max(0, (os.cpu_count() or 1) - 1)))
    eval_dir = os.path.join(out, "eval")
    eval_kw = dict(out=eval_dir, device=device, workers=workers, seed=base.seed, l2=l2, k=args.eval_k,
                   test_frac=args.eval_test_frac)  # fmt: skip

    t_all = time.perf_counter()
    print(f"ablation: {len(plans)} configuration(s) x {base.steps} steps -> {out}", flush=True)
    t0 = time.perf_counter()
    random_init = evaluate(list(METHODS), "random", data, arch=base.arch, width=base.width,
                           in_chans=base.preprocessing.in_chans, image_size=base.image_size, label="random_init",
                           **eval_kw)  # fmt: skip
    rows = [_row("random init", "-", "-", "the backbone every configuration starts from", None, random_init)]
    timings = {"random init": {"eval_s": round(time.perf_counter() - t0, 2)}}
    for i, (v, options) in enumerate(plans, 1):
        cfg = copy.deepcopy(base)
        cfg.loss, cfg.head_opts = v.loss, options
        cfg.out = os.path.join(out, "runs", folder_name(v.name))
        print(f"[{i}/{len(plans)}] {v.name}: {v.about} (--loss {v.loss}; {_options_text(options)})", flush=True)
        t0 = time.perf_counter()
        weights, how, result = _pretrain_or_reuse(cfg)
        t_train = time.perf_counter() - t0
        summary = evaluate(list(METHODS), weights, data, label=folder_name(v.name), **eval_kw)
        timings[v.name] = {
            "pretrain": how,
            "pretrain_s": round(t_train, 2),
            "eval_s": round(time.perf_counter() - t0 - t_train, 2),
            "steps": cfg.steps,
            "loop_s_per_step": None if result is None else round(cfg.global_batch / result.images_per_s, 3),
        }
        rows.append(_row(v.name, v.loss, _options_text(options), v.about, _final_loss(cfg.out), summary))
        lp, kn = summary["results"]["linear-probe"], summary["results"]["knn"]
        print(f"[{i}/{len(plans)}] {v.name}: linear probe {lp['accuracy']:.3f}, kNN {kn['accuracy']:.3f} "
              f"({how} in {t_train:.0f} s, evaluated in {timings[v.name]['eval_s']:.0f} s)", flush=True)  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - t_all, 2)

    first = random_init["results"]["linear-probe"]
    settings = {
        "data": "demo" if demo else base.data,
        "arch": base.arch,
        "width": base.width,
        "image_size": base.image_size,
        "batch_size": base.batch_size,
        "accum": base.accum,
        "steps": base.steps,
        "lr": base.lr,
        "halvings": base.halvings,
        "seed": base.seed,
        "eval": eval_name,
        "eval_train": first["n_train"],
        "eval_test": first["n_test"],
        "classes": random_init["classes"],
        "eval_k": args.eval_k,
        "eval_l2": l2,
    }
    md_path, png_path, json_path = (os.path.join(out, f"ablation.{ext}") for ext in ("md", "png", "json"))
    table = markdown_table(rows, settings)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(table)
    with open(json_path, "w") as f:
        json.dump({"settings": settings, "rows": rows}, f, indent=1)
    with open(os.path.join(out, "timings.json"), "w") as f:
        json.dump(timings, f, indent=1)
    title = (
        f"{'demo images' if demo else os.path.basename(base.data.rstrip(os.sep))}: {base.steps} steps per configuration"
    )
    png = plot_ablation(rows, png_path, f"{title}, seed {base.seed}; evaluation: {os.path.basename(eval_name)[:40]}")
    print(table)
    print("outputs:")
    print(f"  table       {md_path}")
    print(f"  chart       {png or '(matplotlib not installed)'}")
    print(f"  results     {json_path}")
    print(f"  timings     {os.path.join(out, 'timings.json')}  (total {timings['total_s']:.0f} s)")
    print(f"  runs        {os.path.join(out, 'runs')}/<configuration>/  (checkpoint, log, loss plot, backbone)")
    print(f"  evaluation  {eval_dir}/  (confusion matrices, results JSON per configuration)")
    return 0


def _row(name: str, loss: str, options: str, about: str, final_loss: float | None, summary: dict) -> dict:
    lp, kn = summary["results"]["linear-probe"], summary["results"]["knn"]
    return {
        "configuration": name,
        "loss": loss,
        "options": options,
        "about": about,
        "final_loss": final_loss,
        "linear_probe_acc": lp["accuracy"],
        "linear_probe_bal_acc": lp["balanced_accuracy"],
        "knn_acc": kn["accuracy"],
        "knn_bal_acc": kn["balanced_accuracy"],
    }


def markdown_table(rows: list[dict], settings: dict) -> str:
    """The ablation as Markdown: a settings paragraph and one table row per configuration (no timings)."""
    width = "" if settings["width"] is None else f" (width {settings['width']})"
    lines = [
        "# lvmmed ablate",
        "",
        f"Pretraining: {settings['data']}, {settings['arch']}{width}, {settings['image_size']} px views, batch "
        f"{settings['batch_size']} x {settings['accum']} accumulation, {settings['steps']} steps, Adam lr "
        f"{settings['lr']:g} halved {settings['halvings']}x, seed {settings['seed']}; the same data order, views and "
        "initialisation for every configuration.",
        f"Evaluation: {settings['eval']} ({len(settings['classes'])} classes: {', '.join(settings['classes'])}; "
        f"{settings['eval_train']} train / {settings['eval_test']} test images); frozen pooled features; linear "
        f"probe = L2 logistic regression (penalty {settings['eval_l2']}), kNN = cosine, k = {settings['eval_k']}.",
        "",
        "| configuration | loss | head options | what it tests | final loss¹ | linear probe acc. | linear probe bal. "
        "acc. | kNN acc. | kNN bal. acc. |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        lines.append(
            f"| {r['configuration']} | {r['loss']} | {r['options']} | {r['about']} | {loss} | "
            f"{r['linear_probe_acc']:.3f} | {r['linear_probe_bal_acc']:.3f} | {r['knn_acc']:.3f} | "
            f"{r['knn_bal_acc']:.3f} |"
        )
    lines += ["", "¹ mean training loss over the last tenth of the steps; its scale differs between losses."]
    return "\n".join(lines) + "\n"


def plot_ablation(rows: list[dict], path: str, title: str) -> str | None:
    """Grouped bars: linear-probe and kNN accuracy per configuration (the random-init row first, hatched).
    Returns the PNG path, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np
    from matplotlib.patches import Patch

    names = [r["configuration"] for r in rows]
    x = np.arange(len(rows))
    series = (("linear_probe_acc", "linear probe", "#08519c", -0.2), ("knn_acc", "kNN", "#fd8d3c", 0.2))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 1.5), 4.2), dpi=110)
    for key, _, colour, offset in series:
        values = [r[key] for r in rows]
        bars = ax.bar(x + offset, values, 0.4, color=colour)
        bars[0].set_hatch("//")  # random init: the reference, not a configuration
        bars[0].set_alpha(0.55)
        for b, val in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, val, f"{val:.2f}", ha="center", va="bottom", fontsize=7)
    lows = [min(r["linear_probe_acc"], r["knn_acc"]) for r in rows]
    ax.set_ylim(max(0.0, min(lows) - 0.1), 1.1)
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colour, label=label) for _, label, colour, _ in series]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="random init (reference)"))
    ax.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    from .checkpoint import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
