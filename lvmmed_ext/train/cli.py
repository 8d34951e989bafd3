"""``lvmmed pretrain`` (also ``python -m lvmmed_ext.train``) and ``lvmmed export``."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import sys
import time

from ..data.presets import PRESET_HELP, PRESETS, Preprocessing
from ..errors import UsageError
from ..heads import head_names, head_needs
from ..heads.gm import LVMMedHead
from ..losses import gm_loss
from ..models import BACKBONES
from ..noise import NOISE_KINDS

# The demo: ResNet-18 on 96-px views of the offline images, sized to finish pretraining + evaluation in a few
# minutes on 2 CPU cores.
DEMO = {
    "arch": "resnet18",
    "image_size": 96,
    # crops of at least a quarter of the image: with 0.08 two views of one slice often share nothing, and matching
    # them teaches invariance to where in the slice a crop lies (docs/STUDY.md, crop-scale pilot)
    "crop_scale": (0.25, 1.0),
    "batch_size": 32,
    "steps": 150,
    "ckpt_every": 50,
    "max_side": 256,
}
# Demo head options per loss: the best of 8 settings per loss tuned with equal budgets (docs/STUDY.md §4):
# narrower projectors for the half-width CPU backbone and, for VICReg, a variance weight of 10. gm runs with its
# defaults (which the same tuning chose).
DEMO_HEAD_OPTS = {
    "infonce": {"hidden_dim": 512, "out_dim": 128},
    "vicreg": {"hidden_dim": 512, "out_dim": 512, "var_weight": 10.0},
}

# Options of the gm head with a flag of their own; each flag only sets the head option of the same name (one
# mechanism with --head-opt). Defaults are not repeated here: they are read from gm_loss's / LVMMedHead's
# signatures. (flag, head option, argparse keywords, help)
GM_FLAGS = (
    ("--graph-size", "graph_size", {"type": int}, "images per graph N"),
    ("--k", "k", {"type": int}, "kNN neighbours per image in each view's graph"),
    ("--alpha", "alpha", {"type": float}, "vertex affinity = alpha x global cosine + (1 - alpha) x local term"),
    ("--lam", "lam", {"type": float}, "IMLE step lambda"),
    ("--noise", "noise", {"choices": NOISE_KINDS}, "perturbation of the matching scores"),
    ("--noise-scale", "noise_scale", {"type": float}, "noise scale (temperature)"),
    ("--samples", "samples", {"type": int}, "noise samples per graph, solved in one batch"),
    ("--margin", "margin", {"type": float}, "subtracted from the ground-truth (diagonal) affinities before "
     "solving; with --noise none this is the paper's 'w/o Gumbel noise' ablation"),
)  # fmt: skip
# The paper's Table 6 switches: (flag, head option, value it sets, help)
GM_SWITCHES = (
    ("--no-edge-term", "quad_weight", 0.0, "first-order matching: no edge affinities, a linear assignment "
     "instead of the QAP (Table 6 'w/o second-order')"),
    ("--no-local-term", "alpha", 1.0, "global cosine affinity only (alpha = 1): no feature maps are computed "
     "(Table 6 'w/o local similarity')"),
    ("--no-gnn", "use_gnn", False, "no message passing: the projector's embeddings go straight to the "
     "affinities (Table 6 'w/o message passing')"),
)  # fmt: skip


def gm_defaults() -> dict:
    """The gm head's default options: ``gm_loss``'s keyword defaults plus ``LVMMedHead``'s own."""
    out = {}
    for fn in (gm_loss, LVMMedHead.__init__):
        for name, p in inspect.signature(fn).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out.setdefault(name, p.default)
    return out


def _flag_dest(flag: str) -> str:
    return "gm_" + flag.lstrip("-").replace("-", "_")


