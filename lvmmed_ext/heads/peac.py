"""PEAC (patch embedding of anatomical consistency; Zhou et al., BMVC 2023), written from the paper and the
authors' public code (github.com/jlianglab/PEAC, read for its recipe, not copied): a student and an EMA teacher;
a global consistency between the two views' pooled embeddings and a local consistency between the embeddings of
the patches that cover the same anatomy in the original image. As published (``--recipe paper``) PEAC also trains
POPAR's branches on the first view: patch-order prediction after a patch shuffle and appearance restoration after
a Models-Genesis-style distortion; its views are two same-scale crops on one stable grid. The defaults are our
variant (docs/METHODS.md lists the differences)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from .base import Head, Recipe, TeacherFeatures, mlp, register_head
from .ema import check_momentum, ema_update_, make_teacher
from .genesis_transforms import local_pixel_shuffle, paper_inpaint, paper_nonlinear, paper_outpaint

CHOICES = {"views": ("random", "grid"), "projector": ("bn", "ln"), "loss": ("cosine", "mse")}


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


def grid_matches(pos_s: Tensor, pos_t: Tensor) -> Tensor:
    """``[B, P, Q]`` bool: cell i of view s and cell j of view t have the same centre (within a quarter of the
    cell pitch), i.e. cover the same pixels, as the cells of two views on one stable grid do
    (:func:`lvmmed_ext.data.views.grid_views`)."""
    pitch = _pitch(pos_s).min(dim=1).values  # [B]
    gap = (pos_s[:, :, None, :] - pos_t[:, None, :, :]).abs().amax(-1)
    return gap < 0.25 * pitch[:, None, None]


def matched_mse(e_s: Tensor, e_t: Tensor, matches: Tensor) -> Tensor:
    """Mean squared difference of the embeddings ``e_s [B, P, F]`` and ``e_t [B, Q, F]`` over the matched cell
    pairs ``matches [B, P, Q]`` (and the F features); 0 (with a gradient path) without a match."""
    b, i, j = matches.nonzero(as_tuple=True)
    if b.numel() == 0:
        return e_s.sum() * 0.0
    return F.mse_loss(e_s[b, i], e_t[b, j])


def ln_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU, twice, then Linear without bias: the projectors of the authors' PEAC."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False),
    )  # fmt: skip


APPEARANCE_BLOCKS = 40  # pixel-shuffle blocks of the 2D appearance distortion (POPAR/PEAC)
APPEARANCE_BEZIER = 500  # points of its intensity curve


def appearance_distortion(view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The appearance distortion of POPAR/PEAC on a ``[H, W]`` view in [0, 1]: local pixel shuffling in
    ``APPEARANCE_BLOCKS`` blocks (always), the authors' Bezier intensity mapping with probability 0.9, then
    painting with probability 0.9 (in-painting 0.2 of the time, else out-painting; the Models Genesis boxes)."""
    out = local_pixel_shuffle(view, rng, density=APPEARANCE_BLOCKS / view.size, max_frac=0.1)
    if rng.random() < 0.9:
        out = paper_nonlinear(out, rng, APPEARANCE_BEZIER)
    if rng.random() < 0.9:
        out = paper_inpaint(out, rng) if rng.random() < 0.2 else paper_outpaint(out, rng)
    return out


