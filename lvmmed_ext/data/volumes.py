"""Random sub-volumes of 3D images for 3D pretraining (``lvmmed pretrain --arch unet3d --loss genesis``).

A volume is a source with several frames (a NIfTI file sliced along ``--axis``, a multi-frame DICOM, a multi-page
TIFF), decoded with the intensity preset like the 2D pipeline; a sample is a random ``D x H x W`` crop of it (the
paper's Models Genesis cubes are 64 x 64 x 32 voxels, i.e. ``--crop3d 32 64 64``), turned by the head's
``pair_config`` into ``[input, target]`` tensors ``[C=1, D, H, W]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from .datasets import MAX_READ_TRIES
from .io import ReadError, Source, SourceCache
from .presets import Preprocessing


def volume_sources(sources: list[Source], crop: tuple[int, int, int]) -> tuple[list[Source], int]:
    """The sources with at least ``crop[0]`` frames (the in-plane size is checked when a volume is read), and the
    number left out. ``UsageError`` when none qualifies."""
    fit = [s for s in sources if s.count >= crop[0]]
    if not fit:
        deepest = max((s.count for s in sources), default=0)
        raise UsageError(
            f"no volume has the {crop[0]} slices --crop3d {crop[0]} {crop[1]} {crop[2]} needs (the deepest has "
            f"{deepest}); pass a smaller --crop3d or NIfTI/multi-frame DICOM volumes"
        )
    return fit, len(sources) - len(fit)


class VolumeCrops(Dataset):
    """Map-style dataset keyed by stream position (as ``PretrainDataset``): position p reads volume
    ``perm_e[p mod n]`` (``perm_e`` seeded by (seed, epoch)) and crops it with a generator seeded by (seed, p).

    ``ds[p]`` is a dict: ``views`` two float32 ``[1, D, H, W]`` tensors (``pair.make_pair(crop, rng)``, normalised
    with the preset's mean/std), ``pos`` two dummy ``[1, 2]`` tensors, ``bad`` ``(path, reason)`` of volumes that
    failed to decode or are smaller than the crop in-plane (replaced by another, deterministically), ``index``.
    """

    def __init__(
        self,
        sources: list[Source],
        prep: Preprocessing,
        crop: tuple[int, int, int],
        pair,
        seed: int = 0,
        cache_bytes: int = 1 << 30,
    ):
        if len(crop) != 3 or min(crop) < 1:
            raise ValueError(f"crop must be 3 positive sizes (D, H, W), got {crop}")
        self.sources, self.prep, self.crop, self.pair, self.seed = sources, prep, tuple(crop), pair, int(seed)
        self.cache_bytes = cache_bytes
        self._cache: SourceCache | None = None
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.sources)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def _volume(self, i: int) -> np.ndarray:
        if self._cache is None:
            self._cache = SourceCache(self.cache_bytes)
        frames = self._cache.get(self.sources[i], self.prep).frames
        vol = frames.astype(np.float32)
        if vol.ndim == 4:  # colour frames: luminance
            vol = vol.mean(axis=-1)
        if any(n < c for n, c in zip(vol.shape, self.crop)):
            raise ReadError(f"volume {vol.shape} is smaller than the crop {self.crop}")
        return vol

    def __getitem__(self, position: int) -> dict:
        n = len(self.sources)
        epoch, offset = divmod(int(position), n)
        index = int(np.random.default_rng([self.seed, epoch]).permutation(n)[offset])
        rng = np.random.default_rng([self.seed, 3, int(position)])
        bad, last = [], ""
        for _ in range(MAX_READ_TRIES):
            if index not in self._bad:
                try:
                    vol = self._volume(index)
                    break
                except ReadError as e:
                    self._bad.add(index)
                    last = f"{self.sources[index].path}: {e}"
                    bad.append((self.sources[index].path, str(e)))
            index = int(rng.integers(n))
        else:
            raise UsageError(f"no usable volume after {MAX_READ_TRIES} tries (last failure: {last})")
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(vol.shape, self.crop)]
        cube = vol[tuple(slice(a, a + c) for a, c in zip(start, self.crop))]
        mean, std = np.float32(self.prep.mean), np.float32(self.prep.std)
        views = [torch.from_numpy(((np.ascontiguousarray(v) - mean) / std)[None].astype(np.float32))
                 for v in self.pair.make_pair(cube, rng)]  # fmt: skip
        pos = [torch.zeros(1, 2), torch.zeros(1, 2)]
        return {"views": views, "pos": pos, "bad": bad, "index": index}
