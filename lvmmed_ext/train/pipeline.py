"""Where a pretraining run's batches come from: one class per data mode, chosen once by :func:`build_pipeline`.

=================== ==============================================================================================
``FolderPipeline``   one folder or file, the demo images, or several ``--data`` folders read one after the other
``MixturePipeline``  several ``--data NAME=DIR[:WEIGHT]`` datasets sampled by weight (``--balance``)
``ShardPipeline``    the tar shards of ``lvmmed prepare``, streamed by disjoint readers
``LabelledPipeline`` the ``--labels`` datasets of a supervised head (and unlabelled images), in turn per micro-step
``VolumePipeline``   3D crops of volumes (``--arch unet3d``)
=================== ==============================================================================================

:func:`build_pipeline` scans the data (logging what it found) before anything is written, so bad data stops a run
early. Once the views, the head's pair maker, the first micro-step and the loader workers are known,
:meth:`Pipeline.loader` gives the DataLoader of the run's micro-steps; every mode keeps the stream a function of
(seed, position), so a resumed run reads exactly what the interrupted one would have. ``lvmmed bench data`` times
these same pipelines. A new data source (e.g. GPU-side augmentation) is one more class.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..data.datasets import (
    CyclingBatchSampler,
    ImageSet,
    PretrainDataset,
    StreamBatchSampler,
    TaskStream,
    collate_task_views,
    collate_views,
    seed_worker,
)
from ..data.demo import pretrain_images
from ..data.io import ScanResult
from ..data.labelsets import LabelSet, load_label_sets
from ..data.manifest import scan
from ..data.mixture import MixtureStream, check_specs, group_probabilities, parse_data_spec, split_groups
from ..data.presets import Preprocessing
from ..data.shards import ShardStream, is_shard_folder, load_index
from ..data.views import MultiViewConfig
from ..data.volumes import VolumeCrops, volume_sources
from ..distributed import barrier, world_size
from ..distributed import rank as dist_rank
from ..errors import UsageError
from ..heads import head_needs
from ..system import reader_processes
from .config import VOLUME_ARCHS, TrainConfig


@dataclass
class Span:
    """The micro-steps a loader serves: ``batch_size`` images per rank, ``world`` ranks, this ``rank``, micro-steps
    ``start .. stop - 1``."""

    batch_size: int
    world: int
    rank: int
    start: int
    stop: int

    def args(self) -> tuple:
        return self.batch_size, self.world, self.rank, self.start, self.stop


class Pipeline:
    """A data mode (see the module docstring). ``n_images`` sets the epoch length, ``skipped`` counts the files
    that could not be read at scan."""

    mode = "folder"
    n_images: int = 0
    skipped: int = 0
    pair_ok = True  # whether a restoration head's pair maker (input, target) can run on this data

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def dataset(self, views: MultiViewConfig, pair, span: Span, workers: int):
        """(dataset, batch sampler or None, collate function) of the micro-steps of ``span``."""
        raise NotImplementedError

    def tasks(self) -> list:
        """The task specs of a supervised head (one per labelled dataset); none by default."""
        return []

    def workers(self, requested: int, saved: dict | None, log) -> int:
        """The loader workers for a run asking for ``requested`` (a resumed run may have to keep its own)."""
        return requested

    def loader(self, views: MultiViewConfig, pair, span: Span, workers: int, device: torch.device) -> DataLoader:
        """The DataLoader of the micro-steps of ``span``."""
        if pair is not None and not self.pair_ok:
            raise UsageError(
                f"several --data datasets are not supported with --loss {self.cfg.loss} yet; pass one --data"
            )
        dataset, sampler, collate = self.dataset(views, pair, span, workers)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            batch_size=None if sampler is None else 1,
            num_workers=workers,
            collate_fn=collate,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.cfg.seed + span.start // self.cfg.accum),
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def passes(self, micro_steps: int, world: int) -> float:
        """Passes over the data completed after ``micro_steps`` micro-steps of ``world`` ranks (the epochs of
        ``Progress`` and of teachers updated per epoch): images read / images in the data."""
        return micro_steps * self.cfg.batch_size * world / max(self.n_images, 1)

    def record(self, position: int) -> dict:
        """Entries for config.json after ``position`` stream positions (the global images seen)."""
        return {}

    def summary(self, position: int) -> list[str]:
        """Lines logged at the end of a run that read ``position`` stream positions."""
        return []


class FolderPipeline(Pipeline):
    mode = "folder"

    def __init__(self, cfg: TrainConfig, images: ImageSet, skipped: int):
        super().__init__(cfg)
        self.images, self.skipped, self.n_images = images, skipped, len(images)

    def dataset(self, views, pair, span, workers):
        dataset = PretrainDataset(self.images, views, seed=self.cfg.seed, pair=pair)
        return dataset, StreamBatchSampler(*span.args()), collate_views


class VolumePipeline(Pipeline):
    mode = "volumes"

    def __init__(self, cfg: TrainConfig, volumes: list, skipped: int):
        super().__init__(cfg)
        self.volumes, self.skipped, self.n_images = volumes, skipped, len(volumes)

    def dataset(self, views, pair, span, workers):
        cfg = self.cfg
        dataset = VolumeCrops(self.volumes, cfg.preprocessing, cfg.crop3d, pair, seed=cfg.seed,
                              cache_bytes=cfg.cache_mb << 20)  # fmt: skip
        return dataset, StreamBatchSampler(*span.args()), collate_views


class LabelledPipeline(Pipeline):
    mode = "labels"

    def __init__(self, cfg: TrainConfig, label_sets: list[LabelSet], images: ImageSet | None, skipped: int):
        super().__init__(cfg)
        self.label_sets, self.images, self.skipped = label_sets, images, skipped
        self.n_images = (len(images) if images is not None else 0) + sum(len(ls.images) for ls in label_sets)

    def tasks(self) -> list:
        return [ls.spec() for ls in self.label_sets]

    def _groups(self) -> tuple[list, list, list[int]]:
        # the labelled datasets, then the unlabelled images
        sets = [ls.images for ls in self.label_sets] + ([self.images] if self.images is not None else [])
        targets = [ls.targets for ls in self.label_sets] + ([None] if self.images is not None else [])
        task_ids = list(range(len(self.label_sets))) + ([-1] if self.images is not None else [])
        return sets, targets, task_ids

    def _sampler(self, span: Span) -> CyclingBatchSampler:
        """One dataset per micro-step in turn (``--task-cycle batch``) or a whole pass over each (``epoch``)."""
        sets = self._groups()[0]
        turns = None
        if self.cfg.task_cycle == "epoch":
            turns = [max(1, math.ceil(len(s) / (span.batch_size * span.world))) for s in sets]
        return CyclingBatchSampler(*span.args(), groups=len(sets), turns=turns)

    def passes(self, micro_steps: int, world: int) -> float:
        if self.cfg.task_cycle != "epoch":
            return super().passes(micro_steps, world)
        return self._sampler(Span(self.cfg.batch_size, world, 0, 0, 0)).locate(micro_steps)[2]

    def dataset(self, views, pair, span, workers):
        sets, targets, task_ids = self._groups()
        dataset = TaskStream(sets, targets, task_ids, views, seed=self.cfg.seed)
        return dataset, self._sampler(span), collate_task_views


class MixturePipeline(Pipeline):
    mode = "mixture"
    pair_ok = False

    def __init__(self, cfg: TrainConfig, sets: list[ImageSet], skipped: int, log):
        super().__init__(cfg)
        self.sets, self.skipped, self.n_images, self.log = sets, skipped, sum(len(x) for x in sets), log
        self.stream: MixtureStream | None = None
        self.described: dict | None = None

    def dataset(self, views, pair, span, workers):
        self.stream, self.described = build_mixture(self.cfg, views, self.sets, self.log)
        return self.stream, StreamBatchSampler(*span.args()), collate_views

    def record(self, position: int) -> dict:
        if self.stream is None:
            return {}
        seen = mixture_seen(self.stream, self.described, position)
        step = position // self.cfg.global_batch if position else 0
        return {"mixture": {**self.described, "seen": seen, "seen_at_step": step}}

    def summary(self, position: int) -> list[str]:
        seen = mixture_seen(self.stream, self.described, position)
        total = max(1, sum(seen.values()))
        return ["data seen: " + ", ".join(f"{k} {n} ({n / total:.1%})" for k, n in seen.items())]


class ShardPipeline(Pipeline):
    mode = "shards"

    def __init__(self, cfg: TrainConfig, index: dict, log):
        super().__init__(cfg)
        self.index = index
        self.n_images = int(index["images"])
        self.skipped = int(index.get("unreadable", 0))
        shard_prep = Preprocessing.from_json(index["preprocessing"])
        if shard_prep.to_json() != cfg.preprocessing.to_json():
            log(f"notice: the shards were prepared with {shard_prep.to_json()}; that preprocessing is recorded")
            cfg.preprocessing = shard_prep
        log(
            f"data: {index['images']} preprocessed images in {len(index['shards'])} shards in {cfg.data} "
            f"({', '.join(d['name'] for d in index['datasets'])})"
        )

    def workers(self, requested, saved, log):
        # the shard readers are a function of the workers: a resumed run keeps the number it began with
        if saved is not None and saved.get("loader_workers", requested) != requested:
            log(f"notice: resuming with {saved['loader_workers']} loader workers, as the run began (its shard readers)")
            return int(saved["loader_workers"])
        return requested

    def dataset(self, views, pair, span, workers):
        cfg = self.cfg
        stream = ShardStream(cfg.data, self.index, views, cfg.preprocessing, cfg.seed, span.rank, span.world, workers,
                             cfg.batch_size, span.start, pair)  # fmt: skip
        return stream, None, collate_views  # batches come whole from each worker's shards


def build_pipeline(cfg: TrainConfig, log=print) -> Pipeline:
    """The data mode of ``cfg`` with its data scanned (see the module docstring). ``UsageError`` for data that does
    not fit the options (before anything is written)."""
    label_sets = _label_sets(cfg, log)
    three_d = cfg.arch in VOLUME_ARCHS
    if is_shard_folder(cfg.data):
        if label_sets or three_d:
            raise UsageError(f"--data {cfg.data} holds shards (lvmmed prepare): not usable with --labels or 3D --arch")
        return ShardPipeline(cfg, load_index(cfg.data), log)
    if cfg.datasets and not label_sets and not three_d:
        sets, skipped = build_datasets(cfg, log)
        if len(sets) == 1 and cfg.balance == "dataset":
            log("notice: --balance dataset has no effect with a single dataset")
        return MixturePipeline(cfg, sets, skipped, log)
    if cfg.datasets and (cfg.balance != "none" or parse_data_spec(cfg.datasets[0]).weight is not None):
        raise UsageError("--data weights and --balance apply to self-supervised 2D pretraining, not with --labels "
                         "or --arch unet3d (there the datasets are read one after the other)")  # fmt: skip
    if cfg.balance != "none":
        log(f"notice: --balance {cfg.balance} has no effect with a single --data folder (it balances several "
            "--data NAME=DIR datasets)")  # fmt: skip
    has_data = cfg.data or cfg.datasets
    images, skipped = build_images(cfg, log=log) if has_data or not label_sets else (None, 0)
    skipped += sum(len(ls.skipped) for ls in label_sets)
    if three_d and not head_needs(cfg.loss, "encoder"):
        raise UsageError(f"--arch {cfg.arch} is the 3D encoder of --loss genesis (restoration), not --loss {cfg.loss}")
    if three_d:
        if label_sets:
            raise UsageError(f"--labels does not apply to --arch {cfg.arch}")
        volumes, too_shallow = volume_sources(images.sources, cfg.crop3d)
        log(
            f"volumes: {len(volumes)} with at least {cfg.crop3d[0]} slices for {'x'.join(map(str, cfg.crop3d))} "
            f"crops" + (f" ({too_shallow} shallower left out)" if too_shallow else "")
        )
        return VolumePipeline(cfg, volumes, skipped)
    if label_sets:
        return LabelledPipeline(cfg, label_sets, images, skipped)
    return FolderPipeline(cfg, images, skipped)


def scan_data(path: str, axis: int, what: str = "--data") -> ScanResult:
    """``scan`` of one ``--data`` path through the folder's manifest. Under DDP rank 0 scans (reading new headers in
    parallel processes) and writes the manifest first; the other ranks then read it instead of every header."""
    workers = reader_processes(cap=8)
    if dist_rank() != 0:
        barrier()
        return scan(path, axis=axis, what=what, manifest=True, workers=workers)
    try:
        return scan(path, axis=axis, what=what, manifest=True, workers=workers)
    finally:
        if world_size() > 1:
            barrier()


def _log_scan(result: ScanResult, where: str, log) -> None:
    kinds: dict[str, int] = {}
    for s in result.sources:
        kinds[s.kind] = kinds.get(s.kind, 0) + s.count
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    reuse = f"; {result.reused} headers from the manifest, {result.read} read" if result.manifest else ""
    log(f"data: {result.count} images from {len(result.sources)} files in {where} ({summary}){reuse}")
    if result.skipped:
        print(
            f"warning: skipped {len(result.skipped)} unreadable file(s), e.g. {result.skipped[0][0]}: "
            f"{result.skipped[0][1]}",
            file=sys.stderr,
            flush=True,
        )


def build_images(cfg: TrainConfig, log=print) -> tuple[ImageSet, int]:
    """The 2D images of ``cfg.data`` (a folder/file, or ``"demo"``; the ``cfg.datasets`` folders one after the
    other) and the number of files skipped at scan."""
    prep = cfg.preprocessing
    if cfg.data == "demo":
        return pretrain_images(prep, cache_bytes=cfg.cache_mb << 20, log=log), 0
    if cfg.datasets:
        sets, skipped = build_datasets(cfg, log)
        sources = [src for images in sets for src in images.sources]
        return ImageSet(sources, prep, cache_bytes=cfg.cache_mb << 20), skipped
    if not cfg.data:
        raise UsageError("no data: pass --data DIR (a folder of images) or --demo")
    result = scan_data(cfg.data, prep.axis)
    _log_scan(result, cfg.data, log)
    return ImageSet(result.sources, prep, cache_bytes=cfg.cache_mb << 20), len(result.skipped)


def build_datasets(cfg: TrainConfig, log=print) -> tuple[list[ImageSet], int]:
    """One ``ImageSet`` per ``cfg.datasets`` entry (checked: unique names, weights for all or none) and the number
    of files skipped at scan."""
    specs = [parse_data_spec(t) for t in cfg.datasets]
    check_specs(specs, cfg.balance)
    sets, skipped = [], 0
    for spec in specs:
        result = scan_data(spec.path, cfg.preprocessing.axis, what=f"--data {spec.name}=")
        _log_scan(result, f"{spec.name}={spec.path}", log)
        sets.append(ImageSet(result.sources, cfg.preprocessing, cache_bytes=cfg.cache_mb << 20))
        skipped += len(result.skipped)
    return sets, skipped


def build_mixture(cfg: TrainConfig, views: MultiViewConfig, sets: list[ImageSet], log=print):
    """The ``MixtureStream`` of ``cfg.datasets`` over ``sets`` and its description for config.json: per dataset
    its path, weight, images and sampling probability (per group with ``--balance modality``)."""
    specs = [parse_data_spec(t) for t in cfg.datasets]
    groups = split_groups([s.name for s in specs], sets, cfg.balance)
    weights = [s.weight for s in specs] if specs[0].weight is not None else None
    probs = group_probabilities(
        [len(g.images) for g in groups], [g.dataset for g in groups], [g.modality for g in groups], weights, cfg.balance
    )
    stream = MixtureStream(groups, probs, views, seed=cfg.seed, duplicates=cfg.balance != "none")
    described = []
    for k, spec in enumerate(specs):
        mine = [i for i, g in enumerate(groups) if g.dataset == k]
        entry = {
            "name": spec.name,
            "path": spec.path,
            "weight": spec.weight,
            "images": len(sets[k]),
            "probability": float(probs[mine].sum()),
        }
        if cfg.balance == "modality":
            entry["modalities"] = {groups[i].modality: float(probs[i]) for i in mine}
        described.append(entry)
        dup = max(float(stream.dup_frac[i]) for i in mine)
        log(
            f"mixture: {spec.name} {len(sets[k])} images, {entry['probability']:.1%} of samples"
            + (f" (weight {spec.weight:g})" if spec.weight is not None else "")
            + (f", up to {dup:.0%} of its samples are 85-95% crop duplicates" if dup > 0 else "")
        )
    return stream, {"balance": cfg.balance, "datasets": described}


def mixture_seen(stream: MixtureStream, mixture: dict, positions: int) -> dict[str, int]:
    """Images each dataset supplied to stream positions ``0 .. positions - 1`` (exact: the stream is a function
    of the seed and the position)."""
    per_group = stream.seen(positions)
    out = {d["name"]: 0 for d in mixture["datasets"]}
    for g, n in zip(stream.groups, per_group):
        out[mixture["datasets"][g.dataset]["name"]] += int(n)
    return out


def _label_sets(cfg: TrainConfig, log=print) -> list[LabelSet]:
    """The ``--labels`` datasets of a supervised head (checked against ``cfg.loss``), logged one line each."""
    needs = head_needs(cfg.loss, "labels")
    if cfg.labels and not needs:
        raise UsageError(f"--labels applies to supervised losses (ark), not --loss {cfg.loss}")
    if needs and not cfg.labels:
        raise UsageError(f"--loss {cfg.loss} is supervised pretraining: pass --labels NAME=CSV (repeatable)")
    if not cfg.labels:
        return []
    sets = load_label_sets(cfg.labels, cfg.preprocessing, cache_bytes=cfg.cache_mb << 20, uncertain=cfg.uncertain)
    for ls in sets:
        log(
            f"labels: {ls.name} ({ls.kind}-label, {len(ls.classes)} classes) {len(ls.images)} images from {ls.path}"
            + (f"; skipped {len(ls.skipped)} unreadable file(s)" if ls.skipped else "")
        )
    return sets
