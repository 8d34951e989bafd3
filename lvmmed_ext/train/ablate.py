"""``lvmmed ablate``: the gm loss, its Table 6 ablations (LVMMED_SPEC §5) and the InfoNCE / VICReg baselines,
pretrained with one seed, data, views, optimiser and budget, each evaluated by the linear probe and kNN; writes a
Markdown table, a bar chart and a JSON of the results (timings go to a separate file so that the table of a run
is reproducible byte for byte on CPU).

Comparisons are paired: the same seed gives every configuration the same initial weights, data order, views and
test images, so each configuration is compared with a reference configuration (``--reference``) seed by seed, and
the mean of those differences gets a 95% interval from a bootstrap over the seeds and the test images (the
evaluation keeps each test image's prediction for it). Only an interval that excludes 0, or a difference of the
same sign on every seed, is called "ahead" or "behind"."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import re
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from ..data.demo import (
    DEMO_HEAD_OPTS,
    SEGMENTATION_CLASSES,
    demo_label_specs,
    mni152_available,
    mni152_segmentation_task,
)
from ..data.presets import PREP_KEYS
from ..errors import UsageError, parse_seeds, run_command
from ..eval.classify import evaluate
from ..eval.demo import demo_tasks
from ..eval.probe import load_labelled
from ..eval.segment import demo_segmentation, load_pairs
from ..heads import build_head, head_accepts, head_names, head_needs, head_recipe
from ..options import Option, add_arguments
from ..system import default_device, loader_workers, save_figure
from . import checkpoint as ckpt_io
from .config import TRAIN_OPTIONS, add_train_arguments, build_config, check_resume, gm_defaults, parse_head_opt
from .progress import read_csv
from .trainer import pretrain

METHODS = ("linear-probe", "knn")
_UNSET = object()


@dataclass
class Variant:
    """One configuration of the ablation: a loss head, the head options that differ from its defaults, and a named
    recipe of the loss (``--recipe``: its head options and method settings; see :func:`recipe_parts`)."""

    name: str
    loss: str
    options: dict = field(default_factory=dict)
    about: str = ""
    recipe: str = ""


# What every configuration of an ablation shares, whatever its recipe says: the budget and the optimisation.
SHARED_SETTINGS = ("steps", "epochs", "batch_size", "accum", "image_size", "optimizer", "lr", "momentum", "schedule",
                   "warmup_epochs", "weight_decay", "halvings", "backbone_lr_mult")  # fmt: skip


def recipe_parts(loss: str, recipe: str) -> tuple[dict, dict]:
    """(head options, settings) of ``--recipe recipe`` of ``loss`` as an ablation applies it: the settings that
    define the method (views, label policy, dataset cycling, intensity window), without ``SHARED_SETTINGS``."""
    if not recipe:
        return {}, {}
    r = head_recipe(loss, recipe)
    return dict(r.head_opts), {k: v for k, v in r.settings.items() if k not in SHARED_SETTINGS}


# The default list, in table order: the paper's Table 6 rows, then the baselines.
VARIANTS = {
    v.name: v
    for v in (
        Variant("gm", "gm", {}, "graph matching, full: second-order QAP, message passing, Gumbel noise, local term"),
        Variant("gm-no-edge", "gm", {"quad_weight": 0.0}, "w/o second-order term: linear assignment"),
        Variant("gm-no-gnn", "gm", {"use_gnn": False}, "w/o message passing"),
        Variant("gm-no-noise", "gm", {"noise": "none", "margin": 1.0}, "w/o Gumbel noise: ground-truth margin 1"),
        Variant("gm-no-local", "gm", {"alpha": 1.0}, "w/o local similarity (alpha = 1)"),
        Variant("infonce", "infonce", {}, "InfoNCE (SimCLR) baseline"),
        Variant("vicreg", "vicreg", {}, "VICReg baseline"),
        Variant("peac", "peac", {}, "PEAC: student/EMA-teacher global + local (overlapping patches) consistency"),
        Variant("genesis", "genesis", {}, "Models Genesis: restore Bezier/shuffle/in-/out-painted crops (U-Net, MSE)"),
        Variant(
            "ark",
            "ark",
            {},
            "Ark: SUPERVISED, one classifier per labelled dataset (--labels; with --demo the evaluation tasks' "
            "training rows) + EMA-teacher consistency",
        ),
        Variant("peac-paper", "peac", {}, "PEAC as published (--recipe paper): stable grid, POPAR branches",
                recipe="paper"),
        Variant("genesis-paper", "genesis", {}, "Models Genesis as published (--recipe paper): the authors' "
                "process, sigmoid output", recipe="paper"),
        Variant("ark-paper", "ark", {}, "Ark as published (--recipe paper): SUPERVISED, ramped one-way "
                "consistency, a pass per dataset, teacher per pass", recipe="paper"),
    )
}  # fmt: skip
# The configurations run when --configs is not given (the paper's Table 6 rows and the SSL baselines).
DEFAULT_CONFIGS = ("gm", "gm-no-edge", "gm-no-gnn", "gm-no-noise", "gm-no-local", "infonce", "vicreg")

# `lvmmed ablate --demo --budget NAME`: the pretrain demo's images, views and batch (data.demo.DEMO) with a
# ResNet-18 of half width (4x fewer FLOPs). "short": the 7 default configurations and 8 evaluations in about 10
# minutes on 2 CPU cores; "medium": the study budget of docs/STUDY.md, about 20 minutes per seed.
BUDGETS = {
    "short": {"width": 32, "steps": 150, "ckpt_every": 150},
    "medium": {"width": 32, "steps": 500, "ckpt_every": 250},
}


def parse_configs(text: str) -> list[Variant]:
    """Configurations from ``--configs``: comma-separated items ``NAME`` (one of ``VARIANTS``) or
    ``[LABEL=]BASE[:KEY=VALUE[:KEY=VALUE...]]`` with BASE a variant or a loss name and KEY=VALUE head options
    (values as in ``--head-opt``: Python literals, else strings), or ``recipe=NAME`` for a recipe of the loss.

    Example:
        >>> [(v.name, v.recipe) for v in parse_configs("gm,gm-a05=gm:alpha=0.5,peac:recipe=paper")]
        [('gm', ''), ('gm-a05', ''), ('peac:recipe=paper', 'paper')]
    """
    variants: list[Variant] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        head, *pairs = item.split(":")
        label, base = head.split("=", 1) if "=" in head else (None, head)
        label, base = (label or "").strip(), base.strip()
        recipe = ""
        if base in VARIANTS:
            parent = VARIANTS[base]
            loss, options, about, recipe = parent.loss, dict(parent.options), parent.about, parent.recipe
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
            key, value = parse_head_opt(pair)
            if key == "recipe":
                recipe = str(value)
                head_recipe(loss, recipe)  # UsageError naming the loss's recipes
                continue
            options[key] = value
        if pairs:
            inherited = VARIANTS[base].options if base in VARIANTS else {}
            changed = {k: v for k, v in options.items() if inherited.get(k, _UNSET) != v}
            if recipe and recipe != (VARIANTS[base].recipe if base in VARIANTS else ""):
                changed = {"recipe": recipe, **changed}
            about = f"{base} with " + _options_text(changed)
        variants.append(Variant(label or item, loss, options, about, recipe))
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


# The options of lvmmed ablate besides the pretraining ones it shares (add_train_arguments).
ABLATE_OPTIONS = (
    Option(
        "configs",
        "--configs",
        ",".join(DEFAULT_CONFIGS),
        "comma-separated configurations, each NAME or "
        "[LABEL=]BASE[:KEY=VALUE...] (BASE: a name below or a loss; KEY=VALUE: head options, or recipe=NAME: "
        "the loss's recipe, whose method settings apply while the budget and optimisation stay shared). Names: "
        + "; ".join(f"{v.name} = {v.about}" for v in VARIANTS.values()),
        group="ablation",
        commands=("ablate",),
        show_default=False,
    ),  # fmt: skip
    Option(
        "seeds",
        "--seeds",
        None,
        "train and evaluate every configuration once per seed (e.g. 0,1,2); the table "
        "reports mean +- std over the seeds. Each seed's numbers equal those of a run with --seed S. Default: "
        "--seed",
        group="ablation",
        metavar="S1,S2,...",
        commands=("ablate",),
    ),  # fmt: skip
    Option(
        "budget",
        "--budget",
        None,
        "with --demo: "
        + "; ".join(f"{k} = {v['steps']} steps, width {v['width']}" for k, v in BUDGETS.items())
        + " (short when not given); options given explicitly win",
        group="ablation",
        choices=tuple(sorted(BUDGETS)),
        commands=("ablate",),
    ),  # fmt: skip
    Option(
        "eval_data",
        "--eval-data",
        None,
        "labelled images for the evaluation: a folder with one sub-folder per "
        "class, or a CSV path,label[,split] (as lvmmed eval --data); repeat for several tasks",
        group="ablation",
        append=True,
        metavar="PATH",
        commands=("ablate",),
    ),  # fmt: skip
    Option(
        "no_seg",
        "--no-seg",
        False,
        "with --demo: leave out the segmentation column (one U-Net fine-tuning per "
        "configuration and seed, about as long as a short pretraining each)",
        "bool",
        group="ablation",
        switch=True,
        commands=("ablate",),
    ),  # fmt: skip
    Option("eval_k", "--eval-k", 20, "kNN neighbours", "int", group="ablation", commands=("ablate",)),
    Option(
        "eval_test_frac",
        "--eval-test-frac",
        0.3,
        "test fraction when --eval-data has no split",
        "float",
        group="ablation",
        commands=("ablate",),
    ),  # fmt: skip
    Option(
        "eval_l2",
        "--eval-l2",
        "auto",
        "linear-probe L2 penalty, or 'auto' (3-fold CV)",
        group="ablation",
        commands=("ablate",),
    ),  # fmt: skip
    Option(
        "reference",
        "--reference",
        None,
        "the configuration every other row is compared with seed by seed (paired differences, their mean with a "
        "95% bootstrap interval over seeds and test images): a --configs name or 'random init'. Default: the first "
        "configuration",
        group="ablation",
        metavar="NAME",
        commands=("ablate",),
    ),  # fmt: skip
    Option(
        "render",
        "--render",
        None,
        "re-render the table and chart of a saved ablation.json (no training or evaluation; e.g. with another "
        "--reference) into --out (default: the JSON's folder)",
        group="ablation",
        metavar="ABLATION_JSON",
        commands=("ablate",),
    ),  # fmt: skip
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvmmed ablate",
        description="Pretrain one backbone per configuration (the gm loss, its Table 6 ablations, InfoNCE, "
        "VICReg) with the same data, views, optimiser, seed and budget, evaluate each with the linear probe and "
        "kNN on labelled data, and write a Markdown table and a bar chart. Options below set what all "
        "configurations share; the gm flags set every gm configuration's base options.",
    )
    groups = add_train_arguments(p, "ablate")
    add_arguments(p, ABLATE_OPTIONS, "ablate", groups)
    return p


def _ablate_args(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace with every ablation option (its default where not given)."""
    for o in ABLATE_OPTIONS:
        if not hasattr(args, o.key):
            setattr(args, o.key, o.default)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "render", None) is not None:
        return run_command("lvmmed ablate", lambda: _render(args))
    args = _ablate_args(args)
    return run_command("lvmmed ablate", lambda: _run(args), "interrupted; rerun the same command with --out <folder> "
                       "to continue")  # fmt: skip


