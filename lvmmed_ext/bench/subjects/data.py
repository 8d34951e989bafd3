"""The data loader: two-view 224-px pretraining samples per second from PNG, DICOM, NIfTI files and from shards
(``lvmmed prepare``) in one worker, then the whole DataLoader with several workers (DICOM files vs shards).

The corpus is synthetic and generated in a temporary folder: the same CT-like int16 images written as DICOM files
(uncompressed, and RLE Lossless as compressed archives often are), 16-bit PNGs, NIfTI volumes (32 slices each)
and, prepared from the DICOM files, 8-bit shards. Each timing is one pass over the corpus with cold caches (every
file decoded once, as in an epoch over a corpus larger than the cache). Datasets, shard streams and DataLoaders
are the trainer's own (:func:`lvmmed_ext.train.pipeline.build_pipeline`, :meth:`Pipeline.loader`), so the
numbers are those of ``lvmmed pretrain``'s loader.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from ...data.io import Source, read_source
from ...data.presets import Preprocessing
from ...data.shards import decode_png, load_index, prepare, read_shard
from ...data.views import MultiViewConfig, ViewConfig
from ...train.config import TrainConfig
from ...train.pipeline import Span, build_pipeline
from ..report import row

SIZE = 224
SLICES = 32  # per NIfTI volume


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """int16 ``[n, side, side]`` CT-like slices (HU): air, a body ellipse, a few dense blobs, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2 < 1
    out = np.empty((n, side, side), np.int16)
    for i in range(n):
        img = np.where(body, 40.0, -1000.0)
        for _ in range(4):
            cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.03, 0.1)]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(-100, 900)
        out[i] = np.clip(img + rng.normal(0, 20, img.shape), -1024, 3000).astype(np.int16)
    return out


def _write_dicoms(folder: str, imgs: np.ndarray, rle: bool = False) -> None:
    """One CT DICOM file per slice: uncompressed, or RLE Lossless (pydicom's own encoder) with ``rle``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder)
    for i, img in enumerate(imgs):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"{i}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Rows, ds.Columns = "CT", img.shape[0], img.shape[1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = img.tobytes()
        if rle:
            from pydicom.uid import RLELossless

            ds.compress(RLELossless)
        ds.save_as(os.path.join(folder, f"im{i:05d}.dcm"), enforce_file_format=True)


def _write_pngs(folder: str, imgs: np.ndarray) -> None:
    import cv2

    os.makedirs(folder)
    for i, img in enumerate(imgs):
        cv2.imwrite(os.path.join(folder, f"im{i:05d}.png"), (img.astype(np.int32) + 1024).astype(np.uint16))


def _write_niftis(folder: str, imgs: np.ndarray) -> None:
    import nibabel as nib

    os.makedirs(folder)
    for v in range(0, len(imgs), SLICES):
        vol = np.ascontiguousarray(imgs[v : v + SLICES].transpose(1, 2, 0))
        nib.save(nib.Nifti1Image(vol, np.eye(4)), os.path.join(folder, f"vol{v // SLICES:04d}.nii.gz"))


def _views():
    return MultiViewConfig(ViewConfig(size=SIZE, grid=(7, 7)), 2)


def _pipeline(folder: str, prep, batch: int):
    """The trainer's own data pipeline (:func:`lvmmed_ext.train.pipeline.build_pipeline`) over ``folder``."""
    cfg = TrainConfig(data=folder, preprocessing=prep, batch_size=batch, seed=0)
    return build_pipeline(cfg, log=lambda *_: None)


def _span(batch: int, batches: int):
    return Span(batch, 1, 0, 0, batches)


def _file_pass(folder: str, prep, n: int) -> float:
    """Seconds for one worker to make ``n`` samples from the files of ``folder`` (fresh dataset: cold cache)."""
    dataset, _, _ = _pipeline(folder, prep, 1).dataset(_views(), None, _span(1, n), 0)
    t = time.perf_counter()
    for p in range(n):
        dataset[p]
    return time.perf_counter() - t


