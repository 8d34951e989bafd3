"""The pretraining loop: config -> data pipeline -> model -> loop -> checkpoints and export. Adam with step halvings,
AMP, gradient accumulation, DDP, atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.views import MultiViewConfig, ViewConfig
from ..diagnostics import StepStats, cosine_matching
from ..distributed import DistInfo, all_reduce_mean, all_reduce_sum_int, barrier, init_from_env
from ..errors import UsageError
from ..heads import LabelBatch, Progress, TeacherFeatures, build_head, head_accepts, head_needs
from ..heads.ema import cosine_momentum, ema_update_, make_teacher
from ..models import backbone_state_dict, build_backbone, load_pretrained
from ..models.unet import build_encoder
from ..system import device_type, loader_workers, resolve_device
from . import checkpoint as ckpt_io
from .config import VOLUME_ARCHS, TrainConfig, check_resume
from .pipeline import Pipeline, Span, build_pipeline
from .progress import CsvLog, ProgressBar, TensorBoardLog, plot_loss


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
        self.needs_maps = bool(head.needs_maps)
        self.needs_labels = bool(head.needs_labels)
        self.teacher = make_teacher(backbone) if head.needs_teacher else None
        self.stats = StepStats()  # backbone_match_acc per forward (the head keeps its own diagnostics)

    @torch.no_grad()
    def update_teacher(self, step: int, total: int, epochs_before=0.0, epochs_after=0.0, total_epochs=0.0):
        """EMA update of the teacher backbone (and the head's teacher modules) after optimizer step ``step`` of
        ``total``, which took the data from ``epochs_before`` to ``epochs_after`` passes (of ``total_epochs``). The
        head's ``ema_every`` says when: "step" after every step, "epoch" at the steps that complete a pass. Its
        ``ema_schedule`` gives the momentum: "cosine" raises ``ema_momentum`` to 1 over the run (over the steps,
        or over the passes with "epoch"), "constant" keeps it. Returns the momentum, or None when nothing moved."""
        if self.teacher is None:
            return None
        head = self.head
        if head.ema_every == "epoch":
            if math.floor(epochs_after) <= math.floor(epochs_before):
                return None
            # the pass just completed, counted from 0 (the first update uses ema_momentum itself, as Ark's code)
            step, total = math.floor(epochs_after) - 1, math.ceil(total_epochs)
        base = float(head.ema_momentum)
        m = cosine_momentum(base, step, total) if head.ema_schedule == "cosine" else base
        ema_update_(self.teacher, self.backbone, m)
        head.ema_update(m)
        return m

    def pop_stats(self) -> dict[str, float]:
        """The step's diagnostics: the head's (``match_acc``, ``margin``, ``grad_nodes``) and
        ``backbone_match_acc`` (LAP on the cosines of the two global views' pooled backbone features, in groups
        of the head's ``graph_size``), means over the step's forwards; see :mod:`lvmmed_ext.diagnostics`."""
        return {**self.head.stats.pop(), **self.stats.pop()}

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

    def forward(self, views: list[Tensor], pos: list[Tensor], labels: LabelBatch | None = None, extra=None) -> Tensor:
        if self.head.needs_encoder:  # restoration: views = [corrupted input, original]
            with self._autocast(views[0]):
                return self.head(self.backbone, views[0], views[1]).float()
        batch_extra = extra
        h, y = self._encode_all(views)
        th = ty = None
        if self.teacher is not None:
            with torch.no_grad():
                th, ty = self._encode_all(views, self.teacher)
        graph_size = int(self.head.graph_size)
        backbone = cosine_matching(h[0], h[1], graph_size)
        if backbone:
            self.stats.record({"backbone_match_acc": backbone["match_acc"]})
        symmetric = bool(self.head.symmetric)
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
            if self.head.needs_extra:
                extra["extra"] = batch_extra
            if self.needs_maps:
                losses.append(self.head(h[a], h[b], y[a], y[b], pos[a], pos[b], **extra))
            else:
                losses.append(self.head(h[a], h[b], **extra))
        return torch.stack(losses).mean()


def milestones(total: int, halvings: int) -> list[int]:
    """Evenly spaced halving steps: ``total * k / (halvings + 1)`` for k = 1..halvings (distinct, >= 1)."""
    return sorted({max(1, round(total * k / (halvings + 1))) for k in range(1, halvings + 1)})


def _print(dist_info: DistInfo, *args) -> None:
    if dist_info.is_main:
        print(*args, flush=True)


def encoder_stages(backbone: nn.Module, in_chans: int) -> dict:
    """What a decoder head needs to know of the backbone: its stage strides and channels, spatial dims and input
    channels."""
    return {
        "strides": list(backbone.stage_strides),
        "channels": list(backbone.stage_channels),
        "dims": int(getattr(backbone, "spatial_dims", 2)),
        "in_chans": int(in_chans),
    }


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
    loss_avg: float | None = None  # mean loss over the last tail_steps steps (a tenth of the run)
    match_avg: float | None = None  # mean noise-free matching accuracy over the same steps
    chance_loss: float | None = None  # the loss of a random matching, where the loss has one
    chance_match: float | None = None  # 1 / graph size
    tail_steps: int = 0


def pretrain(cfg: TrainConfig, resume: str | None = None, stop_after: int | None = None) -> RunResult:
    """Run (or resume) self-supervised pretraining as configured; see ``lvmmed pretrain --help``.

    Args:
        cfg: the run's settings. With ``resume``, the checkpoint's settings must agree on every ``STRUCTURAL``
            field (the caller merges them; see ``train.config.build_config``).
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
    dist_info = init_from_env(device_type(cfg.device))
    device = resolve_device(cfg.device, dist_info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    log = lambda *a: _print(dist_info, *a)  # noqa: E731
    cfg.global_batch = cfg.batch_size * dist_info.world * cfg.accum

    saved = ckpt_io.load_checkpoint(resume) if resume else None
    pipeline = build_pipeline(cfg, log)
    n_images = pipeline.n_images
    if cfg.steps is None:
        cfg.steps = max(1, math.ceil(cfg.epochs * n_images / cfg.global_batch))
    steps = cfg.steps
    if saved is not None:
        check_resume(cfg, saved["config"], resume)
        if saved.get("n_images") != n_images:
            print(f"warning: the data changed since the checkpoint ({saved.get('n_images')} -> {n_images} images); "
                  "resuming, but the data order now differs from the interrupted run", file=sys.stderr)  # fmt: skip

    torch.manual_seed(cfg.seed)
    model, views, describe_input = build_model(cfg, device, pipeline, init=cfg.init if saved is None else None,
                                               verbose=dist_info.is_main)  # fmt: skip
    optimizer, scheduler = build_optimizer(cfg, model, steps, n_images / cfg.global_batch)
    torch.manual_seed(cfg.seed * 7919 + 1 + dist_info.rank)  # per-rank stream for heads that sample noise
    start = restore(saved, resume, model, optimizer, scheduler, dist_info, steps) if saved is not None else 0

    workers = pipeline.workers(loader_workers(cfg.workers, dist_info.world), saved, log)
    span = Span(cfg.batch_size, dist_info.world, dist_info.rank, start * cfg.accum, steps * cfg.accum)
    loader = pipeline.loader(views, model.head.pair_config, span, workers, device)
    run = RunFolder(cfg, pipeline, dist_info)
    run.open(fresh=saved is None, at_step=start)
    net: nn.Module = model
    if dist_info.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(model.head.find_unused_parameters),
        )
    n_params = sum(p.numel() for p in model.backbone.parameters())
    log(
        f"model: {cfg.arch}{'' if cfg.width is None else f' (width {cfg.width})'} {n_params / 1e6:.1f}M parameters, "
        f"{cfg.preprocessing.in_chans}-channel input {describe_input}, loss {cfg.loss}; device {device}"
        f"{' bf16' if model.amp_dtype else ''}, {dist_info.world} process(es), {workers} loader worker(s)"
    )
    log(
        f"schedule: {steps} steps of {cfg.global_batch} images (batch {cfg.batch_size} x {dist_info.world} "
        f"process(es) x {cfg.accum} accumulation) = {steps * cfg.global_batch / n_images:.1f} epochs; "
        f"{optimizer_text(cfg, steps, n_images)}" + (f"; resuming at step {start}" if start else "")
    )

    def save(at_step: int) -> None:
        run.save_checkpoint(at_step, model, optimizer, scheduler, n_images, workers)

    step, loss_value, images_done, bad_paths, loop_s, bar = train_loop(
        cfg, net, model, optimizer, scheduler, loader, device, dist_info, start, steps, pipeline.skipped, n_images,
        run, save, stop_after, lambda micro: pipeline.passes(micro, dist_info.world),
    )  # fmt: skip

    loop_rate = images_done / max(loop_s, 1e-9)
    weights = weights_json = plot = None
    bad_total = pipeline.skipped + all_reduce_sum_int(len(bad_paths), device)
    if dist_info.is_main:
        plot = run.plot()
        if pipeline.record(0):
            run.write_config(step * cfg.global_batch)
            for line in pipeline.summary(step * cfg.global_batch):
                log(line)
        if step == steps:
            weights, weights_json = ckpt_io.export_backbone(run.checkpoint, os.path.join(run.out, "backbone.pth"))
    return RunResult(
        out=run.out,
        checkpoint=run.checkpoint,
        step=step,
        total_steps=steps,
        final_loss=loss_value,
        log_csv=run.log_csv,
        plot=plot,
        weights=weights,
        weights_json=weights_json,
        skipped_files=bad_total,
        seconds=time.perf_counter() - t_start,
        images_per_s=loop_rate,
        loss_avg=bar.loss_avg,
        match_avg=bar.match_avg,
        chance_loss=bar.chance_loss,
        chance_match=bar.chance_match,
        tail_steps=bar.tail_steps,
    )


def build_model(cfg: TrainConfig, device: torch.device, pipeline: Pipeline, init: str | None, verbose: bool):
    """The backbone (``init`` weights loaded), the loss head (with the pipeline's labelled tasks) and their
    ``SSLModel`` on ``device``, the views the head is trained on, and a description of the input for the log."""
    three_d = cfg.arch in VOLUME_ARCHS
    in_chans = cfg.preprocessing.in_chans
    build = build_encoder if three_d else build_backbone
    backbone = build(cfg.arch, in_chans=in_chans, width=cfg.width)
    if init:
        load_pretrained(backbone, init, verbose=verbose)
    try:
        grid = backbone.feature_grid(cfg.image_size) if not three_d else (1, 1)
        local_grid = backbone.feature_grid(cfg.local_size) if cfg.local_crops and not three_d else None
    except ValueError as e:
        raise UsageError(f"--image-size/--local-size do not fit {cfg.arch}: {e}") from None
    tasks = pipeline.tasks()
    extra: dict = {"tasks": tasks} if tasks else {}
    if head_needs(cfg.loss, "encoder"):  # a decoder over the backbone's stages (restoration heads)
        extra["stages"] = {
            **encoder_stages(backbone, in_chans),
            "norm": (cfg.preprocessing.mean, cfg.preprocessing.std),
        }
    if head_accepts(cfg.loss, "geometry"):  # heads that read the views' pixels per feature-map cell
        extra["geometry"] = {"grid": tuple(grid), "size": cfg.image_size, "in_chans": in_chans}
    head = build_head(cfg.loss, backbone.out_dim, **extra, **cfg.head_opts)
    for flag, size, g in (("--image-size", cfg.image_size, grid), ("--local-size", cfg.local_size, local_grid)):
        if g is not None and min(g) < head.min_grid:
            raise UsageError(
                f"--loss {cfg.loss} needs a feature grid of at least {head.min_grid}x{head.min_grid} cells; {flag} "
                f"{size} gives {g[0]}x{g[1]} with {cfg.arch} (stride {getattr(backbone, 'stride', '?')})"
            )
    # a restoration head's pair_config makes its own flips and intensity changes: the crop alone comes from here
    plain = {"flip_p": 0.0, "jitter_p": 0.0, "blur_p": 0.0} if head.needs_encoder else dict(head.view_overrides)
    local = ViewConfig(size=cfg.local_size, scale=cfg.local_scale, brightness=cfg.jitter, contrast=cfg.jitter,
                       grid=local_grid) if cfg.local_crops else None  # fmt: skip
    pairing = head.view_pairing
    if pairing == "grid" and (grid[0] != grid[1] or cfg.image_size % grid[0]):
        raise UsageError(f"--loss {cfg.loss} with grid views needs a square feature grid that divides --image-size "
                         f"{cfg.image_size}; {cfg.arch} gives {grid[0]}x{grid[1]}")  # fmt: skip
    if pairing != "independent" and cfg.local_crops:
        raise UsageError(f"--loss {cfg.loss} with {pairing} view pairs takes no --local-crops")
    views = MultiViewConfig(
        ViewConfig(
            size=cfg.image_size, scale=cfg.crop_scale, brightness=cfg.jitter, contrast=cfg.jitter, grid=grid, **plain
        ),  # fmt: skip
        2,
        local,
        cfg.local_crops,
        pairing=pairing,
        grid_cell=cfg.image_size // grid[0] if pairing == "grid" else 0,
    )
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda") else None
    model = SSLModel(backbone, head, n_global=2, amp_dtype=amp_dtype).to(device)
    described = (f"{'x'.join(map(str, cfg.crop3d))} voxel crops" if three_d
                 else f"{cfg.image_size}px (feature grid {grid[0]}x{grid[1]})")  # fmt: skip
    return model, views, described


def build_optimizer(cfg: TrainConfig, model: SSLModel, steps: int, steps_per_epoch: float = 1.0):
    """The optimizer (``cfg.optimizer``: Adam, SGD or Nesterov SGD) over the backbone (lr x backbone_lr_mult) and the
    head, and the schedule: halved ``cfg.halvings`` times at evenly spaced steps, or a cosine to 0 after
    ``cfg.warmup_epochs`` of linear warm-up (``steps_per_epoch`` optimizer steps per pass over the data)."""
    groups = [
        {"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"},
        {"params": list(model.head.parameters()), "lr": cfg.lr, "name": "head"},
    ]
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    nesterov=cfg.optimizer == "nesterov")  # fmt: skip
    if cfg.schedule == "halving":
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(steps, cfg.halvings), gamma=0.5)
    warmup = warmup_steps(cfg, steps, steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr_factor(s, steps, warmup))


