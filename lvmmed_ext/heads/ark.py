"""Ark (Ma et al., MICCAI 2023: accruing and reusing knowledge from heterogeneous labels), written from the
paper's definitions: one shared backbone and projector, one classification head per labelled dataset, and an EMA
teacher whose projected features the student must agree with. Supervised pretraining: it needs labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .base import Head, LabelBatch, TeacherFeatures, mlp, register_head
from .ema import check_momentum, ema_update_, make_teacher

TASK_KINDS = ("multi", "single")


def task_loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """``"multi"``: mean binary cross-entropy of ``[B, K]`` logits against 0/1 targets ``[B, K]``; ``"single"``:
    cross-entropy of ``[B, K]`` logits against class indices ``[B]``."""
    if kind == "multi":
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return F.cross_entropy(logits, target.long())


@register_head("ark")
class ArkHead(Head):
    """Ark: the student's projector output feeds one linear classifier per labelled dataset (``tasks``); a batch
    comes from one dataset and trains only that dataset's classifier (multi-label BCE or softmax cross-entropy, as
    the dataset declares). Student and EMA teacher must agree on the projected features of the other view:

    ``loss = mean_views task_loss(classifier_task(proj(h_view)), target) + consistency_weight *
    (mse(proj(h_s), teacher_proj(teacher_h_t)) + mse(proj(h_t), teacher_proj(teacher_h_s))) / 2``;

    an unlabelled batch (task -1) contributes the consistency term only.

    Args:
        in_dim: backbone feature width D.
        tasks: one dict per labelled dataset, in the order of the batches' task index: ``{"name": str, "kind":
            "multi" | "single", "classes": [names]}`` (the trainer fills it from ``--labels``).
        dim, hidden_dim: projector widths (MLP ``in -> hidden -> dim``).
        consistency_weight: weight of the student-teacher term (>= 0).
        ema_momentum: the teacher's base momentum in [0, 1), raised to 1 by the cosine schedule.

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

    def __init__(
        self,
        in_dim: int,
        tasks: list[dict] | tuple = (),
        dim: int = 256,
        hidden_dim: int = 1024,
        consistency_weight: float = 1.0,
        ema_momentum: float = 0.99,
    ):
        super().__init__()
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
        self.consistency_weight = float(consistency_weight)
        self.projector = mlp(in_dim, hidden_dim, dim)
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
        loss = self.consistency_weight * (F.mse_loss(z_s, q_t) + F.mse_loss(z_t, q_s)) / 2
        if labels is not None and labels.task >= 0 and labels.target is not None:
            if labels.task >= len(self.classifiers):
                raise ValueError(f"batch task {labels.task} but the head has {len(self.classifiers)} task(s)")
            kind, head = self.tasks[labels.task]["kind"], self.classifiers[labels.task]
            loss = loss + (task_loss(head(z_s), labels.target, kind) + task_loss(head(z_t), labels.target, kind)) / 2
        return loss
