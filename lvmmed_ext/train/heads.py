"""Pluggable self-supervised loss heads: the interface, a registry, and the InfoNCE (SimCLR) and VICReg heads.

A head is an ``nn.Module`` whose ``forward(h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None)`` returns a
scalar loss for one pair of views:

* ``h_s``, ``h_t``: pooled backbone features ``[B, D]`` of the two views (float32, this rank's images);
* ``y_s``, ``y_t``: backbone feature maps flattened to ``[B, P, D]`` (P = R*S cells, row-major; 7x7 = 49 for a
  ResNet at 224 px), passed only when the head sets ``needs_maps = True`` (otherwise ``None`` and the trainer
  neither computes nor moves them);
* ``pos_s``, ``pos_t``: ``[B, P, 2]`` cell centres (y, x) in original-image pixels (mirrored when a view was
  flipped), same condition.

Class attributes a head may set: ``needs_maps`` (default False) and ``symmetric`` (True when
``loss(s, t) == loss(t, s)``, so the trainer evaluates each unordered pair of global views once).

Diagnostics: a head may have a ``stats`` attribute (``lvmmed_ext.diagnostics.StepStats``) into which each forward
records ``match_acc`` and ``margin`` of its embeddings (``Head.record_matching`` does it for the baselines); the
trainer pops it once per optimizer step into log.csv, TensorBoard and the progress bar.

The graph-matching head is registered as ``"gm"``: ``lvmmed_ext.losses.LVMMedHead(in_dim, **cfg)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diagnostics import StepStats, cosine_matching
from ..distributed import all_gather_with_grad, rank
from ..errors import UsageError


class HeadUnavailable(UsageError):
    """The requested head cannot be built in this installation."""


class Head(nn.Module):
    """Base class of loss heads (see the module docstring for the ``forward`` contract)."""

    needs_maps: bool = False
    symmetric: bool = False
    graph_size: int = 16  # group size of the matching diagnostics (gm's default graph size)

    def __init__(self):
        super().__init__()
        self.stats = StepStats()

    def record_matching(self, z_s: Tensor, z_t: Tensor) -> None:
        """Record the noise-free matching diagnostics of two views' embeddings ``[B, F]`` (LAP on cosines in
        groups of ``graph_size``; see :func:`lvmmed_ext.diagnostics.cosine_matching`)."""
        self.stats.record(cosine_matching(z_s, z_t, self.graph_size))

    def forward(self, h_s: Tensor, h_t: Tensor, y_s=None, y_t=None, pos_s=None, pos_t=None) -> Tensor:
        raise NotImplementedError


_HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    """Decorator: register a head factory ``f(in_dim, **cfg) -> nn.Module`` under ``name``."""

    def wrap(factory):
        _HEADS[name] = factory
        return factory

    return wrap


def head_names() -> list[str]:
    return sorted(_HEADS)


def build_head(name: str, in_dim: int, **cfg) -> nn.Module:
    """Build the loss head ``name`` for backbone features of width ``in_dim``.

    Args:
        name: ``"gm"`` (the graph-matching loss, :class:`lvmmed_ext.LVMMedHead`), ``"infonce"``, ``"vicreg"`` or a
            registered name.
        in_dim: D, the backbone's pooled feature width.
        **cfg: head options (e.g. ``temperature=0.2`` for infonce).

    Raises:
        HeadUnavailable (a ``UsageError``): unknown name.

    Example:
        >>> head = build_head("infonce", 512, hidden_dim=256, out_dim=64)
        >>> head(torch.randn(8, 512), torch.randn(8, 512)).shape
        torch.Size([])
    """
    if name not in _HEADS:
        raise HeadUnavailable(f"unknown --loss {name!r}; available: {', '.join(head_names())}")
    try:
        return _HEADS[name](in_dim, **cfg)
    except TypeError as e:
        raise UsageError(f"bad option for --loss {name}: {e}") from None


@register_head("gm")
def _build_gm(in_dim: int, **cfg) -> nn.Module:
    from ..losses import LVMMedHead

    return LVMMedHead(in_dim, **cfg)


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
        self.projector = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, h_s: Tensor, h_t: Tensor, y_s=None, y_t=None, pos_s=None, pos_t=None) -> Tensor:
        z = self.projector(torch.cat([h_s, h_t], dim=0))  # one BatchNorm pass over both views
        z_s, z_t = z.split(h_s.shape[0])
        self.record_matching(z_s, z_t)
        return info_nce(z_s, z_t, self.temperature, self.gather)


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
