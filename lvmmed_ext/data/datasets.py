"""Datasets over scanned sources: multi-view pretraining samples and resized labelled images for evaluation.

Pretraining reads a deterministic *stream*: position p of the stream is image ``perm_e[p mod n]`` of epoch
``e = p div n`` (``perm_e`` a permutation seeded by (seed, e)), and its views use a generator seeded by
(seed, p). A step consumes the next ``batch x world`` positions, so the data order depends only on the seed
and the step: resuming at step k reproduces exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import UsageError
from .io import ReadError, Source, SourceCache
from .presets import Preprocessing
from .views import MultiViewConfig, make_view, to_chw

MAX_READ_TRIES = 64


@dataclass(frozen=True)
class Item:
    """One 2D image: frame/slice ``frame`` of ``sources[source]``."""

    source: int
    frame: int


class ImageSet:
    """The 2D images of a list of sources (every frame, or the given ``items``), decoded through an LRU cache.

    ``image(i)`` returns ``(img float32 [H, W] or [H, W, 3] in [0, 1], scale (y, x) to original pixels)`` and
    raises ``ReadError`` for an undecodable file.
    """

    def __init__(
        self,
        sources: list[Source],
        prep: Preprocessing,
        items: list[Item] | None = None,
        cache_bytes: int = 1 << 30,
    ):
        self.sources, self.prep = sources, prep
        self.items = (
            items if items is not None else [Item(s, f) for s, src in enumerate(sources) for f in range(src.count)]
        )
        if not self.items:
            raise UsageError("no images to read (0 frames or slices in the given sources)")
        self.cache_bytes = cache_bytes
        self._cache: SourceCache | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self):  # workers build their own cache
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def image(self, i: int) -> tuple[np.ndarray, tuple[float, float]]:
        if self._cache is None:
            self._cache = SourceCache(self.cache_bytes)
        item = self.items[i]
        src = self.sources[item.source]
        loaded = self._cache.get(src, self.prep)
        if item.frame >= loaded.frames.shape[0]:
            raise ReadError(f"frame {item.frame} requested, the file decodes to {loaded.frames.shape[0]}")
        return loaded.frames[item.frame].astype(np.float32), loaded.scale


class PretrainDataset(Dataset):
    """Map-style dataset keyed by stream position (see the module docstring).

    ``ds[p]`` is a dict: ``views`` a list of float32 ``[C, size, size]`` tensors (globals first), ``pos`` a list of
    float32 ``[R*S, 2]`` cell centres (y, x) in original pixels, ``bad`` a list of ``(path, reason)`` for files
    that failed to decode while producing it (each is then replaced by another image, deterministically), ``index``
    the image actually used.

    With ``pair`` (an object with ``make_pair(view, rng) -> (input, target)``, e.g. a Genesis config) a sample is
    one crop of the global view config turned into the two "views" ``[input, target]`` of a restoration head.
    """

    def __init__(self, images: ImageSet, views: MultiViewConfig, seed: int = 0, pair=None):
        self.images, self.views, self.seed, self.pair = images, views, int(seed), pair
        self._perms: dict[int, np.ndarray] = {}
        self._bad: set[int] = set()  # sources that failed in this process

    def __len__(self) -> int:
        return len(self.images)

    def index_at(self, position: int) -> int:
        n = len(self.images)
        epoch, offset = divmod(int(position), n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._perms = {epoch: perm}  # the stream moves forward: keep one epoch
        return int(perm[offset])

    def __getitem__(self, position: int) -> dict:
        return self.sample(position)

    def sample(self, position: int, transform=None) -> dict:
        """The sample at ``position``; ``transform(img, scale) -> (img, scale)`` (optional) changes the decoded
        image before the views are cut (the mixture's duplicate crops)."""
        rng = np.random.default_rng([self.seed, 1, int(position)])
        index, bad, last = self.index_at(position), [], ""
        for _ in range(MAX_READ_TRIES):
            src = self.images.items[index].source
            if src not in self._bad:
                try:
                    img, scale = self.images.image(index)
                    break
                except ReadError as e:
                    self._bad.add(src)
                    last = f"{self.images.sources[src].path}: {e}"
                    bad.append((self.images.sources[src].path, str(e)))
            index = int(rng.integers(len(self.images)))
        else:
            raise UsageError(f"no readable image after {MAX_READ_TRIES} tries (last failure: {last})")
        if transform is not None:
            img, scale = transform(img, scale)
        return {**views_of(img, scale, rng, self.views, self.images.prep, self.pair), "bad": bad, "index": index}


def views_of(img: np.ndarray, scale, rng: np.random.Generator, views: MultiViewConfig, prep: Preprocessing, pair=None):
    """``{"views": [...], "pos": [...]}`` of one decoded image (float32 ``[H, W]`` or ``[H, W, 3]`` in [0, 1]):
    every view of ``views`` (or, with ``pair``, one global crop made into ``[input, target]``) as a normalised
    float32 ``[C, size, size]`` tensor with its float32 ``[R*S, 2]`` cell centres in original pixels.

    ``pair`` is a head's data hook: an object with ``make_pair(view, rng) -> (input, target)`` (restoration heads),
    or with ``distort(view, rng, grid) -> (view, extra)``, which corrupts the first view (the sample then has
    ``"extra"``: the hook's arrays as tensors plus ``"clean"``, the first view before the corruption)."""
    to_tensor = lambda v: torch.from_numpy(to_chw(np.ascontiguousarray(v), prep.in_chans, prep.mean, prep.std))  # noqa: E731
    if pair is not None and hasattr(pair, "make_pair"):
        view, p = make_view(img, rng, views.global_view, scale)
        made = [to_tensor(v) for v in pair.make_pair(view, rng)]
        return {"views": made, "pos": [torch.from_numpy(p)] * len(made)}
    drawn = views.draw(img, rng, scale)
    out = {"views": [to_tensor(v) for v, _ in drawn], "pos": [torch.from_numpy(p) for _, p in drawn]}
    if pair is not None:
        first = drawn[0][0]
        distorted, extra = pair.distort(first, rng, views.global_view.grid)
        out["views"][0] = to_tensor(distorted)
        out["extra"] = {"clean": to_tensor(first), **{k: torch.as_tensor(v) for k, v in extra.items()}}
    return out


def collate_views(samples: list[dict]) -> dict:
    """Stack a list of ``PretrainDataset`` samples: ``views[k]`` ``[B, C, H, W]``, ``pos[k]`` ``[B, P, 2]`` (and
    each ``extra`` entry, when the samples have one)."""
    n_views = len(samples[0]["views"])
    out = {
        "views": [torch.stack([s["views"][k] for s in samples]) for k in range(n_views)],
        "pos": [torch.stack([s["pos"][k] for s in samples]) for k in range(n_views)],
        "bad": [b for s in samples for b in s["bad"]],
    }
    if "extra" in samples[0]:
        out["extra"] = {k: torch.stack([s["extra"][k] for s in samples]) for k in samples[0]["extra"]}
    return out


class TaskStream(Dataset):
    """Pretraining samples from several image sets ("tasks"), each a stream of its own (a ``PretrainDataset``
    seeded by (seed, task)). Keys are ``(group, position)`` pairs from :class:`CyclingBatchSampler`; a sample is a
    ``PretrainDataset`` sample plus ``task`` (``tasks[group]``: a labelled dataset's index, or -1 for unlabelled
    images) and ``target`` (the image's target from ``targets[group]``, or None).
    """

    def __init__(
        self,
        sets: list[ImageSet],
        targets: list[np.ndarray | None],
        tasks: list[int],
        views: MultiViewConfig,
        seed: int = 0,
    ):
        if not (len(sets) == len(targets) == len(tasks)) or not sets:
            raise ValueError("TaskStream needs one target array (or None) and one task id per image set")
        self.streams = [PretrainDataset(s, views, seed=int(seed) * 1000 + 7 * g + 1) for g, s in enumerate(sets)]
        self.targets, self.tasks = targets, tasks

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)

    def __getitem__(self, key) -> dict:
        group, position = key
        sample = self.streams[group][position]
        target = self.targets[group]
        sample["task"] = self.tasks[group]
        sample["target"] = None if target is None else torch.as_tensor(target[sample["index"]])
        return sample


