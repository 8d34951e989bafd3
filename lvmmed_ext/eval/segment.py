"""``lvmmed eval segment``: fine-tune a U-Net on image/mask pairs from pretrained (and random-init) encoder weights
and report Dice.

Protocol (fixed by the seeds):

1. Pairs: a folder ``DIR/images/`` + ``DIR/masks/`` whose files match by relative path without extension
   (``images/a/01.png`` <-> ``masks/a/01.tif``), or a CSV ``image,mask[,split]`` (paths relative to the CSV). Images
   in any format of ``lvmmed_ext.data.io`` (PNG/JPEG/TIFF, DICOM, NIfTI) with the weights' intensity preset; masks
   hold integer class labels ``0..K-1`` in the same formats, frame for frame and pixel for pixel (an 8-bit mask of
   only 0 and 255 is binary). Classes: ``classes`` (a count or names, class 0 = background), else the largest
   label + 1.
2. 2D models (ResNet, ViT): every frame of a file is an image (NIfTI volumes are sliced along ``axis``); images
   with a longer side above ``max_side`` are downscaled at load time (masks by nearest neighbour). Training resizes
   image and mask to ``image_size`` (mask: nearest neighbour), with random horizontal flips; test logits are
   upsampled back to the loaded size before the argmax. 3D model (``unet3d``): whole volumes; training on random
   ``crop`` boxes (``crops_per_volume`` per volume and epoch, random flips of the last axis); test volumes are
   predicted by sliding windows of the crop size with half-crop overlap (softmax averaged).
3. Split by file (a volume never straddles it): the CSV's split column, else ``test_frac`` of the files by
   ``split_seed``; ``label_fraction`` keeps the masks of that fraction of the training files (at least one). The
   split is the same for every seed and for both weights.
4. Training: Adam (``lr``), loss 0.5 cross-entropy + 0.5 soft Dice (softmax, every class, pooled over the batch),
   gradient-norm clip 1 (the paper's 2D segmentation recipe, LVMMED_SPEC §5), ``epochs`` epochs of ``batch_size``;
   BatchNorm statistics are then recomputed over the training images. Each seed fixes the decoder (and the
   random-init encoder), the data order and the flips; runs are deterministic on CPU.
5. Metrics (``dice_per_class``): Dice of class c = 2|P_c ∩ G_c| / (|P_c| + |G_c|) per test image. A class absent
   from both the prediction and the ground truth of an image has no Dice there (NaN) and is left out of every
   average; a class never present and never predicted on the whole test set is reported as null. Per-class Dice =
   mean over the test images; mean Dice = mean over the foreground classes 1..K-1 of the per-class Dice. For files
   with several slices (volumes) and for ``unet3d``, also the 3D Dice of each volume (the stacked slice
   predictions against the whole label volume, same rule) and their means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.demo import SEGMENTATION_CLASSES, mni152_segmentation_task
from ..data.io import ReadError, header_of, read_labels, read_source
from ..data.presets import Preprocessing
from ..data.views import to_chw
from ..errors import UsageError, parse_seeds, run_command
from ..models import SEG_ARCHS, UNet, build_encoder
from ..system import default_device, save_figure
from .backbones import backbone_for
from .probe import label_subset, read_csv_rows, recompute_batchnorm, split_indices

LOSS = "0.5 cross-entropy + 0.5 soft Dice"
GRAD_CLIP = 1.0
IMAGE_EXTS = (".nii.gz",)  # double extensions that os.path.splitext would cut in two


@dataclass
class SegData:
    """Decoded image/mask pairs, one entry per file: ``images[i]`` float16 ``[F, H, W]`` (or ``[F, H, W, 3]``) in
    [0, 1] after the intensity preset, ``masks[i]`` integer labels ``[F, H, W]`` in ``[0, len(classes))``,
    ``names[i]`` the image path, ``split`` per file ``"train"``/``"test"`` when the CSV fixed it, else None."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str]
    classes: list[str]
    split: np.ndarray | None


def parse_classes(text: str | int | list | None) -> list[str] | None:
    """``--classes``: a count (``"4"``) or comma-separated names (class 0 first); None leaves it to the masks.

    Example:
        >>> parse_classes("3"), parse_classes("background,liver")
        (['background', 'class1', 'class2'], ['background', 'liver'])
    """
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        names = [str(t) for t in text]
    elif str(text).strip().isdigit():
        names = ["background"] + [f"class{i}" for i in range(1, int(str(text)))]
    else:
        names = [t.strip() for t in str(text).split(",") if t.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"--classes must give at least 2 distinct classes (a count or names), got {text!r}")
    return names


