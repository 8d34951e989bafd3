"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): an expander MLP and the variance-invariance-covariance loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import all_gather_with_grad
from ..errors import UsageError
from .base import Head, register_head


def vicreg(
    z_s: Tensor,
    z_t: Tensor,
    inv_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> Tensor:
    """VICReg loss (Bardes, Ponce & LeCun, ICLR 2022) of two views: invariance + variance + covariance.

    With ``Z``, ``Z'`` the ``[n, F]`` embeddings of the two views (n = all ranks' images under DDP):

    * invariance ``s = mean((Z - Z')**2)`` over all n*F entries (the paper's Algorithm 1, ``mse_loss``);
    * variance ``v(Z) = mean_j relu(gamma - sqrt(Var(Z[:, j]) + eps))``, unbiased variance per dimension;
    * covariance ``c(Z) = sum_{i != j} C(Z)[i, j]**2 / F`` with ``C(Z) = (Z - mean)^T (Z - mean) / (n - 1)``;
    * loss ``= inv_weight * s + var_weight * (v(Z) + v(Z')) + cov_weight * (c(Z) + c(Z'))`` (the paper's Eq. 6,
      defaults 25 / 25 / 1, gamma 1, eps 1e-4).

    ``z_s``, ``z_t``: ``[B, F]`` embeddings of the same B images (row i of each is a positive pair), B * ranks
    >= 2. Under DDP (``gather``) the statistics are those of the global batch: every rank gathers both views with
    ``all_gather_with_grad`` and computes the same global loss; gradients return to each rank's own rows, and
    DDP's mean over ranks of the parameter gradients is the gradient of the global loss. Returns a scalar in
    ``z_s``'s dtype, on its device.

    Example:
        >>> z = torch.randn(64, 32)
        >>> bool(vicreg(z, z + 0.01 * torch.randn(64, 32)) < vicreg(z, torch.randn(64, 32)))
        True
    """
    if z_s.shape != z_t.shape or z_s.dim() != 2:
        raise ValueError(f"z_s and z_t must both be [B, F], got {list(z_s.shape)} and {list(z_t.shape)}")
    if gather:
        z_s, z_t = all_gather_with_grad(z_s), all_gather_with_grad(z_t)
    n, f = z_s.shape
    if n < 2:
        raise ValueError(f"vicreg needs at least 2 images in the (global) batch for a variance, got {n}")
    invariance = F.mse_loss(z_s, z_t)
    variance = z_s.new_zeros(())
    covariance = z_s.new_zeros(())
    for z in (z_s, z_t):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.pow(2).sum(dim=0) / (n - 1) + eps)
        variance = variance + F.relu(gamma - std).mean()
        cov = (z.t() @ z) / (n - 1)  # [F, F]
        covariance = covariance + (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / f
    return inv_weight * invariance + var_weight * variance + cov_weight * covariance


@register_head("vicreg")
class VICRegHead(Head):
    """Expander MLP (``layers`` Linear layers, BatchNorm + ReLU between them) followed by ``vicreg``.

    Args:
        in_dim: backbone feature width D.
        hidden_dim, out_dim: expander widths (default 2048 -> 2048; the paper's best is 8192 -> 8192).
        layers: Linear layers in the expander (paper: 3).
        inv_weight, var_weight, cov_weight: the loss coefficients (paper: 25 / 25 / 1).
        gamma, eps: the variance hinge's target std and the stabiliser under the square root.
        gather: compute the statistics over every rank's embeddings under DDP.

    Example:
        >>> head = VICRegHead(512, hidden_dim=256, out_dim=256)
        >>> head(torch.randn(8, 512), torch.randn(8, 512)).shape
        torch.Size([])
    """

    symmetric = True

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 2048,
        layers: int = 3,
        inv_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather: bool = True,
    ):
        super().__init__()
        if layers < 1:
            raise UsageError(f"vicreg layers must be >= 1, got {layers}")
        if min(inv_weight, var_weight, cov_weight) < 0:
            raise UsageError(
                f"vicreg weights must be >= 0, got inv_weight={inv_weight}, var_weight={var_weight}, "
                f"cov_weight={cov_weight}"
            )
        if eps <= 0:
            raise UsageError(f"vicreg eps must be > 0, got {eps}")
        self.coefficients = dict(
            inv_weight=float(inv_weight),
            var_weight=float(var_weight),
            cov_weight=float(cov_weight),
            gamma=float(gamma),
            eps=float(eps),
            gather=bool(gather),
        )
        widths = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for i in range(layers):
            last = i == layers - 1
            blocks.append(nn.Linear(widths[i], widths[i + 1], bias=last))
            if not last:
                blocks += [nn.BatchNorm1d(widths[i + 1]), nn.ReLU(inplace=True)]
        self.expander = nn.Sequential(*blocks)

    def forward(self, h_s: Tensor, h_t: Tensor, y_s=None, y_t=None, pos_s=None, pos_t=None) -> Tensor:
        z = self.expander(torch.cat([h_s, h_t], dim=0))  # one BatchNorm pass over both views
        z_s, z_t = z.split(h_s.shape[0])
        self.record_matching(z_s, z_t)
        return vicreg(z_s, z_t, **self.coefficients)