def _given_gm_flags(args: argparse.Namespace) -> list[tuple[str, str, object]]:
    """(flag, head option, value) of each gm flag given on the command line."""
    given = [(f, key, getattr(args, _flag_dest(f))) for f, key, _, _ in GM_FLAGS if hasattr(args, _flag_dest(f))]
    return given + [(f, key, value) for f, key, value, _ in GM_SWITCHES if getattr(args, _flag_dest(f), False)]


def gm_flag_options(args: argparse.Namespace) -> dict:
    """The gm head options that the gm flags given on the command line set (flags not given set nothing).

    Raises ``UsageError`` when two flags set one option to different values (``--no-local-term --alpha 0.5``)."""
    opts: dict = {}
    source: dict = {}
    for flag, key, value in _given_gm_flags(args):
        if key in opts and opts[key] != value:
            raise UsageError(f"{flag} sets {key} = {value!r} but {source[key]} sets it to {opts[key]!r}")
        opts[key], source[key] = value, flag
    return opts


_PREP_KEYS = ("preset", "window", "percentiles", "in_chans", "max_side", "axis")


def _head_opt(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--head-opt must be KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def _head_options_text() -> str:
    """One entry per registered loss: its options with their defaults (gm's are its flags above)."""
    from ..heads import head_options

    parts = []
    for name in head_names():
        if name == "gm":
            parts.append("gm: the flags of the graph-matching group above (and gm_loss's keywords)")
            continue
        opts = ", ".join(f"{k}={v!r}" for k, v in head_options(name).items())
        parts.append(f"{name}: {opts}")
    return "; ".join(parts)


def parser(ablate: bool = False) -> argparse.ArgumentParser:
    """The ``lvmmed pretrain`` options; with ``ablate`` the shared options of ``lvmmed ablate`` (no --loss,
    --head-opt, --resume, --no-eval: the loss and its options come from each configuration)."""
    if ablate:
        p = argparse.ArgumentParser(
            prog="lvmmed ablate",
            description="Pretrain one backbone per configuration (the gm loss, its Table 6 ablations, InfoNCE, "
            "VICReg) with the same data, views, optimiser, seed and budget, evaluate each with the linear probe and "
            "kNN on labelled data, and write a Markdown table and a bar chart. Options below set what all "
            "configurations share; the gm flags set every gm configuration's base options.",
        )
    else:
        p = argparse.ArgumentParser(
            prog="lvmmed pretrain",
            description="Self-supervised pretraining of a backbone on a folder of medical images (PNG/JPEG/TIFF, "
            "DICOM incl. multi-frame, NIfTI sliced along --axis), or on the offline demo images (--demo). Writes "
            "checkpoint.pt, log.csv, loss.png, config.json and the exported backbone.pth/.json to --out.",
        )
    S = argparse.SUPPRESS  # options left out keep the default, the demo's value, or the resumed checkpoint's
    if not ablate:
        p.add_argument(
            "--config",
            default=None,
            metavar="FILE",
            help="a JSON object of settings named as in a run's config.json (data, arch, loss, head_opts, "
            "batch_size, steps, lr, preprocessing or its keys, ...); options given on the command line override "
            "it; its 'out' is ignored (pass --out), so a run's config.json repeats that run in a new folder",
        )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        action="append",
        default=S,
        metavar="DIR | NAME=DIR[:WEIGHT]",
        help="folder (searched recursively; its header index is kept in DIR/.lvmmed-manifest.tsv, see lvmmed scan) "
        "or a single file; repeat as NAME=DIR[:WEIGHT] to mix datasets, sampled in proportion to WEIGHT (all or "
        "none given; none: by image count)",
    )
    g.add_argument(
        "--balance",
        choices=("none", "dataset", "modality"),
        default=S,
        help="with several --data: over-sample minority groups to equal shares per dataset or per modality (DICOM "
        "Modality, else file type); the extra draws are 85-95%% area crops resized back (none)",
    )
    g.add_argument(
        "--labels",
        action="append",
        default=S,
        metavar="NAME=CSV",
        help="a labelled dataset for supervised pretraining (--loss ark), repeatable: CSV path,label[,split] (one "
        "class per image) or a header path,<name1>,<name2>,...[,split] with 0/1 values (multi-label); rows with "
        "split=test are left out; unlabelled --data may be mixed in",
    )
    if ablate:
        g.add_argument("--demo", action="store_true", help="the offline demo images (those of lvmmed pretrain "
                       "--demo), a shorter budget (--budget), and the demo's MNI152 anatomical-region and tissue "
                       "tasks as --eval-data")  # fmt: skip
    else:
        g.add_argument(
            "--demo",
            action="store_true",
            help="real medical images from installed packages (nilearn, "
            "pydicom-data, nibabel), ResNet-18, then a linear-probe/kNN evaluation vs random init",
        )
    g.add_argument(
        "--preset",
        choices=PRESETS,
        default=S,
        help="intensity preset (auto): " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()),
    )
    g.add_argument(
        "--window", type=float, nargs=2, metavar=("LEVEL", "WIDTH"), default=S, help="CT window in HU (40 400)"
    )
    g.add_argument(
        "--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"), default=S, help="MR percentiles (0.5 99.5)"
    )
    g.add_argument("--in-chans", type=int, choices=(1, 3), default=S, help="network input channels (1)")
    g.add_argument(
        "--max-side", type=int, default=S, help="downscale longer sides to this at load time, 0 = never (512)"
    )
    g.add_argument("--axis", type=int, choices=(0, 1, 2), default=S, help="NIfTI axis to slice (2)")
    g.add_argument("--cache-mb", type=int, default=S, help="decoded-image cache per loader process, MiB (1024)")
    g.add_argument("--workers", type=int, default=S, help="data-loader processes (default: min(4, cores - 1))")
    m = p.add_argument_group("model and loss")
    m.add_argument("--arch", choices=sorted(BACKBONES) + ["unet3d"], default=S,
                   help="backbone (resnet50); unet3d = the 3D U-Net encoder for --loss genesis on volumes")  # fmt: skip
    m.add_argument("--width", type=int, default=S, help="ResNet base width (64 = torchvision)")
    if not ablate:
        m.add_argument("--loss", default=S, help=f"loss head: {', '.join(head_names())} (gm); ark is supervised "
                       "pretraining from --labels, the others are self-supervised")  # fmt: skip
        m.add_argument("--head-opt", type=_head_opt, action="append", default=S, metavar="KEY=VALUE",
                       help="loss-head option, repeatable (e.g. temperature=0.1); the options of each loss are "
                       "listed under 'loss-head options' below")  # fmt: skip
    m.add_argument(
        "--init",
        default=S,
        help="initial backbone weights (e.g. torchvision ImageNet .pth; 3->1 channel stems are summed)",
    )
    gm = p.add_argument_group(
        "graph-matching loss (--loss gm)",
        "each flag sets the gm head option of the same name (as --head-opt KEY=VALUE would); default in brackets",
    )
    defaults = gm_defaults()
    for flag, key, kwargs, help_ in GM_FLAGS:
        kwargs = {"metavar": key.upper(), **kwargs} if "choices" not in kwargs else kwargs
        gm.add_argument(flag, dest=_flag_dest(flag), default=S, help=f"{help_} [{key}={defaults[key]!r}]", **kwargs)
    for flag, key, value, help_ in GM_SWITCHES:
        gm.add_argument(
            flag, dest=_flag_dest(flag), action="store_true", default=S, help=f"{help_} [sets {key}={value!r}]"
        )
    if not ablate:
        p.add_argument_group("loss-head options (--head-opt KEY=VALUE; default after '=')", _head_options_text())
    v = p.add_argument_group("views")
    v.add_argument("--crop3d", type=int, nargs=3, metavar=("D", "H", "W"), default=S,
                   help="with --arch unet3d: sub-volume size in voxels, slices first (32 64 64: Models Genesis' "
                   "64x64x32 cubes)")  # fmt: skip
    v.add_argument("--image-size", type=int, default=S, help="global view side in pixels (224)")
    v.add_argument("--crop-scale", type=float, nargs=2, default=S, help="global crop area range (0.4 1.0)")
    v.add_argument("--jitter", type=float, default=S, help="brightness and contrast jitter strength (0.4)")
    v.add_argument("--local-crops", type=int, default=S, help="extra small multi-crop views (0)")
    v.add_argument("--local-size", type=int, default=S, help="multi-crop view side (96)")
    v.add_argument("--local-scale", type=float, nargs=2, default=S, help="multi-crop area range (0.08 0.4)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=S, help="images per process per micro-step (64)")
    o.add_argument("--accum", type=int, default=S, help="gradient-accumulation micro-steps per optimizer step (1)")
    o.add_argument("--steps", type=int, default=S, help="optimizer steps (default: from --epochs)")
    o.add_argument("--epochs", type=float, default=S, help="passes over the images when --steps is not given (100)")
    o.add_argument("--lr", type=float, default=S, help="Adam learning rate (2e-3)")
    o.add_argument(
        "--backbone-lr-mult", type=float, default=S, help="backbone lr = lr x this (1; 0.01 for pretrained inits)"
    )
    o.add_argument("--weight-decay", type=float, default=S, help="Adam weight decay (0)")
    o.add_argument("--halvings", type=int, default=S, help="lr halvings at evenly spaced steps (4)")
    o.add_argument("--amp", choices=("auto", "bf16", "off"), default=S, help="autocast: auto = bf16 on GPU only")
    o.add_argument("--device", default=S, help="auto, cpu, cuda or cuda:N (auto)")
    o.add_argument("--seed", type=int, default=S, help="initialisation, data order and augmentation seed (0)")
    r = p.add_argument_group("outputs")
    if ablate:
        r.add_argument("--out", default=S, help="output folder (default runs/ablate-<time>); an existing one is "
                       "continued: finished configurations are reused, interrupted ones resumed")  # fmt: skip
    else:
        r.add_argument("--out", default=S, help="run folder (default runs/pretrain-<time>, runs/demo-<time>)")
    r.add_argument("--ckpt-every", type=int, default=S, help="checkpoint every N optimizer steps (500)")
    if not ablate:
        r.add_argument("--resume", default=None, metavar="CKPT",
                       help="continue a run from its checkpoint.pt or run folder")  # fmt: skip
        r.add_argument("--no-eval", action="store_true", help="with --demo: skip the evaluation")
    return p


# Settings of a --config file that are not read: where the run goes (always --out or the default) and what is
# derived from the other settings.
_CONFIG_IGNORED = ("out", "global_batch", "mixture")


def load_config_file(path: str) -> dict:
    """The settings of a ``--config`` JSON file as flat ``TrainConfig``/preprocessing keys (``preprocessing`` may
    be nested, as in a run's config.json). Unknown keys, values of the wrong type and unreadable files raise
    ``UsageError`` naming the file and the key."""
    from .trainer import TrainConfig

    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"--config {path} must hold a JSON object of settings, got {type(raw).__name__}")
    flat = dict(raw)
    prep = flat.pop("preprocessing", {})
    if not isinstance(prep, dict):
        raise UsageError(f"--config {path}: 'preprocessing' must be an object, got {prep!r}")
    for key, value in prep.items():
        if key in ("mean", "std"):  # fixed normalisation, recorded for the export only
            continue
        if key not in _PREP_KEYS:
            raise UsageError(f"--config {path}: unknown preprocessing key {key!r}; known: {', '.join(_PREP_KEYS)}")
        flat.setdefault(key, value)
    for key in _CONFIG_IGNORED:
        flat.pop(key, None)
    fields = TrainConfig.__dataclass_fields__
    known = sorted((set(fields) - set(_CONFIG_IGNORED)) | set(_PREP_KEYS))
    prep_fields = Preprocessing.__dataclass_fields__
    for key, value in flat.items():
        if key not in known:
            raise UsageError(f"--config {path}: unknown setting {key!r}; known: {', '.join(known)}")
        f = fields[key] if key in fields else prep_fields[key]
        if not _json_value_fits(value, str(f.type)):
            raise UsageError(f"--config {path}: {key} = {value!r} has the wrong type (expected {f.type})")
    return flat


