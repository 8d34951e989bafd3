"""The ``lvmmed`` command: ``lvmmed <command> [args]``; each command lives in its own module, imported lazily."""

from __future__ import annotations

import importlib
import sys

# command -> (module with a main(argv) -> int, one-line help)
COMMANDS = {
    "info": ("lvmmed_ext.info", "build and runtime facts (versions, CUDA, compiled backends, ops)"),
    "bench": ("lvmmed_ext.bench.cli", "benchmark suite: ours vs peers, JSON out, regression gate"),
    "scan": ("lvmmed_ext.data.manifest", "index data folders (parallel header reads) into manifests later runs reuse"),
    "prepare": ("lvmmed_ext.data.shards", "decode + preprocess image folders into tar shards that pretrain streams"),
    "pretrain": ("lvmmed_ext.train.cli", "self-supervised pretraining on a folder of images, or --demo"),
    "export": ("lvmmed_ext.train.export", "backbone of a checkpoint -> torchvision-style .pth + preprocessing .json"),
    "eval": (
        "lvmmed_ext.eval.cli",
        "linear-probe / kNN / fine-tune evaluation on labelled images; `eval segment`: U-Net fine-tuning, Dice",
    ),
    "ablate": (
        "lvmmed_ext.train.ablate",
        "gm ablations (paper Table 6) + InfoNCE/VICReg: same budget, probe + kNN table",
    ),
}


def _usage() -> str:
    lines = ["usage: lvmmed <command> [args]   (lvmmed <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lvmmed: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