def optimizer_text(cfg: TrainConfig, steps: int, n_images: int) -> str:
    """The optimiser and schedule for the log: ``Adam lr 0.002 (backbone x1) halved at steps [...]``."""
    name = {"adam": "Adam", "sgd": f"SGD (momentum {cfg.momentum:g})", "nesterov": f"Nesterov SGD ({cfg.momentum:g})"}
    text = f"{name[cfg.optimizer]} lr {cfg.lr:g} (backbone x{cfg.backbone_lr_mult:g})"
    if cfg.schedule == "halving":
        return f"{text} halved at steps {milestones(steps, cfg.halvings)}"
    return f"{text}, {warmup_steps(cfg, steps, n_images / cfg.global_batch)} warm-up steps then a cosine to 0"


def warmup_steps(cfg: TrainConfig, steps: int, steps_per_epoch: float) -> int:
    """The optimizer steps of ``cfg.warmup_epochs`` (fewer than ``steps``)."""
    return max(0, min(steps - 1, round(cfg.warmup_epochs * steps_per_epoch)))


def cosine_lr_factor(done: int, total: int, warmup: int) -> float:
    """The lr factor of the cosine schedule after ``done`` of ``total`` optimizer steps: ``(done + 1) / warmup``
    during the ``warmup`` steps, then ``(1 + cos(pi * (done - warmup) / (total - warmup))) / 2``.

    Example:
        >>> [round(cosine_lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if done < warmup:
        return (done + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(done - warmup, total - warmup) / max(total - warmup, 1)))


def restore(saved: dict, path: str, model: SSLModel, optimizer, scheduler, dist_info: DistInfo, steps: int) -> int:
    """Loads a checkpoint's weights, optimizer, scheduler and this rank's RNG state; returns its step."""
    model.backbone.load_state_dict(saved["backbone"])
    model.head.load_state_dict(saved["head"])
    if model.teacher is not None:
        model.teacher.load_state_dict(saved["teacher"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rngs = saved["rng"]
    if len(rngs) != dist_info.world:
        raise UsageError(f"checkpoint {path} was written by {len(rngs)} process(es), this run has {dist_info.world}")
    ckpt_io.set_rng_state(rngs[dist_info.rank])
    start = int(saved["step"])
    if start >= steps:
        raise UsageError(f"checkpoint {path} is already at step {start} of {steps}: nothing to resume")
    return start


class RunFolder:
    """The run folder: config.json, checkpoint.pt, log.csv, TensorBoard, loss.png (written by rank 0)."""

    def __init__(self, cfg: TrainConfig, pipeline: Pipeline, dist_info: DistInfo):
        self.cfg, self.pipeline, self.dist_info = cfg, pipeline, dist_info
        self.out = cfg.out
        self.checkpoint = os.path.join(self.out, "checkpoint.pt")
        self.log_csv = os.path.join(self.out, "log.csv")

    def open(self, fresh: bool, at_step: int) -> None:
        if self.dist_info.is_main:
            if fresh and os.path.exists(self.checkpoint):
                raise UsageError(f"--out {self.out} already holds a run ({self.checkpoint}); pass --resume {self.out} "
                                 "or another --out")  # fmt: skip
            os.makedirs(self.out, exist_ok=True)
            self.write_config(at_step * self.cfg.global_batch)
        barrier()

    def write_config(self, position: int) -> None:
        ckpt_io.save_json(
            {**self.cfg.to_json(), **self.pipeline.record(position)}, os.path.join(self.out, "config.json")
        )

    def plot(self) -> str | None:
        return plot_loss(self.log_csv, os.path.join(self.out, "loss.png"))

    def save_checkpoint(self, at_step: int, model: SSLModel, optimizer, scheduler, n_images: int, workers: int) -> None:
        rngs = [ckpt_io.rng_state()]
        if self.dist_info.world > 1:
            rngs = [None] * self.dist_info.world
            torch.distributed.all_gather_object(rngs, ckpt_io.rng_state())
        if self.dist_info.is_main:
            state = {
                "format": ckpt_io.FORMAT,
                "version": ckpt_io.VERSION,
                "lvmmed_ext": _version(),
                "step": at_step,
                "config": self.cfg.to_json(),
                "n_images": n_images,
                "loader_workers": workers,
                "feature_dim": model.backbone.out_dim,
                "width": getattr(model.backbone, "width", None),
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
            ckpt_io.save_torch(state, self.checkpoint)
            self.plot()
        barrier()


def train_loop(cfg, net, model, optimizer, scheduler, loader, device, dist_info, start, steps, skipped_at_scan,
               n_images, run: RunFolder, save, stop_after, passes):  # fmt: skip
    """Optimizer steps ``start + 1 .. steps`` (or ``stop_after``): micro-steps with accumulation, the teacher's EMA,
    one log.csv row per step, checkpoints every ``cfg.ckpt_every`` steps. ``passes(micro_steps)`` gives the passes
    over the data completed (the head's ``Progress.epoch``, per-epoch teachers). Returns (last step, its loss,
    images trained on, unreadable paths met, seconds in the loop)."""
    csv_log = CsvLog(run.log_csv, resume_step=start) if dist_info.is_main else None
    tb = TensorBoardLog(os.path.join(run.out, "tensorboard")) if dist_info.is_main else None
    bar = ProgressBar(steps, start, enabled=dist_info.is_main, chance_loss=model.head.chance_loss(),
                      chance_match=1.0 / max(1, min(int(model.head.graph_size), cfg.batch_size)))  # fmt: skip
    bad_paths: set[str] = set()
    it = iter(loader)
    step, loss_value, t0, images_done = start, float("nan"), time.perf_counter(), 0
    t_loop = time.perf_counter()
    ddp = dist_info.world > 1
    try:
        for step in range(start + 1, steps + 1):
            net.train()
            step_loss = 0.0
            epochs_before = passes((step - 1) * cfg.accum)
            model.head.set_progress(Progress(step, steps, epochs_before, passes(steps * cfg.accum)))
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
                batch_extra = None
                if model.head.needs_extra:
                    batch_extra = {k: v.to(device, non_blocking=True) for k, v in batch["extra"].items()}
                sync = net.no_sync() if ddp and micro < cfg.accum - 1 else contextlib.nullcontext()
                with sync:
                    loss = net(vs, ps, labels, batch_extra) / cfg.accum
                    loss.backward()
                step_loss += loss.detach().item()
            if not math.isfinite(step_loss):
                raise UsageError(f"the loss became {step_loss} at step {step}; lower --lr or check the data")
            lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups}  # the rates this step used
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            model.update_teacher(step, steps, epochs_before, passes(step * cfg.accum), passes(steps * cfg.accum))
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
                save(step)
            if stop_after is not None and step >= stop_after:
                break
    finally:
        bar.close()
        if csv_log is not None:
            csv_log.close()
            tb.close()
        del it
    return step, loss_value, images_done, bad_paths, time.perf_counter() - t0, bar


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lvmmed_ext")
    except Exception:  # noqa: BLE001
        return "unknown"
