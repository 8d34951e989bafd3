"""Ark (Ma et al., MICCAI 2023: accruing and reusing knowledge from heterogeneous labels), written from the
paper and the authors' public code (github.com/jlianglab/Ark, read for its recipe, not copied): one shared
backbone and projector, one classification head per labelled dataset, and an EMA teacher whose projected features
the student must agree with. Supervised pretraining: it needs labels. ``--recipe paper`` runs the published
recipe; the defaults are our variant (docs/METHODS.md lists the differences)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .base import Head, LabelBatch, Recipe, TeacherFeatures, mlp, register_head
from .ema import check_momentum, ema_update_, make_teacher

TASK_KINDS = ("multi", "single")
CHOICES = {
    "projector": ("mlp", "linear"),
    "consistency": ("symmetric", "one-way"),
    "classify": ("both", "student"),
    "weighting": ("sum", "ramp"),
    "single_loss": ("softmax", "bce"),
    "ema_every": ("step", "epoch"),
    "views": ("independent", "same-crop"),
}


def task_loss(logits: Tensor, target: Tensor, kind: str, single_loss: str = "softmax") -> Tensor:
    """``"multi"``: mean binary cross-entropy of ``[B, K]`` logits against targets in [0, 1] ``[B, K]`` (NaN
    targets, the ``--uncertain ignore`` cells, are left out; 0 when none is left); ``"single"``: cross-entropy of
    ``[B, K]`` logits against class indices ``[B]`` (``single_loss="softmax"``), or the binary cross-entropy
    against their one-hot vectors (``"bce"``, as the authors' code trains every dataset)."""
    if kind == "multi":
        target = target.to(logits.dtype)
        known = ~torch.isnan(target)
        if bool(known.all()):
            return F.binary_cross_entropy_with_logits(logits, target)
        if not bool(known.any()):
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[known], target[known])
    if single_loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, F.one_hot(target.long(), logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, target.long())


def ramp_weight(passes_done: float, passes_total: float, top: float = 0.5) -> float:
    """Ark's consistency weight c after ``passes_done`` of ``passes_total`` dataset passes: a half cosine from 0
    towards ``top``, held for a whole pass: ``c = top * (1 - cos(pi * k / K)) / 2`` with ``k = floor(passes_done)``
    and ``K = ceil(passes_total)``.

    Example:
        >>> [round(ramp_weight(k, 4), 3) for k in (0, 1, 2, 3.5)]
        [0.0, 0.073, 0.25, 0.427]
    """
    total = max(1, math.ceil(passes_total))
    k = min(math.floor(passes_done), total)
    return top * (1.0 - math.cos(math.pi * k / total)) / 2.0