def collate_task_views(samples: list[dict]) -> dict:
    """``collate_views`` plus ``task`` (the batch's task: every sample of a batch shares it) and ``target``
    (stacked, or None for unlabelled images)."""
    out = collate_views(samples)
    out["task"] = samples[0]["task"]
    out["target"] = None if samples[0]["target"] is None else torch.stack([s["target"] for s in samples])
    return out


TASK_CYCLES = ("batch", "epoch")


class CyclingBatchSampler(Sampler):
    """Like :class:`StreamBatchSampler` over ``groups`` streams taken in turn. A round gives group g ``turns[g]``
    consecutive micro-steps (default 1 each: the next group every micro-step; with ``turns[g]`` = micro-steps of a
    pass over group g's images, a whole pass per group, as Ark trains), every rank the same group. Group g's t-th
    micro-step reads positions ``t * B * W + r * B + j`` of its stream. Yields lists of ``(group, position)``;
    resuming at a micro-step reproduces the same batches."""

    def __init__(
        self, batch_size: int, world: int, rank: int, start: int, stop: int, groups: int, turns: list[int] | None = None
    ):
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        turns = [1] * groups if turns is None else [int(t) for t in turns]
        if len(turns) != groups or min(turns) < 1:
            raise ValueError(f"turns must give each of the {groups} groups >= 1 micro-steps, got {turns}")
        self.batch_size, self.world, self.rank, self.start, self.stop = batch_size, world, rank, start, stop
        self.groups, self.turns = groups, turns
        self._ends = np.cumsum(turns)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def locate(self, m: int) -> tuple[int, int, float]:
        """(group, that group's micro-step index, passes completed before micro-step ``m``) of micro-step ``m``."""
        rnd, offset = divmod(m, int(self._ends[-1]))
        group = int(np.searchsorted(self._ends, offset, side="right"))
        inside = offset - (int(self._ends[group - 1]) if group else 0)
        return group, rnd * self.turns[group] + inside, rnd * self.groups + group + inside / self.turns[group]

    def __iter__(self):
        b, w = self.batch_size, self.world
        for m in range(self.start, self.stop):
            group, turn, _ = self.locate(m)
            first = turn * b * w + self.rank * b
            yield [(group, p) for p in range(first, first + b)]


