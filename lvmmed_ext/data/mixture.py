"""Several datasets in one pretraining stream: ``--data NAME=DIR[:WEIGHT]`` (repeatable) and ``--balance``.

The images are split into *groups*: one per dataset, or one per (dataset, modality) with ``--balance modality``.
Each group has a sampling probability (see :func:`group_probabilities`). The stream stays a pure function of the seed
and the position: positions are cut into blocks of ``BLOCK``; every block holds each group ``c_g`` times
(``c_g`` = ``BLOCK x p_g`` rounded by largest remainders, the same for every block) in an order shuffled by
(seed, block). Position p is therefore group ``g`` at that group's own position ``q = block x c_g + (earlier g's
in the block)``, and group g reads image ``q`` of its own ``PretrainDataset`` stream (epochs of its own). Observed
proportions match the probabilities to within ``1 / BLOCK`` over every whole block.

With ``--balance`` a group drawn more often than its share of the images is over-sampled: a fraction
``1 - 1/r`` of its draws (``r`` = probability / image share) are *duplicates*, the image cut to a random 85-95%
of its area and resized back before the views are made (LVM-Med §4.1: minority modalities over-sampled).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
from torch.utils.data import Dataset

from ..errors import UsageError
from .datasets import ImageSet, Item, PretrainDataset
from .views import MultiViewConfig

BLOCK = 4096
BALANCE = ("none", "dataset", "modality")
DUPLICATE_AREA = (0.85, 0.95)


@dataclass(frozen=True)
class DataSpec:
    """One ``--data`` argument: a named folder and its mixture weight (None: by image count)."""

    name: str
    path: str
    weight: float | None = None

    def text(self) -> str:
        return f"{self.name}={self.path}" + ("" if self.weight is None else f":{self.weight:g}")


def parse_data_spec(text: str) -> DataSpec:
    """``"NAME=DIR[:WEIGHT]"`` or a plain ``"DIR"`` (named after its last path component) -> ``DataSpec``.

    Example:
        >>> parse_data_spec("ct=/data/ct:2")
        DataSpec(name='ct', path='/data/ct', weight=2.0)
    """
    text = str(text)
    name, sep, rest = text.partition("=")
    if not sep or not name or not all(c.isalnum() or c in "-_." for c in name):  # a plain path
        return DataSpec(os.path.basename(os.path.normpath(text)) or text, text)
    path, colon, tail = rest.rpartition(":")
    weight = None
    if colon:
        try:
            weight = float(tail)
        except ValueError:
            if os.path.exists(path) and not os.path.exists(rest):  # DIR exists, ':tail' is a bad weight
                raise UsageError(f"--data {text}: WEIGHT must be a number > 0, got {tail!r}") from None
            path = rest  # a colon inside the path
        else:
            if not (weight > 0 and math.isfinite(weight)):
                raise UsageError(f"--data {text}: WEIGHT must be a number > 0, got {tail!r}")
    else:
        path = rest
    if not path:
        raise UsageError(f"--data must be DIR or NAME=DIR[:WEIGHT] (e.g. ct=/data/ct:2), got {text!r}")
    return DataSpec(name, path, weight)


def check_specs(specs: list[DataSpec], balance: str) -> None:
    """``UsageError`` for duplicate names, one folder under two names, weights given for some datasets only, or
    ``--balance dataset`` together with weights (both would set the dataset proportions)."""
    if balance not in BALANCE:
        raise UsageError(f"--balance must be one of {', '.join(BALANCE)}, got {balance!r}")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"--data names must be unique, got {dup[0]!r} {names.count(dup[0])} times")
    weighted = [s.weight is not None for s in specs]
    if any(weighted) and not all(weighted):
        missing = [s.name for s in specs if s.weight is None]
        raise UsageError(f"--data weights must be given for every dataset or none; missing for {', '.join(missing)}")
    if all(weighted) and balance == "dataset":
        raise UsageError("--balance dataset sets equal dataset proportions; drop it or drop the :WEIGHT values")
    seen: dict[str, DataSpec] = {}
    for s in specs:
        real = os.path.realpath(s.path)
        if real in seen:
            raise UsageError(
                f"--data {seen[real].text()} and --data {s.text()} are the same folder ({real}): its images would be "
                "sampled twice; pass it once"
            )
        seen[real] = s


def group_probabilities(
    sizes: list[int], datasets: list[int], modalities: list[str], weights: list[float] | None, balance: str
) -> np.ndarray:
    """Sampling probability of each group (group g: ``sizes[g]`` images of dataset ``datasets[g]`` and modality
    ``modalities[g]``).

    * no weights, ``none``: by image count (as one big folder);
    * weights (one per dataset): dataset k gets ``weights[k] / sum(weights)``, split over its groups by size
      (``modality`` balance: equally over its modalities);
    * ``dataset``: every dataset the same probability (split over its groups by size);
    * ``modality`` without weights: every modality the same probability, split over datasets by size.

    Example:
        >>> group_probabilities([300, 100], [0, 1], ["CT", "CT"], None, "dataset").tolist()
        [0.5, 0.5]
    """
    sizes_a = np.asarray(sizes, np.float64)
    ds = np.asarray(datasets)
    n_ds = int(ds.max()) + 1
    if weights is None and balance == "none":
        p = sizes_a
    elif weights is None and balance == "modality":
        mods = sorted(set(modalities))
        total = {m: sum(s for s, mm in zip(sizes, modalities) if mm == m) for m in mods}
        p = np.array([s / total[m] for s, m in zip(sizes, modalities)])
    else:
        share = np.ones(n_ds) if weights is None else np.asarray(weights, np.float64)
        if balance == "modality":  # equal modalities inside each dataset
            n_mod = np.array([sum(1 for d in datasets if d == k) for k in range(n_ds)], np.float64)
            p = share[ds] / n_mod[ds]
        else:
            per_ds = np.bincount(ds, weights=sizes_a, minlength=n_ds)
            p = share[ds] * sizes_a / per_ds[ds]
    return p / p.sum()


def apportion(probs: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``probs x total`` (largest remainders), at least 1 for every
    positive probability."""
    raw = probs * total
    counts = np.floor(raw).astype(np.int64)
    counts[(probs > 0) & (counts == 0)] = 1
    short = total - int(counts.sum())
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while short > 0:
        counts[order[i % len(order)]] += 1
        short, i = short - 1, i + 1
    while short < 0:  # the minimum of 1 overshot: take from the largest
        counts[int(np.argmax(counts))] -= 1
        short += 1
    return counts


