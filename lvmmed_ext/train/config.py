"""The settings of a pretraining run, declared once.

``TRAIN_OPTIONS`` is the table (one :class:`~lvmmed_ext.options.Option` per setting or flag: key, flag, type,
default, help, constraint, the losses or data modes it applies to, the commands that have it). ``TrainConfig``, the
``lvmmed pretrain`` / ``lvmmed ablate`` parsers (:func:`add_train_arguments`), the validation of settings and of
``--config`` files, ``--help`` and the saved ``config.json`` are generated from it. :func:`build_config` merges the
sources of a run's settings: defaults < the demo < a resumed checkpoint < a ``--config`` file < the command line.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from dataclasses import asdict, field, fields, make_dataclass

from ..data.datasets import TASK_CYCLES
from ..data.demo import DEMO
from ..data.labelsets import UNCERTAIN_POLICIES, parse_label_spec
from ..data.mixture import BALANCE, DataSpec, parse_data_spec
from ..data.presets import PREP_KEYS, PREP_OPTIONS, Preprocessing
from ..errors import UsageError
from ..heads import head_names, head_options, head_recipe
from ..heads.gm import GMHeadOptions
from ..models import BACKBONES
from ..noise import NOISE_KINDS
from ..options import Option, add_arguments, check_values, value_fits

OPTIMIZERS = ("adam", "sgd", "nesterov")
SCHEDULES = ("halving", "cosine")

# Encoders of volumes (3D pretraining: the restoration heads only).
VOLUME_ARCHS = ("unet3d",)

# Changing any of these between a checkpoint and its resumption would silently change the run.
STRUCTURAL = (
    "data", "arch", "width", "loss", "head_opts", "recipe", "image_size", "crop_scale", "jitter", "local_crops",
    "local_size", "local_scale", "global_batch", "steps", "optimizer", "lr", "momentum", "schedule", "warmup_epochs",
    "backbone_lr_mult", "weight_decay", "halvings", "seed", "preprocessing", "labels", "task_cycle", "uncertain",
    "crop3d", "datasets", "balance",
)  # fmt: skip


def parse_head_opt(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--head-opt`` (VALUE a Python literal, else a string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--head-opt must be KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def _gm(flag: str, key: str, help_: str, annotation: str, **kw) -> Option:
    """A flag of the gm head: sets its option ``key`` (default from :class:`GMHeadOptions`)."""
    switch = "const" in kw
    return Option("gm_" + flag.lstrip("-").replace("-", "_"), flag, getattr(GMHeadOptions, key), help_, annotation,
                  group="graph-matching loss (--loss gm)", setting=False, head_option=key, switch=switch,
                  metavar=None if switch or "choices" in kw else key.upper(), **kw)  # fmt: skip


_DATA, _MODEL, _GM, _VIEWS, _OPT, _OUT = (
    "data",
    "model and loss",
    "graph-matching loss (--loss gm)",
    "views",
    "optimisation",
    "outputs",
)
GROUP_ORDER = (_DATA, _MODEL, _GM, _VIEWS, _OPT, _OUT)

# The table, in the order of TrainConfig's fields (``config.json``); "preprocessing" is the nested Preprocessing of
# PREP_OPTIONS, placed where the row of that name would be.
TRAIN_OPTIONS: tuple[Option, ...] = (
    Option(
        "config",
        "--config",
        None,
        "a JSON object of settings named as in a run's config.json (data, arch, "
        "loss, head_opts, batch_size, steps, lr, preprocessing or its keys, ...); options given on the command "
        "line override it; its 'out' is ignored (pass --out), so a run's config.json repeats that run in a new "
        "folder",
        group=_DATA,
        metavar="FILE",
        setting=False,
        commands=("pretrain",),
    ),  # fmt: skip
    Option(
        "data",
        "--data",
        "",
        "folder (searched recursively; its header index is kept in "
        "DIR/.lvmmed-manifest.tsv, see lvmmed scan) or a single file; repeat as NAME=DIR[:WEIGHT] to mix datasets, "
        "sampled in proportion to WEIGHT (all or none given; none: by image count)",
        group=_DATA,
        append=True,
        metavar="DIR | NAME=DIR[:WEIGHT]",
    ),  # fmt: skip
    Option(
        "out",
        "--out",
        "",
        "run folder (default runs/pretrain-<time>, runs/demo-<time>)",
        group=_OUT,
        help_for=(
            (
                "ablate",
                "output folder (default runs/ablate-<time>); an existing one is continued: finished "
                "configurations are reused, interrupted ones resumed",
            ),
        ),
    ),  # fmt: skip
    Option(
        "arch",
        "--arch",
        "resnet50",
        "backbone; unet3d = the 3D U-Net encoder for --loss genesis on volumes",
        group=_MODEL,
        choices=tuple(sorted(BACKBONES)) + VOLUME_ARCHS,
    ),  # fmt: skip
    Option("width", "--width", None, "ResNet base width (64 = torchvision)", "int | None", group=_MODEL),
    Option(
        "loss",
        "--loss",
        "gm",
        f"loss head: {', '.join(head_names())}; ark is supervised pretraining from "
        "--labels, the others are self-supervised",
        group=_MODEL,
        commands=("pretrain",),
    ),  # fmt: skip
    Option(
        "head_opts",
        "--head-opt",
        {},
        "loss-head option, repeatable (e.g. temperature=0.1); the options of "
        "each loss are listed under 'loss-head options' below",
        "dict",
        group=_MODEL,
        append=True,
        parse=parse_head_opt,
        metavar="KEY=VALUE",
        commands=("pretrain",),
    ),  # fmt: skip
    Option(
        "recipe",
        "--recipe",
        "",
        "a named recipe of the loss: its head options and run settings as published (peac, ark, genesis: "
        "'paper'; gm: 'authors-views'); options given explicitly still override it; docs/METHODS.md lists each "
        "recipe's components",
        group=_MODEL,
        commands=("pretrain",),
    ),  # fmt: skip
    Option(
        "image_size",
        "--image-size",
        224,
        "global view side in pixels",
        "int",
        group=_VIEWS,
        check=lambda v: v >= 16,
        requirement="must be >= 16",
    ),  # fmt: skip
    Option("crop_scale", "--crop-scale", (0.4, 1.0), "global crop area range", "tuple[float, float]", group=_VIEWS),
    Option(
        "jitter",
        "--jitter",
        0.4,
        "brightness and contrast jitter strength",
        "float",
        group=_VIEWS,
        check=lambda v: 0 <= v < 1,
        requirement="must be in [0, 1)",
    ),  # fmt: skip
    Option(
        "local_crops",
        "--local-crops",
        0,
        "extra small multi-crop views",
        "int",
        group=_VIEWS,
        check=lambda v: v >= 0,
        requirement="must be >= 0",
    ),  # fmt: skip
    Option("local_size", "--local-size", 96, "multi-crop view side", "int", group=_VIEWS),
    Option("local_scale", "--local-scale", (0.08, 0.4), "multi-crop area range", "tuple[float, float]", group=_VIEWS),
    Option(
        "batch_size",
        "--batch-size",
        64,
        "images per process per micro-step",
        "int",
        group=_OPT,
        check=lambda v: v >= 2,
        requirement="must be >= 2 (the loss contrasts images in a batch)",
    ),  # fmt: skip
    Option(
        "accum",
        "--accum",
        1,
        "gradient-accumulation micro-steps per optimizer step",
        "int",
        group=_OPT,
        check=lambda v: v >= 1,
        requirement="must be >= 1",
    ),  # fmt: skip
    Option(
        "steps",
        "--steps",
        None,
        "optimizer steps (default: from --epochs)",
        "int | None",
        group=_OPT,
        check=lambda v: v is None or v >= 1,
        requirement="must be >= 1",
    ),  # fmt: skip
    Option(
        "epochs",
        "--epochs",
        100.0,
        "passes over the images when --steps is not given",
        "float",
        group=_OPT,
        check=lambda v: v > 0,
        requirement="must be > 0",
    ),  # fmt: skip
    Option(
        "optimizer",
        "--optimizer",
        "adam",
        "adam (Adam), sgd (SGD with --momentum) or nesterov (SGD, Nesterov momentum)",
        choices=OPTIMIZERS,
        group=_OPT,
    ),  # fmt: skip
    Option(
        "lr", "--lr", 2e-3, "learning rate", "float", group=_OPT, check=lambda v: v > 0, requirement="must be > 0"
    ),  # fmt: skip
    Option(
        "momentum",
        "--momentum",
        0.9,
        "SGD momentum",
        "float",
        group=_OPT,
        applies="--optimizer sgd|nesterov",
        check=lambda v: 0 <= v < 1,
        requirement="must be in [0, 1)",
    ),  # fmt: skip
    Option(
        "schedule",
        "--schedule",
        "halving",
        "learning-rate schedule: halving (halved --halvings times at evenly spaced steps) or cosine (to 0, after "
        "--warmup-epochs of linear warm-up)",
        choices=SCHEDULES,
        group=_OPT,
    ),  # fmt: skip
    Option(
        "warmup_epochs",
        "--warmup-epochs",
        0.0,
        "linear warm-up from 0, in passes over the data",
        "float",
        group=_OPT,
        applies="--schedule cosine",
        check=lambda v: v >= 0,
        requirement="must be >= 0",
    ),  # fmt: skip
    Option(
        "backbone_lr_mult",
        "--backbone-lr-mult",
        1.0,
        "backbone lr = lr x this (0.01 for pretrained inits)",
        "float",
        group=_OPT,
        check=lambda v: v >= 0,
        requirement="must be >= 0",
    ),  # fmt: skip
    Option("weight_decay", "--weight-decay", 0.0, "weight decay (L2, as torch.optim)", "float", group=_OPT),
    Option(
        "halvings",
        "--halvings",
        4,
        "lr halvings at evenly spaced steps",
        "int",
        group=_OPT,
        applies="--schedule halving",
        check=lambda v: v >= 0,
        requirement="must be >= 0",
    ),  # fmt: skip
    Option("seed", "--seed", 0, "initialisation, data order and augmentation seed", "int", group=_OPT),
    Option(
        "workers", "--workers", None, "data-loader processes (default: min(4, cores - 1))", "int | None", group=_DATA
    ),  # fmt: skip
    Option(
        "amp",
        "--amp",
        "auto",
        "autocast: auto = bf16 on GPU only",
        choices=("auto", "bf16", "off"),
        group=_OPT,
    ),  # fmt: skip
    Option("device", "--device", "auto", "auto, cpu, cuda or cuda:N", group=_OPT),
    Option(
        "ckpt_every",
        "--ckpt-every",
        500,
        "checkpoint every N optimizer steps",
        "int",
        group=_OUT,
        check=lambda v: v >= 1,
        requirement="must be >= 1",
    ),  # fmt: skip
    Option(
        "init",
        "--init",
        None,
        "initial backbone weights (e.g. torchvision ImageNet .pth; 3->1 channel stems are summed)",
        "str | None",
        group=_MODEL,
    ),  # fmt: skip
    Option("cache_mb", "--cache-mb", 1024, "decoded-image cache per loader process, MiB", "int", group=_DATA),
    Option("preprocessing", None, None, "the intensity preset and loading (the rows of PREP_OPTIONS)"),
    Option(
        "labels",
        "--labels",
        [],
        "a labelled dataset for supervised pretraining, repeatable: CSV path,label[,split] "
        "(one class per image) or a header path,<name1>,<name2>,...[,split] with 0/1 values (multi-label); rows "
        "with split=test are left out; unlabelled --data may be mixed in",
        "list[str]",
        group=_DATA,
        append=True,
        metavar="NAME=CSV",
        applies="--loss ark",
    ),  # fmt: skip
    Option(
        "task_cycle",
        "--task-cycle",
        "batch",
        "how batches take turns among the --labels datasets: batch (the next dataset every micro-step) or epoch (a "
        "whole pass over one dataset, then the next, in --labels order: Ark's schedule)",
        choices=TASK_CYCLES,
        group=_DATA,
        applies="--labels",
    ),  # fmt: skip
    Option(
        "uncertain",
        "--uncertain",
        "error",
        "multi-label CSV values -1 (uncertain) and blank (unmentioned): error (refuse them), ignore (left out of "
        "the loss), ones, zeros, lsr-ones / lsr-zeros (a soft label drawn once per cell from U(0.55, 0.85) / "
        "U(0, 0.3), as Ark); except with error and ignore a blank cell counts as 0",
        choices=UNCERTAIN_POLICIES,
        group=_DATA,
        applies="--labels",
    ),  # fmt: skip
    Option(
        "crop3d",
        "--crop3d",
        (32, 64, 64),
        "sub-volume size in voxels, slices first (Models Genesis' 64x64x32 cubes)",
        "tuple[int, int, int]",
        group=_VIEWS,
        metavar=("D", "H", "W"),
        applies="--arch unet3d",
        check=lambda v: len(v) == 3 and min(v) >= 1,
        requirement="must be three sizes D H W >= 1",
    ),  # fmt: skip
    Option("datasets", None, [], "the NAME=DIR[:WEIGHT] datasets of --data", "list[str]"),
    Option(
        "balance",
        "--balance",
        "none",
        "with several --data: over-sample minority groups to equal shares per "
        "dataset or per modality (DICOM Modality, else file type); the extra draws are 85-95% area crops resized "
        "back",
        choices=BALANCE,
        group=_DATA,
    ),  # fmt: skip
    Option("global_batch", None, 0, "batch_size x processes x accum (filled in by the trainer)", "int"),
    # flags that are not saved settings
    Option(
        "demo",
        "--demo",
        False,
        "real medical images from installed packages (nilearn, pydicom-data, nibabel), "
        "ResNet-18, then a linear-probe/kNN evaluation vs random init",
        "bool",
        group=_DATA,
        switch=True,
        setting=False,
        help_for=(
            (
                "ablate",
                "the offline demo images (those of lvmmed pretrain --demo), a shorter "
                "budget (--budget), and the demo's MNI152 anatomical-region and tissue tasks as --eval-data",
            ),
        ),
    ),  # fmt: skip
    Option(
        "resume",
        "--resume",
        None,
        "continue a run from its checkpoint.pt or run folder",
        group=_OUT,
        metavar="CKPT",
        setting=False,
        commands=("pretrain",),
    ),  # fmt: skip
    Option(
        "no_eval",
        "--no-eval",
        False,
        "with --demo: skip the evaluation",
        "bool",
        group=_OUT,
        switch=True,
        setting=False,
        commands=("pretrain",),
    ),  # fmt: skip
    _gm("--graph-size", "graph_size", "images per graph N", "int"),
    _gm("--k", "k", "kNN neighbours per image in each view's graph", "int"),
    _gm("--alpha", "alpha", "vertex affinity = alpha x global cosine + (1 - alpha) x local term", "float"),
    _gm("--lam", "lam", "IMLE step lambda", "float"),
    _gm("--noise", "noise", "perturbation of the matching scores", "str", choices=NOISE_KINDS),
    _gm("--noise-scale", "noise_scale", "noise scale (temperature)", "float"),
    _gm("--samples", "samples", "noise samples per graph, solved in one batch", "int"),
    _gm(
        "--margin",
        "margin",
        "subtracted from the ground-truth (diagonal) affinities before solving; with --noise "
        "none this is the paper's 'w/o Gumbel noise' ablation",
        "float",
    ),  # fmt: skip
    _gm(
        "--no-edge-term",
        "quad_weight",
        "first-order matching: no edge affinities, a linear assignment instead of the QAP (Table 6 'w/o second-order')",
        "bool",
        const=0.0,
    ),  # fmt: skip
    _gm(
        "--no-local-term",
        "alpha",
        "global cosine affinity only (alpha = 1): no feature maps are computed (Table 6 'w/o local similarity')",
        "bool",
        const=1.0,
    ),  # fmt: skip
    _gm(
        "--no-gnn",
        "use_gnn",
        "no message passing: the projector's embeddings go straight to the affinities (Table 6 'w/o message passing')",
        "bool",
        const=False,
    ),  # fmt: skip
    *PREP_OPTIONS,
)
OPTIONS_BY_KEY = {o.key: o for o in TRAIN_OPTIONS}
SETTINGS = tuple(o for o in TRAIN_OPTIONS if o.setting and o.key not in PREP_KEYS)
GM_OPTIONS = tuple(o for o in TRAIN_OPTIONS if o.head_option is not None)


def _field(o: Option):
    if o.key == "preprocessing":
        return ("preprocessing", Preprocessing, field(default_factory=Preprocessing))
    if isinstance(o.default, (list, dict)):
        return (o.key, o.annotation, field(default_factory=lambda d=o.default: type(d)(d)))
    return (o.key, o.annotation, field(default=o.default))


class _ConfigMethods:
    def to_json(self) -> dict:
        """The settings as the JSON of ``config.json`` and checkpoints (tuples as lists, preprocessing nested)."""
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_json()
        for o in SETTINGS:
            if isinstance(d[o.key], tuple):
                d[o.key] = list(d[o.key])
        return d

    @classmethod
    def from_json(cls, d: dict):
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["labels"] = list(d.get("labels") or [])
        d["datasets"] = list(d.get("datasets") or [])
        d["preprocessing"] = Preprocessing.from_json(d.get("preprocessing", {}))
        for o in SETTINGS:
            if o.annotation.startswith("tuple[") and o.key in d:
                d[o.key] = tuple(d[o.key])
        return cls(**d)

    @classmethod
    def from_recipe(cls, loss: str, recipe: str, **settings):
        """The settings of ``--loss loss --recipe recipe`` (the recipe's head options and settings), with
        ``settings`` on top (``head_opts`` merged into the recipe's).

        Example:
            >>> cfg = TrainConfig.from_recipe("genesis", "paper", data="scans/")
            >>> cfg.head_opts["output"], cfg.optimizer, cfg.preprocessing.window
            ('sigmoid', 'sgd', (0.0, 2000.0))
        """
        base = recipe_settings(loss, recipe)
        head_opts = {**base.pop("head_opts"), **settings.pop("head_opts", {})}
        prep = {k: base.pop(k) for k in PREP_KEYS if k in base}
        if "preprocessing" not in settings:
            settings["preprocessing"] = Preprocessing(**prep)
        return cls(loss=loss, head_opts=head_opts, **{**base, **settings})

    def validate(self) -> None:
        """``UsageError`` with the option's requirement for the first setting that breaks its constraint."""
        check_values(SETTINGS, {f.name: getattr(self, f.name) for f in fields(self)})
        if self.recipe:
            head_recipe(self.loss, self.recipe)  # UsageError naming the recipes the loss has


TrainConfig = make_dataclass("TrainConfig", [_field(o) for o in SETTINGS], bases=(_ConfigMethods,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = """Every setting of a pretraining run (the ``lvmmed pretrain`` options; saved in the checkpoint
and config.json), generated from ``TRAIN_OPTIONS``: see that table for each setting's meaning and default.

``data`` is a folder or file path, or ``"demo"`` for the offline demo images. ``datasets`` lists several named
folders ``NAME=DIR[:WEIGHT]`` mixed by weight (``data`` is then empty), with ``balance`` over-sampling minority
groups. ``labels`` lists ``NAME=CSV`` labelled datasets for supervised heads. ``batch_size`` is per process and
micro-step; the global batch is ``batch_size * world * accum``. ``steps`` counts optimizer steps (from ``epochs``
when None). The learning rate is halved ``halvings`` times at evenly spaced steps; the backbone's rate is
``lr * backbone_lr_mult``."""


def add_train_arguments(parser: argparse.ArgumentParser, command: str) -> dict:
    """Adds the options of ``command`` (``pretrain`` or ``ablate``) from the table, in their ``--help`` sections."""
    groups = add_arguments(parser, TRAIN_OPTIONS, command, order=GROUP_ORDER)
    if command == "pretrain":
        parser.add_argument_group("loss-head options (--head-opt KEY=VALUE; default after '=')", head_options_text())
    return groups


def head_options_text() -> str:
    """One entry per registered loss: its options with their defaults (gm's are its flags above)."""
    parts = []
    for name in head_names():
        if name == "gm":
            parts.append("gm: the flags of the graph-matching group above (and gm_loss's keywords)")
            continue
        opts = ", ".join(f"{k}={v!r}" for k, v in head_options(name).items())
        parts.append(f"{name}: {opts}")
    return "; ".join(parts).replace("%", "%%")


def gm_defaults() -> dict:
    """The gm head's default options (:class:`lvmmed_ext.heads.gm.GMHeadOptions`)."""
    return {f.name: f.default for f in fields(GMHeadOptions)}


def gm_flag_options(args: argparse.Namespace) -> dict:
    """The gm head options that the gm flags given on the command line set (flags not given set nothing).

    Raises ``UsageError`` when two flags set one option to different values (``--no-local-term --alpha 0.5``)."""
    opts: dict = {}
    source: dict = {}
    for flag, key, value in given_gm_flags(args):
        if key in opts and opts[key] != value:
            raise UsageError(f"{flag} sets {key} = {value!r} but {source[key]} sets it to {opts[key]!r}")
        opts[key], source[key] = value, flag
    return opts


def given_gm_flags(args: argparse.Namespace) -> list[tuple[str, str, object]]:
    """(flag, head option, value) of each gm flag given on the command line."""
    out = []
    for o in GM_OPTIONS:
        if hasattr(args, o.key) and (not o.switch or getattr(args, o.key)):
            out.append((o.flag, o.head_option, o.const if o.switch else getattr(args, o.key)))
    return out


# Settings of a --config file that are not read: where the run goes (always --out or the default) and what is
# derived from the other settings.
CONFIG_IGNORED = ("out", "global_batch", "mixture")


def load_config_file(path: str) -> dict:
    """The settings of a ``--config`` JSON file as flat ``TrainConfig``/preprocessing keys (``preprocessing`` may
    be nested, as in a run's config.json). Unknown keys, values of the wrong type and unreadable files raise
    ``UsageError`` naming the file and the key."""
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
        if key not in PREP_KEYS:
            raise UsageError(f"--config {path}: unknown preprocessing key {key!r}; known: {', '.join(PREP_KEYS)}")
        flat.setdefault(key, value)
    for key in CONFIG_IGNORED:
        flat.pop(key, None)
    readable = {
        o.key: o for o in (*SETTINGS, *PREP_OPTIONS) if o.key not in CONFIG_IGNORED and o.key != "preprocessing"
    }
    for key, value in flat.items():
        if key not in readable:
            raise UsageError(f"--config {path}: unknown setting {key!r}; known: {', '.join(sorted(readable))}")
        if not value_fits(value, readable[key].annotation):
            raise UsageError(
                f"--config {path}: {key} = {value!r} has the wrong type (expected {readable[key].annotation})"
            )
    return flat


def data_settings(values: list[str] | str) -> dict:
    """``--data`` values -> ``{"data": DIR, "datasets": []}`` for one plain folder (the single-dataset run, as
    before), else ``{"data": "", "datasets": [NAME=DIR[:WEIGHT], ...]}``."""
    values = [values] if isinstance(values, str) else list(values)
    specs = [parse_data_spec(v) for v in values]
    if len(specs) == 1 and specs[0].path == values[0]:  # a plain path, not NAME=DIR
        return {"data": values[0], "datasets": []}
    return {"data": "", "datasets": [s.text() for s in specs]}


def _absolute_data_spec(spec: str) -> str:
    d = parse_data_spec(spec)
    return DataSpec(d.name, os.path.abspath(d.path), d.weight).text()


def _absolute_label_spec(spec: str) -> str:
    name, path = parse_label_spec(spec)
    return f"{name}={os.path.abspath(path)}"


def build_config(args: argparse.Namespace, saved: dict | None, file_settings: dict | None = None) -> TrainConfig:
    """Merge, lowest priority first: TrainConfig defaults, the demo's settings, the resumed checkpoint's
    settings, the ``--config`` file's settings, the options given on the command line."""
    keys = {o.key for o in SETTINGS} | set(PREP_KEYS)
    given = {k: v for k, v in vars(args).items() if k in keys and k != "head_opts"}
    if "data" in given:  # every --data given replaces the data of the checkpoint / config file
        given.update(data_settings(given["data"]))
    flag_opts = gm_flag_options(args)
    head_opt = dict(getattr(args, "head_opts", []))
    for key, value in flag_opts.items():
        if key in head_opt and head_opt[key] != value:
            raise UsageError(
                f"--head-opt {key}={head_opt[key]!r} conflicts with the gm flag that sets {key} = {value!r}"
            )
    merged: dict = {}
    if getattr(args, "demo", False):
        merged.update(DEMO, data="demo")
    layers = [saved["config"] if saved is not None else {}, file_settings or {}, given]
    recipe = next((layer["recipe"] for layer in reversed(layers) if layer.get("recipe")), "")
    if recipe:
        loss = next((layer["loss"] for layer in reversed(layers) if layer.get("loss")), OPTIONS_BY_KEY["loss"].default)
        merged.update(recipe_settings(loss, recipe))
    if saved is not None:
        merged.update(TrainConfig.from_json(saved["config"]).to_json())
        merged.update(merged.pop("preprocessing"))
    if file_settings:
        merged.update(file_settings)
    merged.update(given)
    if head_opt or flag_opts:  # options add to (and override) the demo's / checkpoint's head options
        merged["head_opts"] = {**merged.get("head_opts", {}), **head_opt, **flag_opts}
    if flag_opts and merged.get("loss", "gm") != "gm":
        flags = ", ".join(flag for flag, _, _ in given_gm_flags(args))
        raise UsageError(f"{flags}: graph-matching options apply to --loss gm, not --loss {merged['loss']}")
    prep_kwargs = {k: merged.pop(k) for k in PREP_KEYS if k in merged}
    for key in ("mean", "std"):
        merged.pop(key, None)
    try:
        prep = Preprocessing(**prep_kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for o in SETTINGS:
        if o.annotation.startswith("tuple[") and merged.get(o.key) is not None:
            merged[o.key] = tuple(merged[o.key])
    merged.pop("global_batch", None)
    for key in ("data", "out", "init"):  # absolute, so a resumed run compares and finds the same paths
        if merged.get(key) and merged[key] != "demo":
            merged[key] = os.path.abspath(merged[key])
    if merged.get("datasets"):
        merged["datasets"] = [_absolute_data_spec(spec) for spec in merged["datasets"]]
    if merged.get("labels"):
        merged["labels"] = [_absolute_label_spec(spec) for spec in merged["labels"]]
    return TrainConfig(preprocessing=prep, **merged)


def recipe_settings(loss: str, recipe: str) -> dict:
    """The settings of recipe ``recipe`` of ``loss`` as flat TrainConfig/preprocessing keys, with its head options
    under ``head_opts`` (``UsageError`` for an unknown recipe or a recipe naming an unknown setting)."""
    r = head_recipe(loss, recipe)
    known = {o.key for o in SETTINGS} | set(PREP_KEYS)
    for key in r.settings:
        if key not in known or key in ("recipe", "loss", "head_opts"):
            raise UsageError(f"recipe {recipe!r} of --loss {loss} sets {key!r}, which is not a setting")
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in r.settings.items()}
    out["recipe"] = recipe
    out["head_opts"] = dict(r.head_opts)
    return out


def check_resume(cfg: TrainConfig, saved: dict, path: str) -> None:
    """``UsageError`` when a ``STRUCTURAL`` setting differs from the checkpoint's (a setting added after the
    checkpoint was written counts as its default)."""
    defaults, current = TrainConfig().to_json(), cfg.to_json()
    for key in STRUCTURAL:
        mine = current[key]
        theirs = saved.get(key, defaults[key])
        if key == "preprocessing" and isinstance(theirs, dict):
            theirs = Preprocessing.from_json(theirs).to_json()
        if mine != theirs:
            raise UsageError(f"checkpoint {path} was made with {key} = {theirs!r}, this run has {mine!r}")
