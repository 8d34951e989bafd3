"""Tar shards of preprocessed images: ``lvmmed prepare`` writes them, ``lvmmed pretrain --data SHARDS/`` streams them.

Layout (WebDataset's): ``SHARDS/shard-000000.tar, ...``, each holding pairs ``<key>.png`` (the decoded image with the
intensity preset applied and downscaled to ``--max-side``, 8- or 16-bit gray, or RGB for ``--in-chans 3``) and
``<key>.json`` (``source``, ``frame``, ``dataset``, ``scale`` to original pixels, ``preset``); ``SHARDS/shards.json``
lists the shards with their image counts, the preprocessing and the datasets. Sources are shuffled (seeded) before
they are cut into shards, so every shard mixes the datasets and files.

Streaming: the loader has ``lanes = world x max(1, workers)`` independent readers; lane ``L`` reads, in epoch ``e``,
the shards ``perm_e[L::lanes]`` (``perm_e`` a permutation seeded by (seed, e)), each shard read sequentially into
memory and its members visited in an order seeded by (seed, e, shard). Ranks and workers therefore read disjoint
shards. Micro-step ``m`` of a rank comes from its worker ``m mod workers`` (the DataLoader's round robin), as that
lane's ``m div workers``-th batch, so resuming at a micro-step skips each lane to its place from the shard counts
alone (nothing decoded) and continues the same stream. A member that does not decode is replaced by the next
readable member of its shard (and counted), so positions never shift; a shard that cannot be opened at all is
skipped with a count; a whole pass over the shards without a readable member stops the run with one line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UsageError, run_command
from ..options import add_arguments
from ..system import reader_processes
from .datasets import views_of
from .io import ReadError, read_source
from .manifest import CountBar, scan
from .mixture import parse_data_spec
from .presets import PREP_KEYS, PREP_OPTIONS, Preprocessing
from .views import MultiViewConfig

INDEX_NAME = "shards.json"
FORMAT, VERSION = "lvmmed-shards", 1


def is_shard_folder(path: str) -> bool:
    """Whether ``path`` is a folder written by ``lvmmed prepare`` (it holds ``shards.json``)."""
    return bool(path) and os.path.isfile(os.path.join(path, INDEX_NAME))


def load_index(folder: str) -> dict:
    """The ``shards.json`` of ``folder``; ``UsageError`` naming the file when it is not a shard index."""
    path = os.path.join(folder, INDEX_NAME)
    try:
        with open(path) as f:
            index = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--data {folder}: {INDEX_NAME} cannot be read ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise UsageError(f"--data {folder}: {INDEX_NAME} is not an {FORMAT} v{VERSION} index")
    return index


def encode_frame(frame: np.ndarray, bits: int, compression: int = 1) -> bytes:
    """float ``[H, W]`` or ``[H, W, 3]`` in [0, 1] -> PNG bytes, 8- or 16-bit, zlib level ``compression`` (0-9) and
    no PNG row filter: on CT slices that halves the decode time of OpenCV's default at a slightly smaller size, and
    level 0 decodes about 5x faster again at 2.6x the size (measured on the ``bench data`` slices)."""
    top = 255 if bits == 8 else 65535
    arr = np.clip(np.rint(np.asarray(frame, np.float32) * top), 0, top).astype(np.uint8 if bits == 8 else np.uint16)
    if arr.ndim == 3:
        arr = arr[..., ::-1]  # OpenCV writes BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), params)
    if not ok:
        raise ReadError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, raw: bool = False) -> np.ndarray:
    """PNG bytes -> float32 ``[H, W]`` or ``[H, W, 3]`` (RGB) in [0, 1], or with ``raw`` the stored uint8/uint16
    array (``make_view`` scales it after resizing the crop); ``ReadError`` when it does not decode."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise ReadError("PNG does not decode (truncated or corrupt)")
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., 2::-1])
    if raw:
        return arr
    return arr.astype(np.float32) * np.float32(1.0 / np.iinfo(arr.dtype).max)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _write_shard(job) -> dict:
    """Write one shard: ``job = (path, number, [(dataset name, root, Source), ...], prep, bits, compression)``."""
    path, number, sources, prep, bits, compression = job
    count, bad, per_dataset = 0, [], {}
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        for name, root, src in sources:
            try:
                loaded = read_source(src, prep)
            except ReadError as e:
                bad.append((src.path, str(e)))
                continue
            for f, frame in enumerate(loaded.frames):
                key = f"s{number:06d}_{count:06d}"
                meta = {
                    "source": os.path.relpath(src.path, root),
                    "frame": f,
                    "dataset": name,
                    "scale": list(loaded.scale),
                    "preset": loaded.preset,
                }
                _add(tar, f"{key}.png", encode_frame(frame, bits, compression))
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                count += 1
                per_dataset[name] = per_dataset.get(name, 0) + 1
    os.replace(tmp, path)
    return {"name": os.path.basename(path), "count": count, "datasets": per_dataset, "bad": bad}


