"""Process-group helpers: torchrun initialisation (NCCL on GPU, gloo on CPU) and an all-gather with gradients."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT); a single process when WORLD_SIZE is unset or 1. Backend: NCCL for CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _AllGather(torch.autograd.Function):
    """Forward: every rank's ``x``. Backward: the gradients every rank computed for slice ``r`` are summed
    (all-reduce) and rank ``r`` keeps its own slice, so a loss that uses other ranks' features as negatives
    sends their gradient back to the rank that owns them."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.batch = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """``[B, ...]`` on each of W ranks -> ``[W*B, ...]`` (rank order) with gradients routed to the owner.

    Every rank must pass the same ``B``. Without an initialised process group (or W = 1) returns ``x``.

    Example:
        >>> all_gather_with_grad(torch.ones(2, 3)).shape  # single process
        torch.Size([2, 3])
    """
    if world_size() == 1:
        return x
    return _AllGather.apply(x)


def all_reduce_mean(value: float, device: torch.device) -> float:
    """The mean of a Python float over ranks (the value itself in a single process)."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def all_reduce_sum_int(value: int, device: torch.device) -> int:
    if world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
