"""``lvmmed pretrain`` (also ``python -m lvmmed_ext.train``) and ``lvmmed export``. The options come from the table of
:mod:`lvmmed_ext.train.config`; the run from :func:`lvmmed_ext.train.trainer.pretrain`."""

from __future__ import annotations

import argparse
import os
import time

from ..data.demo import DEMO_HEAD_OPTS, demo_label_specs
from ..errors import UsageError, run_command
from ..eval.demo import evaluate_demo
from ..heads import head_needs
from . import checkpoint as ckpt_io
from .config import VOLUME_ARCHS, add_train_arguments, build_config, load_config_file
from .trainer import pretrain


def parser() -> argparse.ArgumentParser:
    """The ``lvmmed pretrain`` options (from ``TRAIN_OPTIONS``)."""
    p = argparse.ArgumentParser(
        prog="lvmmed pretrain",
        description="Self-supervised pretraining of a backbone on a folder of medical images (PNG/JPEG/TIFF, "
        "DICOM incl. multi-frame, NIfTI sliced along --axis), or on the offline demo images (--demo). Writes "
        "checkpoint.pt, log.csv, loss.png, config.json and the exported backbone.pth/.json to --out.",
    )
    add_train_arguments(p, "pretrain")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("lvmmed pretrain", lambda: _run(args), "interrupted; continue with --resume <run folder>")


def _run(args: argparse.Namespace) -> int:
    saved = None
    resume = getattr(args, "resume", None)
    if resume:
        resume = ckpt_io.resolve_checkpoint_path(resume)
        saved = ckpt_io.load_checkpoint(resume)
    config = getattr(args, "config", None)
    file_settings = load_config_file(config) if config else None
    demo = getattr(args, "demo", False)
    if demo and hasattr(args, "data"):
        raise UsageError("--demo uses the offline demo images; drop --data (or drop --demo to train on --data)")
    has_labels = hasattr(args, "labels") or (file_settings or {}).get("labels")
    if not demo and saved is None and not hasattr(args, "data") and not (file_settings or {}).get("data"):
        if not has_labels:
            raise UsageError("no data: pass --data DIR (a folder of images), --demo, or a --config file with 'data'")
    cfg = build_config(args, saved, file_settings)
    demo = cfg.data == "demo"
    if demo and saved is None:
        cfg.head_opts = {**DEMO_HEAD_OPTS.get(cfg.loss, {}), **cfg.head_opts}
    if not cfg.out:
        cfg.out = (
            os.path.dirname(os.path.abspath(resume))
            if resume
            else os.path.join("runs", f"{'demo' if demo else 'pretrain'}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
    if demo and saved is None and not cfg.labels and head_needs(cfg.loss, "labels"):
        cfg.labels = demo_label_specs(os.path.join(cfg.out, "eval"), cfg.seed)
    result = pretrain(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(
        f"pretraining done: {result.step} steps in {result.seconds:.0f} s ({result.images_per_s:.1f} images/s)"
        + (f", {result.skipped_files} unreadable file(s) skipped" if result.skipped_files else "")
    )
    print(run_summary(result))
    eval_lines = []
    if demo and not getattr(args, "no_eval", False):
        if cfg.arch in VOLUME_ARCHS:
            print(f"notice: the demo evaluation probes 2D backbones; skipped for --arch {cfg.arch}")
        else:
            eval_lines = evaluate_demo(result.weights, result.out, cfg.seed, cfg.preprocessing, cfg.arch, cfg.width,
                                       cfg.image_size)  # fmt: skip
    print("outputs:")
    print(f"  checkpoint  {result.checkpoint}")
    print(f"  backbone    {result.weights}  (+ {os.path.basename(result.weights_json or '')}: preprocessing)")
    print(f"  log         {result.log_csv}")
    print(f"  loss plot   {result.plot}")
    for line in eval_lines:
        print(line)
    return 0


def run_summary(result) -> str:
    """One line on the end of training: the loss and matching accuracy as means over the last tenth of the steps,
    beside what a random matching would score."""
    if result.loss_avg is None:
        return f"final loss {result.final_loss:.4f}"
    text = f"loss {result.loss_avg:.4f} (mean of the last {result.tail_steps} steps"
    text += "" if result.chance_loss is None else f"; a random matching scores {result.chance_loss:g}"
    text += ")"
    if result.match_avg is not None:
        text += f", noise-free matching accuracy {result.match_avg:.2f}"
        text += "" if result.chance_match is None else f" (chance {result.chance_match:.2f})"
    return text


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lvmmed export",
        description="Write the backbone of a pretraining checkpoint as a plain state_dict with torchvision key "
        "names (no classifier) to OUT, plus OUT's .json with the preprocessing used (preset, window, "
        "percentiles, channels, image size, mean/std) and provenance.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt or a run folder")
    p.add_argument("out", help="output .pth path (a folder gets backbone.pth)")
    args = p.parse_args(argv)

    def run() -> int:
        weights, info = ckpt_io.export_backbone(args.checkpoint, args.out)
        print(f"backbone: {weights}\npreprocessing: {info}")
        return 0

    return run_command("lvmmed export", run)


if __name__ == "__main__":
    raise SystemExit(main())
