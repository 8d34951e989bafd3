"""PEAC (patch embedding of anatomical consistency; Zhou et al., BMVC 2023), written from the paper's
definitions: a student and an EMA teacher; a global consistency between the two views' pooled embeddings and a
local consistency between the embeddings of the patches that cover the same anatomy in the original image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from .base import Head, TeacherFeatures, mlp, register_head
from .ema import check_momentum, ema_update_, make_teacher


def consistency(p: Tensor, q: Tensor) -> Tensor:
    """``2 - 2 cos(p, q)`` per row (the squared distance of the unit vectors), ``[..., F] -> [...]``."""
    return 2.0 - 2.0 * F.cosine_similarity(p, q, dim=-1)


def _grid_side(pos: Tensor) -> int:
    side = int(round(pos.shape[1] ** 0.5))
    if side * side != pos.shape[1] or side < 2:
        raise ValueError(f"peac needs a square feature grid of at least 2x2 cells, got {pos.shape[1]} cells")
    return side


def _pitch(pos: Tensor) -> Tensor:
    """``[B, P, 2]`` cell centres of square R x R grids -> ``[B, 2]`` cell pitch (y, x) in original pixels."""
    side = _grid_side(pos)
    grid = pos.reshape(pos.shape[0], side, side, 2)
    return torch.stack([(grid[:, 1, 0, 0] - grid[:, 0, 0, 0]).abs(), (grid[:, 0, 1, 1] - grid[:, 0, 0, 1]).abs()], 1)


def stable_cells(pos_s: Tensor, pos_t: Tensor) -> tuple[Tensor, Tensor, int]:
    """The stable-grid cell of every view cell: the original image is cut into a fixed grid whose pitch is the
    coarser of the two views' cell pitches (per image and axis), anchored at the image origin; a view cell belongs
    to the stable cell that holds its centre. Cells of the two views in one stable cell cover the same anatomy.

    Returns ``(ids_s [B, P], ids_t [B, Q], U)``: compact int64 ids in ``[0, U)``, equal between the views exactly
    when the image and the stable cell agree.
    """
    pitch = torch.maximum(_pitch(pos_s), _pitch(pos_t)).clamp_min(1e-6)[:, None, :]  # [B, 1, 2]
    cell_s = torch.floor(pos_s / pitch).long()
    cell_t = torch.floor(pos_t / pitch).long()
    both = torch.cat([cell_s, cell_t], 1)  # [B, P+Q, 2]
    b = torch.arange(pos_s.shape[0], device=pos_s.device)[:, None].expand(-1, both.shape[1])
    keys = torch.stack([b, both[..., 0], both[..., 1]], -1).reshape(-1, 3)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    inverse = inverse.reshape(pos_s.shape[0], -1)
    return inverse[:, : pos_s.shape[1]], inverse[:, pos_s.shape[1] :], int(inverse.max()) + 1


def _pool(emb: Tensor, ids: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Mean of ``emb [B, P, F]`` per id of ``ids [B, P]`` -> (``[n, F]``, bool ``[n]`` present)."""
    flat, idx = emb.reshape(-1, emb.shape[-1]), ids.reshape(-1)
    sums = torch.zeros(n, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add(0, idx, flat)
    counts = torch.zeros(n, dtype=flat.dtype, device=flat.device).index_add(
        0, idx, torch.ones_like(idx, dtype=flat.dtype)
    )
    return sums / counts.clamp_min(1)[:, None], counts > 0


def local_consistency(e_s: Tensor, e_t: Tensor, pos_s: Tensor, pos_t: Tensor) -> Tensor:
    """PEAC's local term: the mean ``consistency`` between the two views' patch embeddings pooled per stable-grid
    cell (:func:`stable_cells`), over the stable cells that both views cover (all images together). ``e_s [B, P,
    F]`` (student, view s), ``e_t [B, Q, F]`` (teacher, view t), positions ``[B, P, 2]``/``[B, Q, 2]``. 0 (with a
    gradient path) when the views share no stable cell."""
    ids_s, ids_t, n = stable_cells(pos_s, pos_t)
    pooled_s, have_s = _pool(e_s, ids_s, n)
    pooled_t, have_t = _pool(e_t, ids_t, n)
    shared = have_s & have_t
    if not bool(shared.any()):
        return e_s.sum() * 0.0
    return consistency(pooled_s[shared], pooled_t[shared]).mean()


@register_head("peac")
class PEACHead(Head):
    """PEAC: student projectors and predictors on the pooled features (global) and on every feature-map cell
    (local), an EMA teacher of the backbone and of the projectors, and

    ``loss = global_weight * L_global + local_weight * L_local`` with, symmetrised over the two views,
    ``L_global = mean_b consistency(pred(proj(h_s)), teacher_proj(teacher_h_t))`` and ``L_local`` =
    :func:`local_consistency` of the student's local predictions on view s and the teacher's local projections on
    view t. ``consistency(p, q) = 2 - 2 cos(p, q)``. ResNet feature maps and ViT patch tokens both work (any
    square grid of at least 2x2 cells).

    Args:
        in_dim: backbone feature width D.
        dim, hidden_dim: projector/predictor widths (MLP ``in -> hidden -> dim``).
        predictor: put a predictor MLP on the student side (as BYOL; without it a student/teacher pair can
            collapse).
        global_weight, local_weight: the weights of the two terms (>= 0, not both 0).
        ema_momentum: the teacher's base momentum in [0, 1), raised to 1 by the cosine schedule.

    Example:
        >>> head = PEACHead(64, dim=32, hidden_dim=64)
        >>> h, y = torch.randn(4, 64), torch.randn(4, 9, 64)
        >>> pos = torch.stack(torch.meshgrid(torch.arange(3.), torch.arange(3.), indexing="ij"), -1).reshape(1, 9, 2)
        >>> t = TeacherFeatures(h, h, y, y)
        >>> head(h, h, y, y, pos.expand(4, 9, 2), pos.expand(4, 9, 2), teacher=t).shape
        torch.Size([])
    """

    needs_maps = True
    needs_teacher = True
    symmetric = True
    min_grid = 2  # the trainer checks the views' feature grids before training

    def __init__(
        self,
        in_dim: int,
        dim: int = 256,
        hidden_dim: int = 1024,
        predictor: bool = True,
        global_weight: float = 1.0,
        local_weight: float = 1.0,
        ema_momentum: float = 0.996,
    ):
        super().__init__()
        if min(global_weight, local_weight) < 0 or global_weight + local_weight == 0:
            raise UsageError(
                f"peac global_weight and local_weight must be >= 0 and not both 0, got {global_weight} and "
                f"{local_weight}"
            )
        self.ema_momentum = check_momentum(ema_momentum)
        self.global_weight, self.local_weight = float(global_weight), float(local_weight)
        self.projector = mlp(in_dim, hidden_dim, dim)
        self.local_projector = mlp(in_dim, hidden_dim, dim)
        self.predictor = mlp(dim, hidden_dim, dim) if predictor else torch.nn.Identity()
        self.local_predictor = mlp(dim, hidden_dim, dim) if predictor else torch.nn.Identity()
        self.teacher_projector = make_teacher(self.projector)
        self.teacher_local_projector = make_teacher(self.local_projector)

    def ema_update(self, momentum: float) -> None:
        ema_update_(self.teacher_projector, self.projector, momentum)
        ema_update_(self.teacher_local_projector, self.local_projector, momentum)

    @staticmethod
    def _cells(net, y: Tensor) -> Tensor:
        b, p, d = y.shape
        return net(y.reshape(b * p, d)).reshape(b, p, -1)

    def forward(self, h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None, teacher: TeacherFeatures | None = None):
        if teacher is None or y_s is None or pos_s is None or teacher.y_s is None:
            raise ValueError("peac needs the feature maps, cell positions and the teacher's features")
        b = h_s.shape[0]
        z = self.projector(torch.cat([h_s, h_t]))
        p_s, p_t = self.predictor(z).split(b)
        with torch.no_grad():
            q_s, q_t = self.teacher_projector(torch.cat([teacher.h_s, teacher.h_t])).split(b)
        global_term = (consistency(p_s, q_t).mean() + consistency(p_t, q_s).mean()) / 2
        self.record_matching(*z.split(b))
        loss = self.global_weight * global_term
        if self.local_weight:
            e = self._cells(self.local_projector, torch.cat([y_s, y_t]))
            l_s, l_t = self._cells(self.local_predictor, e).split(b)
            with torch.no_grad():
                k_s, k_t = self._cells(self.teacher_local_projector, torch.cat([teacher.y_s, teacher.y_t])).split(b)
            local_term = (local_consistency(l_s, k_t, pos_s, pos_t) + local_consistency(l_t, k_s, pos_t, pos_s)) / 2
            loss = loss + self.local_weight * local_term
        return loss
