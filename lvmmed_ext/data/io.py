"""Finding and reading medical images: PNG/JPEG/BMP, TIFF (multi-page), DICOM (single/multi-frame), NIfTI.

A *source* is one file; it holds ``count`` 2D images (pages, frames, or slices along ``Preprocessing.axis``).
``scan`` reads only headers (cheap); ``read_source`` decodes a whole file once, applies the intensity preset
over the whole file (per-volume statistics need that) and returns float16 frames in [0, 1].
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .presets import Preprocessing, apply_preset, resolve_preset

RASTER_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXTS = (".tif", ".tiff")
DICOM_EXTS = (".dcm", ".dicom", ".ima")
NIFTI_EXTS = (".nii", ".nii.gz")
SUPPORTED = "PNG/JPEG/BMP, TIFF, DICOM, NIfTI (.nii/.nii.gz)"


class ReadError(Exception):
    """A file that cannot be decoded (raised by the readers; the datasets count it and skip the file)."""


@dataclass(frozen=True)
class Source:
    """One image file: ``kind`` in {raster, tiff, dicom, nifti}; ``count`` 2D images inside it."""

    path: str
    kind: str
    count: int
    modality: str | None = None


@dataclass
class ScanResult:
    sources: list[Source]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): unreadable headers
    ignored: int = 0  # files of other types (text, json, ...)
    reused: int = 0  # headers taken from the folder's manifest (see lvmmed_ext.data.manifest)
    read: int = 0  # headers read
    manifest: str | None = None  # the manifest written, when one was used

    @property
    def count(self) -> int:
        return sum(s.count for s in self.sources)


@dataclass
class Loaded:
    """A decoded source: ``frames`` float16 ``[F, H, W]`` (gray) or ``[F, H, W, 3]``; ``scale`` = original /
    stored pixel size (y, x), ``preset`` the concrete intensity preset applied."""

    frames: np.ndarray
    scale: tuple[float, float]
    preset: str


def _kind_of(path: str) -> str | None:
    low = path.lower()
    if low.endswith(NIFTI_EXTS):
        return "nifti"
    if low.endswith(RASTER_EXTS):
        return "raster"
    if low.endswith(TIFF_EXTS):
        return "tiff"
    if low.endswith(DICOM_EXTS):
        return "dicom"
    try:  # extension-less DICOM (e.g. IM000001): the 'DICM' magic after the 128-byte preamble
        with open(path, "rb") as f:
            head = f.read(132)
        return "dicom" if len(head) == 132 and head[128:] == b"DICM" else None
    except OSError:
        return None


def read_header(path: str, kind: str, axis: int = 2) -> Source:
    """The ``Source`` of one file of ``kind`` (raster, tiff, dicom, nifti) from its header alone; ``ReadError``
    when the file is not a readable image (``scan`` calls this for every file it finds)."""
    try:
        if kind == "nifti":
            import nibabel as nib

            shape = nib.load(path).shape
            if len(shape) < 2:
                raise ReadError(f"NIfTI has {len(shape)} dimension(s), need >= 2")
            if len(shape) == 2:
                return Source(path, kind, 1)
            if axis >= min(3, len(shape)):
                raise ReadError(f"cannot slice along axis {axis} of a {len(shape)}-D volume")
            return Source(path, kind, int(shape[axis] * np.prod(shape[3:], dtype=np.int64)))
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if "Rows" not in ds or "Columns" not in ds:
                raise ReadError(
                    f"DICOM without an image (Modality {ds.get('Modality', '?')}, SOP class "
                    f"{getattr(ds.get('SOPClassUID'), 'name', '?')})"
                )
            return Source(path, kind, max(1, int(ds.get("NumberOfFrames", 1) or 1)), ds.get("Modality") or None)
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
            return Source(path, kind, _tiff_count(shape))
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        if w < 1 or h < 1:
            raise ReadError(f"image of size {w}x{h}")
        return Source(path, kind, 1)
    except ReadError:
        raise
    except ImportError as e:
        raise ReadError(f"{kind} support needs a package that is not installed ({e.name})") from None
    except Exception as e:  # noqa: BLE001  (every parser error means: unreadable file)
        raise ReadError(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}") from None


def header_of(path: str, axis: int = 2) -> Source:
    """The ``Source`` of one file of any supported type (by extension or the DICOM marker); ``ReadError`` for a file
    of another type or with an unreadable header."""
    kind = _kind_of(path)
    if kind is None:
        raise ReadError(f"not a supported image type ({SUPPORTED})")
    return read_header(path, kind, axis)


def _tiff_count(shape: tuple[int, ...]) -> int:
    colour = len(shape) >= 3 and shape[-1] in (3, 4)
    lead = shape[:-3] if colour else shape[:-2]
    return int(np.prod(lead, dtype=np.int64)) if lead else 1


def walk(root: str) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of every non-hidden file under ``root`` (symlinks followed), in the order
    of ``os.walk`` with sorted names (a folder's files, then its sub-folders). Every real folder is visited once: a
    link back to a folder already seen (a loop, or a second name for it) is not followed again."""
    out: list[tuple[str, int, int]] = []
    visited: set[tuple[int, int]] = set()

    def visit(folder: str, rel: str) -> None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:
                return
            visited.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    subdirs.append(e)
                    continue
                st = e.stat()
            except OSError:
                continue
            out.append((rel + e.name, st.st_size, st.st_mtime_ns))
        for d in subdirs:
            visit(d.path, rel + d.name + "/")

    visit(root, "")
    return out


