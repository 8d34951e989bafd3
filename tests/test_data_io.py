"""Readers across every supported format (synthetic files plus the offline packages), presets, bad input."""

import importlib.util
import os

import cv2
import numpy as np
import pytest

from lvmmed_ext.data import ImageSet, Preprocessing, ReadError, apply_preset, read_source, scan
from lvmmed_ext.errors import UsageError

HAS = {name: importlib.util.find_spec(name) is not None for name in ("pydicom", "nibabel", "tifffile", "nilearn")}
needs = {name: pytest.mark.skipif(not ok, reason=f"{name} is not installed") for name, ok in HAS.items()}


def _pydicom_file(name):
    if not HAS["pydicom"]:
        pytest.skip("pydicom is not installed")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if not path:
        pytest.skip(f"{name} needs pydicom-data")
    return str(path)


def _write_dicom(path, pixels, modality="CR", photometric="MONOCHROME2", intercept=None, frames=None):
    """A minimal valid DICOM file written with pydicom (uncompressed, little endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(pixels.dtype == np.int16)
    if frames:
        ds.NumberOfFrames = frames
    if intercept is not None:
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


@pytest.fixture
def mixed(tmp_path):
    """A folder with one file of every format, a text file, and a corrupt PNG."""
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "gray8.png"), rng.integers(0, 255, (40, 50), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "gray16.png"), rng.integers(0, 60000, (30, 30), dtype=np.uint16))
    cv2.imwrite(str(tmp_path / "rgb.jpg"), rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
    sub = tmp_path / "nested"
    sub.mkdir()
    if HAS["tifffile"]:
        import tifffile

        tifffile.imwrite(str(sub / "stack.tif"), rng.random((3, 20, 24)).astype(np.float32), photometric="minisblack")
    if HAS["pydicom"]:
        _write_dicom(sub / "xray.dcm", rng.integers(0, 4000, (36, 36), dtype=np.uint16), photometric="MONOCHROME1")
        _write_dicom(sub / "IM0001", rng.integers(0, 4000, (4, 16, 16), dtype=np.uint16), modality="MR", frames=4)
    if HAS["nibabel"]:
        import nibabel as nib

        vol = rng.random((10, 12, 5)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(sub / "vol.nii.gz"))
        nib.save(nib.Nifti1Image(rng.random((6, 7, 3, 2)).astype(np.float32), np.eye(4)), str(sub / "fmri.nii"))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    return tmp_path


def test_scan_mixed_folder_counts_every_format_and_skips_corrupt(mixed):
    result = scan(mixed)
    kinds = {os.path.basename(s.path): (s.kind, s.count) for s in result.sources}
    expected = {"gray8.png": ("raster", 1), "gray16.png": ("raster", 1), "rgb.jpg": ("raster", 1)}
    if HAS["tifffile"]:
        expected["stack.tif"] = ("tiff", 3)
    if HAS["pydicom"]:
        expected.update({"xray.dcm": ("dicom", 1), "IM0001": ("dicom", 4)})
    if HAS["nibabel"]:
        expected.update({"vol.nii.gz": ("nifti", 5), "fmri.nii": ("nifti", 6)})
    assert kinds == expected
    assert [os.path.basename(p) for p, _ in result.skipped] == ["broken.png"]
    assert result.ignored == 1  # notes.txt; the hidden file is not even looked at


def test_every_source_decodes_to_unit_range(mixed):
    prep = Preprocessing(in_chans=1)
    result = scan(mixed)
    images = ImageSet(result.sources, prep)
    for i in range(len(images)):
        img, scale = images.image(i)
        assert img.dtype == np.float32 and img.ndim == 2 and scale == (1.0, 1.0)
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.5


def test_three_channel_models_get_colour(mixed):
    loaded = read_source(next(s for s in scan(mixed).sources if s.path.endswith("rgb.jpg")), Preprocessing(in_chans=3))
    assert loaded.frames.shape == (1, 32, 48, 3)
    gray = read_source(next(s for s in scan(mixed).sources if s.path.endswith("gray8.png")), Preprocessing(in_chans=3))
    assert gray.frames.shape == (1, 40, 50)  # gray stays one plane; replicated when the view is made


def test_truncated_file_fails_at_decode_not_scan(tmp_path):
    ok = cv2.imencode(".png", np.full((64, 64), 200, np.uint8))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(ok[: len(ok) // 2])  # valid header, truncated data
    (src,) = scan(tmp_path).sources
    with pytest.raises(ReadError):
        read_source(src, Preprocessing())


def test_max_side_downscales_and_reports_scale(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((400, 200), np.uint8))
    loaded = read_source(scan(tmp_path).sources[0], Preprocessing(max_side=100))
    assert loaded.frames.shape == (1, 100, 50) and loaded.scale == (4.0, 4.0)


def test_bad_folders(tmp_path):
    with pytest.raises(UsageError, match=r"^--data .*nope does not exist$"):
        scan(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"is empty \(expected PNG"):
        scan(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x")
    (other / "b.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match=r"no readable images in --data .*2 file\(s\), 1 of other types, 1 unreadable"):
        scan(other)


def test_presets():
    prep = Preprocessing(window=(0, 200), percentiles=(0, 100))
    hu = np.array([[[-200.0, -100.0, 0.0, 100.0, 300.0]]], np.float32)
    np.testing.assert_allclose(apply_preset(hu, "ct", prep, np.dtype(np.int16)), [[[0, 0, 0.5, 1, 1]]])
    np.testing.assert_allclose(apply_preset(hu, "mr", prep, np.dtype(np.int16)), [[[0, 0.2, 0.4, 0.6, 1]]])
    frames = np.array([[[0.0, 10.0]], [[5.0, 7.0]]], np.float32)
    np.testing.assert_allclose(apply_preset(frames, "xray", prep, np.dtype(np.float32)), [[[0, 1]], [[0, 1]]])
    np.testing.assert_allclose(apply_preset(np.array([[[51.0]]]), "range", prep, np.dtype(np.uint8)), [[[0.2]]])
    assert apply_preset(np.full((1, 2, 2), 7.0), "xray", prep, np.dtype(np.float32)).max() == 0  # constant: no NaN
    with pytest.raises(ValueError, match="preset must be one of"):
        Preprocessing(preset="pet")


@needs["pydicom"]
def test_dicom_ct_is_windowed_in_hounsfield_units():
    (src,) = scan(_pydicom_file("CT_small.dcm")).sources
    assert src.modality == "CT"
    loaded = read_source(src, Preprocessing())
    assert loaded.preset == "ct"
    import pydicom

    ds = pydicom.dcmread(src.path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip((hu - (40 - 200)) / 400, 0, 1)
    np.testing.assert_allclose(loaded.frames[0].astype(np.float32), expected, atol=1e-3)


@needs["pydicom"]
def test_dicom_multiframe_mr_uses_per_volume_percentiles():
    (src,) = scan(_pydicom_file("emri_small.dcm")).sources
    assert (src.kind, src.count, src.modality) == ("dicom", 10, "MR")
    loaded = read_source(src, Preprocessing(percentiles=(1, 99)))
    assert loaded.preset == "mr" and loaded.frames.shape == (10, 64, 64)
    import pydicom

    raw = pydicom.dcmread(src.path).pixel_array.astype(np.float32)
    lo, hi = np.percentile(raw, [1, 99])  # one window for the whole volume, not per frame
    np.testing.assert_allclose(loaded.frames.astype(np.float32), np.clip((raw - lo) / (hi - lo), 0, 1), atol=2e-3)


@needs["pydicom"]
def test_monochrome1_is_inverted(tmp_path):
    px = np.array([[0, 1000], [2000, 4000]], np.uint16)
    path = _write_dicom(tmp_path / "m1.dcm", px, modality="DX", photometric="MONOCHROME1")
    loaded = read_source(scan(path).sources[0], Preprocessing())
    assert loaded.preset == "xray"
    np.testing.assert_allclose(loaded.frames[0].astype(np.float32), [[1, 0.75], [0.5, 0]], atol=1e-3)


@needs["pydicom"]
@pytest.mark.parametrize(
    "name,frames,shape",
    [
        ("MR2_J2KR.dcm", 1, (512, 512)),  # JPEG 2000 lossless, 1024^2 downscaled to max_side
        ("OBXXXX1A.dcm", 1, (384, 512)),  # palette colour ultrasound -> luma
        ("RG1_UNCR.dcm", 1, (512, 482)),  # CR radiograph, MONOCHROME1
        ("examples_ybr_color.dcm", 30, (240, 320)),  # JPEG baseline YBR multi-frame ultrasound
        ("eCT_Supplemental.dcm", 2, (512, 512)),  # enhanced CT: rescale in the functional groups
    ],
)
def test_pydicom_data_real_scans(name, frames, shape):
    (src,) = scan(_pydicom_file(name)).sources
    assert src.count == frames
    loaded = read_source(src, Preprocessing(max_side=512))
    assert loaded.frames.shape == (frames, *shape)
    assert np.isfinite(loaded.frames).all() and loaded.frames.max() > 0.5


@needs["pydicom"]
def test_dicom_without_image_is_skipped():
    result = scan([_pydicom_file("CT_small.dcm"), _pydicom_file("rtplan.dcm")])
    assert len(result.sources) == 1 and "DICOM without an image" in result.skipped[0][1]


@needs["nibabel"]
def test_nifti_slicing_axes(tmp_path):
    import nibabel as nib

    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = str(tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    for axis, count, shape in ((0, 4, (5, 6)), (1, 5, (4, 6)), (2, 6, (4, 5))):
        prep = Preprocessing(axis=axis, preset="mr", percentiles=(0, 100))
        (src,) = scan(path, axis=axis).sources
        frames = read_source(src, prep).frames.astype(np.float32)
        assert src.count == count and frames.shape == (count, *shape)
        np.testing.assert_allclose(frames, np.moveaxis(vol, axis, 0) / vol.max(), atol=1e-3)


@needs["nibabel"]
def test_nibabel_example4d_is_sliced_per_time_point():
    import nibabel

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "example4d.nii.gz")
    if not os.path.isfile(path):
        pytest.skip("nibabel test data not installed")
    (src,) = scan(path).sources
    assert src.count == 24 * 2
    assert read_source(src, Preprocessing()).frames.shape == (48, 128, 96)


@needs["nilearn"]
def test_nilearn_mni152_template():
    from lvmmed_ext.data.demo import mni152_paths

    paths = mni152_paths()
    if paths is None:
        pytest.skip("nilearn without the MNI152 files")
    (src,) = scan(paths["t1"]).sources
    assert src.count == 189
    loaded = read_source(src, Preprocessing(max_side=0))
    assert loaded.preset == "mr" and loaded.frames.shape == (189, 197, 233)


@needs["tifffile"]
def test_multipage_colour_tiff(tmp_path):
    import tifffile

    tifffile.imwrite(str(tmp_path / "c.tiff"), np.random.default_rng(0).integers(0, 255, (2, 8, 9, 3), dtype=np.uint8))
    (src,) = scan(tmp_path).sources
    assert src.count == 2
    assert read_source(src, Preprocessing(in_chans=1)).frames.shape == (2, 8, 9)