def prepare(
    data: list[str],
    out: str,
    prep: Preprocessing,
    shard_size: int = 1000,
    bits: int = 8,
    workers: int = 0,
    seed: int = 0,
    progress: bool = False,
    log=print,
    compression: int = 1,
) -> dict:
    """Decode and preprocess every image of ``data`` (``DIR`` or ``NAME=DIR`` entries) into tar shards in ``out``.

    Args:
        data: the folders; plain folders are named after their last path component.
        out: a new or empty folder.
        prep: preprocessing (preset, window, percentiles, in_chans, max_side, axis) applied before storing.
        shard_size: images per shard (a file's frames stay in one shard, so a shard may hold a few more).
        bits: 8 or 16 bits per stored pixel.
        workers: shard-writing processes (0 or 1: this process).
        seed: shuffles the files before they are cut into shards.
        progress: draw a progress bar (shards written) on stderr.
        compression: PNG zlib level 0-9 (see ``encode_frame``).

    Returns:
        the ``shards.json`` index written last in ``out``. Raises ``UsageError`` (before anything is written) for
        bad arguments or data.

    Example:
        >>> prepare(["ct=/data/ct", "/data/xray"], "shards/", Preprocessing(max_side=256))  # doctest: +SKIP
    """
    if bits not in (8, 16):
        raise UsageError(f"--bits must be 8 or 16, got {bits}")
    if not 0 <= compression <= 9:
        raise UsageError(f"--compression must be 0-9, got {compression}")
    if shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {shard_size}")
    if not data:
        raise UsageError("no data: pass --data DIR or NAME=DIR (repeatable)")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"--out {out} exists and is not an empty folder")
    specs = [parse_data_spec(d) for d in data]
    for s in specs:
        if s.weight is not None:
            raise UsageError(f"--data {s.text()}: weights are not stored in shards; give NAME=DIR")
    items, datasets, skipped = [], [], []
    for s in specs:
        root = os.path.abspath(s.path)
        result = scan(root, axis=prep.axis, what=f"--data {s.name}=", manifest=True, workers=workers)
        skipped += result.skipped
        datasets.append({"name": s.name, "path": root, "files": len(result.sources), "images": result.count})
        items += [(s.name, root, src) for src in result.sources]
        log(f"prepare: {s.name} {result.count} images in {len(result.sources)} files ({root})")
    order = np.random.default_rng(seed).permutation(len(items))
    jobs, current, frames = [], [], 0
    for i in order:
        current.append(items[i])
        frames += items[i][2].count
        if frames >= shard_size:
            jobs.append(current)
            current, frames = [], 0
    if current:
        jobs.append(current)
    os.makedirs(out, exist_ok=True)
    args = [(os.path.join(out, f"shard-{n:06d}.tar"), n, job, prep, bits, compression) for n, job in enumerate(jobs)]
    bar = CountBar(len(args), label="prepare", unit="shards") if progress else None
    written = []
    if workers > 1 and len(args) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(_write_shard, args):
                written.append(r)
                if bar:
                    bar.update(len(written))
    else:
        for a in args:
            written.append(_write_shard(a))
            if bar:
                bar.update(len(written))
    if bar:
        bar.close()
    bad = [b for r in written for b in r.pop("bad")]
    index = {
        "format": FORMAT,
        "version": VERSION,
        "preprocessing": prep.to_json(),
        "bits": bits,
        "compression": compression,
        "images": sum(r["count"] for r in written),
        "datasets": datasets,
        "unreadable": len(skipped) + len(bad),
        "shards": [r for r in written if r["count"]],
    }
    for r in written:
        if not r["count"]:
            os.remove(os.path.join(out, r["name"]))
    with open(os.path.join(out, INDEX_NAME + ".tmp"), "w") as f:
        json.dump(index, f, indent=1)
    os.replace(os.path.join(out, INDEX_NAME + ".tmp"), os.path.join(out, INDEX_NAME))
    if bad:
        print(f"warning: {len(bad)} file(s) did not decode, e.g. {bad[0][0]}: {bad[0][1]}", file=sys.stderr)
    return index