def no_images_error(result: ScanResult, what: str, root: str, n_files: int) -> UsageError:
    """The error of a scan that found no readable image: what was there and the first unreadable file."""
    detail = (
        f"{len(result.skipped)} unreadable (first: {result.skipped[0][0]}: {result.skipped[0][1]})"
        if result.skipped
        else "none"
    )
    return UsageError(
        f"no readable images in {what} {root}: {n_files} file(s), {result.ignored} of other types, {detail}; "
        f"supported: {SUPPORTED}"
    )


def _to_channels(vol: np.ndarray, colour: bool, in_chans: int) -> np.ndarray:
    """[F,H,W,C] colour -> luma [F,H,W] for 1-channel models; gray stays [F,H,W] (replicated later if 3)."""
    if colour and in_chans == 1:
        return vol[..., 0] * 0.299 + vol[..., 1] * 0.587 + vol[..., 2] * 0.114
    return vol


def _decode(src: Source, prep: Preprocessing):
    """-> (raw [F,H,W] or [F,H,W,3] array, colour flag, has_hu, monochrome1)."""
    if src.kind == "nifti":
        import nibabel as nib

        img = nib.load(src.path)
        vol = np.asarray(img.dataobj, dtype=np.float32)
        if vol.ndim == 2:
            return vol[None], False, False, False
        vol = np.moveaxis(vol, prep.axis, 0)  # [n, a, b, *rest]
        if vol.ndim > 3:  # 4-D and more: every extra index (time, echo, ...) contributes its own slices
            vol = vol.reshape(vol.shape[:3] + (-1,)).transpose(3, 0, 1, 2).reshape((-1,) + vol.shape[1:3])
        return vol, False, False, False
    if src.kind == "dicom":
        return _decode_dicom(src.path)
    if src.kind == "tiff":
        import tifffile

        arr = tifffile.imread(src.path)
    else:
        buf = np.fromfile(src.path, dtype=np.uint8)
        import cv2

        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
        if arr is None:
            raise ReadError("OpenCV could not decode the image (truncated or corrupt)")
        if arr.ndim == 3:  # OpenCV gives BGR(A)
            arr = arr[..., 2::-1] if arr.shape[-1] >= 3 else arr[..., 0]
    colour = arr.ndim >= 3 and arr.shape[-1] in (3, 4)
    if colour:
        arr = arr[..., :3]
        arr = arr.reshape((-1,) + arr.shape[-3:])
    else:
        arr = arr.reshape((-1,) + arr.shape[-2:])
    return arr, colour, False, False


def _dicom_rescale(ds) -> tuple[float, float] | None:
    """(slope, intercept) from the top level or the (shared) functional groups of enhanced multi-frame files."""
    holders = [ds]
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if seq in ds and len(ds[seq].value):
            group = ds[seq].value[0]
            if "PixelValueTransformationSequence" in group and len(group.PixelValueTransformationSequence):
                holders.append(group.PixelValueTransformationSequence[0])
    for h in holders:
        if "RescaleIntercept" in h:
            return float(h.get("RescaleSlope", 1) or 1), float(h.RescaleIntercept)
    return None