@dataclass
class PatchDistortion:
    """The data-loader hook of PEAC's POPAR branches (``distort``): with probability ``shuffle_p`` the first view's
    patches (one per feature-map cell) are put in a random order; otherwise its appearance is distorted
    (:func:`appearance_distortion`) and the order kept. Never both."""

    shuffle_p: float = 0.5

    def distort(self, view: np.ndarray, rng: np.random.Generator, grid) -> tuple[np.ndarray, dict]:
        """``(distorted view, {"perm": [P] int64, "shuffled": bool})``: position i of the distorted view shows
        the original patch ``perm[i]`` (the identity without a shuffle). A ``[H, W, 3]`` view is distorted as its
        channel mean, repeated."""
        rows, cols = grid
        gray = view.mean(axis=2) if view.ndim == 3 else view
        h, w = gray.shape
        ph, pw = h // rows, w // cols
        if ph * rows != h or pw * cols != w:
            raise ValueError(f"a {h}x{w} view does not split into {rows}x{cols} patches")
        n = rows * cols
        if rng.random() < self.shuffle_p:
            perm = rng.permutation(n)
            patches = gray.reshape(rows, ph, cols, pw).transpose(0, 2, 1, 3).reshape(n, ph, pw)
            out = patches[perm].reshape(rows, cols, ph, pw).transpose(0, 2, 1, 3).reshape(h, w)
            shuffled = True
        else:
            perm, out, shuffled = np.arange(n), appearance_distortion(gray, rng), False
        out = np.ascontiguousarray(out, dtype=np.float32)
        if view.ndim == 3:
            out = np.repeat(out[:, :, None], view.shape[2], axis=2)
        return out, {"perm": perm.astype(np.int64), "shuffled": np.bool_(shuffled)}