def _stem(rel: str) -> str:
    low = rel.lower()
    for ext in IMAGE_EXTS:
        if low.endswith(ext):
            return rel[: -len(ext)]
    return os.path.splitext(rel)[0]


def _files(folder: str) -> dict[str, str]:
    """``{relative path without extension: path}`` of the visible files under ``folder``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                path = os.path.join(dirpath, f)
                found[_stem(os.path.relpath(path, folder))] = path
    return found


def list_pairs(data: str) -> list[tuple[str, str, str | None]]:
    """``(image, mask, split or None)`` for every pair of ``data`` (folder with ``images/`` + ``masks/``, or CSV
    ``image,mask[,split]``). Raises ``UsageError`` for a missing folder or file, or an image without its mask."""
    if not os.path.exists(data):
        raise UsageError(f"--data {data} does not exist")
    if os.path.isfile(data):
        if not data.lower().endswith(".csv"):
            raise UsageError(f"--data {data} must be a folder with images/ and masks/ or a CSV image,mask[,split]")
        rows = read_csv_rows(data, columns=("image", "mask"), paths=2)
        for image, mask, _ in rows:
            for what, path in (("image", image), ("mask", mask)):
                if not os.path.isfile(path):
                    raise UsageError(f"{data} lists a missing {what} file {path}")
        return rows
    images_dir, masks_dir = os.path.join(data, "images"), os.path.join(data, "masks")
    if not (os.path.isdir(images_dir) and os.path.isdir(masks_dir)):
        raise UsageError(
            f"--data {data} must hold images/ and masks/ folders (files with matching names) or be a CSV "
            "image,mask[,split]"
        )
    images, masks = _files(images_dir), _files(masks_dir)
    if not images:
        raise UsageError(f"--data {data}: {images_dir} is empty")
    for key, path in images.items():
        if key not in masks:
            raise UsageError(f"missing mask: {path} has no file {os.path.join(masks_dir, key)}.* in {masks_dir}")
    for key, path in masks.items():
        if key not in images:
            raise UsageError(f"mask {path} has no image {os.path.join(images_dir, key)}.* in {images_dir}")
    return [(images[k], masks[k], None) for k in sorted(images)]


def _shape_text(a: np.ndarray) -> str:
    return "x".join(map(str, a.shape[:3] if a.shape[0] > 1 else a.shape[1:3]))


def _downscale(image: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames with a longer side above ``max_side`` -> that side (image: area average, mask: nearest)."""
    import cv2

    h, w = mask.shape[1:3]
    if not max_side or max(h, w) <= max_side:
        return image, mask
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    image = np.stack([cv2.resize(fr.astype(np.float32), size, interpolation=cv2.INTER_AREA) for fr in image])
    mask = np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in mask])
    return image.astype(np.float16), mask


def load_pairs(data: str, prep: Preprocessing, classes: list[str] | None = None, volumes: bool = False) -> SegData:
    """Read and check every image/mask pair of ``data`` (protocol steps 1-2).

    Args:
        data: folder with ``images/`` + ``masks/``, or CSV ``image,mask[,split]``.
        prep: intensity preset, channels, NIfTI ``axis`` and ``max_side`` (ignored for ``volumes``).
        classes: class names (class 0 first); None: ``background, class1, ...`` up to the largest label.
        volumes: keep volumes whole at their size (3D models) instead of downscaling slices.

    Returns:
        ``SegData``. Raises ``UsageError`` (one line, naming the file) for a missing mask, an unreadable image or
        mask, an image/mask size or slice-count mismatch, a label outside the classes, or a split column given for
        some rows only.
    """
    rows = list_pairs(data)
    if any(sp is not None for _, _, sp in rows) and any(sp is None for _, _, sp in rows):
        raise UsageError(f"{data}: give the split column for every row or for none")
    read_prep = dataclasses.replace(prep, max_side=0)
    images, masks = [], []
    for image_path, mask_path, _ in rows:
        try:
            image = read_source(header_of(image_path, prep.axis), read_prep).frames
        except ReadError as e:
            raise UsageError(f"cannot read image {image_path}: {e}") from None
        try:
            mask = read_labels(header_of(mask_path, prep.axis), prep.axis)
        except ReadError as e:
            raise UsageError(f"cannot read mask {mask_path}: {e}") from None
        if image.shape[:3] != mask.shape:
            raise UsageError(
                f"image/mask size mismatch: {image_path} is {_shape_text(image)} but its mask {mask_path} is "
                f"{_shape_text(mask)} (a mask must match its image slice for slice and pixel for pixel)"
            )
        if mask.min() < 0 or (classes is not None and mask.max() >= len(classes)):
            bad = int(mask.min()) if mask.min() < 0 else int(mask.max())
            declared = f"the {len(classes)} declared classes 0..{len(classes) - 1}" if classes else "classes 0, 1, ..."
            raise UsageError(f"mask {mask_path} holds label {bad}, outside {declared} (--classes)")
        if volumes and image.ndim == 4:
            raise UsageError(f"image {image_path} is colour; 3D models take one-channel volumes")
        mask = mask.astype(np.uint8 if mask.max() < 256 else np.int32)
        if not volumes:
            image, mask = _downscale(image, mask, prep.max_side)
        images.append(image)
        masks.append(mask)
    if classes is None:
        top = max(int(m.max()) for m in masks)
        if top < 1:
            raise UsageError(f"the masks of {data} hold only label 0; pass --classes to declare the classes")
        classes = parse_classes(str(top + 1))
    split = np.asarray([sp for _, _, sp in rows]) if rows[0][2] is not None else None
    return SegData(images, masks, [r[0] for r in rows], classes, split)


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every class between two integer label maps of one image or volume (any equal shapes).

    ``dice[c] = 2 |P_c ∩ G_c| / (|P_c| + |G_c|)``; NaN for a class in neither (0 / 0: no evidence either way).

    Returns:
        float64 ``[num_classes]``.

    Example:
        >>> dice_per_class(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 3).round(3).tolist()
        [0.8, 0.667, nan]
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {pred.shape} and {target.shape}")
    k = num_classes
    pairs = pred.reshape(-1).astype(np.int64) * k + target.reshape(-1).astype(np.int64)
    counts = np.bincount(pairs, minlength=k * k).reshape(k, k)  # [predicted, true]
    inter = np.diag(counts).astype(np.float64)
    total = (counts.sum(axis=0) + counts.sum(axis=1)).astype(np.float64)
    out = np.full(k, np.nan)
    np.divide(2 * inter, total, out=out, where=total > 0)
    return out


