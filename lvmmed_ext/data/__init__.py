"""Data for pretraining and evaluation: readers (PNG/JPEG/TIFF, DICOM, NIfTI), intensity presets, views."""

from .datasets import ImageSet, Item, PretrainDataset, StreamBatchSampler, collate_views
from .io import ReadError, ScanResult, Source, read_source
from .manifest import scan
from .presets import PRESETS, Preprocessing, apply_preset
from .views import MultiViewConfig, ViewConfig, cell_centres, make_view

__all__ = [
    "PRESETS",
    "ImageSet",
    "Item",
    "MultiViewConfig",
    "Preprocessing",
    "PretrainDataset",
    "ReadError",
    "ScanResult",
    "Source",
    "StreamBatchSampler",
    "ViewConfig",
    "apply_preset",
    "cell_centres",
    "collate_views",
    "make_view",
    "read_source",
    "scan",
]