def read_shard(path: str) -> tuple[list[tuple[str, bytes | None, dict]], list[tuple[str, str]]]:
    """The members of one shard in stored order: ``[(key, png bytes or None, meta)]`` and ``[(member, reason)]``
    of what could not be read. A shard that cannot be opened gives no members and one reason."""
    members: dict[str, dict] = {}
    bad: list[tuple[str, str]] = []
    try:
        with tarfile.open(path, "r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                f = tar.extractfile(info)
                members.setdefault(key, {})[ext] = f.read() if f is not None else b""
    except (OSError, tarfile.TarError, EOFError) as e:
        bad.append((path, f"{type(e).__name__}: {e}"))
    out = []
    for key, parts in members.items():
        try:
            meta = json.loads(parts.get("json", b"{}"))
        except ValueError:
            meta = {}
        out.append((key, parts.get("png"), meta if isinstance(meta, dict) else {}))
    return out, bad


class ShardStream(IterableDataset):
    """Pretraining batches streamed from shards (module docstring). Iterating yields ``collate_views``-style
    batches of ``batch_size`` samples; each sample as ``PretrainDataset``'s (``index`` -1), ``bad`` listing
    ``(shard:key, reason)`` of members replaced while producing it.

    Args:
        folder: the shard folder; ``index`` its ``shards.json``.
        views: view configuration; ``prep`` gives ``in_chans``, ``mean``, ``std`` for the network input.
        seed, rank, world, workers: the run's seed and layout (``workers`` 0 = the main process).
        batch_size: samples per micro-step and rank; ``start`` the first micro-step (resume).
    """

    def __init__(
        self,
        folder: str,
        index: dict,
        views: MultiViewConfig,
        prep: Preprocessing,
        seed: int,
        rank: int,
        world: int,
        workers: int,
        batch_size: int,
        start: int = 0,
        pair=None,
    ):
        self.folder, self.views, self.prep, self.pair = folder, views, prep, pair
        self.shards = [(os.path.join(folder, s["name"]), int(s["count"])) for s in index["shards"]]
        self.seed, self.rank, self.world, self.batch_size, self.start = int(seed), rank, world, batch_size, start
        self.workers = max(1, workers)
        self.lanes = self.world * self.workers
        if len(self.shards) < self.lanes:
            raise UsageError(
                f"--data {folder} has {len(self.shards)} shard(s), fewer than the {self.lanes} readers (processes x "
                "loader workers); prepare it with a smaller --shard-size or pass fewer --workers"
            )

    def __len__(self) -> int:
        return sum(c for _, c in self.shards)

    def lane_shards(self, lane: int, epoch: int) -> list[int]:
        """The shards lane ``lane`` reads in epoch ``epoch`` (disjoint across lanes)."""
        perm = np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.shards))
        return [int(i) for i in perm[lane :: self.lanes]]

    def lane_samples(self, lane: int, skip: int):
        """Endless ``(member, img, meta, bad)`` of one lane after skipping its first ``skip`` positions (``member``
        is ``shard name:key``; ``img`` None when no member of the shard is readable)."""
        epoch = 0
        while True:
            for s in self.lane_shards(lane, epoch):
                path, count = self.shards[s]
                if skip >= count:
                    skip -= count
                    continue
                members, bad = read_shard(path)
                if len(members) < count and not bad:  # a truncated tar ends early without an error
                    bad.append((path, f"only {len(members)} of {count} members readable (truncated?)"))
                order = np.random.default_rng([self.seed, 8, epoch, s]).permutation(count)
                for j in order[skip:]:
                    yield self._member(path, members, int(j) % max(1, len(members)), bad)
                    bad = []
                skip = 0
            epoch += 1

    def _member(self, path, members, j, bad):
        """Member ``j`` of a read shard, or the next readable one (wrapping around); None when none is."""
        bad = list(bad)
        for k in range(len(members)):
            key, png, meta = members[(j + k) % len(members)]
            try:
                if png is None:
                    raise ReadError("no .png member")
                return f"{os.path.basename(path)}:{key}", decode_png(png, raw=self.pair is None), meta, bad
            except ReadError as e:
                bad.append((f"{path}:{key}", str(e)))
        return "", None, {}, bad

    def __iter__(self):
        info = get_worker_info()
        w = info.id if info is not None else 0
        n = self.workers if info is not None else 1
        local = (w + self.start) % n  # the DataLoader asks worker 0 first: it serves micro-step `start`
        lane = self.rank * n + local
        done = max(0, (self.start - local + n - 1) // n)  # this lane's batches before micro-step `start`
        stream = self.lane_samples(lane, done * self.batch_size)
        position = done * self.batch_size
        pending_bad: list = []
        misses = 0  # positions in a row without a readable member: a whole pass over the shards stops the run
        while True:
            batch = []
            while len(batch) < self.batch_size:
                member, img, meta, bad = next(stream)
                pending_bad += bad
                rng = np.random.default_rng([self.seed, 9, lane, position])
                position += 1
                if img is None:
                    misses += 1
                    if misses > len(self):
                        last = f" (last failure: {pending_bad[-1][0]}: {pending_bad[-1][1]})" if pending_bad else ""
                        raise UsageError(f"--data {self.folder}: no shard member is readable{last}")
                    continue
                misses = 0
                scale = tuple(meta.get("scale", (1.0, 1.0)))
                sample = views_of(img, scale, rng, self.views, self.prep, self.pair)
                batch.append({**sample, "bad": pending_bad, "index": -1, "member": member})
                pending_bad = []
            yield batch


def parser() -> argparse.ArgumentParser:
    """The ``lvmmed prepare`` options (the preprocessing flags are the rows of ``PREP_OPTIONS``)."""
    p = argparse.ArgumentParser(
        prog="lvmmed prepare",
        description="Decode and preprocess image folders once (intensity preset, downscaling) into tar shards "
        "(WebDataset layout: <key>.png + <key>.json, and shards.json) that lvmmed pretrain --data SHARDS/ streams "
        "sequentially, each DDP rank and loader worker reading its own shards.",
    )
    p.add_argument("--data", action="append", required=True, metavar="DIR | NAME=DIR", help="input folder, repeatable")
    p.add_argument("--out", required=True, help="a new or empty folder for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard (1000)")
    p.add_argument("--bits", type=int, default=8, help="bits per stored pixel, 8 or 16 (8)")
    p.add_argument("--compression", type=int, default=1, help="PNG zlib level 0-9; 0 decodes fastest, largest (1)")
    p.add_argument("--workers", type=int, default=reader_processes(), help="processes (all cores)")
    p.add_argument("--seed", type=int, default=0, help="file shuffle before sharding (0)")
    add_arguments(p, PREP_OPTIONS, "prepare")  # the preprocessing flags of lvmmed pretrain
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def run() -> int:
        try:
            prep = Preprocessing(**{k: getattr(args, k) for k in PREP_KEYS if hasattr(args, k)})
        except ValueError as e:
            raise UsageError(str(e)) from None
        t0 = time.perf_counter()
        index = prepare(args.data, args.out, prep, args.shard_size, args.bits, args.workers, args.seed, True, print,
                        args.compression)  # fmt: skip
        print(
            f"prepared {index['images']} images in {len(index['shards'])} shards in {time.perf_counter() - t0:.1f} s "
            f"({index['unreadable']} unreadable file(s) skipped): {os.path.abspath(args.out)}"
        )
        return 0

    return run_command("lvmmed prepare", run)


if __name__ == "__main__":
    raise SystemExit(main())