class StreamBatchSampler(Sampler):
    """Yields this rank's stream positions for micro-steps ``start, ..., stop - 1``.

    Micro-step m covers global positions ``[m*B*W, (m+1)*B*W)``; rank r takes ``B`` consecutive ones from
    ``m*B*W + r*B``. Every rank therefore sees distinct images and the union is independent of W for a fixed
    global batch ``B*W``.
    """

    def __init__(self, batch_size: int, world: int, rank: int, start: int, stop: int):
        self.batch_size, self.world, self.rank, self.start, self.stop = batch_size, world, rank, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        b, w = self.batch_size, self.world
        for m in range(self.start, self.stop):
            first = m * b * w + self.rank * b
            yield list(range(first, first + b))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy/random from the worker's torch seed; one OpenCV thread."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    import cv2

    cv2.setNumThreads(1)


class LabelledImages(Dataset):
    """Whole images resized to ``size x size`` (no crop), normalised: ``ds[i] -> (float32 [C, size, size], i)``.

    An undecodable image gives a zero tensor and index -1, so evaluation can drop it.
    """

    def __init__(self, images: ImageSet, size: int):
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import cv2

        try:
            img, _ = self.images.image(i)
        except ReadError:
            return torch.zeros(self.images.prep.in_chans, self.size, self.size), -1
        img = cv2.resize(
            img,
            (self.size, self.size),
            interpolation=cv2.INTER_AREA if min(img.shape[:2]) > self.size else cv2.INTER_LINEAR,
        )
        prep = self.images.prep
        return torch.from_numpy(to_chw(img, prep.in_chans, prep.mean, prep.std)), i
