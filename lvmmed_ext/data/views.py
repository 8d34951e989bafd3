"""Augmented views for self-supervised pretraining (OpenCV/NumPy): random resized crop with the grid of
cell centres in original-image pixels, horizontal flip, brightness/contrast jitter, Gaussian blur.

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


def make_view(img: np.ndarray, rng: np.random.Generator, cfg: ViewConfig, scale_yx=(1.0, 1.0)):
    """One augmented view of ``img`` (float32 ``[H, W]`` or ``[H, W, 3]`` in [0, 1]; or uint8/uint16, scaled to
    [0, 1] by the type's maximum after the crop is resized, which spares converting the whole image).

    Returns ``(view, pos)``: the view float32 ``[size, size]`` / ``[size, size, 3]`` in [0, 1], and ``pos``
    float32 ``[R*S, 2]`` (see ``cell_centres``).
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
    if rng.random() < cfg.jitter_p:
        b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        view = view * np.float32(b)
        view = (view - view.mean()) * np.float32(c) + view.mean()
    if rng.random() < cfg.blur_p:
        sigma = rng.uniform(*cfg.blur_sigma) * cfg.size / 224
        view = cv2.GaussianBlur(np.ascontiguousarray(view, dtype=np.float32), (0, 0), sigmaX=max(sigma, 1e-3))
    view = np.clip(view, 0.0, 1.0).astype(np.float32)
    return view, cell_centres((top, left, h, w), cfg.grid, flipped, scale_yx)


@dataclass
class MultiViewConfig:
    """``n_global`` views of ``global_view`` and ``n_local`` (multi-crop) views of ``local_view``."""

    global_view: ViewConfig
    n_global: int = 2
    local_view: ViewConfig | None = None
    n_local: int = 0

    def __post_init__(self):
        if self.n_global < 2:
            raise ValueError(f"n_global must be >= 2 (the loss compares two views), got {self.n_global}")
        if self.n_local and self.local_view is None:
            raise ValueError("n_local > 0 needs a local_view config")

    def configs(self) -> list[ViewConfig]:
        return [self.global_view] * self.n_global + ([self.local_view] * self.n_local if self.n_local else [])


def to_chw(view: np.ndarray, in_chans: int, mean: float, std: float) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` in [0, 1] -> normalised float32 ``[in_chans, H, W]``."""
    arr = view[None] if view.ndim == 2 else view.transpose(2, 0, 1)
    if arr.shape[0] != in_chans:
        arr = np.repeat(arr, in_chans, axis=0) if arr.shape[0] == 1 else arr.mean(axis=0, keepdims=True)
    return ((arr - np.float32(mean)) / np.float32(std)).astype(np.float32)