@dataclass
class Group:
    """Images of one dataset (and modality): ``images`` an ``ImageSet``; ``share`` its fraction of all images."""

    name: str
    dataset: int
    modality: str
    images: ImageSet
    share: float = 0.0


def split_groups(names: list[str], sets: list[ImageSet], balance: str) -> list[Group]:
    """One group per dataset, or per (dataset, modality) with ``balance == "modality"`` (modality: the DICOM
    Modality tag, else the file type, e.g. ``nifti``). The decoded-file cache budget of ``sets[0]`` is split over
    the groups (at least 64 MiB each), so a loader process holds about one budget in all."""
    groups = []
    for k, (name, images) in enumerate(zip(names, sets)):
        if balance != "modality":
            groups.append(Group(name, k, "", images))
            continue
        by_mod: dict[str, list[Item]] = {}
        for item in images.items:
            src = images.sources[item.source]
            by_mod.setdefault(src.modality or src.kind, []).append(item)
        for mod in sorted(by_mod):
            sub = ImageSet(images.sources, images.prep, items=by_mod[mod], cache_bytes=images.cache_bytes)
            groups.append(Group(f"{name}/{mod}", k, mod, sub))
    total = sum(len(g.images) for g in groups)
    budget = max(1 << 26, sets[0].cache_bytes // len(groups))  # each group caches decoded files on its own
    for g in groups:
        g.share = len(g.images) / total
        g.images.cache_bytes = budget
    return groups


class MixtureStream(Dataset):
    """Map-style dataset over several groups keyed by stream position (module docstring). ``ds[p]`` is a
    ``PretrainDataset`` sample plus ``dataset`` (the dataset index) and ``duplicate`` (an over-sampled copy).

    Args:
        groups: from :func:`split_groups`.
        probs: sampling probability per group (:func:`group_probabilities`).
        views: the view configuration.
        seed: run seed.
        duplicates: whether over-sampled draws become 85-95% crops (``--balance``).
    """

    def __init__(self, groups: list[Group], probs, views: MultiViewConfig, seed: int = 0, duplicates: bool = False):
        self.groups, self.seed = groups, int(seed)
        self.probs = np.asarray(probs, np.float64)
        self.counts = apportion(self.probs, BLOCK)
        self.streams = [
            PretrainDataset(g.images, views, seed=self.seed * 1000 + 11 * i + 3) for i, g in enumerate(groups)
        ]
        ratio = self.probs / np.array([g.share for g in groups])
        self.dup_frac = np.where(duplicates & (ratio > 1), 1 - 1 / np.maximum(ratio, 1), 0.0)
        self._block: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return sum(len(g.images) for g in self.groups)

    def _layout(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(group of each offset, rank of the offset among its group's offsets) of one block."""
        if self._block is None or self._block[0] != block:
            group = np.random.default_rng([self.seed, 5, block]).permutation(
                np.repeat(np.arange(len(self.groups)), self.counts)
            )
            rank = np.empty(BLOCK, np.int64)
            for g in range(len(self.groups)):
                at = np.flatnonzero(group == g)
                rank[at] = np.arange(len(at))
            self._block = (block, group, rank)
        return self._block[1], self._block[2]

    def locate(self, position: int) -> tuple[int, int]:
        """(group, position in that group's stream) of stream position ``position``."""
        block, offset = divmod(int(position), BLOCK)
        group, rank = self._layout(block)
        g = int(group[offset])
        return g, block * int(self.counts[g]) + int(rank[offset])

    def seen(self, positions: int) -> np.ndarray:
        """How many of stream positions ``0 .. positions - 1`` each group supplies (exact, nothing read)."""
        block, offset = divmod(int(positions), BLOCK)
        out = self.counts * block
        if offset:
            group, _ = self._layout(block)
            out = out + np.bincount(group[:offset], minlength=len(self.groups))
        return out

    def __getitem__(self, position: int) -> dict:
        g, q = self.locate(position)
        rng = np.random.default_rng([self.seed, 6, int(position)])
        crop = bool(self.dup_frac[g] > 0 and rng.random() < self.dup_frac[g])
        sample = self.streams[g].sample(
            q, transform=(lambda img, scale: duplicate_crop(img, scale, rng)) if crop else None
        )
        sample["dataset"] = self.groups[g].dataset
        sample["duplicate"] = crop
        return sample


def duplicate_crop(img: np.ndarray, scale, rng: np.random.Generator):
    """A random crop of 85-95% of ``img``'s area (aspect kept) resized back to ``img``'s size; ``scale`` (y, x)
    to original pixels shrinks by the same factor so cell centres stay consistent between the two views."""
    h, w = img.shape[:2]
    f = math.sqrt(rng.uniform(*DUPLICATE_AREA))
    ch, cw = max(1, round(h * f)), max(1, round(w * f))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = cv2.resize(
        np.ascontiguousarray(img[top : top + ch, left : left + cw]), (w, h), interpolation=cv2.INTER_LINEAR
    )
    return out, (scale[0] * ch / h, scale[1] * cw / w)
