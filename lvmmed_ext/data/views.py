"""Augmented views for self-supervised pretraining (OpenCV/NumPy): random resized crop with the grid of
cell centres in original-image pixels, horizontal flip, brightness/contrast jitter, Gaussian blur; pairs of views
with the same crop (Ark's teacher view) or on one stable grid (PEAC's).

All randomness comes from the ``numpy.random.Generator`` passed in, so a view is a pure function of
(image, seed): the datasets derive that generator from (run seed, position in the data stream), which
makes views independent of the number of workers and reproducible on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class ViewConfig:
    """One kind of view.

    Attributes:
        size: output side in pixels (square).
        scale: range of the crop's area as a fraction of the image area.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_p, brightness, contrast: with probability ``jitter_p`` multiply by a brightness factor in
            ``[1 - brightness, 1 + brightness]`` and scale the contrast about the mean by a factor in
            ``[1 - contrast, 1 + contrast]``.
        blur_p, blur_sigma: with probability ``blur_p`` a Gaussian blur, sigma in ``blur_sigma`` (pixels at a
            224-pixel view; scaled with ``size``).
        grid: (R, S) cells whose centres are returned, normally the backbone's feature-map size for ``size``.
    """

    size: int = 224
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    grid: tuple[int, int] = (7, 7)

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"view size must be >= 1, got {self.size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {self.ratio}")
        if min(self.grid) < 1:
            raise ValueError(f"grid must be >= 1x1, got {self.grid}")


def sample_box(rng: np.random.Generator, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """A random crop ``(top, left, h, w)`` inside a ``height x width`` image with area fraction in ``scale`` and
    aspect ratio in ``ratio`` (10 tries, then the largest centred crop with a ratio in range)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def cell_centres(box, grid: tuple[int, int], flipped: bool, scale_yx=(1.0, 1.0)) -> np.ndarray:
    """Centres of the ``R x S`` cells of the view cut from ``box = (top, left, h, w)``, in original pixels.

    Returns float32 ``[R*S, 2]`` of (y, x), row-major over the *view's* cells (the order of a flattened
    ``[R, S]`` feature map). When the view was flipped, view column c shows original column S-1-c, so the
    x coordinates are mirrored. ``scale_yx`` converts the (possibly downscaled) stored image to original pixels.

    Example:
        >>> cell_centres((0, 0, 4, 4), (2, 2), flipped=False).tolist()
        [[1.0, 1.0], [1.0, 3.0], [3.0, 1.0], [3.0, 3.0]]
    """
    top, left, h, w = box
    rows, cols = grid
    ys = top + (np.arange(rows) + 0.5) * h / rows
    col = np.arange(cols)
    xs = left + ((cols - 1 - col if flipped else col) + 0.5) * w / cols
    yy, xx = np.meshgrid(ys * scale_yx[0], xs * scale_yx[1], indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)


def make_view(img: np.ndarray, rng: np.random.Generator, cfg: ViewConfig, scale_yx=(1.0, 1.0), twin: bool = False):
    """One augmented view of ``img`` (float32 ``[H, W]`` or ``[H, W, 3]`` in [0, 1]; or uint8/uint16, scaled to
    [0, 1] by the type's maximum after the crop is resized, which spares converting the whole image).

    Returns ``(view, pos)``: the view float32 ``[size, size]`` / ``[size, size, 3]`` in [0, 1], and ``pos``
    float32 ``[R*S, 2]`` (see ``cell_centres``). With ``twin``, returns ``((view, pos), (plain, pos))`` where
    ``plain`` is the same crop and flip without the photometric changes (jitter, blur).
    """
    height, width = img.shape[:2]
    top, left, h, w = sample_box(rng, height, width, cfg.scale, cfg.ratio)
    crop = img[top : top + h, left : left + w]
    interp = cv2.INTER_AREA if h > cfg.size and w > cfg.size else cv2.INTER_LINEAR
    view = cv2.resize(np.ascontiguousarray(crop), (cfg.size, cfg.size), interpolation=interp)
    if view.dtype != np.float32:
        view = view.astype(np.float32) * np.float32(1.0 / np.iinfo(img.dtype).max)
    flipped = bool(rng.random() < cfg.flip_p)
    if flipped:
        view = view[:, ::-1]
    plain = np.clip(view, 0.0, 1.0).astype(np.float32) if twin else None
    if rng.random() < cfg.jitter_p:
        b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        view = view * np.float32(b)
        view = (view - view.mean()) * np.float32(c) + view.mean()
    if rng.random() < cfg.blur_p:
        sigma = rng.uniform(*cfg.blur_sigma) * cfg.size / 224
        view = cv2.GaussianBlur(np.ascontiguousarray(view, dtype=np.float32), (0, 0), sigmaX=max(sigma, 1e-3))
    view = np.clip(view, 0.0, 1.0).astype(np.float32)
    pos = cell_centres((top, left, h, w), cfg.grid, flipped, scale_yx)
    return ((view, pos), (plain, pos)) if twin else (view, pos)


