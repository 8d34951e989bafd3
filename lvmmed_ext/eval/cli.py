"""``lvmmed eval linear-probe|knn|finetune --weights W --data DIR``: evaluation of a backbone on labelled data
(:mod:`.classify`); ``lvmmed eval segment ...``: U-Net fine-tuning on image/mask pairs (:mod:`.segment`)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import UsageError, run_command
from ..system import default_device
from .classify import METHODS, evaluate
from .segment import main as segment_main


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
    p.add_argument("--device", default=default_device())
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "segment":
        return segment_main(argv[1:])
    args = _parser().parse_args(argv)
    return run_command("lvmmed eval", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        l2 = args.l2 if args.l2 == "auto" else float(args.l2)
    except ValueError:
        raise UsageError(f"--l2 must be a number or 'auto', got {args.l2!r}") from None
    out = args.out or os.path.join("runs", f"eval-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    summary = evaluate(
        [args.method], args.weights, args.data, out=out, arch=args.arch, width=args.width, in_chans=args.in_chans,
        image_size=args.image_size, test_frac=args.test_frac, seed=args.seed, l2=l2, k=args.k, device=args.device,
        batch_size=args.batch_size, workers=args.workers, label_fraction=args.label_fraction, epochs=args.epochs,
        lr=args.lr, backbone_lr_mult=args.backbone_lr_mult,
    )  # fmt: skip
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
