"""The Models Genesis image transformations (Zhou et al., MICCAI 2019 / MedIA 2021), written from the paper's
definitions: a restoration pretext corrupts an image and an encoder-decoder learns to restore the original.

Every function works on float arrays in [0, 1] of any dimension (2D ``[H, W]`` slices, 3D ``[D, H, W]``
sub-volumes) and draws all randomness from the ``numpy.random.Generator`` it is given, so a corrupted sample is a
pure function of (image, seed). :func:`genesis_pair` chains them with the paper's probabilities:

1. flip (both input and target; the paper's "flip" augmentation) along each axis;
2. non-linear intensity transformation by a random cubic Bezier curve (``nonlinear_p`` 0.9);
3. local pixel shuffling inside many small random blocks (``shuffle_p`` 0.5);
4. in-painting (random boxes filled with noise) or out-painting (everything outside random boxes filled with
   noise), together ``paint_p`` 0.9, out-painting ``outpaint_share`` 0.8 of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GenesisConfig:
    """Probabilities and sizes of the transformations (the paper's values as defaults).

    Attributes:
        flip_p: probability of flipping along each axis (applied to input and target alike).
        nonlinear_p: probability of the Bezier intensity mapping.
        shuffle_p: probability of local pixel shuffling; ``shuffle_density`` blocks per pixel (the paper's 10,000
            blocks in a 64x64x32 cube: about 1 per 13 voxels), block sides up to ``shuffle_max_frac`` of each axis.
        paint_p: probability of painting; ``outpaint_share`` of those are out-painting, the rest in-painting.
        inpaint_boxes: at most this many noise boxes, each side ``inpaint_frac`` of the axis (low, high).
        outpaint_boxes: at most this many kept windows, each side ``outpaint_frac`` of the axis (low, high).
    """

    flip_p: float = 0.4
    nonlinear_p: float = 0.9
    shuffle_p: float = 0.5
    shuffle_density: float = 10000 / (64 * 64 * 32)
    shuffle_max_frac: float = 0.1
    paint_p: float = 0.9
    outpaint_share: float = 0.8
    inpaint_boxes: int = 5
    inpaint_frac: tuple[float, float] = (1 / 6, 1 / 3)
    outpaint_boxes: int = 5
    outpaint_frac: tuple[float, float] = (3 / 7, 4 / 7)

    def __post_init__(self):
        for name in ("flip_p", "nonlinear_p", "shuffle_p", "paint_p", "outpaint_share", "shuffle_max_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"genesis {name} must be in [0, 1], got {v}")
        for name in ("inpaint_frac", "outpaint_frac"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"genesis {name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        if self.shuffle_density < 0 or self.inpaint_boxes < 1 or self.outpaint_boxes < 1:
            raise ValueError("genesis shuffle_density must be >= 0 and the box counts >= 1")

    def make_pair(self, x: np.ndarray, rng: np.random.Generator):
        """``genesis_pair(x, rng, self)``: the data loader's hook for restoration heads."""
        return genesis_pair(x, rng, self)

    @classmethod
    def off(cls) -> GenesisConfig:
        """Every transformation disabled (the identity)."""
        return cls(flip_p=0.0, nonlinear_p=0.0, shuffle_p=0.0, paint_p=0.0)


def bezier_curve(points: np.ndarray, samples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The cubic Bezier curve of 4 control points ``[4, 2]`` sampled at ``samples`` parameters t in [0, 1]:
    ``B(t) = sum_i C(3, i) t^i (1 - t)^(3 - i) P_i``. Returns (x, y), each ``[samples]``."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    weights = np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)  # [S, 4]
    curve = weights @ np.asarray(points, np.float64)
    return curve[:, 0], curve[:, 1]


def nonlinear_transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map every intensity through a random cubic Bezier curve from (0, 0) to (1, 1) whose two inner control
    points are uniform in the unit square; with probability 1/2 the curve is mirrored (``y -> 1 - y`` and
    ``x -> 1 - x`` on the control points: an intensity-inverting mapping). Keeps [0, 1]."""
    inner = rng.random((2, 2))
    points = np.array([[0.0, 0.0], inner[0], inner[1], [1.0, 1.0]])
    if rng.random() < 0.5:
        points = points[::-1].copy()  # from (1, 1) to (0, 0): decreasing overall
        points[:, 0] = 1.0 - points[:, 0]
    xs, ys = bezier_curve(points)
    order = np.argsort(xs)
    return np.clip(np.interp(x, xs[order], ys[order]), 0.0, 1.0).astype(x.dtype)


def _box(rng: np.random.Generator, shape, frac: tuple[float, float]) -> tuple[slice, ...]:
    """A random box whose side along each axis is a fraction in ``frac`` of that axis (at least 1 pixel)."""
    out = []
    for side in shape:
        size = int(np.clip(round(side * rng.uniform(*frac)), 1, side))
        start = int(rng.integers(0, side - size + 1))
        out.append(slice(start, start + size))
    return tuple(out)


def local_pixel_shuffle(
    x: np.ndarray, rng: np.random.Generator, density: float = 10000 / (64 * 64 * 32), max_frac: float = 0.1
) -> np.ndarray:
    """Shuffle the pixels inside ``round(density * x.size)`` random blocks (at least 1), each block's side along
    an axis uniform in [1, max(1, max_frac * side)]; the blocks are cut from the original image, so the values of
    each block are a permutation of the original's there."""
    out = x.copy()
    n = max(1, int(round(density * x.size)))
    shape = np.asarray(x.shape)
    sizes = rng.integers(1, np.maximum(1, (max_frac * shape).astype(int)) + 1, size=(n, x.ndim))
    starts = (rng.random((n, x.ndim)) * (shape - sizes + 1)).astype(int)
    keys = rng.random(int(np.prod(sizes, axis=1).sum()))  # one random sort key per block pixel
    used = 0
    for start, size in zip(starts.tolist(), sizes.tolist()):
        box = tuple(slice(a, a + b) for a, b in zip(start, size))
        block = x[box]
        count = block.size
        order = np.argsort(keys[used : used + count])
        used += count
        out[box] = block.reshape(-1)[order].reshape(block.shape)
    return out


def inpaint(x: np.ndarray, rng: np.random.Generator, boxes: int = 5, frac=(1 / 6, 1 / 3)) -> np.ndarray:
    """Fill 1 to ``boxes`` random boxes (sides ``frac`` of each axis) with uniform noise in [0, 1]."""
    out = x.copy()
    for _ in range(int(rng.integers(1, boxes + 1))):
        box = _box(rng, x.shape, frac)
        out[box] = rng.random(out[box].shape).astype(x.dtype)
    return out


def outpaint(x: np.ndarray, rng: np.random.Generator, boxes: int = 5, frac=(3 / 7, 4 / 7)) -> np.ndarray:
    """Fill everything with uniform noise in [0, 1] except 1 to ``boxes`` random windows (sides ``frac`` of each
    axis), which keep the original."""
    out = rng.random(x.shape).astype(x.dtype)
    for _ in range(int(rng.integers(1, boxes + 1))):
        box = _box(rng, x.shape, frac)
        out[box] = x[box]
    return out


def genesis_pair(x: np.ndarray, rng: np.random.Generator, cfg: GenesisConfig | None = None):
    """``(input, target)`` for restoration: ``target`` is ``x`` flipped as drawn, ``input`` the target after the
    non-linear mapping, local shuffling and painting, each with its probability in ``cfg``. Both float arrays of
    ``x``'s shape and dtype in [0, 1].

    Example:
        >>> rng = np.random.default_rng(0)
        >>> inp, target = genesis_pair(np.linspace(0, 1, 64 * 64).reshape(64, 64), rng)
        >>> inp.shape, bool(inp.min() >= 0 and inp.max() <= 1)
        ((64, 64), True)
    """
    cfg = cfg or GenesisConfig()
    target = np.clip(np.asarray(x), 0.0, 1.0)
    for axis in range(target.ndim):
        if rng.random() < cfg.flip_p:
            target = np.flip(target, axis)
    target = np.ascontiguousarray(target)
    out = target
    if rng.random() < cfg.nonlinear_p:
        out = nonlinear_transform(out, rng)
    if rng.random() < cfg.shuffle_p:
        out = local_pixel_shuffle(out, rng, cfg.shuffle_density, cfg.shuffle_max_frac)
    if rng.random() < cfg.paint_p:
        if rng.random() < cfg.outpaint_share:
            out = outpaint(out, rng, cfg.outpaint_boxes, cfg.outpaint_frac)
        else:
            out = inpaint(out, rng, cfg.inpaint_boxes, cfg.inpaint_frac)
    return out.copy() if out is target else out, target