def nanmean(values: np.ndarray, axis=None):
    """Mean over the non-NaN entries (NaN where there are none), without numpy's empty-slice warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def mean_dice(per_class: np.ndarray) -> float:
    """Mean of the foreground classes' (1..K-1) Dice values that are defined; NaN when none is."""
    return float(nanmean(np.asarray(per_class, np.float64)[1:]))


def dice_ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """0.5 cross-entropy + 0.5 (1 - soft Dice): ``logits [B, K, *S]``, ``target`` int64 ``[B, *S]`` -> scalar.

    Soft Dice per class = (2 Σ p g + 1) / (Σ p + Σ g + 1) over the batch and every pixel (p: softmax, g: one-hot),
    averaged over the K classes.
    """
    ce = F.cross_entropy(logits, target)
    prob = logits.float().softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    dims = (0,) + tuple(range(2, logits.dim()))
    soft = (2 * (prob * onehot).sum(dims) + 1) / (prob.sum(dims) + onehot.sum(dims) + 1)
    return 0.5 * ce + 0.5 * (1 - soft.mean())


class _Frames(torch.utils.data.Dataset):
    """Frame ``(file, k)`` of ``SegData`` resized to ``size x size``, normalised: ``(x [C, S, S], y int64 [S, S])``."""

    def __init__(self, data: SegData, index: list[tuple[int, int]], size: int, prep: Preprocessing):
        self.data, self.index, self.size, self.prep = data, index, size, prep

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        import cv2

        f, k = self.index[i]
        img = self.data.images[f][k].astype(np.float32)
        img = cv2.resize(
            img,
            (self.size, self.size),
            interpolation=cv2.INTER_AREA if min(img.shape[:2]) > self.size else cv2.INTER_LINEAR,
        )
        mask = cv2.resize(self.data.masks[f][k], (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        x = torch.from_numpy(to_chw(img, self.prep.in_chans, self.prep.mean, self.prep.std))
        return x, torch.from_numpy(mask.astype(np.int64))


def _volume_tensor(vol: np.ndarray, prep: Preprocessing) -> Tensor:
    """float16 ``[D, H, W]`` in [0, 1] -> normalised float32 ``[1, D, H, W]``."""
    return torch.from_numpy((vol.astype(np.float32)[None] - prep.mean) / prep.std)


def _train(model: UNet, batches, epochs: int, lr: float, device: torch.device) -> float:
    """Protocol step 4; ``batches(epoch)`` yields ``(x, y)``. Returns the mean loss of the last epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    last = float("nan")
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in batches(epoch):
            loss = dice_ce_loss(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            total, n = total + loss.item(), n + 1
        last = total / max(n, 1)
    return last


def _fit_2d(model, data, train_files, test_files, size, prep, epochs, lr, batch_size, device, seed, workers):
    """Train on every frame of ``train_files``; return the predicted label maps ``[F, H, W]`` of ``test_files``."""
    train_index = [(f, k) for f in train_files for k in range(data.masks[f].shape[0])]
    train_set = _Frames(data, train_index, size, prep)
    gen = torch.Generator().manual_seed(seed)
    drop_last = len(train_set) > 1 and len(train_set) % batch_size == 1  # BatchNorm cannot train on one image

    def batches(epoch):
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=batch_size, shuffle=True, generator=gen, num_workers=workers, drop_last=drop_last
        )
        for x, y in loader:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            yield torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), torch.where(flip.view(-1, 1, 1), y.flip(-1), y)

    loss = _train(model, batches, epochs, lr, device)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, num_workers=workers, drop_last=drop_last)
    recompute_batchnorm(model, (x.to(device) for x, _ in loader))
    test_index = [(f, k) for f in test_files for k in range(data.masks[f].shape[0])]
    preds = {f: np.zeros(data.masks[f].shape, np.uint8) for f in test_files}
    loader = torch.utils.data.DataLoader(_Frames(data, test_index, size, prep), batch_size=batch_size)
    done = 0
    with torch.no_grad():
        for x, _ in loader:
            logits = model(x.to(device)).float()
            for row in logits:
                f, k = test_index[done]
                full = F.interpolate(row[None], size=data.masks[f].shape[1:3], mode="bilinear", align_corners=False)
                preds[f][k] = full[0].argmax(0).cpu().numpy()
                done += 1
    return preds, loss


def _windows(n: int, c: int) -> list[int]:
    """Start positions of windows of ``c`` covering ``[0, n)`` with stride ``c // 2`` (the last one flush)."""
    starts = list(range(0, n - c + 1, max(1, c // 2)))
    return starts if starts[-1] == n - c else starts + [n - c]


@torch.no_grad()
def predict_volume(model: nn.Module, vol: Tensor, crop: tuple[int, int, int], num_classes: int) -> Tensor:
    """Sliding-window prediction of one volume: ``vol [C, D, H, W]`` -> labels int64 ``[D, H, W]``; windows of
    ``crop`` with half-crop overlap, softmax probabilities averaged where windows overlap."""
    device = next(model.parameters()).device
    acc = torch.zeros((num_classes,) + tuple(vol.shape[1:]))
    hits = torch.zeros(vol.shape[1:])
    for z in _windows(vol.shape[1], crop[0]):
        for y in _windows(vol.shape[2], crop[1]):
            for x in _windows(vol.shape[3], crop[2]):
                box = (slice(z, z + crop[0]), slice(y, y + crop[1]), slice(x, x + crop[2]))
                prob = model(vol[(slice(None), *box)][None].to(device)).float().softmax(dim=1)[0].cpu()
                acc[(slice(None), *box)] += prob
                hits[box] += 1
    return (acc / hits).argmax(0)


def _fit_3d(model, data, train_files, test_files, crop, crops_per_volume, prep, epochs, lr, batch_size, device, seed):
    """Train on random crops of the training volumes; return the predicted label volumes of ``test_files``."""
    vols = {f: _volume_tensor(data.images[f], prep) for f in list(train_files) + list(test_files)}
    gen = torch.Generator().manual_seed(seed)
    jobs = [f for f in train_files for _ in range(crops_per_volume)]

    def crop_at(f):
        corner = [int(torch.randint(0, n - c + 1, (1,), generator=gen)) for n, c in zip(data.masks[f].shape, crop)]
        box = tuple(slice(a, a + c) for a, c in zip(corner, crop))
        x, y = vols[f][(slice(None), *box)], torch.from_numpy(data.masks[f][box].astype(np.int64))
        return (x.flip(-1), y.flip(-1)) if float(torch.rand(1, generator=gen)) < 0.5 else (x, y)

    def batches(epoch):
        order = torch.randperm(len(jobs), generator=gen).tolist()
        for start in range(0, len(order), batch_size):
            xs, ys = zip(*(crop_at(jobs[i]) for i in order[start : start + batch_size]))
            yield torch.stack(xs), torch.stack(ys)

    loss = _train(model, batches, epochs, lr, device)
    model.eval()  # InstanceNorm: no running statistics to recompute
    preds = {f: predict_volume(model, vols[f], crop, model.out_channels).numpy().astype(np.uint8) for f in test_files}
    return preds, loss


def _scores(data: SegData, preds: dict, volumes: bool) -> dict:
    """Protocol step 5 for one run: per-class Dice, mean Dice, and per-volume 3D Dice where files are volumes."""
    k = len(data.classes)
    per_image, per_volume = [], {}
    for f, pred in preds.items():
        gt = data.masks[f]
        if not volumes:
            per_image += [dice_per_class(p, g, k) for p, g in zip(pred, gt)]
        if volumes or gt.shape[0] > 1:
            per_volume[data.names[f]] = dice_per_class(pred, gt, k)
    out: dict = {}
    if per_image:
        dice = nanmean(np.stack(per_image), axis=0)
        out.update(dice=_named(dice, data.classes), mean_dice=_num(mean_dice(dice)), n_test_images=len(per_image))
    if per_volume:
        vdice = nanmean(np.stack(list(per_volume.values())), axis=0)
        out.update(
            volume_dice={name: _named(d, data.classes) for name, d in per_volume.items()},
            volume_dice_mean=_named(vdice, data.classes),
            volume_mean_dice=_num(mean_dice(vdice)),
        )
    if volumes:  # the volumes are the test images
        out.update(dice=out["volume_dice_mean"], mean_dice=out["volume_mean_dice"], n_test_images=len(per_volume))
    return out


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _named(values: np.ndarray, classes: list[str]) -> dict:
    return {c: _num(float(v)) for c, v in zip(classes, values)}


def _crop3(crop) -> tuple[int, int, int]:
    crop = (crop,) * 3 if isinstance(crop, int) else tuple(int(c) for c in crop)
    if len(crop) != 3:
        raise UsageError(f"--crop must be one size or three (D H W), got {list(crop)}")
    return crop


def evaluate_segmentation(
    weights: str,
    data: str | SegData,
    out: str | None = None,
    *,
    arch: str | None = None,
    width: int | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    classes: list[str] | str | int | None = None,
    epochs: int = 35,
    lr: float = 1e-3,
    batch_size: int | None = None,
    seeds: list[int] = (0,),
    label_fraction: float = 1.0,
    test_frac: float = 0.3,
    split_seed: int = 0,
    crop: int | tuple[int, int, int] = 64,
    crops_per_volume: int = 4,
    axis: int | None = None,
    max_side: int | None = None,
    random_baseline: bool = True,
    decoder_channels: list[int] | None = None,
    device: str = "cpu",
    workers: int = 0,
    overlay_count: int = 4,
    log=None,
) -> dict:
    """Fine-tune a U-Net over ``weights`` (and over the same architecture at random init) on ``data``; Dice.

    Args:
        weights: exported ``.pth`` (its ``.json`` gives arch and preprocessing), a checkpoint, a torchvision
            state_dict, or ``"random"``.
        data: folder with ``images/`` + ``masks/``, a CSV ``image,mask[,split]``, or loaded ``SegData``.
        out: folder for ``results.json`` and ``overlay.png`` (None: nothing written).
        arch: ``resnet18``/``resnet50``/``vit_b_16`` (2D; default from the weights) or ``unet3d`` (volumes).
        image_size: 2D training side (default from the weights' JSON, else 224; ViT: a multiple of 16).
        classes: a count or names (class 0 = background); default from the masks.
        epochs, lr, batch_size: Adam fine-tuning (batch size default 16 in 2D, 2 crops in 3D).
        seeds: one run per seed and weights (decoder init, data order, flips; the random-init encoder).
        label_fraction: keep the masks of this fraction of the training files (few-shot; test set unchanged).
        crop, crops_per_volume: ``unet3d`` training crops (one size or (D, H, W)) and crops per volume per epoch.
        axis, max_side: override the weights' NIfTI slicing axis and load-time downscaling (2D).
        random_baseline: also fine-tune the same architecture from random init (when ``weights`` is a file).
        log: callable for progress lines (None: silent).

    Returns:
        ``{"arch", "classes", "split", "settings", "runs": {tag: {"weights", "per_seed": {seed: scores},
        "mean_dice", "mean_dice_std", ...}}, "results_json", "overlay_png"}`` with tags ``pretrained`` and
        ``random init`` (or just ``random init``); scores hold ``dice`` per class, ``mean_dice``, and for volumes
        ``volume_dice`` per volume, ``volume_dice_mean``, ``volume_mean_dice``.

    Raises:
        UsageError: bad weights, data, classes or settings (before anything is written).

    Example:
        >>> s = evaluate_segmentation("backbone.pth", "pairs/", epochs=5)  # doctest: +SKIP
        >>> s["runs"]["pretrained"]["mean_dice"], s["runs"]["random init"]["mean_dice"]  # doctest: +SKIP
        (0.81, 0.77)
    """
    log = log or (lambda *_: None)
    for name, value in (("--epochs", epochs), ("--lr", lr), ("--crops-per-volume", crops_per_volume)):
        if not value > 0:
            raise UsageError(f"{name} must be > 0, got {value}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds must list distinct seeds, got {seeds}")
    if arch is not None and arch not in SEG_ARCHS:
        raise UsageError(f"--arch must be one of {', '.join(SEG_ARCHS)}, got {arch!r}")
    encoder, prep, size = backbone_for(weights, arch, width, in_chans, image_size, seeds[0], build=build_encoder)
    arch, width = encoder.arch, getattr(encoder, "width", None)
    prep.axis = prep.axis if axis is None else axis
    prep.max_side = prep.max_side if max_side is None else max_side
    volumes = arch == "unet3d"
    batch_size = batch_size or (2 if volumes else 16)
    crop = _crop3(crop)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if not volumes and size % getattr(encoder, "patch_size", 1):
        raise UsageError(f"--image-size must be a multiple of {encoder.patch_size} for {arch}, got {size}")
    if volumes and min(crop) < 2 * encoder.stride:  # the deepest map needs 2 voxels a side (InstanceNorm)
        raise UsageError(f"--crop must be at least {2 * encoder.stride} voxels per side for unet3d, got {list(crop)}")
    if not isinstance(data, SegData):
        data = load_pairs(data, prep, parse_classes(classes), volumes=volumes)
    if volumes:
        for name, mask in zip(data.names, data.masks):
            if any(n < c for n, c in zip(mask.shape, crop)):
                raise UsageError(
                    f"volume {name} is {'x'.join(map(str, mask.shape))} voxels, smaller than --crop "
                    f"{'x'.join(map(str, crop))}"
                )
    n_files = len(data.names)
    if data.split is not None:
        train, test = np.flatnonzero(data.split == "train"), np.flatnonzero(data.split == "test")
        split_desc = "the CSV's split column"
    else:
        train, test = split_indices(np.zeros(n_files, np.int64), np.arange(n_files), test_frac, split_seed)
        split_desc = f"by file, test fraction {test_frac}, seed {split_seed}"
    if len(train) == 0 or len(test) == 0:
        raise UsageError(f"the split left {len(train)} training and {len(test)} test files; need both > 0")
    train = label_subset(np.zeros(n_files, np.int64), np.arange(n_files), train, label_fraction, split_seed)
    if label_fraction < 1:
        split_desc += f"; masks of {label_fraction:g} of the training files ({len(train)} files)"
    k = len(data.classes)
    runs_to_do = [("random init", "random")] if weights == "random" else [("pretrained", weights)]
    if weights != "random" and random_baseline:
        runs_to_do.append(("random init", "random"))
    runs: dict = {}
    kept_preds: dict = {}
    for tag, w in runs_to_do:
        per_seed = {}
        for seed in seeds:
            enc, _, _ = backbone_for(w, arch, width, prep.in_chans, size, seed, build=build_encoder)
            model = UNet(enc, k, decoder_channels).to(device)
            t0 = time.perf_counter()
            if volumes:
                preds, loss = _fit_3d(model, data, train, test, crop, crops_per_volume, prep, epochs, lr, batch_size,
                                      torch.device(device), seed)  # fmt: skip
            else:
                preds, loss = _fit_2d(model, data, train, test, size, prep, epochs, lr, batch_size,
                                      torch.device(device), seed, workers)  # fmt: skip
            scores = {"seed": seed, **_scores(data, preds, volumes), "final_loss": loss,
                      "train_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
            per_seed[str(seed)] = scores
            kept_preds.setdefault(tag, preds)
            log(f"segment: {tag}, seed {seed}: mean Dice {_fmt(scores['mean_dice'])} in {scores['train_s']:.0f} s")
        runs[tag] = {"weights": w, "per_seed": per_seed, **_seed_stats(list(per_seed.values()), data.classes)}
    summary = {
        "arch": arch,
        "width": width,
        "image_size": None if volumes else size,
        "classes": data.classes,
        "split": split_desc,
        "n_train_files": int(len(train)),
        "n_test_files": int(len(test)),
        "n_train_images": int(sum(data.masks[f].shape[0] for f in train)),
        "n_test_images": int(sum(data.masks[f].shape[0] for f in test)),
        "settings": {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "optimizer": "Adam",
            "loss": LOSS,
            "grad_clip": GRAD_CLIP,
            "label_fraction": label_fraction,
            "seeds": seeds,
            "split_seed": split_seed,
            **({"crop": list(crop), "crops_per_volume": crops_per_volume} if volumes else {}),
        },
        "runs": runs,
    }
    if out:
        os.makedirs(out, exist_ok=True)
        summary["overlay_png"] = plot_overlay(data, test, kept_preds, os.path.join(out, "overlay.png"), overlay_count)
        summary["results_json"] = os.path.join(out, "results.json")
        with open(summary["results_json"], "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def _seed_stats(per_seed: list[dict], classes: list[str]) -> dict:
    """Means (and sample standard deviations) over the seeds of the headline numbers."""
    out = {}
    for key in ("mean_dice", "volume_mean_dice"):
        vals = [s[key] for s in per_seed if s.get(key) is not None]
        if vals:
            out[key] = float(np.mean(vals))
            out[f"{key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    dice = [[s["dice"][c] if s["dice"][c] is not None else np.nan for c in classes] for s in per_seed]
    out["dice"] = _named(nanmean(np.asarray(dice, np.float64), axis=0), classes)
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_table(summary: dict) -> str:
    """The per-run table ``lvmmed eval segment`` prints: per weights the mean Dice (± std over seeds), the Dice of
    every class and, for volumes, the mean 3D Dice."""
    classes, runs = summary["classes"], summary["runs"]
    seeds = summary["settings"]["seeds"]
    has_volume = any("volume_mean_dice" in r for r in runs.values())
    head = [f"{'weights':<12}", f"{'mean Dice':>15}"] + [f"{c:>12}" for c in classes]
    head += [f"{'3D mean Dice':>15}"] if has_volume else []
    lines = ["  " + " ".join(head)]
    for tag, r in runs.items():
        pm = {key: "-" if key not in r else _fmt(r[key]) + (f" ± {r[key + '_std']:.3f}" if len(seeds) > 1 else "")
              for key in ("mean_dice", "volume_mean_dice")}  # fmt: skip
        row = [f"{tag:<12}", f"{pm['mean_dice']:>15}"] + [f"{_fmt(r['dice'][c]):>12}" for c in classes]
        row += [f"{pm['volume_mean_dice']:>15}"] if has_volume else []
        lines.append("  " + " ".join(row))
    return "\n".join(lines)


def plot_overlay(data: SegData, test: np.ndarray, preds: dict, path: str, count: int = 4) -> str | None:
    """A PNG of ``count`` test images, evenly spread (for volumes their slice of most foreground; a single test
    volume gives several of its labelled slices): the image, the ground truth and each run's prediction (first seed)
    as coloured labels over the image, with each image's mean Dice. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        return None
    items = [(int(f), int(np.argmax((data.masks[f] > 0).reshape(data.masks[f].shape[0], -1).sum(1))))
             for f in test]  # fmt: skip
    if len(items) == 1 and data.masks[items[0][0]].shape[0] > 1:  # one volume: several of its labelled slices
        f, _ = items[0]
        labelled = np.flatnonzero((data.masks[f] > 0).reshape(data.masks[f].shape[0], -1).any(axis=1))
        items = [(f, int(z)) for z in (labelled if labelled.size else range(data.masks[f].shape[0]))]
    items = [items[i] for i in np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)]
    k = len(data.classes)
    colours = ListedColormap(plt.get_cmap("tab10")(np.arange(k) % 10))
    columns = [("ground truth", None)] + [(tag, p) for tag, p in preds.items()]
    fig, axes = plt.subplots(len(items), len(columns) + 1, figsize=(2.4 * (len(columns) + 1), 2.4 * len(items)),
                             dpi=100, squeeze=False)  # fmt: skip
    for row, (f, z) in zip(axes, items):
        img = data.images[f][z].astype(np.float32)
        row[0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        row[0].set_title(os.path.basename(data.names[f]) + (f" [{z}]" if data.masks[f].shape[0] > 1 else ""),
                         fontsize=7)  # fmt: skip
        for ax, (title, p) in zip(row[1:], columns):
            labels = data.masks[f][z] if p is None else p[f][z]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.imshow(np.ma.masked_equal(labels, 0), cmap=colours, vmin=0, vmax=k - 1, alpha=0.5,
                      interpolation="nearest")  # fmt: skip
            if p is not None:
                d = mean_dice(dice_per_class(labels, data.masks[f][z], k))
                title += f" (Dice {_fmt(_num(d))})"
            ax.set_title(title, fontsize=7)
        for ax in row:
            ax.axis("off")
    handles = [Patch(color=colours(c), alpha=0.5, label=name) for c, name in enumerate(data.classes) if c]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path)
    plt.close(fig)
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvmmed eval segment",
        description="Fine-tune a U-Net on image/mask pairs (DIR/images + DIR/masks with matching names, or a CSV "
        "image,mask[,split]; PNG/TIFF/DICOM/NIfTI) from the weights' encoder and from random init of the same "
        "architecture; Adam, 0.5 CE + 0.5 Dice, gradient-norm clip 1. Prints per-class and mean Dice (and the 3D "
        "Dice of volumes), writes results.json and overlay.png. Protocol: lvmmed_ext/eval/segment.py.",
    )
    p.add_argument("--weights", required=True, help="exported backbone .pth, a checkpoint, or 'random'")
    p.add_argument("--data", required=True, help="folder with images/ and masks/, or a CSV image,mask[,split]")
    p.add_argument("--out", default=None, help="folder for results.json and overlay.png (default runs/segment-<time>)")
    p.add_argument("--arch", choices=SEG_ARCHS, default=None, help="encoder (default: from the weights' JSON, else "
                   "resnet50); unet3d = 3D U-Net on whole volumes")  # fmt: skip
    p.add_argument("--width", type=int, default=None, help="ResNet base width / unet3d first-level width")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=None, help="input channels (default: from the JSON)")
    p.add_argument("--image-size", type=int, default=None, help="2D training side (default: from the JSON, else 224)")
    p.add_argument("--classes", default=None, help="number of classes or comma-separated names, background first "
                   "(default: largest label + 1)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=35, help="fine-tuning epochs (35)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (16; unet3d: 2 crops)")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="few-shot: keep the masks of this fraction of the training files (1.0)")  # fmt: skip
    p.add_argument("--seeds", default="0", help="comma-separated training seeds, one run each (0)")
    p.add_argument("--test-frac", type=float, default=0.3, help="test fraction of the files without a split column")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split and the label fraction (0)")
    p.add_argument("--crop", type=int, nargs="+", default=[64], help="unet3d training crop: S or D H W voxels (64)")
    p.add_argument("--crops-per-volume", type=int, default=4, help="unet3d crops per volume per epoch (4)")
    p.add_argument("--no-random", action="store_true", help="skip the random-init comparison")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), default=None, help="NIfTI axis to slice (the JSON's, 2)")
    p.add_argument("--max-side", type=int, default=None, help="2D: downscale longer sides to this at load (512)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--workers", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("lvmmed eval segment", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds, 0)
    out = args.out or os.path.join("runs", f"segment-{time.strftime('%Y%m%d-%H%M%S')}")
    summary = evaluate_segmentation(
        args.weights, args.data, out, arch=args.arch, width=args.width, in_chans=args.in_chans,
        image_size=args.image_size, classes=args.classes, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, seeds=seeds, label_fraction=args.label_fraction, test_frac=args.test_frac,
        split_seed=args.split_seed, crop=args.crop[0] if len(args.crop) == 1 else args.crop,
        crops_per_volume=args.crops_per_volume, axis=args.axis, max_side=args.max_side,
        random_baseline=not args.no_random, device=args.device,
        workers=args.workers, log=lambda line: print(line, flush=True),
    )  # fmt: skip
    print(describe(summary))
    print(format_table(summary))
    print(f"results: {summary['results_json']}\noverlay: {summary['overlay_png']}")
    return 0


def describe(summary: dict) -> str:
    """One line: model, classes, split sizes."""
    size = f"{summary['image_size']} px" if summary["image_size"] else "3D crops"
    return (
        f"segmentation ({summary['arch']}, {size}, {len(summary['classes'])} classes): "
        f"{summary['n_train_images']} train / {summary['n_test_images']} test images from "
        f"{summary['n_train_files']} / {summary['n_test_files']} files (split: {summary['split']}); "
        f"{summary['settings']['epochs']} epochs"
    )


if __name__ == "__main__":
    raise SystemExit(main())


# The demo's segmentation task (lvmmed pretrain --demo, lvmmed ablate --demo): MNI152 tissue maps on held-out slabs,
# a budget that fine-tunes both weights in a few minutes on 2 CPU cores.
DEMO_SEGMENT = {"image_size": 128, "epochs": 20, "batch_size": 8, "lr": 1e-3}


def demo_segmentation(
    weights: str, out: str, seed: int = 0, data: SegData | None = None, log=print, **kwargs
) -> dict | None:
    """Fine-tune on the demo segmentation task (``data.demo.mni152_segmentation_task``, built in ``out/data``
    unless ``data`` is given) with ``DEMO_SEGMENT``; results in ``out``. ``kwargs`` go to
    ``evaluate_segmentation`` (``arch``, ``width``, ``random_baseline``, ``device``, ...). Returns its summary, or
    None (after a notice) without nilearn."""
    if data is None:
        try:
            data = mni152_segmentation_task(os.path.join(out, "data"))
        except UsageError as e:
            log(f"notice: demo segmentation skipped: {e}")
            return None
    settings = {**DEMO_SEGMENT, **kwargs}
    return evaluate_segmentation(weights, data, out, classes=list(SEGMENTATION_CLASSES), seeds=[seed], **settings)