@register_head("ark")
class ArkHead(Head):
    """Ark: the student's projector output feeds one linear classifier per labelled dataset (``tasks``); a batch
    comes from one dataset and trains only that dataset's classifier (multi-label BCE or softmax cross-entropy, as
    the dataset declares). Student and EMA teacher must agree on the projected features of the other view.

    Our variant (the defaults): ``loss = mean_views task_loss(classifier_task(proj(h_view)), target) +
    consistency_weight * (mse(proj(h_s), teacher_proj(teacher_h_t)) + mse(proj(h_t), teacher_proj(teacher_h_s)))
    / 2``, an MLP projector, independent views and a teacher updated every step.

    Published (``--recipe paper``): ``loss = (1 - c) * task_loss(classifier_task(proj(h_s)), target) + c *
    mse(proj(h_s), teacher_proj(teacher_h_t))`` with c = :func:`ramp_weight` (0 towards 0.5 over the run's dataset
    passes); a linear projector to 1376; the teacher's view the student's crop without photometric changes; the
    teacher updated once per dataset pass from momentum 0.9; a whole pass per dataset in turn
    (``--task-cycle epoch``); BCE for every dataset; uncertain labels as label-smoothed ones.

    An unlabelled batch (task -1) contributes the consistency term only.

    Args:
        in_dim: backbone feature width D.
        tasks: one dict per labelled dataset, in the order of the batches' task index: ``{"name": str, "kind":
            "multi" | "single", "classes": [names]}`` (the trainer fills it from ``--labels``).
        dim, hidden_dim: projector widths (MLP ``in -> hidden -> dim``; ``in -> dim`` when linear).
        consistency_weight: weight of the student-teacher term (>= 0; ``weighting="sum"``).
        ema_momentum: the teacher's base momentum in [0, 1), raised to 1 by the cosine schedule.
        projector: ``"mlp"`` or ``"linear"``.
        consistency: ``"symmetric"`` (both directions, averaged) or ``"one-way"`` (student view s to the
            teacher's view t).
        classify: ``"both"`` views or the ``"student"`` view s only.
        weighting: ``"sum"`` (task + consistency_weight x consistency) or ``"ramp"`` ((1 - c) task + c
            consistency, c = :func:`ramp_weight` up to ``ramp_top``).
        single_loss: ``"softmax"`` or ``"bce"`` for single-label datasets.
        ema_every: update the teacher every ``"step"`` or once per ``"epoch"`` (a dataset pass with
            ``--task-cycle epoch``).
        views: ``"independent"`` or ``"same-crop"`` (the teacher's view: the student's crop without jitter;
            with ``"same-crop"`` no flips or blur, jitter on 30% of the views, as the authors' augmentation).

    Example:
        >>> tasks = [{"name": "tissue", "kind": "single", "classes": ["a", "b", "c"]}]
        >>> head = ArkHead(64, tasks=tasks, dim=32, hidden_dim=64)
        >>> h = torch.randn(4, 64)
        >>> head(h, h, teacher=TeacherFeatures(h, h), labels=LabelBatch(0, torch.tensor([0, 1, 2, 0]))).shape
        torch.Size([])
    """

    needs_teacher = True
    needs_labels = True
    symmetric = True
    find_unused_parameters = True  # a batch trains one task's classifier
    recipes = {
        "paper": Recipe(
            about="Ark as published: linear projector to 1376, one-way consistency, ramped weighting, teacher per "
            "dataset pass (momentum 0.9), a pass per dataset in turn, Nesterov SGD lr 0.3 with cosine schedule",
            head_opts={
                "projector": "linear",
                "dim": 1376,
                "consistency": "one-way",
                "classify": "student",
                "weighting": "ramp",
                "single_loss": "bce",
                "ema_every": "epoch",
                "ema_momentum": 0.9,
                "views": "same-crop",
            },  # fmt: skip
            settings={
                "task_cycle": "epoch",
                "uncertain": "lsr-ones",
                "optimizer": "nesterov",
                "lr": 0.3,
                "momentum": 0.9,
                "schedule": "cosine",
                "warmup_epochs": 20.0,
                "epochs": 200.0,
                "batch_size": 200,
                "image_size": 224,
                "crop_scale": (0.08, 1.0),
                "jitter": 0.2,
                "weight_decay": 0.0,
            },  # fmt: skip
        )
    }

    def __init__(
        self,
        in_dim: int,
        tasks: list[dict] | tuple = (),
        dim: int = 256,
        hidden_dim: int = 1024,
        consistency_weight: float = 1.0,
        ema_momentum: float = 0.99,
        projector: str = "mlp",
        consistency: str = "symmetric",
        classify: str = "both",
        weighting: str = "sum",
        ramp_top: float = 0.5,
        single_loss: str = "softmax",
        ema_every: str = "step",
        views: str = "independent",
    ):
        super().__init__()
        given = dict(projector=projector, consistency=consistency, classify=classify, weighting=weighting,
                     single_loss=single_loss, ema_every=ema_every, views=views)  # fmt: skip
        for key, value in given.items():
            if value not in CHOICES[key]:
                raise UsageError(f"ark {key} must be one of {CHOICES[key]}, got {value!r}")
        if not 0 <= ramp_top <= 1:
            raise UsageError(f"ark ramp_top must be in [0, 1], got {ramp_top}")
        if not tasks:
            raise UsageError("ark needs at least one labelled dataset: pass --labels NAME=CSV (repeatable)")
        for t in tasks:
            if t.get("kind") not in TASK_KINDS or len(t.get("classes", ())) < 1:
                raise UsageError(f"ark task {t.get('name')!r}: kind must be one of {TASK_KINDS} with >= 1 class")
            if t["kind"] == "single" and len(t["classes"]) < 2:
                raise UsageError(f"ark task {t['name']!r}: a single-label dataset needs >= 2 classes")
        if consistency_weight < 0:
            raise UsageError(f"ark consistency_weight must be >= 0, got {consistency_weight}")
        self.tasks = [dict(t) for t in tasks]
        self.ema_momentum = check_momentum(ema_momentum)
        self.consistency_weight, self.ramp_top = float(consistency_weight), float(ramp_top)
        self.consistency, self.classify, self.weighting = consistency, classify, weighting
        self.single_loss, self.ema_every = single_loss, ema_every
        if views == "same-crop":
            self.view_pairing = "same-crop"
            self.view_overrides = {"flip_p": 0.0, "blur_p": 0.0, "jitter_p": 0.3}
        self.projector = mlp(in_dim, hidden_dim, dim) if projector == "mlp" else nn.Linear(in_dim, dim)
        self.teacher_projector = make_teacher(self.projector)
        self.classifiers = nn.ModuleList(nn.Linear(dim, len(t["classes"])) for t in self.tasks)

    def ema_update(self, momentum: float) -> None:
        ema_update_(self.teacher_projector, self.projector, momentum)

    def forward(
        self,
        h_s,
        h_t,
        y_s=None,
        y_t=None,
        pos_s=None,
        pos_t=None,
        teacher: TeacherFeatures | None = None,
        labels: LabelBatch | None = None,
    ) -> Tensor:
        if teacher is None:
            raise ValueError("ark needs the teacher's features (teacher=TeacherFeatures(...))")
        b = h_s.shape[0]
        z_s, z_t = self.projector(torch.cat([h_s, h_t])).split(b)
        with torch.no_grad():
            q_s, q_t = self.teacher_projector(torch.cat([teacher.h_s, teacher.h_t])).split(b)
        self.record_matching(z_s, z_t)
        if self.consistency == "one-way":
            consistency = F.mse_loss(z_s, q_t)
        else:
            consistency = (F.mse_loss(z_s, q_t) + F.mse_loss(z_t, q_s)) / 2
        task = None
        if labels is not None and labels.task >= 0 and labels.target is not None:
            if labels.task >= len(self.classifiers):
                raise ValueError(f"batch task {labels.task} but the head has {len(self.classifiers)} task(s)")
            kind, head = self.tasks[labels.task]["kind"], self.classifiers[labels.task]
            views = (z_s,) if self.classify == "student" else (z_s, z_t)
            task = sum(task_loss(head(z), labels.target, kind, self.single_loss) for z in views) / len(views)
        if self.weighting == "ramp":
            c = ramp_weight(self.progress.epoch, self.progress.epochs, self.ramp_top)
            return c * consistency + (0.0 if task is None else (1.0 - c) * task)
        loss = self.consistency_weight * consistency
        return loss if task is None else loss + task