def _decode_dicom(path: str):
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ReadError("DICOM without pixel data")
    arr = ds.pixel_array  # YBR is converted to RGB by pydicom
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    colour = int(ds.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR"
    arr = arr.reshape((frames,) + arr.shape[-3:] if colour else (frames,) + arr.shape[-2:])
    rescale = _dicom_rescale(ds)
    if rescale is not None and not colour:
        slope, intercept = rescale
        arr = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return arr, colour, rescale is not None, photometric == "MONOCHROME1"


def read_source(src: Source, prep: Preprocessing) -> Loaded:
    """Decode ``src`` entirely and preprocess it: intensity preset (see ``presets.PRESET_HELP``), colour to
    ``prep.in_chans``, downscale so the longer side is at most ``prep.max_side``.

    Returns ``Loaded`` with float16 frames in [0, 1]. Raises ``ReadError`` for an undecodable file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom/nibabel chatter about benign header quirks
            raw, colour, has_hu, mono1 = _decode(src, prep)
        if raw.size == 0 or raw.shape[-2 if not colour else -3] < 1:
            raise ReadError(f"empty image {raw.shape}")
        preset = resolve_preset(prep.preset, src.kind, src.modality, raw, has_hu)
        vol = apply_preset(np.asarray(raw, dtype=np.float32), preset, prep, raw.dtype)
        if mono1:
            vol = 1.0 - vol
        vol = _to_channels(vol, colour, prep.in_chans)
    except ReadError:
        raise
    except MemoryError:
        raise ReadError("out of memory while decoding") from None
    except Exception as e:  # noqa: BLE001  (decoder errors of every kind mean: unreadable file)
        raise ReadError(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'decode failed'}") from None
    h, w = vol.shape[1:3]
    scale = (1.0, 1.0)
    if prep.max_side and max(h, w) > prep.max_side:
        import cv2

        f = prep.max_side / max(h, w)
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        vol = np.stack([cv2.resize(fr, (nw, nh), interpolation=cv2.INTER_AREA) for fr in vol])
        scale = (h / nh, w / nw)
    return Loaded(vol.astype(np.float16), scale, preset)


def read_labels(src: Source, axis: int = 2) -> np.ndarray:
    """Decode a label map (segmentation mask) as it is stored, without intensity preset or resizing.

    Returns int64 ``[F, H, W]`` in the frame/slice order of ``read_source`` (NIfTI sliced along ``axis``). An 8-bit
    mask holding only the values 0 and 255 is binary (255 -> 1). Raises ``ReadError`` for an undecodable file, a
    colour mask whose channels differ, or values that are not integers.

    Example:
        >>> read_labels(Source("masks/case1.png", "raster", 1)).shape  # doctest: +SKIP
        (1, 256, 256)
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw, colour, _, _ = _decode(src, Preprocessing(axis=axis))
    except ReadError:
        raise
    except Exception as e:  # noqa: BLE001  (decoder errors of every kind mean: unreadable file)
        raise ReadError(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'decode failed'}") from None
    raw = np.asarray(raw)
    if colour:
        if not ((raw[..., 0] == raw[..., 1]).all() and (raw[..., 1] == raw[..., 2]).all()):
            raise ReadError("a colour mask (expected one channel of integer class labels)")
        raw = raw[..., 0]
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.isfinite(raw).all() or (raw != np.round(raw)).any():
            raise ReadError("mask values are not integers (expected class labels 0, 1, ...)")
    labels = raw.astype(np.int64)
    if raw.dtype == np.uint8 and labels.max(initial=0) == 255 and np.isin(labels, (0, 255)).all():
        labels //= 255
    return labels


class SourceCache:
    """Per-process LRU of decoded sources, bounded in bytes (each DataLoader worker has its own)."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[str, Loaded] = OrderedDict()

    def get(self, src: Source, prep: Preprocessing) -> Loaded:
        hit = self._items.get(src.path)
        if hit is not None:
            self._items.move_to_end(src.path)
            return hit
        loaded = read_source(src, prep)
        self._items[src.path] = loaded
        self.bytes += loaded.frames.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.frames.nbytes
        return loaded
