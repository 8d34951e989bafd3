"""The offline demo data: real medical images that pip packages carry (see ``shared/DATA.md``).

Nothing is copied into the repository: the files are located inside the installed packages at run time, and
a package that is absent is skipped with a note. Sources:

* ``nilearn``: the MNI152 2009a T1 template (1 mm, skull-stripped), axial slices 12..148, plus its grey- and
  white-matter probability maps for the labelled evaluation tasks (``mni152_tissue_task``, ``mni152_region_task``)
  and the segmentation task (``mni152_segmentation_task``);
* ``pydicom`` / ``pydicom-data``: real CT, MR, CR (radiographs), ultrasound (incl. an echo cine, every 4th
  frame) and NM scans, in several transfer syntaxes;
* ``nibabel``: its test volumes ``example4d.nii.gz`` (fMRI, 2 time points) and ``anatomical.nii``.
"""

from __future__ import annotations

import csv
import importlib.util
import os

import numpy as np

from ..errors import UsageError
from .datasets import ImageSet, Item
from .io import ReadError, read_header
from .presets import Preprocessing

# (file name in pydicom's test data, frame step): real scans only (no synthetic SC/OT test patterns).
PYDICOM_FILES = [
    ("693_UNCR.dcm", 1),  # CT 512x512
    ("CT_small.dcm", 1),  # CT 128x128
    ("eCT_Supplemental.dcm", 1),  # enhanced CT, 2 frames
    ("MR2_UNCR.dcm", 1),  # MR 1024x1024
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", 1),  # MR 484x484
    ("emri_small.dcm", 1),  # MR, 10 frames
    ("MR_small.dcm", 1),  # MR 64x64
    ("RG1_UNCR.dcm", 1),  # CR radiograph ~1955x1841, MONOCHROME1
    ("RG3_UNCR.dcm", 1),  # CR radiograph 1760x1760
    ("US1_UNCR.dcm", 1),  # ultrasound, RGB
    ("OBXXXX1A.dcm", 1),  # obstetric ultrasound, palette colour
    ("gdcm-US-ALOKA-16.dcm", 1),  # ultrasound, 16-bit palette
    ("color3d_jpeg_baseline.dcm", 4),  # echocardiogram cine, 120 JPEG frames: every 4th
    ("JPEG2000_UNC.dcm", 1),  # NM 1024x256
]
NIBABEL_FILES = ["example4d.nii.gz", "anatomical.nii"]
MNI_Z_RANGE = (12, 149)  # axial slices of the T1 template that contain brain


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec is not None and spec.origin else None


