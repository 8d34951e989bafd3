"""``lvmmed eval linear-probe|knn|finetune --weights W --data DIR``: evaluation of a backbone on labelled data;
``lvmmed eval segment ...`` (U-Net fine-tuning on image/mask pairs) lives in ``segment``."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageSet, LabelledImages
from ..data.presets import Preprocessing
from ..errors import UsageError
from ..models import build_backbone, load_pretrained
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


def weights_info(weights: str) -> dict:
    """Architecture and preprocessing that go with ``weights``: the export's JSON beside it, or the config of an
    ``lvmmed pretrain`` checkpoint; ``{}`` when neither exists."""
    stem, _ = os.path.splitext(weights)
    if os.path.isfile(stem + ".json"):
        try:
            with open(stem + ".json") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {stem}.json beside the weights: {e}") from None
    if os.path.isfile(weights):
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"cannot read weights {weights}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            ) from None
        if isinstance(obj, dict) and obj.get("format") == "lvmmed-pretrain-checkpoint":
            cfg = obj["config"]
            return {
                "arch": cfg["arch"],
                "width": cfg.get("width"),
                "in_chans": cfg["preprocessing"]["in_chans"],
                "image_size": cfg["image_size"],
                "preprocessing": cfg["preprocessing"],
            }
    return {}


def backbone_for(
    weights: str,
    arch: str | None = None,
    width: int | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    build=build_backbone,
) -> tuple[nn.Module, Preprocessing, int]:
    """(backbone, preprocessing, input size) for ``weights`` (a path, or ``"random"`` for random init with
    ``seed``). Options left as None come from the weights' JSON/checkpoint, else resnet50 / 1 channel / 224.
    ``build(arch, in_chans=, width=)`` makes the module (``models.build_encoder`` for segmentation encoders).
    Raises ``UsageError`` when the weights are unreadable or do not fit the architecture."""
    info = {} if weights == "random" else weights_info(weights)
    if weights != "random" and not os.path.isfile(weights):
        raise UsageError(f"weights file {weights} does not exist (use --weights random for the random-init baseline)")
    arch = arch or info.get("arch") or "resnet50"
    width = width if width is not None else info.get("width")
    prep = Preprocessing.from_json(info.get("preprocessing", {}))
    if in_chans is not None:
        prep.in_chans = in_chans
    elif "in_chans" in info:
        prep.in_chans = int(info["in_chans"])
    size = image_size or int(info.get("image_size") or 224)
    torch.manual_seed(seed)
    try:
        backbone = build(arch, in_chans=prep.in_chans, width=width)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if weights != "random":
        report = load_pretrained(backbone, weights, verbose=False)
        if report.missing or report.mismatched:
            bad = report.missing + report.mismatched
            raise UsageError(
                f"weights {weights} do not fit {arch}: {len(report.missing)} missing and {len(report.mismatched)} "
                f"mismatched tensors (e.g. {bad[0]}); wrong --arch/--width?"
            )
    return backbone, prep, size


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvmmed eval",
        description="Evaluate a backbone on a labelled set (one sub-folder per class, or a CSV "
        "path,label[,split]): a logistic-regression linear probe or a kNN classifier on frozen features, or "
        "end-to-end fine-tuning with a linear classifier; prints accuracy and balanced accuracy, writes a "
        "confusion-matrix PNG. Protocol: see lvmmed_ext/eval/probe.py. Segmentation (U-Net fine-tuning on "
        "image/mask pairs, Dice): lvmmed eval segment --help.",
    )
    p.add_argument("method", choices=METHODS)
    p.add_argument("--weights", required=True, help="exported backbone .pth, a checkpoint, or 'random' (random init)")
    p.add_argument("--data", required=True, help="labelled folder (one sub-folder per class) or CSV path,label[,split]")
    p.add_argument(
        "--out", default=None, help="folder for results JSON and the confusion-matrix PNG (default runs/eval-<time>)"
    )
    p.add_argument("--arch", default=None, help="backbone (default: from the weights' JSON, else resnet50)")
    p.add_argument("--width", type=int, default=None, help="ResNet base width (default: from the JSON, else 64)")
    p.add_argument(
        "--in-chans", type=int, choices=(1, 3), default=None, help="input channels (default: from the JSON, else 1)"
    )
    p.add_argument("--image-size", type=int, default=None, help="input side (default: from the JSON, else 224)")
    p.add_argument(
        "--test-frac", type=float, default=0.3, help="test fraction per class when the CSV has no split column"
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="few-shot: keep the labels of this fraction of each class's training files (at least one; the test "
        "set is unchanged), e.g. 0.01 0.1 (1.0)",
    )
    p.add_argument("--seed", type=int, default=0, help="split / random-init / cross-validation seed")
    p.add_argument("--l2", default="auto", help="linear-probe L2 penalty, or 'auto' (3-fold CV on the training set)")
    p.add_argument("--k", type=int, default=20, help="kNN neighbours")
    p.add_argument("--epochs", type=int, default=10, help="finetune: epochs over the training images (10)")
    p.add_argument("--lr", type=float, default=1e-3, help="finetune: AdamW lr of the classifier (1e-3)")
    p.add_argument("--backbone-lr-mult", type=float, default=0.1, help="finetune: backbone lr = --lr x this (0.1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "segment":
        from .segment import main as segment_main

        return segment_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        l2 = args.l2 if args.l2 == "auto" else float(args.l2)
    except ValueError:
        print(f"lvmmed eval: error: --l2 must be a number or 'auto', got {args.l2!r}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", f"eval-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        summary = evaluate(
            [args.method], args.weights, args.data, out=out, arch=args.arch, width=args.width, in_chans=args.in_chans,
            image_size=args.image_size, test_frac=args.test_frac, seed=args.seed, l2=l2, k=args.k, device=args.device,
            batch_size=args.batch_size, workers=args.workers, label_fraction=args.label_fraction, epochs=args.epochs,
            lr=args.lr, backbone_lr_mult=args.backbone_lr_mult,
        )  # fmt: skip
    except UsageError as e:
        print(f"lvmmed eval: error: {e}", file=sys.stderr)
        return 2
    r = summary["results"][args.method]
    print(
        f"{args.method} ({summary['arch']}, weights {args.weights}): accuracy {r['accuracy']:.4f}, balanced accuracy "
        f"{r['balanced_accuracy']:.4f} on {r['n_test']} test images ({r['n_train']} train, {len(summary['classes'])} "
        f"classes; split: {summary['split']})"
    )
    if summary["unreadable"]:
        print(f"warning: {summary['unreadable']} unreadable image(s) skipped", file=sys.stderr)
    print(f"confusion matrix: {r.get('confusion_png')}\nresults: {summary['results_json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