def _shard_pass(folder: str, prep, n: int, batch: int = 16) -> float:
    stream, _, _ = _pipeline(folder, prep, batch).dataset(_views(), None, _span(batch, n // batch), 0)
    it = iter(stream)
    t = time.perf_counter()
    for _ in range(n // batch):
        next(it)
    return time.perf_counter() - t


def _loader_rate(folder: str, prep, workers: int, batch: int, batches: int) -> float:
    """images/s of the trainer's DataLoader (:meth:`Pipeline.loader`) over ``folder`` for ``batches`` batches,
    worker start-up included (a few ms per forked worker; timing only after the first batch would credit the
    batches prefetched meanwhile)."""
    pipeline = _pipeline(folder, prep, batch)
    t = time.perf_counter()
    loader = pipeline.loader(_views(), None, _span(batch, batches), workers, torch.device("cpu"))
    it = iter(loader)
    images = sum(next(it)["views"][0].shape[0] for _ in range(batches))
    rate = images / (time.perf_counter() - t)
    del it
    return rate


def run(ctx) -> list[dict]:
    import cv2

    n, side = (48, 256) if ctx.quick else (512, 512)
    workers = min(4, os.cpu_count() or 1)
    batch = 16 if ctx.quick else 32
    prep = Preprocessing(max_side=512)
    cv2.setNumThreads(1)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lvmmed-bench-data-") as tmp:
        ctx.log(f"data: writing {n} synthetic {side}x{side} CT slices as DICOM, PNG, NIfTI and shards in {tmp}")
        imgs = _images(n, side)
        folders = {fmt: os.path.join(tmp, fmt) for fmt in ("dicom", "dicom-rle", "png", "nifti")}
        _write_dicoms(folders["dicom"], imgs)
        _write_dicoms(folders["dicom-rle"], imgs, rle=True)
        _write_pngs(folders["png"], imgs)
        try:
            _write_niftis(folders["nifti"], imgs)
        except ImportError:
            ctx.note("nibabel is not installed: the NIfTI case is skipped")
            folders.pop("nifti")
        shards = os.path.join(tmp, "shards")
        prepare([folders["dicom"]], shards, prep, shard_size=max(8, n // (2 * workers)), log=lambda *_: None)

        first = load_index(shards)["shards"][0]["name"]
        _, png, meta = read_shard(os.path.join(shards, first))[0][0]
        ref = read_source(Source(os.path.join(folders["dicom"], meta["source"]), "dicom", 1, "CT"), prep).frames[0]
        ctx.check("shards vs DICOM", torch.from_numpy(decode_png(png)), torch.from_numpy(ref.astype(np.float32)),
                  atol=0.5 / 255 + 1e-3, rtol=0)  # fmt: skip

        case = f"one worker, two {SIZE}px views, {side}px sources"
        if ctx.selected(case):
            ctx.log(f"data: {case} ({n} samples per source)")
            for fmt in folders:
                _file_pass(folders[fmt], prep, 4)  # imports and first-call costs
            times = {fmt: _file_pass(folders[fmt], prep, n) for fmt in folders}
            _shard_pass(shards, prep, batch, batch)
            times["shards"] = _shard_pass(shards, prep, n, batch)
            params = {"n": n, "side": side, "size": SIZE, "views": 2, "workers": 1}
            for fmt, t in times.items():
                per = t / (n // batch * batch if fmt == "shards" else n)
                rows.append(
                    row("data", case, fmt, per, gate=True, params=params, images_per_s=1 / per,
                        vs_dicom=times["dicom"] / n / per)
                )  # fmt: skip
        case = f"DataLoader, {workers} workers, batch {batch}, two {SIZE}px views"
        if ctx.selected(case):
            ctx.log(f"data: {case}")
            batches = max(2, n // batch)
            rates = {fmt: _loader_rate(folders[fmt] if fmt != "shards" else shards, prep, workers, batch, batches)
                     for fmt in ("dicom", "shards")}  # fmt: skip
            params = {"n": n, "side": side, "size": SIZE, "views": 2, "workers": workers, "batch": batch}
            for fmt, rate in rates.items():
                rows.append(
                    row("data", case, fmt, 1 / rate, gate=True, params=params, images_per_s=rate,
                        per_worker=rate / workers, vs_dicom=rate / rates["dicom"])
                )  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    """The data-loader tables of BENCHMARKS.md from this subject's rows."""
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        p = mine[0]["params"]
        out += [
            f"#### {case} ({p['n']} synthetic CT slices, cold caches)",
            "",
            "| source | images/s | per worker | x DICOM |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in mine:
            m = r["metrics"]
            per = m.get("per_worker", m["images_per_s"])
            out.append(f"| {r['method']} | {m['images_per_s']:.0f} | {per:.0f} | {m['vs_dicom']:.2f} |")
        out.append("")
    return "\n".join(out)
