"""The demo's evaluation (``lvmmed pretrain --demo``, ``lvmmed ablate --demo``): its labelled MNI152 tasks loaded
for the linear probe and kNN, and the comparison of a pretrained backbone with the same architecture at random
initialisation on them and on the demo's segmentation task."""

from __future__ import annotations

import os
import time

from ..data.demo import demo_task_csvs
from ..data.presets import Preprocessing
from ..errors import UsageError
from ..system import default_device
from .classify import evaluate
from .probe import LabelledData, load_labelled
from .segment import demo_segmentation, describe, format_table


def demo_tasks(folder: str, seed: int, prep: Preprocessing) -> list[tuple[str, str, LabelledData]]:
    """The demo's labelled tasks (``lvmmed_ext.data.demo.DEMO_TASKS``), each built in ``folder/<name>`` with
    ``seed`` and loaded with ``prep``: a list of (name, description, ``LabelledData``); empty (after a notice)
    without nilearn."""
    try:
        csvs = demo_task_csvs(folder, seed)
    except UsageError as e:
        print(f"notice: demo evaluation skipped: {e}")
        return []
    return [(name, about, load_labelled(csv_path, prep)) for name, about, csv_path in csvs]


def evaluate_demo(weights: str, out: str, seed: int, prep: Preprocessing, arch: str, width: int | None,
                  image_size: int) -> list[str]:  # fmt: skip
    """Linear probe and kNN of the pretrained ``weights`` vs the same architecture at random init on the demo's
    tasks, then U-Net fine-tuning from both on the demo's segmentation task, in ``out/eval``; prints comparison
    tables and returns lines for the output summary."""
    t0 = time.perf_counter()
    folder = os.path.join(out, "eval")
    tasks = demo_tasks(folder, seed, prep)
    methods = ["linear-probe", "knn"]
    device = default_device()
    common = dict(device=device, workers=0, seed=seed)
    random_kw = dict(arch=arch, width=width, in_chans=prep.in_chans, image_size=image_size)
    lines = []
    for name, about, data in tasks:
        task_dir = os.path.join(folder, name)
        runs = {
            "pretrained": evaluate(methods, weights, data, out=task_dir, label="pretrained", **common),
            "random init": evaluate(methods, "random", data, out=task_dir, label="random_init", **random_kw, **common),
        }
        r0 = runs["pretrained"]["results"]["linear-probe"]
        print(f"evaluation: {about}; {r0['n_train']} train / {r0['n_test']} test patches from held-out axial slabs "
              f"(balanced accuracy of chance: {1 / len(data.classes):.2f})")  # fmt: skip
        print(f"  {'backbone':<12} {'method':<13} {'accuracy':>9} {'balanced':>9}")
        for who, summary in runs.items():
            for m in methods:
                r = summary["results"][m]
                print(f"  {who:<12} {m:<13} {r['accuracy']:>9.3f} {r['balanced_accuracy']:>9.3f}")
        lines.append(f"  eval {name:<7}{task_dir}/  (labels.csv, confusion_*.png, results_*.json)")
    seg_dir = os.path.join(folder, "segment")
    seg = demo_segmentation(weights, seg_dir, seed, device=device)
    if seg:
        print(f"{describe(seg)}; pretrained vs random-init encoder, Dice on held-out axial slabs")
        print(format_table(seg))
        lines.append(f"  eval segment {seg_dir}/  (data/pairs.csv, overlay.png, results.json)")
    if tasks or seg:
        print(f"evaluated in {time.perf_counter() - t0:.0f} s")
        print(READING)
    return lines


#: How to read the demo's numbers (printed after them).
READING = (
    "reading: a linear probe and a kNN classifier on the frozen pooled features; pretrained above random init on "
    "the region task means the pretraining learned anatomy, while tissue is decided by intensity, which the "
    "augmentation teaches every loss to ignore (a control); the segmentation fine-tunes the whole encoder from "
    "either start and has shown no gain at this budget. One seed is an anecdote (the same seed moves by up to 0.06 "
    "between machines): the 3-seed study of these settings is docs/STUDY.md (lvmmed ablate --demo --budget medium "
    "--seeds 0,1,2)."
)