@register_head("peac")
class PEACHead(Head):
    """PEAC: a student (backbone, projectors) and its EMA teacher; a global consistency between the two views'
    pooled embeddings and a local consistency between the patches that cover the same anatomy.

    Our variant (the defaults): BatchNorm MLP projectors and BYOL-style predictors on the pooled features
    (global) and on every feature-map cell (local); independent random-resized views; ``loss = global_weight *
    L_global + local_weight * L_local``, symmetrised over the views, with ``L_global = mean_b consistency(
    pred(proj(h_s)), teacher_proj(teacher_h_t))`` and ``L_local`` = :func:`local_consistency` (cells pooled per
    stable-grid cell of the coarser view's pitch), ``consistency(p, q) = 2 - 2 cos(p, q)``.

    Published (``--recipe paper``, docs/METHODS.md): two same-scale views on one stable grid (cells of the
    backbone's stride; their patches correspond one to one); the first view patch-shuffled (half the samples) or
    appearance-distorted (the other half), :class:`PatchDistortion`; LayerNorm projectors (pooled: D -> 8192 ->
    8192 -> 8192, cells: D -> 512 -> 512 -> 512), no predictor, and

    ``loss = L_order + L_restore + global_weight * L_global + local_weight * L_local`` with ``L_global = mse(n(
    proj(h_s)), n(teacher_proj(teacher_h_t))) + (s <-> t)`` (n: L2 normalisation, global_weight 1e5),
    ``L_local`` the mean over both directions of the MSE between the cell embeddings of matched cells
    (:func:`grid_matches`; samples whose first view was not shuffled), ``L_order`` the cross-entropy of a linear
    classifier telling from each cell of the first view which original patch it shows, ``L_restore`` the MSE
    between the first view before the distortion and its reconstruction from the cells (1x1 convolution to a
    patch of pixels per cell). Teacher momentum 0.999 (cosine to 1).

    ResNet feature maps and ViT patch tokens both work (any square grid of at least 2x2 cells).

    Args:
        in_dim: backbone feature width D.
        dim, hidden_dim: global projector (and predictor) widths (``in -> hidden -> dim``; three layers with
            ``projector="ln"``).
        predictor: put a predictor MLP on the student side (as BYOL).
        global_weight, local_weight: the weights of the two terms (>= 0, not both 0).
        ema_momentum: the teacher's base momentum in [0, 1), raised to 1 by the cosine schedule.
        views: ``"random"`` (independent random-resized crops) or ``"grid"`` (the stable grid).
        projector: ``"bn"`` (Linear-BN-ReLU-Linear) or ``"ln"`` (the authors' LayerNorm MLPs).
        local_dim, local_hidden: the cell projector's widths (default: ``dim``, ``hidden_dim``).
        global_loss, local_loss: ``"cosine"`` (2 - 2 cos) or ``"mse"`` (global: of the normalised embeddings;
            local: of the raw ones).
        popar: train the order and restoration branches (needs ``views="grid"``).
        order_weight, restore_weight: their weights.
        shuffle_p: the share of samples whose first view is patch-shuffled (the rest appearance-distorted).
        geometry: ``{"grid": (R, S), "size": view side, "in_chans": C}`` (filled by the trainer; needed by popar).

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
    recipes = {
        "paper": Recipe(
            about="PEAC as published: stable-grid views, POPAR order + restoration branches, LayerNorm projectors "
            "without predictor, global MSE x 1e5 + local MSE, momentum 0.999, SGD lr 0.1 with warm-up and cosine",
            head_opts={"views": "grid", "popar": True, "predictor": False, "projector": "ln", "dim": 8192,
                       "hidden_dim": 8192, "local_dim": 512, "local_hidden": 512, "global_loss": "mse",
                       "local_loss": "mse", "global_weight": 1e5, "local_weight": 1.0, "ema_momentum": 0.999},
            settings={"image_size": 448, "batch_size": 8, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                      "schedule": "cosine", "warmup_epochs": 5.0, "epochs": 400.0, "weight_decay": 0.0},
        )
    }  # fmt: skip

    def __init__(
        self,
        in_dim: int,
        dim: int = 256,
        hidden_dim: int = 1024,
        predictor: bool = True,
        global_weight: float = 1.0,
        local_weight: float = 1.0,
        ema_momentum: float = 0.996,
        views: str = "random",
        projector: str = "bn",
        local_dim: int | None = None,
        local_hidden: int | None = None,
        global_loss: str = "cosine",
        local_loss: str = "cosine",
        popar: bool = False,
        order_weight: float = 1.0,
        restore_weight: float = 1.0,
        shuffle_p: float = 0.5,
        geometry: dict | None = None,
    ):
        super().__init__()
        if min(global_weight, local_weight) < 0 or global_weight + local_weight == 0:
            raise UsageError(
                f"peac global_weight and local_weight must be >= 0 and not both 0, got {global_weight} and "
                f"{local_weight}"
            )
        for key, value, kind in (("views", views, "views"), ("projector", projector, "projector"),
                                 ("global_loss", global_loss, "loss"), ("local_loss", local_loss, "loss")):  # fmt: skip
            if value not in CHOICES[kind]:
                raise UsageError(f"peac {key} must be one of {CHOICES[kind]}, got {value!r}")
        if popar and views != "grid":
            raise UsageError("peac popar=True needs views='grid' (its patches are the stable grid's cells)")
        if min(order_weight, restore_weight) < 0 or not 0 <= shuffle_p <= 1:
            raise UsageError("peac order_weight and restore_weight must be >= 0 and shuffle_p in [0, 1]")
        self.ema_momentum = check_momentum(ema_momentum)
        self.global_weight, self.local_weight = float(global_weight), float(local_weight)
        self.global_loss, self.local_loss = global_loss, local_loss
        self.order_weight, self.restore_weight = float(order_weight), float(restore_weight)
        local_dim, local_hidden = local_dim or dim, local_hidden or hidden_dim
        make = mlp if projector == "bn" else ln_mlp
        self.projector = make(in_dim, hidden_dim, dim)
        self.local_projector = make(in_dim, local_hidden, local_dim)
        self.predictor = mlp(dim, hidden_dim, dim) if predictor else torch.nn.Identity()
        self.local_predictor = mlp(local_dim, local_hidden, local_dim) if predictor else torch.nn.Identity()
        self.teacher_projector = make_teacher(self.projector)
        self.teacher_local_projector = make_teacher(self.local_projector)
        self.views, self.popar = views, bool(popar)
        if views == "grid":
            self.view_pairing = "grid"
        if self.popar:
            if not geometry:
                raise UsageError("peac popar=True needs the views' geometry (the trainer passes it: geometry=...)")
            (rows, cols), size, chans = geometry["grid"], int(geometry["size"]), int(geometry.get("in_chans", 1))
            if rows != cols or size % rows:
                raise UsageError(f"peac popar needs a square grid that divides the view side, got {rows}x{cols} "
                                 f"cells for {size} px")  # fmt: skip
            self.cell = size // rows
            self.order_head = nn.Linear(in_dim, rows * cols)
            self.restore_head = nn.Conv2d(in_dim, self.cell * self.cell * chans, kernel_size=1)
            self.needs_extra = True
            self.pair_config = PatchDistortion(shuffle_p)

    def ema_update(self, momentum: float) -> None:
        ema_update_(self.teacher_projector, self.projector, momentum)
        ema_update_(self.teacher_local_projector, self.local_projector, momentum)

    @staticmethod
    def _cells(net, y: Tensor) -> Tensor:
        b, p, d = y.shape
        return net(y.reshape(b * p, d)).reshape(b, p, -1)

    def _global(self, p: Tensor, q: Tensor) -> Tensor:
        if self.global_loss == "mse":
            return F.mse_loss(F.normalize(p, dim=-1), F.normalize(q, dim=-1))
        return consistency(p, q).mean()

    def forward(self, h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None, teacher: TeacherFeatures | None = None,
                extra: dict | None = None):  # fmt: skip
        if teacher is None or y_s is None or pos_s is None or teacher.y_s is None:
            raise ValueError("peac needs the feature maps, cell positions and the teacher's features")
        b = h_s.shape[0]
        z = self.projector(torch.cat([h_s, h_t]))
        p_s, p_t = self.predictor(z).split(b)
        with torch.no_grad():
            q_s, q_t = self.teacher_projector(torch.cat([teacher.h_s, teacher.h_t])).split(b)
        global_term = self._global(p_s, q_t) + self._global(p_t, q_s)
        global_term = global_term if self.global_loss == "mse" else global_term / 2
        self.record_matching(*z.split(b))
        loss = self.global_weight * global_term
        if self.local_weight:
            e = self._cells(self.local_projector, torch.cat([y_s, y_t]))
            l_s, l_t = self._cells(self.local_predictor, e).split(b)
            with torch.no_grad():
                k_s, k_t = self._cells(self.teacher_local_projector, torch.cat([teacher.y_s, teacher.y_t])).split(b)
            if self.views == "grid":
                matches = grid_matches(pos_s, pos_t)
                if extra is not None and "shuffled" in extra:  # a shuffled view's cells are not where pos says
                    matches = matches & ~extra["shuffled"].bool()[:, None, None]
                pair = (lambda u, v, m: matched_mse(u, v, m)) if self.local_loss == "mse" else _matched_cosine
                local_term = (pair(l_s, k_t, matches) + pair(l_t, k_s, matches.transpose(1, 2))) / 2
            else:
                local_term = (local_consistency(l_s, k_t, pos_s, pos_t) + local_consistency(l_t, k_s, pos_t, pos_s)) / 2
            loss = loss + self.local_weight * local_term
        if self.popar:
            if extra is None:
                raise ValueError("peac popar needs the batch's extra (perm, clean view) from its PatchDistortion")
            loss = loss + self._popar(y_s, extra)
        return loss

    def _popar(self, y_s: Tensor, extra: dict) -> Tensor:
        """``order_weight * L_order + restore_weight * L_restore`` on the first view's cells ``y_s [B, P, D]``."""
        b, p, d = y_s.shape
        logits = self.order_head(y_s)  # [B, P, P]: which original patch each cell shows
        order = F.cross_entropy(logits.reshape(b * p, p), extra["perm"].reshape(-1).long())
        side = int(round(p**0.5))
        maps = y_s.transpose(1, 2).reshape(b, d, side, side)
        restored = F.pixel_shuffle(self.restore_head(maps), self.cell)  # [B, C, side * cell, side * cell]
        wide = torch.promote_types(restored.dtype, torch.float32)  # at least float32 (bf16 under autocast)
        restore = F.mse_loss(restored.to(wide), extra["clean"].to(wide))
        return self.order_weight * order + self.restore_weight * restore


def _matched_cosine(e_s: Tensor, e_t: Tensor, matches: Tensor) -> Tensor:
    """Mean ``consistency`` (2 - 2 cos) over the matched cell pairs; 0 (with a gradient path) without a match."""
    b, i, j = matches.nonzero(as_tuple=True)
    if b.numel() == 0:
        return e_s.sum() * 0.0
    return consistency(e_s[b, i], e_t[b, j]).mean()
