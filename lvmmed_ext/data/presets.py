"""Intensity presets: raw scanner values -> float32 in [0, 1] (CT HU window, MR percentile, X-ray min-max)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..options import Option

PRESETS = ("auto", "ct", "mr", "xray", "range")
PRESET_HELP = {
    "auto": "pick per file: DICOM Modality (CT -> ct, MR/NM/PT -> mr, CR/DX/MG/... -> xray), NIfTI with HU-like "
    "values (min < -500) -> ct else mr, 8-bit images -> range, other images -> xray",
    "ct": "Hounsfield window: clip((HU - (level - width/2)) / width, 0, 1); DICOM rescale slope/intercept applied",
    "mr": "per-volume percentile window: clip((x - p_lo) / (p_hi - p_lo), 0, 1) over all frames/slices of a file",
    "xray": "per-image min-max: (x - min) / (max - min); MONOCHROME1 images are inverted",
    "range": "divide by the integer type's maximum (255 for 8-bit, 65535 for 16-bit); floats use min-max",
}
_XRAY_MODALITIES = {"CR", "DX", "MG", "RF", "XA", "RG", "IO", "PX", "DR"}
_VOLUME_MODALITIES = {"MR", "NM", "PT"}


@dataclass
class Preprocessing:
    """How a file becomes network input; saved with checkpoints and exported weights (``to_json``).

    Attributes:
        preset: one of ``PRESETS`` (see ``PRESET_HELP``).
        window: CT (level, width) in HU for the ``ct`` preset.
        percentiles: (low, high) percentiles for the ``mr`` preset.
        in_chans: 1 (gray; colour images are converted to luma) or 3 (gray images are replicated).
        max_side: longer image sides are downscaled to this at load time (0 = never); crop positions are
            still reported in original-image pixels.
        axis: the NIfTI axis that is sliced (2 = the third array axis, axial for RAS-oriented volumes).
        mean, std: the [0, 1] image is normalised as (x - mean) / std before entering the network.
    """

    preset: str = "auto"
    window: tuple[float, float] = (40.0, 400.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    in_chans: int = 1
    max_side: int = 512
    axis: int = 2
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if not self.window[1] > 0:
            raise ValueError(f"window width must be > 0, got {self.window[1]}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        self.window = tuple(float(v) for v in self.window)
        self.percentiles = tuple(float(v) for v in self.percentiles)

    def to_json(self) -> dict:
        d = asdict(self)
        d["window"], d["percentiles"] = list(self.window), list(self.percentiles)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Preprocessing:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("window", "percentiles"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


# The preprocessing settings as options (defaults from Preprocessing): rows of the pretraining table
# (lvmmed_ext.train.config) and of lvmmed prepare. "mean"/"std" are fixed and only recorded.
PREP_OPTIONS = (
    Option(
        "preset",
        "--preset",
        Preprocessing.preset,
        "intensity preset: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()),
        choices=PRESETS,
        group="data",
        commands=("pretrain", "ablate", "prepare"),
    ),  # fmt: skip
    Option(
        "window",
        "--window",
        Preprocessing.window,
        "CT window in HU",
        "tuple[float, float]",
        group="data",
        metavar=("LEVEL", "WIDTH"),
        commands=("pretrain", "ablate", "prepare"),
    ),  # fmt: skip
    Option(
        "percentiles",
        "--percentiles",
        Preprocessing.percentiles,
        "MR percentiles",
        "tuple[float, float]",
        group="data",
        metavar=("LOW", "HIGH"),
        commands=("pretrain", "ablate", "prepare"),
    ),  # fmt: skip
    Option(
        "in_chans",
        "--in-chans",
        Preprocessing.in_chans,
        "network input channels",
        "int",
        choices=(1, 3),
        group="data",
        commands=("pretrain", "ablate", "prepare"),
        help_for=(("prepare", "stored channels"),),
    ),  # fmt: skip
    Option(
        "max_side",
        "--max-side",
        Preprocessing.max_side,
        "downscale longer sides to this at load time, 0 = never",
        "int",
        group="data",
        commands=("pretrain", "ablate", "prepare"),
    ),  # fmt: skip
    Option(
        "axis",
        "--axis",
        Preprocessing.axis,
        "NIfTI axis to slice",
        "int",
        choices=(0, 1, 2),
        group="data",
        commands=("pretrain", "ablate", "prepare"),
    ),  # fmt: skip
)
PREP_KEYS = tuple(o.key for o in PREP_OPTIONS)


def resolve_preset(preset: str, kind: str, modality: str | None, raw: np.ndarray, has_hu: bool) -> str:
    """The concrete preset ('ct', 'mr', 'xray' or 'range') for one file under ``preset`` ('auto' decides)."""
    if preset != "auto":
        return preset
    if kind == "dicom" and modality:
        if modality == "CT" and has_hu:
            return "ct"
        if modality in _VOLUME_MODALITIES:
            return "mr"
        if modality in _XRAY_MODALITIES:
            return "xray"
    if kind == "nifti":
        return "ct" if raw.size and float(np.nanmin(raw)) < -500 else "mr"
    return "range" if raw.dtype == np.uint8 else "xray"


def _percentile_window(vol: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    flat = vol.reshape(-1)
    if flat.size > 4_000_000:  # a strided sample gives the same percentiles to well below one grey level
        flat = flat[:: flat.size // 2_000_000]
    p_lo, p_hi = np.nanpercentile(flat, [lo, hi])
    return float(p_lo), float(p_hi)


def _scale(x: np.ndarray, lo, hi) -> np.ndarray:
    span = np.asarray(hi, np.float32) - np.asarray(lo, np.float32)
    out = (x - np.asarray(lo, np.float32)) / np.where(span > 0, span, 1).astype(np.float32)
    out = np.where(span > 0, out, 0).astype(np.float32)  # a constant image maps to 0, not NaN
    return np.clip(out, 0.0, 1.0, out=out)


def apply_preset(vol: np.ndarray, preset: str, prep: Preprocessing, raw_dtype: np.dtype) -> np.ndarray:
    """Map ``vol`` (float32 ``[F, H, W]`` or ``[F, H, W, C]``, HU for CT) to [0, 1] with a concrete preset.

    Example:
        >>> import numpy as np
        >>> hu = np.array([[[-1000.0, 40.0, 1000.0]]], np.float32)
        >>> apply_preset(hu, "ct", Preprocessing(), np.dtype(np.int16)).round(2).tolist()
        [[[0.0, 0.5, 1.0]]]
    """
    vol = np.nan_to_num(vol.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if preset == "ct":
        level, width = prep.window
        return _scale(vol, level - width / 2, level + width / 2)
    if preset == "mr":
        return _scale(vol, *_percentile_window(vol, *prep.percentiles))
    if preset == "range" and np.issubdtype(raw_dtype, np.integer):
        info = np.iinfo(raw_dtype)
        return _scale(vol, min(info.min, 0), info.max)
    # xray (and 'range' for float data): per-frame min-max
    axes = tuple(range(1, vol.ndim))
    return _scale(vol, vol.min(axis=axes, keepdims=True), vol.max(axis=axes, keepdims=True))
