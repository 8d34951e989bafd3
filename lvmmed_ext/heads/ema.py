"""The EMA teacher shared by the teacher heads (PEAC, Ark): a frozen copy of a module whose parameters follow
the student's as an exponential moving average, with BYOL's cosine momentum schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import UsageError


def check_momentum(momentum: float, name: str = "ema_momentum") -> float:
    """``momentum`` as a float; ``UsageError`` unless it lies in [0, 1)."""
    m = float(momentum)
    if not 0.0 <= m < 1.0:
        raise UsageError(f"{name} must be in [0, 1), got {momentum}")
    return m


def cosine_momentum(base: float, step: int, total: int) -> float:
    """The teacher momentum after optimizer step ``step`` of ``total`` (1-based): ``1 - (1 - base) * (cos(pi *
    step / total) + 1) / 2``, i.e. ``base`` at the start rising to 1 at the end (BYOL's schedule).

    Example:
        >>> cosine_momentum(0.99, 0, 100), cosine_momentum(0.99, 100, 100)
        (0.99, 1.0)
    """
    base = check_momentum(base)
    if total <= 0:
        return base
    t = min(max(step, 0), total) / total
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with every parameter frozen (``requires_grad=False``)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``teacher_param = momentum * teacher_param + (1 - momentum) * student_param`` for every parameter
    (floating buffers such as BatchNorm statistics are copied from the student)."""
    m = float(momentum)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(m).add_(s.detach().to(t.dtype), alpha=1.0 - m)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)