def mni152_paths() -> dict[str, str] | None:
    """Paths of nilearn's MNI152 T1/GM/WM files (without importing nilearn, which is slow), or None."""
    folder = _package_dir("nilearn")
    if folder is None:
        return None
    folder = os.path.join(folder, "datasets", "data")
    paths = {k: os.path.join(folder, f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz") for k in ("t1", "gm", "wm")}
    return paths if all(os.path.isfile(p) for p in paths.values()) else None


def _pydicom_files() -> list[tuple[str, int]]:
    if importlib.util.find_spec("pydicom") is None:
        return []
    from pydicom.data import get_testdata_file

    found = []
    for name, step in PYDICOM_FILES:
        try:
            path = get_testdata_file(name, download=False)
        except Exception:  # noqa: BLE001  (pydicom-data missing or its index broken: skip the file)
            path = None
        if path and os.path.isfile(str(path)):
            found.append((str(path), step))
    return found


def _nibabel_files() -> list[str]:
    folder = _package_dir("nibabel")
    if folder is None:
        return []
    paths = [os.path.join(folder, "tests", "data", n) for n in NIBABEL_FILES]
    return [p for p in paths if os.path.isfile(p)]


def pretrain_images(prep: Preprocessing, cache_bytes: int = 1 << 30, log=print) -> ImageSet:
    """The demo's unlabelled 2D images as an ``ImageSet`` (slices along axis 2 of the volumes).

    Raises ``UsageError`` when none of the packages is installed (run ``scripts/setup.sh``).
    """
    if prep.axis != 2:
        raise UsageError(f"the demo slices volumes along axis 2, got --axis {prep.axis}")
    sources, items, parts, absent = [], [], [], []

    def add(path: str, frames) -> int:
        kind = "dicom" if path.lower().endswith(".dcm") else "nifti"
        try:
            src = read_header(path, kind, prep.axis)
        except ReadError:
            return 0
        sources.append(src)
        chosen = [f for f in frames if f < src.count] if frames is not None else range(src.count)
        items.extend(Item(len(sources) - 1, f) for f in chosen)
        return len(chosen)

    mni = mni152_paths()
    if mni:
        parts.append(f"{add(mni['t1'], range(*MNI_Z_RANGE))} MNI152 T1 slices (nilearn)")
    else:
        absent.append("nilearn")
    dicoms = _pydicom_files()
    if dicoms:
        n = sum(add(p, range(0, 10_000, step)) for p, step in dicoms)
        parts.append(f"{n} DICOM frames from {len(dicoms)} scans (pydicom{'-data' if len(dicoms) > 5 else ''})")
    if len(dicoms) < len(PYDICOM_FILES):
        absent.append("pydicom-data" if dicoms else "pydicom")
    vols = _nibabel_files()
    if vols:
        parts.append(f"{sum(add(p, None) for p in vols)} NIfTI slices (nibabel test data)")
    else:
        absent.append("nibabel")
    if not items:
        raise UsageError(
            "--demo found none of its data packages (nilearn, pydicom-data, nibabel); run scripts/setup.sh "
            "or pass --data DIR"
        )
    log(f"demo data: {len(items)} images: " + ", ".join(parts) + (f"; absent: {', '.join(absent)}" if absent else ""))
    return ImageSet(sources, prep, items=items, cache_bytes=cache_bytes)


TISSUES = ("grey_matter", "white_matter", "csf")
# The anatomical task's classes: bands of the MNI y coordinate (mm, posterior < 0 < anterior) of a patch's centre,
# front to back, with 8 mm gaps between bands so that no label depends on a millimetre.
REGIONS = (
    ("anterior", 22.0, 80.0),  # frontal lobe
    ("mid_anterior", -12.0, 14.0),  # premotor / basal ganglia level
    ("mid_posterior", -46.0, -20.0),  # parietal / temporal / thalamus level
    ("posterior", -120.0, -54.0),  # occipital lobe, cerebellum
)


def _load_mni152():
    """The MNI152 T1, GM and WM volumes scaled to [0, 1] and the voxel-to-mm affine."""
    import nibabel as nib

    paths = mni152_paths()
    if paths is None:
        raise UsageError("the MNI152 tasks need nilearn (pip install nilearn)")
    imgs = {k: nib.load(p) for k, p in paths.items()}
    vol = {k: np.asarray(im.dataobj, dtype=np.float32) for k, im in imgs.items()}
    t1, gm, wm = (vol[k] / max(float(vol[k].max()), 1e-6) for k in ("t1", "gm", "wm"))
    return t1, gm, wm, imgs["t1"].affine


def slab_slices(split: str, slab: int = 10, margin: int = 2, z_range: tuple[int, int] = (30, 140)) -> list[int]:
    """Axial slice indices of a held-out-slab split: ``z_range`` is cut into slabs of ``slab`` slices; even slabs
    are ``"train"``, odd slabs ``"test"``, and ``margin`` slices at each slab border are unused, so every train
    slice is at least ``2 * margin + 1`` slices from every test slice."""
    parity = {"train": 0, "test": 1}[split]
    return [
        z
        for k, start in enumerate(range(z_range[0], z_range[1], slab))
        if k % 2 == parity
        for z in range(start + margin, min(start + slab, z_range[1]) - margin)
    ]


def _write_csv(path: str, header: list[str], rows) -> str:
    """Write ``header`` and ``rows`` to the CSV ``path``; returns ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _write_patches(
    out_dir: str, t1, labels, names, patch: int, per_class: dict, slab: int, margin: int, seed: int
) -> str:
    """Sample ``per_class[split]`` patch centres per class from the held-out-slab splits of ``labels`` (int8 per
    voxel, -1 = unused), write ``patch x patch`` axial patches of ``t1`` as 8-bit PNGs and ``labels.csv``."""
    import cv2

    half = patch // 2
    inside = np.zeros(t1.shape, bool)  # centres whose patch stays inside the image
    inside[half : t1.shape[0] - half, half : t1.shape[1] - half, :] = True
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for split in ("train", "test"):
        zmask = np.zeros(t1.shape[2], bool)
        zmask[slab_slices(split, slab, margin)] = True
        for c, name in enumerate(names):
            cand = np.argwhere((labels == c) & inside & zmask[None, None, :])
            pick = cand[rng.choice(len(cand), size=min(per_class[split], len(cand)), replace=False)]
            os.makedirs(os.path.join(out_dir, split, name), exist_ok=True)
            for x, y, z in pick:
                img = t1[x - half : x - half + patch, y - half : y - half + patch, z]
                rel = os.path.join(split, name, f"z{z:03d}_x{x:03d}_y{y:03d}.png")
                cv2.imwrite(os.path.join(out_dir, rel), np.round(img * 255).astype(np.uint8))
                rows.append((rel, name, split))
    return _write_csv(os.path.join(out_dir, "labels.csv"), ["path", "label", "split"], rows)


def mni152_tissue_task(
    out_dir: str,
    patch: int = 24,
    per_class_train: int = 150,
    per_class_test: int = 100,
    slab: int = 10,
    margin: int = 2,
    seed: int = 0,
) -> str:
    """Build the labelled tissue task and return its CSV path (columns ``path,label,split``).

    Task: the tissue class of the centre voxel of a ``patch x patch`` axial patch of the MNI152 T1 template:
    grey matter (GM probability >= 0.6), white matter (WM >= 0.6) or CSF (1 - GM - WM >= 0.6), inside the
    brain (T1 > 0.2 of its range). Held-out slabs (``slab_slices``): axial slices 30..139 are cut into slabs of
    ``slab`` slices; even slabs are training data, odd slabs test data, and ``margin`` slices at each slab border
    are unused, so train and test patches are at least ``2 * margin + 1`` mm apart. Classes are balanced by
    sampling ``per_class_*`` centres per class and split with a fixed ``seed``. Patches are written as 8-bit PNGs.
    The class is largely decided by the centre voxel's intensity.
    """
    t1, gm, wm, _ = _load_mni152()
    csf = np.clip(1 - gm - wm, 0, 1)
    labels = np.full(t1.shape, -1, np.int8)
    for c, prob in enumerate((gm, wm, csf)):
        labels[(t1 > 0.2) & (prob >= 0.6)] = c
    per_class = {"train": per_class_train, "test": per_class_test}
    return _write_patches(out_dir, t1, labels, TISSUES, patch, per_class, slab, margin, seed)


def mni152_region_task(
    out_dir: str,
    patch: int = 48,
    per_class_train: int = 150,
    per_class_test: int = 100,
    slab: int = 10,
    margin: int = 2,
    seed: int = 0,
) -> str:
    """Build the labelled anatomical task and return its CSV path (columns ``path,label,split``).

    Task: where along the brain's front-to-back axis a ``patch x patch`` mm axial patch of the MNI152 T1 template
    was taken: the band of the MNI y coordinate of its centre (``REGIONS``: anterior, mid-anterior,
    mid-posterior, posterior; 8 mm gaps between bands). Centres lie in grey or white matter (GM + WM probability
    >= 0.5), so the centre voxel's intensity does not tell the class; what does is the anatomy around it (the
    frontal pole's curvature, the ventricles and deep nuclei, the occipital lobe and cerebellum). Held-out slabs
    and balanced sampling as in :func:`mni152_tissue_task`.
    """
    t1, gm, wm, affine = _load_mni152()
    y_mm = affine[1, 1] * np.arange(t1.shape[1]) + affine[1, 3]  # the template's axes are aligned with MNI's
    tissue = (t1 > 0.2) & (gm + wm >= 0.5)
    labels = np.full(t1.shape, -1, np.int8)
    for c, (_, lo, hi) in enumerate(REGIONS):
        band = (y_mm >= lo) & (y_mm <= hi)
        labels[tissue & band[None, :, None]] = c
    per_class = {"train": per_class_train, "test": per_class_test}
    return _write_patches(out_dir, t1, labels, [r[0] for r in REGIONS], patch, per_class, slab, margin, seed)


SEGMENTATION_CLASSES = ("background", "grey_matter", "white_matter", "csf")


def mni152_segmentation_task(out_dir: str, slab: int = 10, margin: int = 2, step: int = 1) -> str:
    """Build the demo segmentation task and return its CSV path (columns ``image,mask,split``).

    Task: segment axial slices of the MNI152 T1 template (197x233 px at 1 mm, anterior up) into
    ``SEGMENTATION_CLASSES``: 0 outside the brain (T1 = 0, the template is skull-stripped), else the tissue with
    the largest probability among grey matter, white matter and CSF (1 - GM - WM). Held-out slabs
    (``slab_slices``): slices of even 10-slice slabs of 30..139 are training images, of odd slabs test images, and
    ``margin`` slices at each slab border are unused, so train and test slices are at least ``2 * margin + 1`` mm
    apart; ``step`` keeps every step-th slice. Writes ``images/z<k>.png`` (8-bit) and ``masks/z<k>.png`` (labels
    0..3) and ``pairs.csv``, the input of ``lvmmed eval segment --data``.
    """
    import cv2

    t1, gm, wm, _ = _load_mni152()
    labels = 1 + np.argmax(np.stack([gm, wm, np.clip(1 - gm - wm, 0, 1)]), axis=0).astype(np.uint8)
    labels[t1 <= 0] = 0
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    rows = []
    for split in ("train", "test"):
        for z in slab_slices(split, slab, margin)[::step]:
            name = f"z{z:03d}.png"
            for sub, arr in (("images", np.round(t1[:, :, z] * 255).astype(np.uint8)), ("masks", labels[:, :, z])):
                cv2.imwrite(os.path.join(out_dir, sub, name), np.ascontiguousarray(np.rot90(arr)))
            rows.append((f"images/{name}", f"masks/{name}", split))
    return _write_csv(os.path.join(out_dir, "pairs.csv"), ["image", "mask", "split"], rows)


# --- the demo run: its settings and labelled tasks (used by lvmmed pretrain --demo, lvmmed ablate --demo, eval) ---

# ResNet-18 on 96-px views of the offline images, sized to finish pretraining + evaluation in a few minutes on 2 CPU
# cores; settings of lvmmed_ext.train.config.TrainConfig (and its preprocessing key max_side).
DEMO = {
    "arch": "resnet18",
    # the half-width ResNet-18 for 500 steps: the settings of the 3-seed study (docs/STUDY.md §5, ``lvmmed ablate
    # --demo --budget medium``), at about the compute of 150 full-width steps
    "width": 32,
    "image_size": 96,
    # crops of at least a quarter of the image: with 0.08 two views of one slice often share nothing, and matching
    # them teaches invariance to where in the slice a crop lies (docs/STUDY.md, crop-scale pilot)
    "crop_scale": (0.25, 1.0),
    "batch_size": 32,
    "steps": 500,
    "ckpt_every": 250,
    "max_side": 256,
}
# Demo head options per loss: the best of 8 settings per loss tuned with equal budgets (docs/STUDY.md §4):
# narrower projectors for the half-width CPU backbone and, for VICReg, a variance weight of 10. gm runs with its
# defaults (which the same tuning chose).
DEMO_HEAD_OPTS = {
    "infonce": {"hidden_dim": 512, "out_dim": 128},
    "vicreg": {"hidden_dim": 512, "out_dim": 512, "var_weight": 10.0},
}
# The demo's labelled tasks, in report order: (name, description, builder in this module).
DEMO_TASKS = (
    (
        "region",
        "MNI152 anatomical region (front-to-back band of the MNI y coordinate) of a 48x48 mm patch",
        "mni152_region_task",
    ),
    (
        "tissue",
        "MNI152 tissue class (grey matter / white matter / CSF) of a 24x24 mm patch's centre voxel",
        "mni152_tissue_task",
    ),
)


def mni152_available() -> bool:
    """Whether the MNI152 files the demo tasks need are installed (nilearn)."""
    return mni152_paths() is not None


def demo_task_csvs(folder: str, seed: int) -> list[tuple[str, str, str]]:
    """The demo's labelled tasks (``DEMO_TASKS``), each built in ``folder/<name>`` with ``seed``: a list of (name,
    description, CSV path). ``UsageError`` without nilearn."""
    builders = {"mni152_region_task": mni152_region_task, "mni152_tissue_task": mni152_tissue_task}
    return [(name, about, builders[b](os.path.join(folder, name), seed=seed)) for name, about, b in DEMO_TASKS]


def demo_label_specs(folder: str, seed: int) -> list[str]:
    """``NAME=CSV`` label specs of the demo's tasks (built in ``folder/<name>`` with ``seed``, the same files the
    demo evaluation uses; supervised pretraining reads only their train rows). ``UsageError`` without nilearn."""
    return [f"{name}={csv_path}" for name, _, csv_path in demo_task_csvs(folder, seed)]