def _json_value_fits(value, annotation: str) -> bool:
    """Whether a JSON value suits a dataclass field annotated ``annotation`` (``int``, ``float | None``,
    ``tuple[float, float]``, ``dict``, ``str``, ``bool``)."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None:
        return optional
    if base.startswith("tuple["):
        items = [t.strip() for t in base[len("tuple[") : -1].split(",")]
        if not isinstance(value, list) or len(value) != len(items):
            return False
        return all(_json_value_fits(v, t) for v, t in zip(value, items))
    if isinstance(value, bool):
        return base == "bool"
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "dict": (dict,), "bool": (bool,)}
    return isinstance(value, kinds.get(base, (object,)))


def build_config(args: argparse.Namespace, saved: dict | None, file_settings: dict | None = None):
    """Merge, lowest priority first: TrainConfig defaults, the demo's settings, the resumed checkpoint's
    settings, the ``--config`` file's settings, the options given on the command line."""
    from .trainer import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__) | set(_PREP_KEYS)
    given = {k: v for k, v in vars(args).items() if k in fields}
    if "data" in given:  # every --data given replaces the data of the checkpoint / config file
        given.update(data_settings(given["data"]))
    flag_opts = gm_flag_options(args)
    head_opt = dict(getattr(args, "head_opt", []))
    for key, value in flag_opts.items():
        if key in head_opt and head_opt[key] != value:
            raise UsageError(
                f"--head-opt {key}={head_opt[key]!r} conflicts with the gm flag that sets {key} = {value!r}"
            )
    merged: dict = {}
    if args.demo:
        merged.update(DEMO, data="demo")
    if saved is not None:
        merged.update(TrainConfig.from_json(saved["config"]).to_json())
        merged.update(merged.pop("preprocessing"))
    if file_settings:
        merged.update(file_settings)
    merged.update(given)
    if head_opt or flag_opts:  # options add to (and override) the demo's / checkpoint's head options
        merged["head_opts"] = {**merged.get("head_opts", {}), **head_opt, **flag_opts}
    if flag_opts and merged.get("loss", "gm") != "gm":
        flags = ", ".join(flag for flag, _, _ in _given_gm_flags(args))
        raise UsageError(f"{flags}: graph-matching options apply to --loss gm, not --loss {merged['loss']}")
    prep_kwargs = {k: merged.pop(k) for k in _PREP_KEYS if k in merged}
    for key in ("mean", "std"):
        merged.pop(key, None)
    try:
        prep = Preprocessing(**prep_kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for key in ("crop_scale", "local_scale", "window", "percentiles", "crop3d"):
        if key in merged and merged[key] is not None:
            merged[key] = tuple(merged[key])
    merged.pop("global_batch", None)
    for key in ("data", "out", "init"):  # absolute, so a resumed run compares and finds the same paths
        if merged.get(key) and merged[key] != "demo":
            merged[key] = os.path.abspath(merged[key])
    if merged.get("datasets"):
        merged["datasets"] = [_absolute_data_spec(spec) for spec in merged["datasets"]]
    if merged.get("labels"):
        merged["labels"] = [_absolute_label_spec(spec) for spec in merged["labels"]]
    return TrainConfig(preprocessing=prep, **merged)


def data_settings(values: list[str] | str) -> dict:
    """``--data`` values -> ``{"data": DIR, "datasets": []}`` for one plain folder (the single-dataset run, as
    before), else ``{"data": "", "datasets": [NAME=DIR[:WEIGHT], ...]}``."""
    from ..data.mixture import parse_data_spec

    values = [values] if isinstance(values, str) else list(values)
    specs = [parse_data_spec(v) for v in values]
    if len(specs) == 1 and specs[0].path == values[0]:  # a plain path, not NAME=DIR
        return {"data": values[0], "datasets": []}
    return {"data": "", "datasets": [s.text() for s in specs]}


def _absolute_data_spec(spec: str) -> str:
    from ..data.mixture import DataSpec, parse_data_spec

    d = parse_data_spec(spec)
    return DataSpec(d.name, os.path.abspath(d.path), d.weight).text()


def _absolute_label_spec(spec: str) -> str:
    from ..data.labelsets import parse_label_spec

    name, path = parse_label_spec(spec)
    return f"{name}={os.path.abspath(path)}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as e:
        print(f"lvmmed pretrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lvmmed pretrain: interrupted; continue with --resume <run folder>", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from . import checkpoint as ckpt_io
    from .trainer import pretrain

    saved = None
    if args.resume:
        args.resume = ckpt_io.resolve_checkpoint_path(args.resume)
        saved = ckpt_io.load_checkpoint(args.resume)
    file_settings = load_config_file(args.config) if args.config else None
    if args.demo and hasattr(args, "data"):
        raise UsageError("--demo uses the offline demo images; drop --data (or drop --demo to train on --data)")
    has_labels = hasattr(args, "labels") or (file_settings or {}).get("labels")
    if (
        not args.demo
        and saved is None
        and not hasattr(args, "data")
        and not (file_settings or {}).get("data")
        and not has_labels
    ):
        raise UsageError("no data: pass --data DIR (a folder of images), --demo, or a --config file with 'data'")
    cfg = build_config(args, saved, file_settings)
    demo = cfg.data == "demo"
    if demo and saved is None:
        cfg.head_opts = {**DEMO_HEAD_OPTS.get(cfg.loss, {}), **cfg.head_opts}
    if not cfg.out:
        cfg.out = (
            os.path.dirname(os.path.abspath(args.resume))
            if args.resume
            else os.path.join("runs", f"{'demo' if demo else 'pretrain'}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
    if demo and saved is None and not cfg.labels and head_needs(cfg.loss, "labels"):
        cfg.labels = demo_label_specs(os.path.join(cfg.out, "eval"), cfg.seed)
    result = pretrain(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(
        f"pretraining done: {result.step} steps in {result.seconds:.0f} s ({result.images_per_s:.1f} images/s), "
        f"final loss {result.final_loss:.4f}"
        + (f", {result.skipped_files} unreadable file(s) skipped" if result.skipped_files else "")
    )
    eval_lines = []
    if demo and not args.no_eval:
        from .trainer import VOLUME_ARCHS

        if cfg.arch in VOLUME_ARCHS:
            print(f"notice: the demo evaluation probes 2D backbones; skipped for --arch {cfg.arch}")
        else:
            eval_lines = _demo_eval(cfg, result)
    print("outputs:")
    print(f"  checkpoint  {result.checkpoint}")
    print(f"  backbone    {result.weights}  (+ {os.path.basename(result.weights_json or '')}: preprocessing)")
    print(f"  log         {result.log_csv}")
    print(f"  loss plot   {result.plot}")
    for line in eval_lines:
        print(line)
    return 0


# The demo's labelled tasks, in report order: (name, description, builder in lvmmed_ext.data.demo).
DEMO_TASKS = (
    (
        "region",
        "MNI152 anatomical region (front-to-back band of the MNI y coordinate) of a 48x48 mm patch",
        "mni152_region_task",
    ),
    (
        "tissue",
        "MNI152 tissue class (grey matter / white matter / CSF) of a 24x24 mm patch's centre voxel",
        "mni152_tissue_task",
    ),
)


def mni152_available() -> bool:
    """Whether the MNI152 files the demo tasks need are installed (nilearn)."""
    from ..data.demo import mni152_paths

    return mni152_paths() is not None


def demo_tasks(folder: str, seed: int, prep: Preprocessing) -> list[tuple[str, str, object]]:
    """The demo's labelled tasks (``DEMO_TASKS``), each built in ``folder/<name>`` with ``seed`` and loaded with
    ``prep``: a list of (name, description, ``LabelledData``); empty (after a notice) without nilearn."""
    from ..data import demo
    from ..eval.probe import load_labelled

    tasks = []
    for name, about, builder in DEMO_TASKS:
        try:
            csv_path = getattr(demo, builder)(os.path.join(folder, name), seed=seed)
        except UsageError as e:
            print(f"notice: demo evaluation skipped: {e}")
            return []
        tasks.append((name, about, load_labelled(csv_path, prep)))
    return tasks


def demo_label_specs(folder: str, seed: int) -> list[str]:
    """``NAME=CSV`` label specs of the demo's tasks (built in ``folder/<name>`` with ``seed``, the same files the
    demo evaluation uses; supervised pretraining reads only their train rows). ``UsageError`` without nilearn."""
    from ..data import demo

    return [
        f"{name}={getattr(demo, builder)(os.path.join(folder, name), seed=seed)}" for name, _, builder in DEMO_TASKS
    ]


def _demo_eval(cfg, result) -> list[str]:
    """Linear probe and kNN of the pretrained backbone vs the same architecture at random init on the demo's
    tasks, then U-Net fine-tuning from both on the demo's segmentation task; prints comparison tables and returns
    lines for the output summary."""
    import torch

    from ..eval.cli import evaluate
    from ..eval.segment import demo_segmentation, describe, format_table

    t0 = time.perf_counter()
    folder = os.path.join(result.out, "eval")
    tasks = demo_tasks(folder, cfg.seed, cfg.preprocessing)
    methods = ["linear-probe", "knn"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = dict(device=device, workers=0, seed=cfg.seed)
    random_kw = dict(arch=cfg.arch, width=cfg.width, in_chans=cfg.preprocessing.in_chans, image_size=cfg.image_size)
    lines = []
    for name, about, data in tasks:
        task_dir = os.path.join(folder, name)
        runs = {
            "pretrained": evaluate(methods, result.weights, data, out=task_dir, label="pretrained", **common),
            "random init": evaluate(methods, "random", data, out=task_dir, label="random_init", **random_kw, **common),
        }
        r0 = runs["pretrained"]["results"]["linear-probe"]
        print(f"evaluation: {about}; {r0['n_train']} train / {r0['n_test']} test patches from held-out axial slabs")
        print(f"  {'backbone':<12} {'method':<13} {'accuracy':>9} {'balanced':>9}")
        for who, summary in runs.items():
            for m in methods:
                r = summary["results"][m]
                print(f"  {who:<12} {m:<13} {r['accuracy']:>9.3f} {r['balanced_accuracy']:>9.3f}")
        lines.append(f"  eval {name:<7}{task_dir}/  (labels.csv, confusion_*.png, results_*.json)")
    seg_dir = os.path.join(folder, "segment")
    seg = demo_segmentation(result.weights, seg_dir, cfg.seed, device=device)
    if seg:
        print(f"{describe(seg)}; pretrained vs random-init encoder, Dice on held-out axial slabs")
        print(format_table(seg))
        lines.append(f"  eval segment {seg_dir}/  (data/pairs.csv, overlay.png, results.json)")
    if tasks or seg:
        print(f"evaluated in {time.perf_counter() - t0:.0f} s")
    return lines


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lvmmed export",
        description="Write the backbone of a pretraining checkpoint as a plain state_dict with torchvision key "
        "names (no classifier) to OUT, plus OUT's .json with the preprocessing used (preset, window, "
        "percentiles, channels, image size, mean/std) and provenance.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt or a run folder")
    p.add_argument("out", help="output .pth path (a folder gets backbone.pth)")
    args = p.parse_args(argv)
    from .checkpoint import export_backbone

    try:
        weights, info = export_backbone(args.checkpoint, args.out)
    except UsageError as e:
        print(f"lvmmed export: error: {e}", file=sys.stderr)
        return 2
    print(f"backbone: {weights}\npreprocessing: {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
