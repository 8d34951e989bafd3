"""InfoNCE (SimCLR, Chen et al. 2020): a projector MLP and the NT-Xent loss with in-batch (and all-rank) negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import all_gather_with_grad, rank
from ..errors import UsageError
from .base import Head, mlp, register_head


def info_nce(z_s: Tensor, z_t: Tensor, temperature: float = 0.2, gather: bool = True) -> Tensor:
    """Symmetric SimCLR / NT-Xent loss of two views with in-batch (and, under DDP, all-rank) negatives.

    ``z_s``, ``z_t``: ``[B, F]`` embeddings of the same B images (row i of each is a positive pair). Every
    embedding is an anchor; its positive is the other view of its image and its negatives are the other
    ``2*B*W - 2`` embeddings of all W ranks. Returns the mean cross-entropy over this rank's ``2B`` anchors,
    a scalar in ``z_s``'s dtype. Gradients reach other ranks' embeddings through ``all_gather_with_grad``.

    Example:
        >>> z = torch.randn(4, 8)
        >>> bool(info_nce(z, z) < info_nce(z, torch.randn(4, 8)))
        True
    """
    if z_s.shape != z_t.shape or z_s.dim() != 2:
        raise ValueError(f"z_s and z_t must both be [B, F], got {list(z_s.shape)} and {list(z_t.shape)}")
    b = z_s.shape[0]
    z_s, z_t = F.normalize(z_s, dim=1), F.normalize(z_t, dim=1)
    all_s = all_gather_with_grad(z_s) if gather else z_s
    all_t = all_gather_with_grad(z_t) if gather else z_t
    n, offset = all_s.shape[0], (rank() * b if gather else 0)
    queries = torch.cat([z_s, z_t], dim=0)  # [2B, F]
    keys = torch.cat([all_s, all_t], dim=0)  # [2N, F]
    logits = queries @ keys.t() / temperature
    local = torch.arange(b, device=z_s.device) + offset
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * n).bool(), float("-inf"))
    return F.cross_entropy(logits, pos_idx)


@register_head("infonce")
class InfoNCEHead(Head):
    """Projector MLP (Linear -> BatchNorm -> ReLU -> Linear) followed by ``info_nce``.

    Args:
        in_dim: backbone feature width D.
        hidden_dim, out_dim: projector widths (default 2048 -> 128; the spec's F = 128).
        temperature: softmax temperature tau.
        gather: use every rank's embeddings as negatives under DDP.
    """

    symmetric = True

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, temperature: float = 0.2, gather: bool = True
    ):
        super().__init__()
        if temperature <= 0:
            raise UsageError(f"infonce temperature must be > 0, got {temperature}")
        self.temperature, self.gather = float(temperature), bool(gather)
        self.projector = mlp(in_dim, hidden_dim, out_dim)

    def forward(self, h_s: Tensor, h_t: Tensor, y_s=None, y_t=None, pos_s=None, pos_t=None) -> Tensor:
        z = self.projector(torch.cat([h_s, h_t], dim=0))  # one BatchNorm pass over both views
        z_s, z_t = z.split(h_s.shape[0])
        self.record_matching(z_s, z_t)
        return info_nce(z_s, z_t, self.temperature, self.gather)
