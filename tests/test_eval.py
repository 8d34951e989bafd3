"""Evaluation: metrics, the grouped split, linear probe / kNN, labelled data loading, the eval command, and the
demo's data and labelled task."""

import csv
import json
import os

import cv2
import numpy as np
import pytest
import torch
from train_utils import make_image_folder, tiny_config

from lvmmed_ext.cli import main as lvmmed
from lvmmed_ext.data import Preprocessing
from lvmmed_ext.errors import UsageError
from lvmmed_ext.eval import evaluate, finetune, fit_logistic, knn_predict, load_labelled, scores, split_indices
from lvmmed_ext.eval.probe import label_subset
from lvmmed_ext.models import build_backbone
from lvmmed_ext.train import pretrain


def test_scores_and_balanced_accuracy():
    s = scores(np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 0, 0]), 2)
    assert s["accuracy"] == 0.8 and s["balanced_accuracy"] == 0.5 and s["confusion"] == [[4, 0], [1, 0]]
    assert scores(np.array([2]), np.array([2]), 3)["balanced_accuracy"] == 1.0  # absent classes are not averaged


def test_split_is_grouped_stratified_and_seeded():
    labels = np.repeat([0, 1], 20)
    groups = np.repeat(np.arange(10), 4)  # 5 files per class, 4 slices each
    train, test = split_indices(labels, groups, 0.3, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(40))
    assert not set(groups[train]) & set(groups[test])  # no file on both sides
    for c in (0, 1):
        assert 0 < (labels[test] == c).sum() < 20
    again = split_indices(labels, groups, 0.3, seed=0)
    assert np.array_equal(again[1], test) and not np.array_equal(split_indices(labels, groups, 0.3, seed=1)[1], test)
    with pytest.raises(UsageError, match="test-frac must be in"):
        split_indices(labels, groups, 1.0, 0)


def test_label_subset_is_grouped_stratified_nested_in_train_and_seeded():
    labels = np.repeat([0, 1, 2], 40)
    groups = np.repeat(np.arange(30), 4)  # 10 files per class, 4 slices each
    train, test = split_indices(labels, groups, 0.3, seed=0)
    for fraction in (0.01, 0.1, 0.5):
        kept = label_subset(labels, groups, train, fraction, seed=0)
        assert set(kept) <= set(train) and np.array_equal(kept, np.sort(kept))
        for c in (0, 1, 2):
            in_c = train[labels[train] == c]
            n = (labels[kept] == c).sum()
            assert n >= max(4, fraction * in_c.size) and n < in_c.size  # at least one file and the fraction
        for g in np.unique(groups[kept]):  # whole files only
            assert set(np.flatnonzero(groups == g)) <= set(kept)
        assert np.array_equal(kept, label_subset(labels, groups, train, fraction, seed=0))
    assert np.array_equal(label_subset(labels, groups, train, 1.0, seed=0), train)
    assert not np.array_equal(label_subset(labels, groups, train, 0.3, 0), label_subset(labels, groups, train, 0.3, 1))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UsageError, match=r"--label-fraction must be in \(0, 1\]"):
            label_subset(labels, groups, train, bad, 0)


def test_linear_probe_and_knn_on_separable_features():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 5)) + [4, 0, 0, 0, 0], rng.normal(0, 1, (30, 5)) - [4, 0, 0, 0, 0]])
    y = np.repeat([0, 1], 30)
    predict = fit_logistic(x, y, 2, l2=1e-3)
    assert (predict(x) == y).mean() == 1.0
    assert (knn_predict(x, y, x + 0.01, 2, k=5) == y).mean() == 1.0


def _labelled_folder(root, n=8):
    rng = np.random.default_rng(0)
    for c, level in (("bright", 200), ("dark", 40)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(level, 20, (24, 24)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / c / f"{i}.png"), img)
    return root


