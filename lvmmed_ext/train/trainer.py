"""The pretraining loop: data stream -> views -> backbone -> loss head, Adam with step halvings, AMP, gradient
accumulation, DDP, atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.datasets import (
    CyclingBatchSampler,
    ImageSet,
    PretrainDataset,
    StreamBatchSampler,
    TaskStream,
    collate_task_views,
    collate_views,
    seed_worker,
)
from ..data.io import ScanResult, scan
from ..data.labelsets import LabelSet, load_label_sets
from ..data.mixture import BALANCE, MixtureStream, check_specs, group_probabilities, parse_data_spec, split_groups
from ..data.presets import Preprocessing
from ..data.shards import ShardStream, is_shard_folder, load_index
from ..data.views import MultiViewConfig, ViewConfig
from ..data.volumes import VolumeCrops, volume_sources
from ..diagnostics import StepStats, cosine_matching
from ..distributed import DistInfo, all_reduce_mean, all_reduce_sum_int, barrier, init_from_env, world_size
from ..distributed import rank as dist_rank
from ..errors import UsageError
from ..heads import LabelBatch, TeacherFeatures, build_head, head_needs
from ..heads.ema import cosine_momentum, ema_update_, make_teacher
from ..models import backbone_state_dict, build_backbone, load_pretrained
from . import checkpoint as ckpt_io
from .progress import CsvLog, ProgressBar, TensorBoardLog, plot_loss

# Encoders of volumes (3D pretraining: the restoration heads only).
VOLUME_ARCHS = ("unet3d",)

# Changing any of these between a checkpoint and its resumption would silently change the run.
STRUCTURAL = (
    "data", "arch", "width", "loss", "head_opts", "image_size", "crop_scale", "jitter", "local_crops", "local_size",
    "local_scale", "global_batch", "steps", "lr", "backbone_lr_mult", "weight_decay", "halvings", "seed",
    "preprocessing", "labels", "crop3d", "datasets", "balance",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Every setting of a pretraining run (the ``lvmmed pretrain`` options; saved in the checkpoint).

    ``data`` is a folder or file path, or ``"demo"`` for the offline demo images. ``datasets`` lists several named
    folders ``NAME=DIR[:WEIGHT]`` mixed by weight (see :mod:`lvmmed_ext.data.mixture`; ``data`` is then empty), with
    ``balance`` (none, dataset, modality) over-sampling minority groups. ``labels`` lists ``NAME=CSV``
    labelled datasets for supervised heads (``ark``; see :mod:`lvmmed_ext.data.labelsets`), optionally mixed with
    unlabelled ``data``. ``batch_size`` is per process
    and micro-step; the global batch is ``batch_size * world * accum``. ``steps`` counts optimizer steps; when
    it is None it is derived from ``epochs`` (one epoch = one pass over the 2D images). The learning rate is
    halved ``halvings`` times at evenly spaced steps (the paper's Adam 2e-3 "halved four times"); the backbone's
    rate is ``lr * backbone_lr_mult``.
    """

    data: str = ""
    out: str = ""
    arch: str = "resnet50"
    width: int | None = None
    loss: str = "gm"
    head_opts: dict = field(default_factory=dict)
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.4, 1.0)
    jitter: float = 0.4
    local_crops: int = 0
    local_size: int = 96
    local_scale: tuple[float, float] = (0.08, 0.4)
    batch_size: int = 64
    accum: int = 1
    steps: int | None = None
    epochs: float = 100.0
    lr: float = 2e-3
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.0
    halvings: int = 4
    seed: int = 0
    workers: int | None = None
    amp: str = "auto"
    device: str = "auto"
    ckpt_every: int = 500
    init: str | None = None
    cache_mb: int = 1024
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: list[str] = field(default_factory=list)
    crop3d: tuple[int, int, int] = (32, 64, 64)
    datasets: list[str] = field(default_factory=list)
    balance: str = "none"
    global_batch: int = 0  # filled in: batch_size * world * accum

    def to_json(self) -> dict:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_json()
        d["crop_scale"], d["local_scale"] = list(self.crop_scale), list(self.local_scale)
        d["crop3d"] = list(self.crop3d)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["labels"] = list(d.get("labels") or [])
        d["datasets"] = list(d.get("datasets") or [])
        d["preprocessing"] = Preprocessing.from_json(d.get("preprocessing", {}))
        for key in ("crop_scale", "local_scale", "crop3d"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def validate(self) -> None:
        checks = [
            (
                self.batch_size >= 2,
                f"--batch-size must be >= 2 (the loss contrasts images in a batch), got {self.batch_size}",
            ),
            (self.accum >= 1, f"--accum must be >= 1, got {self.accum}"),
            (self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.epochs > 0, f"--epochs must be > 0, got {self.epochs}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.backbone_lr_mult >= 0, f"--backbone-lr-mult must be >= 0, got {self.backbone_lr_mult}"),
            (self.halvings >= 0, f"--halvings must be >= 0, got {self.halvings}"),
            (self.image_size >= 16, f"--image-size must be >= 16, got {self.image_size}"),
            (self.local_crops >= 0, f"--local-crops must be >= 0, got {self.local_crops}"),
            (0 <= self.jitter < 1, f"--jitter must be in [0, 1), got {self.jitter}"),
            (self.ckpt_every >= 1, f"--ckpt-every must be >= 1, got {self.ckpt_every}"),
            (self.amp in ("auto", "bf16", "off"), f"--amp must be auto, bf16 or off, got {self.amp!r}"),
            (self.balance in BALANCE, f"--balance must be one of {', '.join(BALANCE)}, got {self.balance!r}"),
            (
                len(self.crop3d) == 3 and min(self.crop3d) >= 1,
                f"--crop3d must be three sizes D H W >= 1, got {list(self.crop3d)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


class SSLModel(nn.Module):
    """Backbone + loss head. ``forward(views, pos, labels=None)`` runs every view through the backbone (views of
    one size in one batch) and averages the head's loss over the view pairs (global i, any other view j); a
    ``symmetric`` head sees each unordered pair of global views once.

    A head with ``needs_teacher`` gets an EMA teacher: ``self.teacher``, a frozen copy of the backbone that
    encodes the same views without gradient (passed as ``teacher=TeacherFeatures(...)``) and follows the student
    through :meth:`update_teacher` after each optimizer step. A head with ``needs_labels`` gets ``labels``."""

    def __init__(self, backbone: nn.Module, head: nn.Module, n_global: int, amp_dtype: torch.dtype | None):
        super().__init__()
        self.backbone, self.head, self.n_global, self.amp_dtype = backbone, head, n_global, amp_dtype
        self.needs_maps = bool(getattr(head, "needs_maps", False))
        self.needs_labels = bool(getattr(head, "needs_labels", False))
        self.teacher = make_teacher(backbone) if getattr(head, "needs_teacher", False) else None
        self.stats = StepStats()  # backbone_match_acc per forward (the head keeps its own diagnostics)

    @torch.no_grad()
    def update_teacher(self, step: int, total: int) -> float | None:
        """EMA update of the teacher backbone (and the head's teacher modules) after optimizer step ``step`` of
        ``total``, with the cosine momentum schedule from the head's ``ema_momentum``; returns the momentum."""
        if self.teacher is None:
            return None
        m = cosine_momentum(float(getattr(self.head, "ema_momentum", 0.996)), step, total)
        ema_update_(self.teacher, self.backbone, m)
        if hasattr(self.head, "ema_update"):
            self.head.ema_update(m)
        return m

    def pop_stats(self) -> dict[str, float]:
        """The step's diagnostics: the head's (``match_acc``, ``margin``, ``grad_nodes``) and
        ``backbone_match_acc`` (LAP on the cosines of the two global views' pooled backbone features, in groups
        of the head's ``graph_size``), means over the step's forwards; see :mod:`lvmmed_ext.diagnostics`."""
        head_stats = getattr(self.head, "stats", None)
        return {**(head_stats.pop() if head_stats is not None else {}), **self.stats.pop()}

    def _autocast(self, x: Tensor):
        """bf16 autocast on ``x``'s device when the model runs in bf16, else a no-op context."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.amp_dtype)

    def _encode(self, x: Tensor, net: nn.Module | None = None) -> tuple[Tensor, Tensor | None]:
        with self._autocast(x):
            pooled, fmap = (net or self.backbone).features(x)
        maps = fmap.float().flatten(2).transpose(1, 2) if self.needs_maps else None  # [B, P, D]
        return pooled.float(), maps

    def _encode_all(self, views: list[Tensor], net: nn.Module | None = None):
        h: list[Tensor] = []
        y: list[Tensor | None] = []
        i = 0
        while i < len(views):  # one backbone call per run of same-size views
            j = i
            while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
                j += 1
            pooled, maps = self._encode(torch.cat(views[i:j]), net)
            h += list(pooled.chunk(j - i))
            y += list(maps.chunk(j - i)) if maps is not None else [None] * (j - i)
            i = j
        return h, y

    def forward(self, views: list[Tensor], pos: list[Tensor], labels: LabelBatch | None = None) -> Tensor:
        if getattr(self.head, "needs_encoder", False):  # restoration: views = [corrupted input, original]
            with self._autocast(views[0]):
                return self.head(self.backbone, views[0], views[1]).float()
        h, y = self._encode_all(views)
        th = ty = None
        if self.teacher is not None:
            with torch.no_grad():
                th, ty = self._encode_all(views, self.teacher)
        graph_size = int(getattr(self.head, "graph_size", 16))
        backbone = cosine_matching(h[0], h[1], graph_size)
        if backbone:
            self.stats.record({"backbone_match_acc": backbone["match_acc"]})
        symmetric = bool(getattr(self.head, "symmetric", False))
        pairs = [
            (a, b)
            for a in range(self.n_global)
            for b in range(len(views))
            if b != a and not (symmetric and b < self.n_global and b < a)
        ]
        losses = []
        for a, b in pairs:
            extra = {}
            if th is not None:
                extra["teacher"] = TeacherFeatures(th[a], th[b], ty[a], ty[b])
            if self.needs_labels:
                extra["labels"] = labels if labels is not None else LabelBatch(-1, None)
            if self.needs_maps:
                losses.append(self.head(h[a], h[b], y[a], y[b], pos[a], pos[b], **extra))
            else:
                losses.append(self.head(h[a], h[b], **extra))
        return torch.stack(losses).mean()


def milestones(total: int, halvings: int) -> list[int]:
    """Evenly spaced halving steps: ``total * k / (halvings + 1)`` for k = 1..halvings (distinct, >= 1)."""
    return sorted({max(1, round(total * k / (halvings + 1))) for k in range(1, halvings + 1)})


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is visible")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def is_main_rank() -> bool:
    return dist_rank() == 0


def _print(dist_info: DistInfo, *args) -> None:
    if dist_info.is_main:
        print(*args, flush=True)


def scan_data(path: str, axis: int, what: str = "--data") -> ScanResult:
    """``scan`` of one ``--data`` path through the folder's manifest. Under DDP rank 0 scans (reading new headers in
    parallel processes) and writes the manifest first; the other ranks then read it instead of every header."""
    workers = min(8, os.cpu_count() or 1)
    if not is_main_rank():
        barrier()
        return scan(path, axis=axis, what=what, manifest=True, workers=workers)
    try:
        return scan(path, axis=axis, what=what, manifest=True, workers=workers)
    finally:
        if world_size() > 1:
            barrier()


def _log_scan(result: ScanResult, where: str, log) -> None:
    kinds: dict[str, int] = {}
    for s in result.sources:
        kinds[s.kind] = kinds.get(s.kind, 0) + s.count
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    reuse = f"; {result.reused} headers from the manifest, {result.read} read" if result.manifest else ""
    log(f"data: {result.count} images from {len(result.sources)} files in {where} ({summary}){reuse}")
    if result.skipped:
        print(
            f"warning: skipped {len(result.skipped)} unreadable file(s), e.g. {result.skipped[0][0]}: "
            f"{result.skipped[0][1]}",
            file=sys.stderr,
            flush=True,
        )


def build_images(cfg: TrainConfig, log=print) -> tuple[ImageSet, int]:
    """The 2D images of ``cfg.data`` (a folder/file, or ``"demo"``; the ``cfg.datasets`` folders one after the
    other) and the number of files skipped at scan."""
    prep = cfg.preprocessing
    if cfg.data == "demo":
        from ..data.demo import pretrain_images

        return pretrain_images(prep, cache_bytes=cfg.cache_mb << 20, log=log), 0
    if cfg.datasets:
        sets, skipped = build_datasets(cfg, log)
        sources = [src for images in sets for src in images.sources]
        return ImageSet(sources, prep, cache_bytes=cfg.cache_mb << 20), skipped
    if not cfg.data:
        raise UsageError("no data: pass --data DIR (a folder of images) or --demo")
    result = scan_data(cfg.data, prep.axis)
    _log_scan(result, cfg.data, log)
    return ImageSet(result.sources, prep, cache_bytes=cfg.cache_mb << 20), len(result.skipped)


def build_datasets(cfg: TrainConfig, log=print) -> tuple[list[ImageSet], int]:
    """One ``ImageSet`` per ``cfg.datasets`` entry (checked: unique names, weights for all or none) and the number
    of files skipped at scan."""
    specs = [parse_data_spec(t) for t in cfg.datasets]
    check_specs(specs, cfg.balance)
    sets, skipped = [], 0
    for spec in specs:
        result = scan_data(spec.path, cfg.preprocessing.axis, what=f"--data {spec.name}=")
        _log_scan(result, f"{spec.name}={spec.path}", log)
        sets.append(ImageSet(result.sources, cfg.preprocessing, cache_bytes=cfg.cache_mb << 20))
        skipped += len(result.skipped)
    return sets, skipped


def build_mixture(cfg: TrainConfig, views: MultiViewConfig, sets: list[ImageSet], log=print):
    """The ``MixtureStream`` of ``cfg.datasets`` over ``sets`` and its description for config.json: per dataset
    its path, weight, images and sampling probability (per group with ``--balance modality``)."""
    specs = [parse_data_spec(t) for t in cfg.datasets]
    groups = split_groups([s.name for s in specs], sets, cfg.balance)
    weights = [s.weight for s in specs] if specs[0].weight is not None else None
    probs = group_probabilities(
        [len(g.images) for g in groups], [g.dataset for g in groups], [g.modality for g in groups], weights, cfg.balance
    )
    stream = MixtureStream(groups, probs, views, seed=cfg.seed, duplicates=cfg.balance != "none")
    described = []
    for k, spec in enumerate(specs):
        mine = [i for i, g in enumerate(groups) if g.dataset == k]
        entry = {
            "name": spec.name,
            "path": spec.path,
            "weight": spec.weight,
            "images": len(sets[k]),
            "probability": float(probs[mine].sum()),
        }
        if cfg.balance == "modality":
            entry["modalities"] = {groups[i].modality: float(probs[i]) for i in mine}
        described.append(entry)
        dup = max(float(stream.dup_frac[i]) for i in mine)
        log(
            f"mixture: {spec.name} {len(sets[k])} images, {entry['probability']:.1%} of samples"
            + (f" (weight {spec.weight:g})" if spec.weight is not None else "")
            + (f", up to {dup:.0%} of its samples are 85-95% crop duplicates" if dup > 0 else "")
        )
    return stream, {"balance": cfg.balance, "datasets": described}


def mixture_seen(stream: MixtureStream, mixture: dict, positions: int) -> dict[str, int]:
    """Images each dataset supplied to stream positions ``0 .. positions - 1`` (exact: the stream is a function
    of the seed and the position)."""
    per_group = stream.seen(positions)
    out = {d["name"]: 0 for d in mixture["datasets"]}
    for g, n in zip(stream.groups, per_group):
        out[mixture["datasets"][g.dataset]["name"]] += int(n)
    return out


def encoder_stages(backbone: nn.Module, in_chans: int) -> dict:
    """What a decoder head needs to know of the backbone: its stage strides and channels, spatial dims and input
    channels."""
    return {
        "strides": list(backbone.stage_strides),
        "channels": list(backbone.stage_channels),
        "dims": int(getattr(backbone, "spatial_dims", 2)),
        "in_chans": int(in_chans),
    }


def _label_sets(cfg: TrainConfig, log=print) -> list[LabelSet]:
    """The ``--labels`` datasets of a supervised head (checked against ``cfg.loss``), logged one line each."""
    needs = head_needs(cfg.loss, "labels")
    if cfg.labels and not needs:
        raise UsageError(f"--labels applies to supervised losses (ark), not --loss {cfg.loss}")
    if needs and not cfg.labels:
        raise UsageError(f"--loss {cfg.loss} is supervised pretraining: pass --labels NAME=CSV (repeatable)")
    if not cfg.labels:
        return []
    sets = load_label_sets(cfg.labels, cfg.preprocessing, cache_bytes=cfg.cache_mb << 20)
    for ls in sets:
        log(
            f"labels: {ls.name} ({ls.kind}-label, {len(ls.classes)} classes) {len(ls.images)} images from {ls.path}"
            + (f"; skipped {len(ls.skipped)} unreadable file(s)" if ls.skipped else "")
        )
    return sets


def _check_resume(cfg: TrainConfig, saved: dict, path: str) -> None:
    defaults, current = TrainConfig().to_json(), cfg.to_json()
    for key in STRUCTURAL:
        mine = current[key]
        theirs = saved.get(key, defaults[key])  # a setting added after the checkpoint was written: its default
        if key == "preprocessing" and isinstance(theirs, dict):
            theirs = Preprocessing.from_json(theirs).to_json()
        if mine != theirs:
            raise UsageError(f"checkpoint {path} was made with {key} = {theirs!r}, this run has {mine!r}")


@dataclass
class RunResult:
    out: str
    checkpoint: str
    step: int
    total_steps: int
    final_loss: float
    log_csv: str
    plot: str | None
    weights: str | None
    weights_json: str | None
    skipped_files: int
    seconds: float
    images_per_s: float


def pretrain(cfg: TrainConfig, resume: str | None = None, stop_after: int | None = None) -> RunResult:
    """Run (or resume) self-supervised pretraining as configured; see ``lvmmed pretrain --help``.

    Args:
        cfg: the run's settings. With ``resume``, the checkpoint's settings must agree on every ``STRUCTURAL``
            field (the caller merges them; see ``train.cli``).
        resume: checkpoint file or run folder to continue from (same step, optimizer, scheduler, RNG and data
            position: the result equals an uninterrupted run).
        stop_after: stop after this optimizer step as if the process had been killed there (tests; nothing
            beyond the regular checkpoints is written).

    Returns:
        ``RunResult`` with the output paths, final step/loss and throughput (meaningful on rank 0).

    Raises:
        UsageError: bad data, weights, checkpoint or options (before anything is written to ``cfg.out``).

    Example:
        >>> cfg = TrainConfig(data="scans/", out="runs/r1", arch="resnet18", loss="infonce", steps=100)
        >>> pretrain(cfg).checkpoint  # doctest: +SKIP
        'runs/r1/checkpoint.pt'
    """
    cfg.validate()
    t_start = time.perf_counter()
    device_type = (
        "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device.startswith("cuda") else "cpu"
    )
    dist_info = init_from_env(device_type)
    device = _device(cfg, dist_info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    log = lambda *a: _print(dist_info, *a)  # noqa: E731
    cfg.global_batch = cfg.batch_size * dist_info.world * cfg.accum

    saved = ckpt_io.load_checkpoint(resume) if resume else None
    label_sets = _label_sets(cfg, log)
    mixed = bool(cfg.datasets) and not label_sets and cfg.arch not in VOLUME_ARCHS
    shard_index = load_index(cfg.data) if is_shard_folder(cfg.data) else None
    if shard_index is not None:
        if label_sets or cfg.arch in VOLUME_ARCHS:
            raise UsageError(f"--data {cfg.data} holds shards (lvmmed prepare): not usable with --labels or 3D --arch")
        shard_prep = Preprocessing.from_json(shard_index["preprocessing"])
        if shard_prep.to_json() != cfg.preprocessing.to_json():
            log(f"notice: the shards were prepared with {shard_prep.to_json()}; that preprocessing is recorded")
            cfg.preprocessing = shard_prep
        log(
            f"data: {shard_index['images']} preprocessed images in {len(shard_index['shards'])} shards in {cfg.data} "
            f"({', '.join(d['name'] for d in shard_index['datasets'])})"
        )
        images, skipped_at_scan = None, int(shard_index.get("unreadable", 0))
    elif mixed:
        sets, skipped_at_scan = build_datasets(cfg, log)
        images = None
    else:
        if cfg.datasets and (cfg.balance != "none" or parse_data_spec(cfg.datasets[0]).weight is not None):
            raise UsageError("--data weights and --balance apply to self-supervised 2D pretraining, not with --labels "
                             "or --arch unet3d (there the datasets are read one after the other)")  # fmt: skip
        has_data = cfg.data or cfg.datasets
        images, skipped_at_scan = build_images(cfg, log=log) if has_data or not label_sets else (None, 0)
    skipped_at_scan += sum(len(ls.skipped) for ls in label_sets)
    three_d = cfg.arch in VOLUME_ARCHS
    if three_d and not head_needs(cfg.loss, "encoder"):
        raise UsageError(f"--arch {cfg.arch} is the 3D encoder of --loss genesis (restoration), not --loss {cfg.loss}")
    volumes: list = []
    if three_d:
        if label_sets:
            raise UsageError(f"--labels does not apply to --arch {cfg.arch}")
        volumes, too_shallow = volume_sources(images.sources, cfg.crop3d)
        log(
            f"volumes: {len(volumes)} with at least {cfg.crop3d[0]} slices for {'x'.join(map(str, cfg.crop3d))} "
            f"crops" + (f" ({too_shallow} shallower left out)" if too_shallow else "")
        )
    n_images = (
        int(shard_index["images"])
        if shard_index is not None
        else len(volumes)
        if three_d
        else sum(len(x) for x in sets)
        if mixed
        else (len(images) if images is not None else 0) + sum(len(ls.images) for ls in label_sets)
    )
    steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * n_images / cfg.global_batch))
    cfg.steps = steps
    if saved is not None:
        _check_resume(cfg, saved["config"], resume)
    if saved is not None and saved.get("n_images") != n_images:
        print(
            f"warning: the data changed since the checkpoint ({saved.get('n_images')} -> {n_images} images); "
            "resuming, but the data order now differs from the interrupted run",
            file=sys.stderr,
        )

    torch.manual_seed(cfg.seed)
    if three_d:
        from ..models.unet import build_encoder

        backbone = build_encoder(cfg.arch, in_chans=cfg.preprocessing.in_chans, width=cfg.width)
    else:
        backbone = build_backbone(cfg.arch, in_chans=cfg.preprocessing.in_chans, width=cfg.width)
    if cfg.init and saved is None:
        load_pretrained(backbone, cfg.init, verbose=dist_info.is_main)
    extra: dict = {"tasks": [ls.spec() for ls in label_sets]} if label_sets else {}
    if head_needs(cfg.loss, "encoder"):  # a decoder over the backbone's stages (restoration heads)
        extra["stages"] = encoder_stages(backbone, cfg.preprocessing.in_chans)
    head = build_head(cfg.loss, backbone.out_dim, **extra, **cfg.head_opts)
    pair = getattr(head, "pair_config", None)
    try:
        grid = backbone.feature_grid(cfg.image_size) if not three_d else (1, 1)
        local_grid = backbone.feature_grid(cfg.local_size) if cfg.local_crops and not three_d else None
    except ValueError as e:
        raise UsageError(f"--image-size/--local-size do not fit {cfg.arch}: {e}") from None
    min_grid = int(getattr(head, "min_grid", 1))
    for flag, size, g in (("--image-size", cfg.image_size, grid), ("--local-size", cfg.local_size, local_grid)):
        if g is not None and min(g) < min_grid:
            raise UsageError(
                f"--loss {cfg.loss} needs a feature grid of at least {min_grid}x{min_grid} cells; {flag} {size} "
                f"gives {g[0]}x{g[1]} with {cfg.arch} (stride {getattr(backbone, 'stride', '?')})"
            )
    # a restoration head's pair_config makes its own flips and intensity changes: the crop alone comes from here
    plain = {} if pair is None else {"flip_p": 0.0, "jitter_p": 0.0, "blur_p": 0.0}
    views = MultiViewConfig(
        ViewConfig(
            size=cfg.image_size, scale=cfg.crop_scale, brightness=cfg.jitter, contrast=cfg.jitter, grid=grid, **plain
        ),
        2,
        ViewConfig(
            size=cfg.local_size,
            scale=cfg.local_scale,
            brightness=cfg.jitter,
            contrast=cfg.jitter,
            grid=local_grid,
        )
        if cfg.local_crops
        else None,
        cfg.local_crops,
    )
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda") else None
    model = SSLModel(backbone, head, n_global=2, amp_dtype=amp_dtype).to(device)
    optimizer = torch.optim.Adam(
        [
            {"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"},
            {"params": list(model.head.parameters()), "lr": cfg.lr, "name": "head"},
        ],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(steps, cfg.halvings), gamma=0.5)
    torch.manual_seed(cfg.seed * 7919 + 1 + dist_info.rank)  # per-rank stream for heads that sample noise

    start = 0
    if saved is not None:
        model.backbone.load_state_dict(saved["backbone"])
        model.head.load_state_dict(saved["head"])
        if model.teacher is not None:
            model.teacher.load_state_dict(saved["teacher"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rngs = saved["rng"]
        if len(rngs) != dist_info.world:
            raise UsageError(
                f"checkpoint {resume} was written by {len(rngs)} process(es), this run has {dist_info.world}"
            )
        ckpt_io.set_rng_state(rngs[dist_info.rank])
        start = int(saved["step"])
        if start >= steps:
            raise UsageError(f"checkpoint {resume} is already at step {start} of {steps}: nothing to resume")

    if mixed and pair is not None:
        raise UsageError(f"several --data datasets are not supported with --loss {cfg.loss} yet; pass one --data")
    mixture_stream, mixture = build_mixture(cfg, views, sets, log) if mixed else (None, None)
    workers = cfg.workers if cfg.workers is not None else min(4, max(0, (os.cpu_count() or 1) // dist_info.world - 1))
    if shard_index is not None and saved is not None and saved.get("loader_workers", workers) != workers:
        log(f"notice: resuming with {saved['loader_workers']} loader workers, as the run began (its shard readers)")
        workers = int(saved["loader_workers"])
    shard_stream = (
        ShardStream(cfg.data, shard_index, views, cfg.preprocessing, cfg.seed, dist_info.rank, dist_info.world,
                    workers, cfg.batch_size, start * cfg.accum, pair)
        if shard_index is not None
        else None
    )  # fmt: skip
    out = cfg.out
    ckpt_path = os.path.join(out, "checkpoint.pt")

    def write_config(seen_at: int | None = None) -> None:
        record = cfg.to_json()
        if mixture is not None:
            seen = mixture_seen(mixture_stream, mixture, seen_at or 0)
            record["mixture"] = {**mixture, "seen": seen, "seen_at_step": seen_at // cfg.global_batch if seen_at else 0}
        ckpt_io.save_json(record, os.path.join(out, "config.json"))

    if dist_info.is_main:
        if saved is None and os.path.exists(ckpt_path):
            raise UsageError(f"--out {out} already holds a run ({ckpt_path}); pass --resume {out} or another --out")
        os.makedirs(out, exist_ok=True)
        write_config(start * cfg.global_batch)
    barrier()

    ddp = dist_info.world > 1
    net: nn.Module = model
    if ddp:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(head, "find_unused_parameters", False)),
        )
    span = (cfg.batch_size, dist_info.world, dist_info.rank, start * cfg.accum, steps * cfg.accum)
    if label_sets:  # labelled datasets (then the unlabelled images) in turn, one per micro-step
        sets = [ls.images for ls in label_sets] + ([images] if images is not None else [])
        targets = [ls.targets for ls in label_sets] + ([None] if images is not None else [])
        task_ids = list(range(len(label_sets))) + ([-1] if images is not None else [])
        dataset = TaskStream(sets, targets, task_ids, views, seed=cfg.seed)
        sampler, collate = CyclingBatchSampler(*span, groups=len(sets)), collate_task_views
    elif three_d:
        dataset = VolumeCrops(
            volumes, cfg.preprocessing, cfg.crop3d, pair, seed=cfg.seed, cache_bytes=cfg.cache_mb << 20
        )
        sampler, collate = StreamBatchSampler(*span), collate_views
    elif mixed:
        dataset, sampler, collate = mixture_stream, StreamBatchSampler(*span), collate_views
    else:
        dataset = PretrainDataset(images, views, seed=cfg.seed, pair=pair)
        sampler, collate = StreamBatchSampler(*span), collate_views
    if shard_stream is not None:  # batches come whole from each worker's shards
        dataset, sampler, collate = shard_stream, None, collate_views
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        batch_size=None if sampler is None else 1,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed + start),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )

    n_params = sum(p.numel() for p in backbone.parameters())
    log(
        f"model: {cfg.arch}{'' if cfg.width is None else f' (width {cfg.width})'} {n_params / 1e6:.1f}M parameters, "
        f"{cfg.preprocessing.in_chans}-channel input "
        + (
            f"{'x'.join(map(str, cfg.crop3d))} voxel crops"
            if three_d
            else f"{cfg.image_size}px (feature grid {grid[0]}x{grid[1]})"
        )
        + ", "
        f"loss {cfg.loss}; device {device}{' bf16' if amp_dtype else ''}, {dist_info.world} process(es), "
        f"{workers} loader worker(s)"
    )
    log(
        f"schedule: {steps} steps of {cfg.global_batch} images (batch {cfg.batch_size} x {dist_info.world} "
        f"process(es) x {cfg.accum} accumulation) = {steps * cfg.global_batch / n_images:.1f} epochs; Adam lr "
        f"{cfg.lr:g} (backbone x{cfg.backbone_lr_mult:g}) halved at steps {milestones(steps, cfg.halvings)}"
        + (f"; resuming at step {start}" if start else "")
    )

    csv_log = CsvLog(os.path.join(out, "log.csv"), resume_step=start) if dist_info.is_main else None
    tb = TensorBoardLog(os.path.join(out, "tensorboard")) if dist_info.is_main else None
    bar = ProgressBar(steps, start, enabled=dist_info.is_main)
    bad_paths: set[str] = set()
    it = iter(loader)
    step, loss_value, t0, images_done = start, float("nan"), time.perf_counter(), 0
    t_loop = time.perf_counter()

    def save_checkpoint(at_step: int) -> None:
        rngs = [ckpt_io.rng_state()]
        if ddp:
            rngs = [None] * dist_info.world
            torch.distributed.all_gather_object(rngs, ckpt_io.rng_state())
        if dist_info.is_main:
            state = {
                "format": ckpt_io.FORMAT,
                "version": ckpt_io.VERSION,
                "lvmmed_ext": _version(),
                "step": at_step,
                "config": cfg.to_json(),
                "n_images": n_images,
                "loader_workers": workers,
                "feature_dim": backbone.out_dim,
                "width": getattr(backbone, "width", None),
                "backbone": backbone_state_dict(model.backbone),
                "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
                **(
                    {"teacher": {k: v.detach().cpu() for k, v in model.teacher.state_dict().items()}}
                    if model.teacher is not None
                    else {}
                ),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rngs,
            }
            ckpt_io.save_torch(state, ckpt_path)
            plot_loss(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"))
        barrier()

    try:
        for step in range(start + 1, steps + 1):
            net.train()
            step_loss = 0.0
            for micro in range(cfg.accum):
                batch = next(it)
                for path, reason in batch["bad"]:
                    if path not in bad_paths:
                        bad_paths.add(path)
                        print(f"warning: skipping unreadable file {path}: {reason}", file=sys.stderr, flush=True)
                vs = [v.to(device, non_blocking=True) for v in batch["views"]]
                ps = [p.to(device, non_blocking=True) for p in batch["pos"]] if model.needs_maps else [None] * len(vs)
                labels = None
                if model.needs_labels:
                    target = batch.get("target")
                    labels = LabelBatch(
                        int(batch.get("task", -1)), None if target is None else target.to(device, non_blocking=True)
                    )
                sync = net.no_sync() if ddp and micro < cfg.accum - 1 else contextlib.nullcontext()
                with sync:
                    loss = net(vs, ps, labels) / cfg.accum
                    loss.backward()
                step_loss += loss.detach().item()
            if not math.isfinite(step_loss):
                raise UsageError(f"the loss became {step_loss} at step {step}; lower --lr or check the data")
            lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups}  # the rates this step used
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            model.update_teacher(step, steps)
            loss_value = all_reduce_mean(step_loss, device)
            diag = {k: all_reduce_mean(v, device) for k, v in model.pop_stats().items()}
            images_done += cfg.global_batch
            now = time.perf_counter()
            ips = images_done / max(now - t0, 1e-9)
            row = {
                "step": step,
                "epoch": f"{step * cfg.global_batch / n_images:.4f}",
                "loss": f"{loss_value:.6f}",
                "lr": f"{lrs['head']:.6g}",
                "lr_backbone": f"{lrs['backbone']:.6g}",
                "images_per_s": f"{ips:.2f}",
                "elapsed_s": f"{now - t_loop:.2f}",
                "skipped_files": skipped_at_scan + len(bad_paths),
                **{k: f"{v:.6f}" for k, v in diag.items()},
            }
            if csv_log is not None:
                csv_log.write(row)
                tb.write(step, {k: float(v) for k, v in row.items() if k in TensorBoardLog.KEYS})
            bar.update(step, loss_value, ips, lrs["head"], diag.get("match_acc"))
            if step % cfg.ckpt_every == 0 or step == steps:
                save_checkpoint(step)
            if stop_after is not None and step >= stop_after:
                break
    finally:
        bar.close()
        if csv_log is not None:
            csv_log.close()
            tb.close()
        del it

    loop_rate = images_done / max(time.perf_counter() - t0, 1e-9)
    weights = weights_json = plot = None
    bad_total = skipped_at_scan + all_reduce_sum_int(len(bad_paths), device)
    if dist_info.is_main:
        plot = plot_loss(os.path.join(out, "log.csv"), os.path.join(out, "loss.png"))
        if mixture is not None:
            write_config(step * cfg.global_batch)
            seen = mixture_seen(mixture_stream, mixture, step * cfg.global_batch)
            total = max(1, sum(seen.values()))
            log("data seen: " + ", ".join(f"{k} {n} ({n / total:.1%})" for k, n in seen.items()))
        if step == steps:
            weights, weights_json = ckpt_io.export_backbone(ckpt_path, os.path.join(out, "backbone.pth"))
    seconds = time.perf_counter() - t_start
    return RunResult(
        out=out,
        checkpoint=ckpt_path,
        step=step,
        total_steps=steps,
        final_loss=loss_value,
        log_csv=os.path.join(out, "log.csv"),
        plot=plot,
        weights=weights,
        weights_json=weights_json,
        skipped_files=bad_total,
        seconds=seconds,
        images_per_s=loop_rate,
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lvmmed_ext")
    except Exception:  # noqa: BLE001
        return "unknown"
