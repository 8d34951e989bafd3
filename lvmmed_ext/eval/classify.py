"""Classification evaluation of a backbone on labelled images: linear probe and kNN on frozen features, or
fine-tuning (the protocol is in :mod:`lvmmed_ext.eval.probe`)."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import torch

from ..data.datasets import ImageSet, LabelledImages
from ..errors import UsageError
from .backbones import backbone_for
from .probe import (
    LabelledData,
    extract_features,
    finetune,
    label_subset,
    load_labelled,
    plot_confusion,
    run_probe,
    scores,
    split_indices,
)

METHODS = ("linear-probe", "knn", "finetune")


def evaluate(
    methods: list[str],
    weights: str,
    data: str | LabelledData,
    out: str | None = None,
    arch: str | None = None,
    width: int | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    test_frac: float = 0.3,
    seed: int = 0,
    l2: float | str = "auto",
    k: int = 20,
    device: str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    label: str | None = None,
    label_fraction: float = 1.0,
    epochs: int = 10,
    lr: float = 1e-3,
    backbone_lr_mult: float = 0.1,
) -> dict:
    """Evaluate frozen features of ``weights`` on a labelled set with each of ``methods``.

    Args:
        methods: any of ``"linear-probe"``, ``"knn"`` (frozen features, extracted once), ``"finetune"`` (a copy
            of the backbone and a linear classifier trained end to end for ``epochs`` epochs, classifier lr
            ``lr``, backbone ``lr * backbone_lr_mult``).
        weights: exported ``.pth`` (its ``.json`` beside it gives arch and preprocessing), a checkpoint, a
            torchvision state_dict, or ``"random"``.
        data: folder with one sub-folder per class, CSV ``path,label[,split]``, or a loaded ``LabelledData``.
        out: folder for ``results.json`` and confusion-matrix PNGs (None: nothing written).
        label_fraction: few-shot evaluation: the probes see the labels of only this fraction of each class's
            training files (at least one file per class; the test set is unchanged).

    Returns:
        ``{"weights", "classes", "split", "results": {method: {accuracy, balanced_accuracy, confusion, ...}}}``.

    Example:
        >>> evaluate(["knn"], "random", "labelled/", arch="resnet18")["results"]["knn"]["accuracy"]  # doctest: +SKIP
        0.71
    """
    for m in methods:
        if m not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {m!r}")
    backbone, prep, size = backbone_for(weights, arch, width, in_chans, image_size, seed)
    if not isinstance(data, LabelledData):
        data = load_labelled(data, prep)
    elif data.images.prep != prep:  # same files, other preprocessing: a fresh decode cache
        data.images = ImageSet(data.images.sources, prep, items=data.images.items, cache_bytes=data.images.cache_bytes)
    if data.split is not None:
        train, test = np.flatnonzero(data.split == "train"), np.flatnonzero(data.split == "test")
        split_desc = "the CSV's split column"
    else:
        train, test = split_indices(data.labels, data.groups, test_frac, seed)
        split_desc = f"stratified by file, test fraction {test_frac}, seed {seed}"
    if len(train) == 0 or len(test) == 0:
        raise UsageError(f"the split left {len(train)} training and {len(test)} test images; need both > 0")
    train = label_subset(data.labels, data.groups, train, label_fraction, seed)
    if label_fraction < 1:
        split_desc += f"; labels of {label_fraction:g} of each class's training files ({len(train)} images)"
    feats, ok = extract_features(backbone, LabelledImages(data.images, size), torch.device(device), batch_size, workers)
    train, test = train[ok[train]], test[ok[test]]
    n_classes = len(data.classes)
    results = {}
    for m in methods:
        if m == "finetune":
            pred = finetune(
                copy.deepcopy(backbone), LabelledImages(data.images, size), data.labels, train, test, n_classes,
                epochs=epochs, lr=lr, backbone_lr_mult=backbone_lr_mult, batch_size=batch_size, device=device,
                seed=seed, workers=workers,
            )  # fmt: skip
            results[m] = {"method": m, "n_train": int(len(train)), "n_test": int(len(test)), "epochs": epochs,
                          "lr": lr, "backbone_lr_mult": backbone_lr_mult,
                          **scores(data.labels[test], pred, n_classes)}  # fmt: skip
        else:
            results[m] = run_probe(m, feats, data.labels, train, test, n_classes, seed=seed, l2=l2, k=k)
    summary = {
        "weights": weights,
        "arch": getattr(backbone, "arch", None),
        "image_size": size,
        "classes": data.classes,
        "split": split_desc,
        "unreadable": int((~ok).sum()) + len(data.skipped),
        "results": results,
    }
    if out:
        os.makedirs(out, exist_ok=True)
        tag = label or ("random" if weights == "random" else os.path.splitext(os.path.basename(weights))[0])
        for m, r in results.items():
            title = f"{m} on {tag}: acc {r['accuracy']:.3f}, balanced {r['balanced_accuracy']:.3f}"
            r["confusion_png"] = plot_confusion(
                r["confusion"], data.classes, os.path.join(out, f"confusion_{tag}_{m}.png"), title
            )
        summary["results_json"] = os.path.join(out, f"results_{tag}.json")
        with open(summary["results_json"], "w") as f:
            json.dump(summary, f, indent=1)
    return summary