def test_load_labelled_folder_and_csv(tmp_path):
    root = _labelled_folder(tmp_path / "lab")
    data = load_labelled(str(root), Preprocessing())
    assert data.classes == ["bright", "dark"] and len(data.images) == 16 and data.split is None
    assert data.labels.tolist() == [0] * 8 + [1] * 8
    rows = [("path", "label", "split")] + [
        (f"lab/{c}/{i}.png", c, "train" if i < 5 else "test") for c in ("bright", "dark") for i in range(8)
    ]
    with open(tmp_path / "l.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    data = load_labelled(str(tmp_path / "l.csv"), Preprocessing())
    assert data.split.tolist().count("test") == 6 and data.classes == ["bright", "dark"]


def test_load_labelled_errors(tmp_path):
    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(UsageError, match="has no class sub-folders"):
        load_labelled(str(tmp_path / "flat"), Preprocessing())
    (tmp_path / "one" / "only").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "one" / "only" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(UsageError, match="has 1 class"):
        load_labelled(str(tmp_path / "one"), Preprocessing())
    (tmp_path / "bad.csv").write_text("a.png,x,validation\n")
    with pytest.raises(UsageError, match="split must be train or test"):
        load_labelled(str(tmp_path / "bad.csv"), Preprocessing())
    (tmp_path / "missing.csv").write_text("nope.png,x\n")
    with pytest.raises(UsageError, match="lists 1 missing file"):
        load_labelled(str(tmp_path / "missing.csv"), Preprocessing())


def test_evaluate_random_init_writes_results(tmp_path):
    root = _labelled_folder(tmp_path / "lab")
    out = tmp_path / "eval"
    s = evaluate(["linear-probe", "knn"], "random", str(root), out=str(out), arch="resnet18", width=4, image_size=32,
                 test_frac=0.25, k=3)  # fmt: skip
    for m in ("linear-probe", "knn"):
        r = s["results"][m]
        assert r["n_test"] == 4 and r["n_train"] == 12 and r["accuracy"] == 1.0  # brightness is trivially linear
        assert os.path.isfile(r["confusion_png"])
    assert s["results"]["linear-probe"]["l2"] in (1e-3, 1e-2, 1e-1, 1.0)
    assert json.loads((out / "results_random.json").read_text())["classes"] == ["bright", "dark"]
    few = evaluate(["knn"], "random", str(root), arch="resnet18", width=4, image_size=32, test_frac=0.25, k=3,
                   label_fraction=0.1)  # fmt: skip
    assert few["results"]["knn"]["n_train"] == 2 and few["results"]["knn"]["n_test"] == 4  # one file per class
    assert "labels of 0.1 of each class's training files (2 images)" in few["split"]


def test_finetune_through_evaluate_is_deterministic(tmp_path):
    root = _labelled_folder(tmp_path / "lab")
    kw = dict(arch="resnet18", width=4, image_size=32, test_frac=0.25, epochs=2, batch_size=4)
    a = evaluate(["finetune", "knn"], "random", str(root), out=str(tmp_path / "ft"), **kw)
    r = a["results"]["finetune"]
    assert (r["n_train"], r["n_test"], r["epochs"], r["lr"]) == (12, 4, 2, 1e-3) and 0 <= r["accuracy"] <= 1
    assert os.path.isfile(r["confusion_png"])
    assert a["results"]["knn"]["accuracy"] == 1.0  # frozen features come from the backbone before fine-tuning
    b = evaluate(["finetune"], "random", str(root), **kw)
    assert b["results"]["finetune"]["confusion"] == r["confusion"]


def test_finetune_bad_settings(tmp_path):
    root = _labelled_folder(tmp_path / "lab")
    with pytest.raises(UsageError, match="--epochs must be >= 1, got 0"):
        evaluate(["finetune"], "random", str(root), arch="resnet18", width=4, image_size=32, epochs=0)
    with pytest.raises(UsageError, match="--lr must be > 0"):
        evaluate(["finetune"], "random", str(root), arch="resnet18", width=4, image_size=32, lr=0.0)


class _Stripes(torch.utils.data.Dataset):
    """The contract of LabelledImages, ``ds[i] -> (image, i)``: even images vertical stripes, odd horizontal."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        wave = torch.sin(torch.arange(32.0) * 0.8)
        v, h = wave.view(1, 32).expand(32, 32), wave.view(32, 1).expand(32, 32)
        noise = 0.3 * torch.randn(n, 32, 32, generator=g)
        self.x = torch.stack([(v if i % 2 == 0 else h) for i in range(n)]).add(noise).unsqueeze(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i


def test_finetune_trains_the_backbone_in_place_and_learns():
    torch.manual_seed(0)
    net = build_backbone("resnet18", in_chans=1, width=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    labels = np.arange(24) % 2
    pred = finetune(net, _Stripes(), labels, np.arange(17), np.arange(17, 24), 2, epochs=3, batch_size=4, lr=1e-2)
    assert pred.shape == (7,) and set(pred.tolist()) <= {0, 1}  # 17 = 4x4 + 1: no BatchNorm batch of one
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert (pred == labels[17:]).mean() > 0.5  # better than chance from random init in 12 steps


def test_eval_command_with_exported_weights_and_errors(tmp_path, capsys):
    data = make_image_folder(tmp_path / "unlabelled", n=8)
    run = pretrain(tiny_config(data, tmp_path / "run", steps=2))
    root = _labelled_folder(tmp_path / "lab")
    assert lvmmed(["eval", "knn", "--weights", run.weights, "--data", str(root), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "knn (resnet18, weights" in out and "accuracy" in out and "balanced accuracy" in out
    for argv, match in (
        (["--weights", str(tmp_path / "none.pth")], "does not exist"),
        (["--weights", str(root / "bright" / "0.png")], "cannot read weights"),
        (["--weights", run.weights, "--arch", "resnet50"], "do not fit resnet50"),
        (["--weights", "random", "--label-fraction", "0"], "--label-fraction must be in (0, 1], got 0.0"),
    ):
        assert lvmmed(["eval", "linear-probe", "--data", str(root), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err


def test_mni152_tissue_task(tmp_path):
    from lvmmed_ext.data.demo import mni152_paths, mni152_tissue_task

    if mni152_paths() is None:
        pytest.skip("nilearn (MNI152 template) is not installed")
    path = mni152_tissue_task(str(tmp_path), per_class_train=6, per_class_test=4)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 6 + 3 * 4
    z = {s: {int(os.path.basename(r["path"])[1:4]) for r in rows if r["split"] == s} for s in ("train", "test")}
    assert min(abs(a - b) for a in z["train"] for b in z["test"]) >= 5  # held-out slabs, 2-slice margins
    data = load_labelled(path, Preprocessing())
    assert data.classes == ["csf", "grey_matter", "white_matter"] and len(data.images) == 30


def test_mni152_region_task_has_no_leakage_and_position_labels(tmp_path):
    """The anatomical task: balanced classes; every label is the band of its centre's MNI y coordinate (never
    within the 8 mm gaps); train and test patches come from axial slices at least 5 mm apart, so no image region
    is in both; centres are in grey/white matter (not decided by being CSF or background)."""
    from lvmmed_ext.data.demo import REGIONS, mni152_paths, mni152_region_task, slab_slices

    if mni152_paths() is None:
        pytest.skip("nilearn (MNI152 template) is not installed")
    path = mni152_region_task(str(tmp_path), per_class_train=8, per_class_test=5)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 8 + 4 * 5
    bands = {name: (lo, hi) for name, lo, hi in REGIONS}
    parsed = []
    for r in rows:
        name = os.path.basename(r["path"])  # z{z}_x{x}_y{y}.png, voxel indices of the centre
        z, x, y = int(name[1:4]), int(name[6:9]), int(name[11:14])
        lo, hi = bands[r["label"]]
        assert lo <= y - 134 <= hi, (r, "the label is the band of the centre's MNI y = index - 134")
        parsed.append((r["split"], z, x, y))
    z = {s: {p[1] for p in parsed if p[0] == s} for s in ("train", "test")}
    assert min(abs(a - b) for a in z["train"] for b in z["test"]) >= 5
    assert z["train"] <= set(slab_slices("train")) and z["test"] <= set(slab_slices("test"))
    assert not set(slab_slices("train")) & set(slab_slices("test"))
    for split in ("train", "test"):
        counts = [sum(r["label"] == c and r["split"] == split for r in rows) for c, _, _ in REGIONS]
        assert counts == [8 if split == "train" else 5] * 4
    data = load_labelled(path, Preprocessing())
    assert data.classes == ["anterior", "mid_anterior", "mid_posterior", "posterior"]
    again = mni152_region_task(str(tmp_path / "again"), per_class_train=8, per_class_test=5)
    with open(again, newline="") as f:
        assert list(csv.DictReader(f)) == rows  # the same seed gives the same patches


def test_demo_data_builder():
    from lvmmed_ext.data.demo import pretrain_images

    try:
        images = pretrain_images(Preprocessing(max_side=128), log=lambda *a: None)
    except UsageError:
        pytest.skip("none of the demo packages is installed")
    assert len(images) > 50
    img, scale = images.image(0)
    assert img.ndim == 2 and img.dtype == np.float32