def _options_text(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(options.items())) or "-"


def _log_tail_means(run_dir: str) -> dict[str, float]:
    """Means over the last tenth of the steps (at least one) of the run's training loss and matching diagnostics
    (``final_loss``, ``match_acc``, ``backbone_match_acc``; a diagnostic the loss does not report is left out)."""
    rows = read_csv(os.path.join(run_dir, "log.csv"))
    tail = rows[-max(1, len(rows) // 10) :]
    out = {}
    for key, name in (("loss", "final_loss"), ("match_acc", "match_acc"), ("backbone_match_acc", "backbone_match_acc")):
        vals = [float(r[key]) for r in tail if r.get(key) not in (None, "")]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


def logged_train_seconds(run_dir: str) -> float | None:
    """Seconds the training loop of the run in ``run_dir`` took, from its ``log.csv`` (``elapsed_s`` restarts at
    each resume, so the parts are added); None without a log. For a reused run these are the seconds of the
    command that trained it."""
    path = os.path.join(run_dir, "log.csv")
    if not os.path.exists(path):
        return None
    elapsed = [float(r["elapsed_s"]) for r in read_csv(path) if r.get("elapsed_s") not in (None, "")]
    if not elapsed:
        return None
    ends = [a for a, b in zip(elapsed, elapsed[1:]) if b < a]  # the last row of every part but the last
    return sum(ends) + elapsed[-1]


def _pretrain_or_reuse(cfg):
    """Pretrain ``cfg`` into ``cfg.out``; a finished run there with the same settings is reused, an interrupted
    one resumed. Returns (exported backbone path, "trained" | "resumed" | "reused")."""
    ckpt = os.path.join(cfg.out, "checkpoint.pt")
    if not os.path.exists(ckpt):
        return pretrain(cfg).weights, "trained"
    saved = ckpt_io.load_checkpoint(ckpt)
    cfg.global_batch = cfg.batch_size * cfg.accum
    try:
        check_resume(cfg, saved["config"], ckpt)
    except UsageError as e:
        raise UsageError(f"{e}; pass another --out for a new ablation") from None
    if int(saved["step"]) < int(saved["config"]["steps"]):
        return pretrain(cfg, resume=ckpt).weights, "resumed"
    weights = os.path.join(cfg.out, "backbone.pth")
    if not os.path.exists(weights):
        weights, _ = ckpt_io.export_backbone(ckpt, weights)
    return weights, "reused"


def with_recipe(cfg, v: Variant):
    """``cfg`` with the method settings of ``v``'s recipe (:func:`recipe_parts`) and its name recorded."""
    _, settings = recipe_parts(v.loss, v.recipe)
    prep = {k: settings.pop(k) for k in list(settings) if k in PREP_KEYS}
    if prep:
        cfg.preprocessing = dataclasses.replace(cfg.preprocessing, **prep)
    for key, value in settings.items():
        setattr(cfg, key, tuple(value) if isinstance(value, list) else value)
    cfg.recipe = v.recipe
    return cfg


def _check_variant(v: Variant, options: dict, batch_size: int) -> None:
    """Build the head once on a small input width so that a bad option fails before any training."""
    extra: dict = {}
    if head_needs(v.loss, "labels"):
        extra["tasks"] = [{"name": "check", "kind": "single", "classes": ["a", "b"]}]
    if head_needs(v.loss, "encoder"):
        extra["stages"] = {"strides": [2, 4], "channels": [4, 8], "dims": 2}
    if head_accepts(v.loss, "geometry"):
        extra["geometry"] = {"grid": (2, 2), "size": 64, "in_chans": 1}
    try:
        build_head(v.loss, 8, **extra, **options)
    except UsageError as e:
        raise UsageError(f"configuration {v.name!r}: {e}") from None
    except ValueError as e:
        raise UsageError(f"configuration {v.name!r}: bad option for --loss {v.loss}: {e}") from None
    if v.loss == "gm":
        graph_size = options.get("graph_size", gm_defaults()["graph_size"])
        if graph_size > batch_size:
            raise UsageError(
                f"configuration {v.name!r}: graph_size {graph_size} exceeds --batch-size {batch_size} (a batch "
                "must hold at least one graph)"
            )


METRIC_KEYS = ("linear_probe_acc", "linear_probe_bal_acc", "knn_acc", "knn_bal_acc")


def _task_metrics(task: str, summary: dict) -> dict[str, float]:
    lp, kn = summary["results"]["linear-probe"], summary["results"]["knn"]
    values = (lp["accuracy"], lp["balanced_accuracy"], kn["accuracy"], kn["balanced_accuracy"])
    return {f"{task}/{k}": v for k, v in zip(METRIC_KEYS, values)}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def aggregate(per_seed: dict) -> tuple[dict, dict]:
    """``{seed: {metric: value}}`` -> (mean per metric, std per metric) over the seeds that have the metric."""
    keys = sorted({k for m in per_seed.values() for k in m})
    stats = {k: mean_std([m[k] for m in per_seed.values() if k in m]) for k in keys}
    return {k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()}


# Paired comparisons. The per-seed differences use the table's balanced accuracies; the interval resamples the
# seeds and, within each seed, the test images (within their class, so that each resample is scored by balanced
# accuracy like the table), with a fixed generator so that a rerun gives the same table.
PAIRED_KEYS = ("linear_probe_bal_acc", "knn_bal_acc")
BOOTSTRAP = {"samples": 2000, "level": 0.95, "seed": 0}
_TIE = 1e-9  # differences smaller than this are ties (float noise of equal accuracies)


def encode_ints(values) -> str:
    """Class indices as one compact JSON string (``"0 2 1"``); :func:`decode_ints` reverses it."""
    return " ".join(str(int(v)) for v in values)


def decode_ints(text: str) -> np.ndarray:
    return np.array([int(v) for v in text.split()], dtype=np.int64)


def pick_reference(name: str | None, names: list[str], default: str) -> str:
    """The ``--reference`` configuration: ``name`` if it is one of ``names``, ``default`` when not given."""
    if name is None:
        return default
    if name not in names:
        raise UsageError(f"--reference: no configuration {name!r}; use one of {', '.join(repr(n) for n in names)}")
    return name


def paired_bootstrap(seeds, samples: int = BOOTSTRAP["samples"], level: float = BOOTSTRAP["level"],
                     seed: int = BOOTSTRAP["seed"]) -> tuple[float, float]:  # fmt: skip
    """Interval of the mean over seeds of a paired balanced-accuracy difference (b - a).

    Args:
        seeds: one ``(labels, correct_a, correct_b)`` per seed: each test image's class and whether backbone a and
            backbone b got it right (the same test images for both).
        samples, level, seed: bootstrap resamples, interval level, generator seed.

    Each resample draws the seeds with replacement and, for every drawn seed, its test images with replacement
    within each class; the statistic is the mean over the drawn seeds of b's balanced accuracy minus a's. Returns
    the ``level`` percentile interval.

    Example:
        >>> labels = np.repeat([0, 1], 50)  # b gets every image right, a every other one: +0.5 on each seed
        >>> lo, hi = paired_bootstrap([(labels, np.arange(100) % 2 == 0, np.ones(100, bool))] * 3)
        >>> round(lo, 2), round(hi, 2)
        (0.45, 0.56)
    """
    if not seeds:
        raise ValueError("paired_bootstrap needs at least one seed")
    per_class = []
    for i, (labels, a, b) in enumerate(seeds):
        labels, a, b = np.asarray(labels), np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
        if not labels.ndim == a.ndim == b.ndim == 1 or not len(labels) == len(a) == len(b) or len(labels) == 0:
            raise ValueError(f"seed {i}: labels, correct_a and correct_b must be 1-D of one non-zero length, got "
                             f"{labels.shape}, {a.shape}, {b.shape}")  # fmt: skip
        d = b.astype(np.float64) - a.astype(np.float64)
        per_class.append([d[labels == c] for c in np.unique(labels)])
    rng = np.random.default_rng(seed)
    n = len(seeds)
    pick = rng.integers(0, n, size=(samples, n))
    total = np.zeros(samples)
    for slot in range(n):
        for s, classes in enumerate(per_class):
            rows = np.flatnonzero(pick[:, slot] == s)
            if rows.size:
                draws = [dc[rng.integers(0, dc.size, size=(rows.size, dc.size))].mean(axis=1) for dc in classes]
                total[rows] += np.mean(draws, axis=0)
    lo, hi = np.quantile(total / n, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def verdict(differences: list[float], interval: tuple[float, float] | None) -> str:
    """The wording of a paired comparison: "ahead"/"behind" when the interval excludes 0; "ahead/behind on every
    seed" when every seed's difference has that sign (at least 2 seeds) but there is no interval or it includes 0;
    else "not separated"."""
    if interval is not None and interval[0] > _TIE:
        return "ahead"
    if interval is not None and interval[1] < -_TIE:
        return "behind"
    if len(differences) >= 2 and all(d > _TIE for d in differences):
        return "ahead on every seed"
    if len(differences) >= 2 and all(d < -_TIE for d in differences):
        return "behind on every seed"
    return "not separated"


def _paired_keys(rows: list[dict], settings: dict) -> list[str]:
    keys = [f"{t['name']}/{k}" for t in settings["tasks"] for k in PAIRED_KEYS]
    return keys + (["segment/mean_dice"] if any("segment/mean_dice" in r["mean"] for r in rows) else [])


def _correctness(row: dict, ref: dict, key: str, seeds: list[str], test_labels: dict):
    """Per seed (labels, reference correct, row correct) for ``key``, or None without per-image predictions."""
    task = key.split("/")[0]
    try:
        out = []
        for s in seeds:
            labels = decode_ints(test_labels[s][task])
            out.append((labels, decode_ints(ref["per_image"][s][key]) == labels,
                        decode_ints(row["per_image"][s][key]) == labels))  # fmt: skip
        return out
    except (KeyError, TypeError):
        return None


def paired_differences(rows: list[dict], settings: dict, test_labels: dict | None, reference: str) -> dict:
    """Every row against the ``reference`` row: per metric (each task's linear-probe and kNN balanced accuracy,
    the segmentation Dice when it ran) the difference row - reference on each seed both have, its mean over the
    seeds, its 95% interval (:func:`paired_bootstrap`; None where the rows hold no per-image predictions: JSON
    written before they were kept, or the segmentation's Dice) and the :func:`verdict`."""
    by_name = {r["configuration"]: r for r in rows}
    ref = by_name[reference]
    keys = _paired_keys(rows, settings)
    no_interval: set[str] = set()
    out_rows = []
    for row in rows:
        if row is ref:
            continue
        cells = {}
        for key in keys:
            seeds = [s for s in ref["per_seed"] if key in ref["per_seed"][s] and key in row["per_seed"].get(s, {})]
            if not seeds:
                continue
            diffs = {s: row["per_seed"][s][key] - ref["per_seed"][s][key] for s in seeds}
            data = _correctness(row, ref, key, seeds, test_labels or {})
            interval = None if data is None else paired_bootstrap(data)
            if data is None:
                no_interval.add(key)
            cells[key] = {"per_seed": diffs, "mean": sum(diffs.values()) / len(diffs),
                          "interval": None if interval is None else list(interval),
                          "verdict": verdict(list(diffs.values()), interval)}  # fmt: skip
        out_rows.append({"configuration": row["configuration"], "differences": cells})
    return {"reference": reference, "bootstrap": dict(BOOTSTRAP), "keys": keys, "rows": out_rows,
            "no_interval": [k for k in keys if k in no_interval]}  # fmt: skip


def _signed(x: float, digits: int = 3) -> str:
    """``x`` with its sign, halves rounded away from 0 (differences of accuracies on 400 images are often exact
    halves, which binary floats would round either way)."""
    q = Decimal(repr(round(x, 9))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{0.0:.{digits}f}" if q == 0 else f"{q:+.{digits}f}"


def _key_label(key: str) -> str:
    if key == "segment/mean_dice":
        return "seg Dice"
    task, metric = key.split("/", 1)
    return f"{task}: {'linear probe' if metric.startswith('linear_probe') else 'kNN'}"


def _paired_cell(cell: dict | None) -> str:
    if cell is None:
        return "-"
    text = _signed(cell["mean"])
    if cell["interval"] is not None:
        text += f" [{_signed(cell['interval'][0])}, {_signed(cell['interval'][1])}]"
    return f"{text} {cell['verdict']}; per seed {' / '.join(_signed(v) for v in cell['per_seed'].values())}"


def paired_table(paired: dict) -> str:
    """The paired comparisons as Markdown: an explanation and one row per configuration (mean difference,
    interval, verdict and each seed's difference, per metric)."""
    keys, b = paired["keys"], paired["bootstrap"]
    lines = [
        "",
        f"**Paired differences against `{paired['reference']}`** (configuration − reference on the same seed, i.e. "
        "the same initialisation, data order, views and test images): the mean over the seeds, its "
        f"{b['level']:.0%} interval from a bootstrap over the seeds and the test images ({b['samples']} "
        "resamples; test images resampled within their class and scored by balanced accuracy), and each seed's "
        "difference. ahead / behind: the interval excludes 0; ahead / behind on every seed: every seed's difference "
        "has that sign (2 or more seeds) but the interval includes 0 or is missing; otherwise not separated.",
    ]
    missing = [k for k in paired["no_interval"] if k != "segment/mean_dice"]
    if missing:
        lines.append(
            f"No interval for {', '.join(_key_label(k) for k in missing)}: the interval needs per-image data (each "
            "test image's prediction), which this ablation.json does not hold (written before `lvmmed ablate` kept "
            "it); per-seed differences only."
        )
    if "segment/mean_dice" in paired["no_interval"]:
        lines.append("No interval for seg Dice: the Dice of each test slice is not kept; per-seed differences only.")
    lines += ["", "| configuration | " + " | ".join(_key_label(k) for k in keys) + " |",
              "|---|" + "---|" * len(keys)]  # fmt: skip
    for r in paired["rows"]:
        lines.append(f"| {r['configuration']} | " + " | ".join(_paired_cell(r["differences"].get(k)) for k in keys)
                     + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _title(settings: dict) -> str:
    data, seeds = settings["data"], settings["seeds"]
    name = "demo images" if data == "demo" else os.path.basename(str(data).rstrip(os.sep))
    return f"{name}: {settings['steps']} steps, " + (
        f"seed {seeds[0]}" if len(seeds) == 1 else f"mean +- std over seeds {','.join(map(str, seeds))}"
    )


def _write_outputs(rows: list[dict], settings: dict, paired: dict, out: str) -> tuple[str, str | None]:
    """ablation.md and ablation.png in ``out``; prints the table. Returns their paths (None: no matplotlib)."""
    md_path = os.path.join(out, "ablation.md")
    table = markdown_table(rows, settings, paired)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(table)
    tasks = [t["name"] for t in settings["tasks"]]
    png = plot_ablation(rows, os.path.join(out, "ablation.png"), _title(settings), tasks, paired)
    print(table)
    return md_path, png


def _render(args: argparse.Namespace) -> int:
    """``--render``: the table and chart of a saved ablation.json, against ``--reference``."""
    flags = {o.key: o.flag for o in (*TRAIN_OPTIONS, *ABLATE_OPTIONS)}
    extra = sorted(flags.get(k, k) for k in vars(args) if k not in ("render", "reference", "out"))
    if extra:
        raise UsageError(f"--render re-renders a saved ablation.json without training; drop {', '.join(extra)}")
    path = args.render
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"--render: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--render: {path} is not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or "settings" not in data:
        raise UsageError(f"--render: {path} is not the ablation.json of lvmmed ablate (no 'settings' and 'rows')")
    rows, settings = data["rows"], data["settings"]
    names = [r["configuration"] for r in rows]
    configs = [n for n in names if n != "random init"]
    reference = pick_reference(getattr(args, "reference", None), names, configs[0] if configs else names[0])
    paired = paired_differences(rows, settings, data.get("test_labels"), reference)
    out = getattr(args, "out", None) or os.path.dirname(os.path.abspath(path))
    os.makedirs(out, exist_ok=True)
    md_path, png = _write_outputs(rows, settings, paired, out)
    print(f"rendered {path} against {reference!r}:\n  table  {md_path}\n  chart  {png or '(matplotlib not installed)'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    demo_flag = getattr(args, "demo", False)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("lvmmed ablate runs in one process (each configuration uses --device); not under torchrun")
    if demo_flag and hasattr(args, "data"):
        raise UsageError("--demo uses the offline demo images; drop --data (or drop --demo to train on --data)")
    if demo_flag and args.eval_data:
        raise UsageError("--demo evaluates on the demo's MNI152 tasks; drop --eval-data")
    if args.budget and not demo_flag:
        raise UsageError("--budget presets the demo's steps and width; use it with --demo (or pass --steps)")
    if not demo_flag:
        missing = [f for f, ok in (("--data", hasattr(args, "data")), ("--eval-data", args.eval_data),
                                   ("--steps", hasattr(args, "steps"))) if not ok]  # fmt: skip
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (every configuration trains --steps steps), or use --demo")
    try:
        l2 = args.eval_l2 if args.eval_l2 == "auto" else float(args.eval_l2)
    except ValueError:
        raise UsageError(f"--eval-l2 must be a number or 'auto', got {args.eval_l2!r}") from None
    variants = parse_configs(args.configs)
    reference = pick_reference(args.reference, ["random init"] + [v.name for v in variants], variants[0].name)
    # the budget's settings sit below the command line (as a --config file's would); the gm flags become
    # base.head_opts (for the gm configurations)
    base = build_config(args, None, dict(BUDGETS[args.budget or "short"]) if demo_flag else None)
    seeds = parse_seeds(args.seeds, base.seed)
    base_gm, demo = dict(base.head_opts), base.data == "demo"
    base.validate()
    out = base.out or os.path.join("runs", f"ablate-{time.strftime('%Y%m%d-%H%M%S')}")
    plans = []
    for v in variants:
        recipe_opts, _ = recipe_parts(v.loss, v.recipe)
        options = {
            **(DEMO_HEAD_OPTS.get(v.loss, {}) if demo else {}),
            **(base_gm if v.loss == "gm" else {}),
            **recipe_opts,
            **v.options,
        }
        _check_variant(v, options, base.batch_size)
        plans.append((v, options))
    supervised = [v.name for v, _ in plans if head_needs(v.loss, "labels")]
    if base.labels and not supervised:
        raise UsageError("--labels is read only by supervised configurations (ark); --configs has none")
    if supervised and not base.labels and not demo:
        raise UsageError(f"configuration {supervised[0]!r} is supervised: pass --labels NAME=CSV (repeatable)")

    if not demo:  # bad evaluation data stops the command before anything is written
        user_tasks = [(_task_name(path, i), path, load_labelled(path, base.preprocessing))
                      for i, path in enumerate(args.eval_data)]  # fmt: skip
    elif not mni152_available():
        raise UsageError("the demo ablation needs nilearn for its evaluation tasks (run scripts/setup.sh)")
    device = base.device if base.device != "auto" else default_device()
    workers = loader_workers(base.workers if base.workers is not None else (0 if demo else None))
    eval_kw = dict(device=device, workers=workers, l2=l2, k=args.eval_k, test_frac=args.eval_test_frac)
    seg_data = (
        _demo_segmentation_data(os.path.join(out, "eval_tasks", "segment"), base) if demo and not args.no_seg else None
    )
    seg_meta: dict = {}

    t_all = time.perf_counter()
    n_runs = len(plans) * len(seeds)
    print(f"ablation: {len(plans)} configuration(s) x {len(seeds)} seed(s) x {base.steps} steps -> {out}", flush=True)
    names = ["random init"] + [v.name for v, _ in plans]
    per_seed: dict[str, dict[int, dict]] = {n: {} for n in names}
    per_image: dict[str, dict[int, dict]] = {n: {} for n in names}  # predictions per test image
    test_labels: dict[str, dict[str, str]] = {}
    timings: dict = {n: {} for n in names}
    tasks_meta: dict[str, dict] = {}
    done = 0
    for seed in seeds:
        tag = f"seed{seed}"
        if demo:
            tasks = demo_tasks(os.path.join(out, "eval_tasks", tag), seed, base.preprocessing)
            tasks = [(name, f"demo task: {about}", data) for name, about, data in tasks]
        else:
            tasks = user_tasks
        if not tasks_meta:
            tasks_meta = {n: {"name": n, "about": about, "classes": d.classes} for n, about, d in tasks}

        t0 = time.perf_counter()
        evaluate_all = functools.partial(_evaluate_tasks, tasks, tasks_meta, seed, os.path.join(out, "eval"), eval_kw,
                                         seg=seg_data, seg_meta=seg_meta)  # fmt: skip
        per_seed["random init"][seed], per_image["random init"][seed], test_labels[str(seed)] = evaluate_all(
            "random", "random_init", arch=base.arch, width=base.width, in_chans=base.preprocessing.in_chans,
            image_size=base.image_size,
        )  # fmt: skip
        timings["random init"][tag] = {"eval_s": round(time.perf_counter() - t0, 2)}
        for v, options in plans:
            done += 1
            cfg = with_recipe(copy.deepcopy(base), v)
            cfg.loss, cfg.head_opts, cfg.seed = v.loss, options, seed
            cfg.out = os.path.join(out, "runs", folder_name(v.name), tag)
            cfg.labels = _labels_for(v, base, demo, os.path.join(out, "eval_tasks", tag), seed)
            print(f"[{done}/{n_runs}] {v.name}, seed {seed}: {v.about} (--loss {v.loss}; {_options_text(options)})",
                  flush=True)  # fmt: skip
            t0 = time.perf_counter()
            weights, how = _pretrain_or_reuse(cfg)
            t_train = time.perf_counter() - t0
            metrics, per_image[v.name][seed], labels = evaluate_all(weights, folder_name(v.name))
            if labels != test_labels[str(seed)]:  # same seed, same data: the same test images in the same order
                raise RuntimeError(f"configuration {v.name!r}, seed {seed}: the test labels differ from random init's")
            metrics = {**_log_tail_means(cfg.out), **metrics}
            per_seed[v.name][seed] = metrics
            loop_s = logged_train_seconds(cfg.out)
            timings[v.name][tag] = {
                "pretrain": how,
                "pretrain_s": None if loop_s is None else round(loop_s, 2),
                "wall_s": round(t_train, 2),
                "eval_s": round(time.perf_counter() - t0 - t_train, 2),
                "steps": cfg.steps,
                "loop_s_per_step": None if loop_s is None else round(loop_s / cfg.steps, 3),
            }
            first = tasks[0][0]
            trained = f"{how} in {t_train:.0f} s"
            if how == "reused" and loop_s is not None:
                trained = f"reused, trained in {loop_s:.0f} s"
            print(f"[{done}/{n_runs}] {v.name}, seed {seed}: {first} linear probe "
                  f"{metrics[f'{first}/linear_probe_bal_acc']:.3f}, kNN {metrics[f'{first}/knn_bal_acc']:.3f} "
                  f"(balanced){_seg_text(metrics)} ({trained}, evaluated in {timings[v.name][tag]['eval_s']:.0f} s)",
                  flush=True)  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - t_all, 2)

    rows = [_row("random init", "-", "-", "the backbone every configuration starts from", per_seed["random init"],
                 per_image["random init"])]  # fmt: skip
    rows += [_row(v.name, v.loss, _options_text(o), v.about, per_seed[v.name], per_image[v.name]) for v, o in plans]
    settings = {
        "data": "demo" if demo else base.data,
        "arch": base.arch,
        "width": base.width,
        "image_size": base.image_size,
        "batch_size": base.batch_size,
        "accum": base.accum,
        "steps": base.steps,
        "optimizer": base.optimizer,
        "schedule": base.schedule,
        "lr": base.lr,
        "halvings": base.halvings,
        "crop_scale": list(base.crop_scale),
        "seeds": seeds,
        "budget": args.budget if demo else None,
        "tasks": list(tasks_meta.values()),
        "segment": seg_meta or None,
        "eval_k": args.eval_k,
        "eval_l2": l2,
    }
    paired = paired_differences(rows, settings, test_labels, reference)
    json_path = os.path.join(out, "ablation.json")
    with open(json_path, "w") as f:
        json.dump({"settings": settings, "paired": paired, "rows": rows, "test_labels": test_labels}, f, indent=1)
    with open(os.path.join(out, "timings.json"), "w") as f:
        json.dump(timings, f, indent=1)
    md_path, png = _write_outputs(rows, settings, paired, out)
    print("outputs:")
    print(f"  table       {md_path}")
    print(f"  chart       {png or '(matplotlib not installed)'}")
    print(f"  results     {json_path}  (per-seed values, means, standard deviations, paired differences, per-image "
          "predictions)")  # fmt: skip
    print(f"  timings     {os.path.join(out, 'timings.json')}  (total {timings['total_s']:.0f} s)")
    print(f"  runs        {os.path.join(out, 'runs')}/<configuration>/seed<S>/  (checkpoint, log, loss plot, backbone)")
    print(f"  evaluation  {os.path.join(out, 'eval')}/<task>/seed<S>/  (confusion matrices, results JSON"
          + ("; segment/seed<S>/<configuration>/: overlay.png, results.json)" if demo else ")"))  # fmt: skip
    return 0


def _labels_for(v: Variant, base, demo: bool, task_folder: str, seed: int) -> list[str]:
    """The ``--labels`` of configuration ``v``: none for a self-supervised loss; for a supervised one the command's
    ``--labels``, else (with ``--demo``) the demo tasks' CSVs of this seed (their training rows only)."""
    if not head_needs(v.loss, "labels"):
        return []
    if base.labels:
        return list(base.labels)
    if demo:
        return demo_label_specs(task_folder, seed)
    raise UsageError(f"configuration {v.name!r} (--loss {v.loss}) is supervised: pass --labels NAME=CSV")


def _evaluate_tasks(tasks, tasks_meta: dict, seed: int, folder: str, eval_kw: dict, weights: str, label: str,
                    seg=None, seg_meta=None, **kw):  # fmt: skip
    """Linear probe and kNN of ``weights`` on every task, and with ``seg`` (the demo's segmentation pairs) the mean
    Dice of U-Net fine-tuning; returns (the flat metrics ``task/metric``, each balanced accuracy's predictions per
    test image and each task's test labels, both as :func:`encode_ints` text) and notes the tasks' train/test sizes
    in ``tasks_meta`` and ``seg_meta``."""
    metrics, predictions, labels = {}, {}, {}
    for name, _, data in tasks:
        out = os.path.join(folder, name, f"seed{seed}")
        summary = evaluate(list(METHODS), weights, data, out=out, label=label, seed=seed, **eval_kw, **kw)
        metrics.update(_task_metrics(name, summary))
        lp = summary["results"]["linear-probe"]
        tasks_meta[name].update(n_train=lp["n_train"], n_test=lp["n_test"])
        labels[name] = encode_ints(lp["test_labels"])
        for method, key in zip(METHODS, ("linear_probe_bal_acc", "knn_bal_acc")):
            predictions[f"{name}/{key}"] = encode_ints(summary["results"][method]["predictions"])
    if seg is not None:
        out = os.path.join(folder, "segment", f"seed{seed}", label)
        model = {key: kw.get(key) for key in ("arch", "width", "in_chans")}  # the random-init row names its model
        summary = demo_segmentation(weights, out, seed, data=seg, random_baseline=False, device=eval_kw["device"],
                                    **model)  # fmt: skip
        (run,) = summary["runs"].values()
        if run.get("mean_dice") is not None:
            metrics["segment/mean_dice"] = run["mean_dice"]
        seg_meta.update(n_train=summary["n_train_images"], n_test=summary["n_test_images"], classes=summary["classes"],
                        image_size=summary["image_size"], epochs=summary["settings"]["epochs"])  # fmt: skip
    return metrics, predictions, labels


def _demo_segmentation_data(folder: str, base):
    """The demo's segmentation task (``data.demo.mni152_segmentation_task``) built in ``folder`` and loaded."""
    return load_pairs(mni152_segmentation_task(folder), base.preprocessing, list(SEGMENTATION_CLASSES))


def _seg_text(metrics: dict) -> str:
    return f", segmentation mean Dice {metrics['segment/mean_dice']:.3f}" if "segment/mean_dice" in metrics else ""


def _task_name(path: str, index: int) -> str:
    """A short name for an ``--eval-data`` path (its base name without extension, made unique by ``index``)."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "task"
    return stem if index == 0 else f"{stem}{index + 1}"


def _row(name: str, loss: str, options: str, about: str, per_seed: dict, per_image: dict | None = None) -> dict:
    mean, std = aggregate(per_seed)
    row = {
        "configuration": name,
        "loss": loss,
        "options": options,
        "about": about,
        "per_seed": {str(s): m for s, m in per_seed.items()},
        "mean": mean,
        "std": std,
    }
    if per_image:
        row["per_image"] = {str(s): p for s, p in per_image.items()}
    return row


def _cell(row: dict, key: str, digits: int = 3) -> str:
    if key not in row["mean"]:
        return "-"
    text = f"{row['mean'][key]:.{digits}f}"
    return text + (f" ± {row['std'][key]:.{digits}f}" if len(row["per_seed"]) > 1 else "")


def _optimizer_text(settings: dict) -> str:
    """``Adam lr 0.002 halved 4x`` (saved settings from before the optimiser options read as Adam, halving)."""
    name = {"adam": "Adam", "sgd": "SGD", "nesterov": "Nesterov SGD"}[settings.get("optimizer", "adam")]
    if settings.get("schedule", "halving") == "halving":
        return f"{name} lr {settings['lr']:g} halved {settings['halvings']}x"
    return f"{name} lr {settings['lr']:g}, cosine schedule"


def markdown_table(rows: list[dict], settings: dict, paired: dict | None = None) -> str:
    """The ablation as Markdown: a settings paragraph and one row per configuration with, for each evaluation
    task, the linear-probe and kNN balanced accuracies (mean ± std over the seeds), the demo segmentation's mean
    Dice when it ran, the final training loss and the noise-free matching accuracies, then with ``paired``
    (:func:`paired_differences`) the :func:`paired_table` (no timings, so that a rerun gives the same bytes)."""
    width = "" if settings["width"] is None else f" (width {settings['width']})"
    seeds = settings["seeds"]
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))} (mean ± std)"
    budget = f" (budget {settings['budget']})" if settings.get("budget") else ""
    lines = [
        "# lvmmed ablate",
        "",
        f"Pretraining: {settings['data']}, {settings['arch']}{width}, {settings['image_size']} px views (crop area "
        f"{settings['crop_scale'][0]:g}-{settings['crop_scale'][1]:g}), batch {settings['batch_size']} x "
        f"{settings['accum']} accumulation, {settings['steps']} steps{budget}, {_optimizer_text(settings)}, "
        f"{seed_text}; for each seed the same data order, views and initialisation for every configuration.",
        "Evaluation: frozen pooled features; linear probe = L2 logistic regression (penalty "
        f"{settings['eval_l2']}), kNN = cosine, k = {settings['eval_k']}; balanced accuracy on:",
    ]
    for t in settings["tasks"]:
        lines.append(
            f"- `{t['name']}`: {t['about']} ({len(t['classes'])} classes: {', '.join(t['classes'])}; "
            f"{t.get('n_train', '?')} train / {t.get('n_test', '?')} test images)"
        )
    seg = settings.get("segment")
    if seg:
        lines.append(
            f"- `segment`: U-Net fine-tuning (all weights trained, {seg['epochs']} epochs at {seg['image_size']} px; "
            f"{len(seg['classes'])} classes: {', '.join(seg['classes'])}; {seg['n_train']} train / {seg['n_test']} "
            "test axial slices of the MNI152 template from held-out slabs): mean Dice over the foreground classes"
        )
    names = [t["name"] for t in settings["tasks"]]
    header = ["configuration", "loss", "head options", "what it tests", "final loss¹", "match acc.²",
              "backbone match acc.²"]  # fmt: skip
    for n in names:
        header += [f"{n}: linear probe", f"{n}: kNN"]
    header += ["seg Dice"] if seg else []
    lines += ["", "| " + " | ".join(header) + " |", "|---|---|---|---|" + "---:|" * (len(header) - 4)]
    for r in rows:
        cells = [r["configuration"], r["loss"], r["options"], r["about"], _cell(r, "final_loss", 4),
                 _cell(r, "match_acc"), _cell(r, "backbone_match_acc")]  # fmt: skip
        for n in names:
            cells += [_cell(r, f"{n}/linear_probe_bal_acc"), _cell(r, f"{n}/knn_bal_acc")]
        cells += [_cell(r, "segment/mean_dice")] if seg else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "¹ mean training loss over the last tenth of the steps; its scale differs between losses.",
        "² noise-free matching accuracy over the last tenth of the steps: the fraction of images matched to their own "
        "other view in groups of the graph size (gm: its own QAP/LAP without noise; other losses: a LAP on the "
        "cosines of their embeddings; backbone: a LAP on the cosines of the pooled backbone features). Chance = "
        "1 / graph size.",
    ]
    return "\n".join(lines) + "\n" + (paired_table(paired) if paired else "")


def plot_ablation(rows: list[dict], path: str, title: str, tasks: list[str], paired: dict | None = None) -> str | None:
    """One panel per task: linear-probe and kNN balanced accuracy per configuration (mean, with the standard
    deviation over seeds as error bars; the random-init row first, hatched); with ``paired`` a second panel per
    task beside it: each configuration's mean paired difference from the reference (bars), its 95% interval
    (error bars, where the per-image data allow one) and each seed's difference (dots). Returns the PNG path, or
    None when matplotlib is missing."""
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
    series = (("linear_probe_bal_acc", "linear probe", "#08519c", -0.2), ("knn_bal_acc", "kNN", "#fd8d3c", 0.2))
    width = max(6.0, 1.1 * len(rows) + 1.5)
    fig, axes = plt.subplots(len(tasks), 2 if paired else 1, figsize=(width * (2 if paired else 1), 3.6 * len(tasks)),
                             dpi=110, squeeze=False)  # fmt: skip
    for ax, task in zip(axes[:, 0], tasks):
        lows = []
        for key, _, colour, offset in series:
            values = [r["mean"].get(f"{task}/{key}", float("nan")) for r in rows]
            errs = [r["std"].get(f"{task}/{key}", 0.0) for r in rows]
            bars = ax.bar(x + offset, values, 0.4, color=colour, yerr=errs, capsize=3, ecolor="#333333")
            bars[0].set_hatch("//")  # random init: the reference, not a configuration
            bars[0].set_alpha(0.55)
            for b, val, err in zip(bars, values, errs):
                ax.text(b.get_x() + b.get_width() / 2, val + err, f"{val:.2f}", ha="center", va="bottom", fontsize=7)
            lows += [v - e for v, e in zip(values, errs)]
        ax.set_ylim(max(0.0, min(lows) - 0.1), 1.1)
        ax.set_xticks(x, names, rotation=25, ha="right")
        ax.set_ylabel(f"{task}: balanced accuracy")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(title, fontsize=10)
    handles = [Patch(color=colour, label=label) for _, label, colour, _ in series]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="random init (reference)"))
    axes[0, 0].legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False)
    if paired:
        for ax, task in zip(axes[:, 1], tasks):
            _plot_paired(ax, paired, task, series)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _plot_paired(ax, paired: dict, task: str, series) -> None:
    """One task's paired differences from the reference: bars (mean), error bars (95% interval), dots (seeds)."""
    import numpy as np

    names = [r["configuration"] for r in paired["rows"]]
    x = np.arange(len(names))
    for metric, label, colour, offset in series:
        cells = [r["differences"].get(f"{task}/{metric}") for r in paired["rows"]]
        means = [c["mean"] if c else float("nan") for c in cells]
        have = [c is not None and c["interval"] is not None for c in cells]
        low = [c["mean"] - c["interval"][0] if ok else 0.0 for c, ok in zip(cells, have)]
        high = [c["interval"][1] - c["mean"] if ok else 0.0 for c, ok in zip(cells, have)]
        ax.bar(x + offset, means, 0.4, color=colour, alpha=0.8, label=label,
               yerr=[low, high] if any(have) else None, capsize=3, ecolor="#333333")  # fmt: skip
        for i, c in enumerate(cells):
            seeds = list(c["per_seed"].values()) if c else []
            ax.plot([x[i] + offset] * len(seeds), seeds, "o", color="black", markersize=3, zorder=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylabel(f"{task}: difference from {paired['reference']}")
    ax.grid(axis="y", alpha=0.3)
    interval = "no interval: per-image data missing" if any(k.startswith(f"{task}/") for k in paired["no_interval"]) \
        else f"bars: {paired['bootstrap']['level']:.0%} interval over seeds and test images"  # fmt: skip
    ax.set_title(f"paired with {paired['reference']} (dots: seeds; {interval})", fontsize=9)


if __name__ == "__main__":
    raise SystemExit(main())
