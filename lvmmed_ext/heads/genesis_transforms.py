"""The Models Genesis image transformations (Zhou et al., MICCAI 2019 / MedIA 2021), written from the papers and
the authors' code read for its numbers (not copied): a restoration pretext corrupts an image and an
encoder-decoder learns to restore the original.

Every function works on float arrays in [0, 1] of any dimension (2D ``[H, W]`` slices, 3D ``[D, H, W]``
sub-volumes) and draws all randomness from the ``numpy.random.Generator`` it is given, so a corrupted sample is a
pure function of (image, seed). :func:`genesis_pair` chains them with the published probabilities, in one of two
processes (``GenesisConfig.process``; docs/METHODS.md compares them row by row):

``"paper"`` -- the process of the authors' code (``generate_pair`` of github.com/MrGiovanni/ModelsGenesis):

1. flip input and target alike: up to 3 tries, each going ahead with probability ``flip_p`` (0.4) and flipping
   one axis drawn from three choices of which one does nothing (the authors' channel axis): rows or columns,
   never the depth of a sub-volume;
2. local pixel shuffling (``shuffle_p`` 0.5): the pixels of many small blocks, read from the uncorrupted image;
3. non-linear intensity mapping (``nonlinear_p`` 0.9) through a random cubic Bezier curve, increasing or (half
   the time) decreasing;
4. painting (``paint_p`` 0.9): in-painting ``1 - outpaint_share`` (0.2) of the time -- up to 5 noise boxes, each
   drawn while a coin of 0.95 says so (sides 1/6 to 1/3 of each axis, 3 pixels from the border) -- else
   out-painting: noise everywhere but one window plus up to 4 more, each while a coin of 0.95 says so (sides
   3/7 to 4/7 of the axis smaller than it).

``"ours"`` (the earlier variant, kept as an option): each axis flipped with probability 0.4; the intensity mapping
before the shuffling; 1 to 5 boxes (uniform) for in-painting and 1 to 5 kept windows for out-painting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROCESSES = ("ours", "paper")


@dataclass
class GenesisConfig:
    """Probabilities and sizes of the transformations (the published values as defaults).

    Attributes:
        process: ``"paper"`` or ``"ours"`` (see the module docstring; sizes below are those of ``"ours"``).
        bezier_samples: points on the Bezier curve of the intensity mapping (the authors': 100,000 in 3D).
        flip_p: probability of flipping along each axis (applied to input and target alike).
        nonlinear_p: probability of the Bezier intensity mapping.
        shuffle_p: probability of local pixel shuffling; ``shuffle_density`` blocks per pixel (the authors' 10,000
            blocks in a 64x64x32 cube: about 1 per 13 voxels), block sides up to ``shuffle_max_frac`` of each axis.
        paint_p: probability of painting; ``outpaint_share`` of those are out-painting, the rest in-painting.
        inpaint_boxes: at most this many noise boxes, each side ``inpaint_frac`` of the axis (low, high).
        outpaint_boxes: at most this many kept windows, each side ``outpaint_frac`` of the axis (low, high).
    """

    process: str = "ours"
    bezier_samples: int = 100_000
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
        if self.process not in PROCESSES:
            raise ValueError(f"genesis process must be one of {PROCESSES}, got {self.process!r}")
        if self.bezier_samples < 2:
            raise ValueError(f"genesis bezier_samples must be >= 2, got {self.bezier_samples}")
        if self.shuffle_density < 0 or self.inpaint_boxes < 1 or self.outpaint_boxes < 1:
            raise ValueError("genesis shuffle_density must be >= 0 and the box counts >= 1")

    def make_pair(self, x: np.ndarray, rng: np.random.Generator):
        """``genesis_pair(x, rng, self)``: the data loader's hook for restoration heads."""
        return genesis_pair(x, rng, self) if self.process == "ours" else genesis_pair_paper(x, rng, self)

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


# --- the authors' process ("paper") ----------------------------------------------------------------------------

PAINT_MARGIN = 3  # pixels between a painted box and the border
CONTINUE_P = 0.95  # the coin that decides whether one more box is painted


def paper_flips(x: np.ndarray, rng: np.random.Generator, flip_p: float = 0.4, tries: int = 3) -> np.ndarray:
    """Up to ``tries`` flips, each going ahead with probability ``flip_p`` (the first failed coin ends them); a
    flip picks one of three choices uniformly: nothing, the second-to-last axis or the last axis (rows and columns;
    the depth of a ``[D, H, W]`` sub-volume is never flipped, as in the authors' code, whose third choice was
    the channel axis)."""
    out = x
    for _ in range(tries):
        if rng.random() >= flip_p:
            break
        choice = int(rng.integers(0, 3))
        if choice:
            out = np.flip(out, x.ndim - 3 + choice)
    return np.ascontiguousarray(out)


def paper_nonlinear(x: np.ndarray, rng: np.random.Generator, samples: int = 100_000) -> np.ndarray:
    """The authors' intensity mapping: a cubic Bezier curve through (0, 0) and (1, 1) with two control points
    uniform in the unit square, sampled at ``samples`` points from (1, 1) to (0, 0). Half the time both the
    abscissae and the ordinates are sorted (an increasing mapping); otherwise only the abscissae are, which pairs
    the smallest intensities with the curve's start at (1, 1) (a decreasing, intensity-inverting mapping)."""
    inner = rng.random((2, 2))
    xs, ys = bezier_curve(np.array([[1.0, 1.0], inner[1], inner[0], [0.0, 0.0]]), samples)
    if rng.random() < 0.5:
        xs = np.sort(xs)
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    return np.interp(x, xs, ys).astype(x.dtype)


def _paper_box(rng: np.random.Generator, shape, sizes) -> tuple[slice, ...]:
    """A box with side ``sizes[i]`` along axis i, at least ``PAINT_MARGIN`` pixels from the border (where room
    allows)."""
    out = []
    for side, size in zip(shape, sizes):
        size = int(min(max(size, 1), side))
        low = min(PAINT_MARGIN, side - size)
        high = max(low, side - size - PAINT_MARGIN)
        start = int(rng.integers(low, high + 1))
        out.append(slice(start, start + size))
    return tuple(out)


def paper_inpaint(x: np.ndarray, rng: np.random.Generator, most: int = 5) -> np.ndarray:
    """Up to ``most`` boxes of uniform noise, each painted while a coin of ``CONTINUE_P`` says so (so none at all
    with probability 0.05); each side uniform in ``[n // 6, n // 3]`` of its axis n."""
    out = x.copy()
    for _ in range(most):
        if rng.random() >= CONTINUE_P:
            break
        sizes = [int(rng.integers(n // 6, n // 3 + 1)) for n in x.shape]
        box = _paper_box(rng, x.shape, sizes)
        out[box] = rng.random(out[box].shape).astype(x.dtype)
    return out


def paper_outpaint(x: np.ndarray, rng: np.random.Generator, most_more: int = 4) -> np.ndarray:
    """Uniform noise everywhere except one window of the original, plus up to ``most_more`` more, each kept while a
    coin of ``CONTINUE_P`` says so; a window's side is its axis n less a uniform draw in ``[3n // 7, 4n // 7]``."""
    out = rng.random(x.shape).astype(x.dtype)
    for k in range(1 + most_more):
        if k and rng.random() >= CONTINUE_P:
            break
        sizes = [n - int(rng.integers(3 * n // 7, 4 * n // 7 + 1)) for n in x.shape]
        box = _paper_box(rng, x.shape, sizes)
        out[box] = x[box]
    return out


def genesis_pair_paper(x: np.ndarray, rng: np.random.Generator, cfg: GenesisConfig | None = None):
    """``(input, target)`` by the authors' process (module docstring): ``target`` is ``x`` after
    :func:`paper_flips`; ``input`` the target after local shuffling, the intensity mapping and in- or
    out-painting, each with its probability in ``cfg``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> inp, target = genesis_pair_paper(np.linspace(0, 1, 32 * 32).reshape(32, 32), rng)
        >>> inp.shape, bool(0 <= inp.min() and inp.max() <= 1)
        ((32, 32), True)
    """
    cfg = cfg or GenesisConfig(process="paper")
    target = paper_flips(np.clip(np.asarray(x), 0.0, 1.0), rng, cfg.flip_p)
    out = target
    if rng.random() < cfg.shuffle_p:
        out = local_pixel_shuffle(out, rng, cfg.shuffle_density, cfg.shuffle_max_frac)
    if rng.random() < cfg.nonlinear_p:
        out = paper_nonlinear(out, rng, cfg.bezier_samples)
    if rng.random() < cfg.paint_p:
        out = paper_inpaint(out, rng) if rng.random() >= cfg.outpaint_share else paper_outpaint(out, rng)
    return out.copy() if out is target else out, target