GRID_SHIFTS = 5  # a grid view's corner moves by 0..4 whole cells per axis (PEAC's stable grid)


def grid_views(img: np.ndarray, rng: np.random.Generator, size: int, cell: int, scale_yx=(1.0, 1.0), n: int = 2):
    """``n`` views on one stable grid (PEAC's): the image is resized, keeping its aspect ratio, so that its short
    side is ``size + (GRID_SHIFTS) * cell`` pixels and centre-cropped to a square of that side; one random
    sub-cell offset in ``[0, cell)`` per axis is shared by the views, and each view's corner then moves by a whole
    number of cells (0..4 per axis, drawn per view). The views have the same scale, no flip and no photometric
    change, so a ``cell``-pixel patch of one view either covers exactly a patch of the other or none of it:
    cells with equal centres (``pos``) show the same pixels.

    Returns a list of ``n`` ``(view, pos)`` as :func:`make_view` (grid ``size // cell`` cells per side)."""
    if cell < 1 or size % cell:
        raise ValueError(f"a grid view needs a size divisible by its cell, got size {size} and cell {cell}")
    height, width = img.shape[:2]
    side = size + GRID_SHIFTS * cell
    r = side / min(height, width)
    rh, rw = max(side, round(height * r)), max(side, round(width * r))
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    big = cv2.resize(np.ascontiguousarray(img), (rw, rh), interpolation=interp)
    if big.dtype != np.float32:
        big = big.astype(np.float32) * np.float32(1.0 / np.iinfo(img.dtype).max)
    top0, left0 = (rh - side) // 2, (rw - side) // 2
    off = rng.integers(0, cell, size=2)
    to_original = (scale_yx[0] * height / rh, scale_yx[1] * width / rw)
    cells = size // cell
    out = []
    for _ in range(n):
        shift = rng.integers(0, GRID_SHIFTS, size=2)
        top = top0 + int(off[0]) + int(shift[0]) * cell
        left = left0 + int(off[1]) + int(shift[1]) * cell
        view = np.clip(big[top : top + size, left : left + size], 0.0, 1.0).astype(np.float32)
        out.append((view, cell_centres((top, left, size, size), (cells, cells), False, to_original)))
    return out


PAIRINGS = ("independent", "same-crop", "grid")


@dataclass
class MultiViewConfig:
    """``n_global`` views of ``global_view`` and ``n_local`` (multi-crop) views of ``local_view``.

    ``pairing`` says how the global views relate: ``"independent"`` (each its own crop and augmentation),
    ``"same-crop"`` (the second view is the first's crop and flip without the photometric changes: Ark's
    teacher view) or ``"grid"`` (:func:`grid_views` with cells of ``grid_cell`` pixels: PEAC's stable grid; no
    local views)."""

    global_view: ViewConfig
    n_global: int = 2
    local_view: ViewConfig | None = None
    n_local: int = 0
    pairing: str = "independent"
    grid_cell: int = 0

    def __post_init__(self):
        if self.n_global < 2:
            raise ValueError(f"n_global must be >= 2 (the loss compares two views), got {self.n_global}")
        if self.n_local and self.local_view is None:
            raise ValueError("n_local > 0 needs a local_view config")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.pairing != "independent" and (self.n_global != 2 or self.n_local):
            raise ValueError(f"{self.pairing} views come in pairs: 2 global views and no local views")
        if self.pairing == "grid" and (self.grid_cell < 1 or self.global_view.size % self.grid_cell):
            raise ValueError(
                f"grid views need a cell that divides the view size {self.global_view.size}, got {self.grid_cell}"
            )

    def configs(self) -> list[ViewConfig]:
        return [self.global_view] * self.n_global + ([self.local_view] * self.n_local if self.n_local else [])

    def draw(self, img: np.ndarray, rng: np.random.Generator, scale_yx=(1.0, 1.0)) -> list[tuple]:
        """Every view of ``img`` as ``(view, pos)`` (see :func:`make_view`), as ``pairing`` says."""
        if self.pairing == "grid":
            return grid_views(img, rng, self.global_view.size, self.grid_cell, scale_yx)
        if self.pairing == "same-crop":
            return list(make_view(img, rng, self.global_view, scale_yx, twin=True))
        return [make_view(img, rng, cfg, scale_yx) for cfg in self.configs()]


def to_chw(view: np.ndarray, in_chans: int, mean: float, std: float) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` in [0, 1] -> normalised float32 ``[in_chans, H, W]``."""
    arr = view[None] if view.ndim == 2 else view.transpose(2, 0, 1)
    if arr.shape[0] != in_chans:
        arr = np.repeat(arr, in_chans, axis=0) if arr.shape[0] == 1 else arr.mean(axis=0, keepdims=True)
    return ((arr - np.float32(mean)) / np.float32(std)).astype(np.float32)
