"""Segmentation: U-Net shapes and skip wiring for every encoder, exported weights into the U-Net, Dice against
float64 loops, the Dice + CE loss, image/mask pairs and their errors, `lvmmed eval segment` end to end (2D, NIfTI
slices, 3D), and the demo's MNI152 segmentation task."""

import json
import os

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lvmmed_ext.cli import main as lvmmed
from lvmmed_ext.data import Preprocessing
from lvmmed_ext.errors import UsageError
from lvmmed_ext.eval import dice_per_class, evaluate_segmentation, load_pairs
from lvmmed_ext.eval.segment import SegData, _scores, dice_ce_loss, list_pairs, mean_dice, parse_classes
from lvmmed_ext.models import (
    UNet,
    UNet3DEncoder,
    VisionTransformer,
    backbone_state_dict,
    build_unet,
    resnet18,
    resnet50,
)

# ---------------------------------------------------------------- models


def _tiny_vit():
    return VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)


ENCODERS = {
    "resnet18": lambda: resnet18(width=4),
    "resnet50": lambda: resnet50(width=4),
    "vit": _tiny_vit,
    "unet3d": lambda: UNet3DEncoder(width=4, levels=3),
}
INPUTS = {
    "resnet18": (2, 1, 64, 48),
    "resnet50": (2, 1, 33, 70),  # odd sides: every step upsamples to its skip's size
    "vit": (2, 1, 32, 48),
    "unet3d": (2, 1, 12, 16, 20),
}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_unet_output_is_at_input_resolution(name):
    net = UNet(ENCODERS[name](), out_channels=3)
    x = torch.randn(*INPUTS[name])
    assert net(x).shape == (x.shape[0], 3, *x.shape[2:])
    assert net.eval()(x[:1]).shape == (1, 3, *x.shape[2:])


def test_vit_b_16_unet_upsamples_progressively():
    net = build_unet("vit_b_16", out_channels=2, image_size=32)
    assert net.block_strides == [8, 4, 2, 1] and net.decoder_channels == [128, 64, 32, 16]
    assert [b.block[0].in_channels for b in net.blocks] == [768, 128, 64, 32]  # no skips: a ViT has one map
    assert net(torch.randn(1, 1, 32, 64)).shape == (1, 2, 32, 64)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_stage_feeds_the_output(name):
    """Skip wiring: the decoder's first convolution of each step takes the previous step plus the encoder map of its
    stride, and the output's gradient reaches every map the encoder produces."""
    net = UNet(ENCODERS[name](), out_channels=2)
    enc = net.encoder
    skips = dict(zip(enc.stage_strides, enc.stage_channels))
    cin = enc.stage_channels[-1]
    for s, block, cout in zip(net.block_strides, net.blocks, net.decoder_channels):
        assert block.block[0].in_channels == cin + skips.get(s, 0)
        cin = cout
    assert set(enc.stage_strides[:-1]) <= set(net.block_strides)  # every shallower map is some step's skip
    maps, stages = [], enc.stages

    def spy(x):
        out = stages(x)
        for m in out:
            m.retain_grad()
        maps.extend(out)
        return out

    enc.stages = spy
    net(torch.randn(*INPUTS[name])).square().sum().backward()
    assert len(maps) == len(enc.stage_channels)
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)


def test_resnet_stages_match_forward_features_and_channels():
    for net, x in ((resnet18(width=8), torch.randn(1, 1, 64, 64)), (resnet50(width=4), torch.randn(1, 1, 65, 40))):
        maps = net.eval().stages(x)
        assert [m.shape[1] for m in maps] == net.stage_channels
        assert [tuple(m.shape[2:]) for m in maps] == [
            (-(-x.shape[2] // s), -(-x.shape[3] // s)) for s in net.stage_strides
        ]
        torch.testing.assert_close(maps[-1], net.forward_features(x))
    assert resnet50(width=64).stage_channels == [64, 256, 512, 1024, 2048]


def test_unet_keeps_the_encoder_names_and_exported_weights_load(tmp_path):
    src = resnet18(width=8, num_classes=5)  # a classifier head, as a torchvision checkpoint would have
    path = tmp_path / "backbone.pth"
    torch.save(backbone_state_dict(src), path)
    net = build_unet("resnet18", out_channels=4, width=8)
    assert set(net.encoder.state_dict()) == set(backbone_state_dict(src))
    assert {k for k in net.state_dict() if k.startswith("encoder.")} == {
        "encoder." + k for k in backbone_state_dict(src)
    }
    report = net.load_encoder(path, verbose=False)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    torch.testing.assert_close(net.encoder.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    enc3d = UNet3DEncoder(width=4, levels=3)  # the 3D encoder exports and loads on its own too
    assert build_unet("unet3d", 2, width=4, levels=3).load_encoder(enc3d.state_dict(), verbose=False).ok


def test_unet_errors():
    with pytest.raises(ValueError, match=r"decoder_channels must have 5 entries .*got \[8, 8\]"):
        UNet(resnet18(width=4), 2, decoder_channels=[8, 8])
    with pytest.raises(ValueError, match="out_channels must be >= 1"):
        UNet(resnet18(width=4), 0)
    with pytest.raises(ValueError, match="arch must be one of"):
        build_unet("resnet101", 2)


# ---------------------------------------------------------------- metrics and loss


def _dice_loop(pred, target, k):
    """Float64 loop: per class count |P|, |G|, |P and G| voxel by voxel."""
    out = []
    for c in range(k):
        p = g = both = 0.0
        for a, b in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
            p += a == c
            g += b == c
            both += a == c and b == c
        out.append(2 * both / (p + g) if p + g > 0 else float("nan"))
    return np.asarray(out, np.float64)


@given(
    k=st.integers(2, 5),
    shape=st.sampled_from([(1,), (7,), (3, 4), (2, 3, 5)]),
    seed=st.integers(0, 2**16),
)
def test_dice_matches_a_float64_loop(k, shape, seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.integers(0, k, shape), rng.integers(0, k, shape)
    if seed % 3 == 0:  # a class absent from both
        pred[pred == k - 1], target[target == k - 1] = 0, 0
    got, want = dice_per_class(pred, target, k), _dice_loop(pred, target, k)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=0, atol=1e-15)
    if seed % 3 == 0:
        assert np.isnan(got[k - 1])


def test_empty_class_rule():
    # class 2 is in neither map: NaN, left out of the mean; class 1 predicted but absent: Dice 0, counted
    d = dice_per_class(np.array([0, 1, 0, 0]), np.array([0, 0, 0, 0]), 3)
    assert d[0] == pytest.approx(6 / 7) and d[1] == 0 and np.isnan(d[2])
    assert mean_dice(d) == 0.0
    assert np.isnan(mean_dice(dice_per_class(np.zeros(4, int), np.zeros(4, int), 3)))  # nothing but background


def test_per_image_and_per_volume_scores_match_loops():
    rng = np.random.default_rng(0)
    k = 3
    masks = [rng.integers(0, k, (4, 5, 6)).astype(np.uint8), rng.integers(0, 2, (1, 5, 6)).astype(np.uint8)]
    preds = {0: rng.integers(0, k, (4, 5, 6)).astype(np.uint8), 1: rng.integers(0, 2, (1, 5, 6)).astype(np.uint8)}
    preds[0][2][preds[0][2] == 2] = 1  # slice 2: class 2 only in the ground truth
    masks[0][3][masks[0][3] == 2] = 0  # slice 3 of the volume has no class 2 in its mask
    preds[0][3][preds[0][3] == 2] = 0  # ... nor in its prediction: no Dice there
    data = SegData([m.astype(np.float16) for m in masks], masks, ["vol.nii.gz", "img.png"], ["bg", "a", "b"], None)
    s = _scores(data, preds, volumes=False)
    per_image = [_dice_loop(p, g, k) for f in (0, 1) for p, g in zip(preds[f], masks[f])]
    want = [np.nanmean([d[c] for d in per_image if not np.isnan(d[c])]) for c in range(k)]
    assert s["n_test_images"] == 5
    np.testing.assert_allclose([s["dice"][c] for c in ("bg", "a", "b")], want, rtol=1e-12)
    assert s["mean_dice"] == pytest.approx(np.mean(want[1:]), rel=1e-12)
    assert list(s["volume_dice"]) == ["vol.nii.gz"]  # single-slice files have no 3D Dice
    np.testing.assert_allclose(list(s["volume_dice"]["vol.nii.gz"].values()), _dice_loop(preds[0], masks[0], k))
    s3 = _scores(data, preds, volumes=True)  # 3D models: the volumes are the test images
    assert s3["dice"] == s3["volume_dice_mean"] and s3["n_test_images"] == 2


def test_dice_ce_loss_matches_its_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5))
    p = logits.softmax(1).detach().numpy()
    ce = -np.mean(np.log(np.take_along_axis(p, target.numpy()[:, None], 1)))
    soft = []
    for c in range(3):
        g = (target.numpy() == c).astype(np.float64)
        soft.append((2 * (p[:, c] * g).sum() + 1) / (p[:, c].sum() + g.sum() + 1))
    loss = dice_ce_loss(logits, target)
    assert loss.item() == pytest.approx(0.5 * ce + 0.5 * (1 - np.mean(soft)), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- data


def _pairs(root, n=8, size=32, seed=0, layout="folder"):
    """``n`` 8-bit images of a bright disc (label 1) with a darker ring around it (label 2), and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    rows = []
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cy, cx = rng.uniform(10, size - 10, 2)
        r = rng.uniform(3, 6)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask = np.where(d2 < r * r, 1, np.where(d2 < (r + 3) ** 2, 2, 0)).astype(np.uint8)
        img = np.clip(np.array([30, 220, 120])[mask] + rng.normal(0, 15, mask.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"c{i:02d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"c{i:02d}.png"), mask)
        rows.append(f"images/c{i:02d}.png,masks/c{i:02d}.png,{'test' if i % 4 == 3 else 'train'}")
    if layout == "csv":
        (root / "pairs.csv").write_text("image,mask,split\n" + "\n".join(rows) + "\n")
        return root / "pairs.csv"
    return root


def test_list_pairs_folder_and_csv(tmp_path):
    root = _pairs(tmp_path / "f", n=3)
    (root / "masks" / "c00.png").rename(root / "masks" / "c00.tif")  # matched by name without extension
    os.makedirs(root / "images" / "sub")
    os.makedirs(root / "masks" / "sub")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(root / "images" / "sub" / "v.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)), str(root / "masks" / "sub" / "v.nii.gz"))
    pairs = list_pairs(str(root))
    assert [(os.path.basename(a), os.path.basename(b)) for a, b, _ in pairs] == [
        ("c00.png", "c00.tif"), ("c01.png", "c01.png"), ("c02.png", "c02.png"), ("v.nii.gz", "v.nii.gz"),
    ]  # fmt: skip
    csv_path = _pairs(tmp_path / "c", n=4, layout="csv")
    pairs = list_pairs(str(csv_path))
    assert pairs[3] == (str(tmp_path / "c" / "images" / "c03.png"), str(tmp_path / "c" / "masks" / "c03.png"), "test")


def test_load_pairs_classes_binary_masks_and_downscaling(tmp_path):
    root = _pairs(tmp_path / "f", n=2, size=40)
    data = load_pairs(str(root), Preprocessing(max_side=20))
    assert data.classes == ["background", "class1", "class2"] and data.split is None
    assert data.images[0].shape == (1, 20, 20) and data.masks[0].shape == (1, 20, 20)
    assert set(np.unique(data.masks[0])) <= {0, 1, 2}
    assert load_pairs(str(root), Preprocessing(), parse_classes("bg,disc,ring,extra")).classes[3] == "extra"
    binary = tmp_path / "b"
    _pairs(binary, n=1)
    m = cv2.imread(str(binary / "masks" / "c00.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(binary / "masks" / "c00.png"), np.where(m == 1, 255, 0).astype(np.uint8))
    data = load_pairs(str(binary), Preprocessing())
    assert data.classes == ["background", "class1"] and set(np.unique(data.masks[0])) == {0, 1}
    assert parse_classes("3") == ["background", "class1", "class2"] and parse_classes(None) is None
    with pytest.raises(UsageError, match="--classes must give at least 2 distinct classes"):
        parse_classes("a,a")


def _run_fails(capsys, argv, match, out):
    assert lvmmed(["eval", "segment", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvmmed eval segment: error: ") and "\n" not in err
    assert match in err, err
    assert not out.exists()


TINY = ["--weights", "random", "--arch", "resnet18", "--width", "4", "--image-size", "32", "--epochs", "1"]


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    root = _pairs(tmp_path / "size", n=3)
    cv2.imwrite(str(root / "masks" / "c01.png"), np.zeros((16, 32), np.uint8))
    _run_fails(capsys, [*TINY, "--data", str(root)], "image/mask size mismatch: ", out)
    root = _pairs(tmp_path / "labels", n=3)
    _run_fails(capsys, [*TINY, "--data", str(root), "--classes", "2"],
               "holds label 2, outside the 2 declared classes 0..1 (--classes)", out)  # fmt: skip
    root = _pairs(tmp_path / "missing", n=3)
    os.remove(root / "masks" / "c02.png")
    _run_fails(capsys, [*TINY, "--data", str(root)], "missing mask: ", out)
    _run_fails(capsys, [*TINY, "--data", str(tmp_path / "nope")], "does not exist", out)
    _run_fails(capsys, [*TINY, "--data", str(tmp_path)], "must hold images/ and masks/ folders", out)
    csv_path = _pairs(tmp_path / "csv", n=4, layout="csv")
    os.remove(tmp_path / "csv" / "masks" / "c01.png")
    _run_fails(capsys, [*TINY, "--data", str(csv_path)], "lists a missing mask file", out)
    vols = tmp_path / "vols"
    for sub in ("images", "masks"):
        (vols / sub).mkdir(parents=True)
        for i in range(2):
            nib.save(nib.Nifti1Image(np.ones((20, 20, 12), np.int16), np.eye(4)), str(vols / sub / f"v{i}.nii.gz"))
    _run_fails(capsys, ["--weights", "random", "--arch", "unet3d", "--width", "4", "--crop", "16", "--data", str(vols)],
               "is 12x20x20 voxels, smaller than --crop 16x16x16", out)  # fmt: skip
    _run_fails(capsys, [*TINY, "--data", str(_pairs(tmp_path / "ok", n=4)), "--weights", str(tmp_path / "w.pth")],
               "does not exist", out)  # fmt: skip


def test_size_mismatch_names_both_files(tmp_path):
    root = _pairs(tmp_path, n=2)
    cv2.imwrite(str(root / "masks" / "c01.png"), np.zeros((16, 32), np.uint8))
    with pytest.raises(UsageError, match=r"images/c01.png is 32x32 but its mask .*masks/c01.png is 16x32"):
        load_pairs(str(root), Preprocessing())


# ---------------------------------------------------------------- end to end


def test_eval_segment_end_to_end_2d(tmp_path, capsys):
    csv_path = _pairs(tmp_path / "d", n=16, layout="csv")
    out = tmp_path / "out"
    argv = ["eval", "segment", *TINY, "--data", str(csv_path), "--epochs", "8", "--batch-size", "4",
            "--classes", "background,disc,ring", "--out", str(out), "--seeds", "0,1"]  # fmt: skip
    assert lvmmed(argv) == 0
    text = capsys.readouterr().out
    assert "12 train / 4 test images" in text and "random init" in text and " ± " in text
    results = json.loads((out / "results.json").read_text())
    assert (out / "overlay.png").stat().st_size > 0
    r = results["runs"]["random init"]
    assert list(r["per_seed"]) == ["0", "1"] and set(r["dice"]) == {"background", "disc", "ring"}
    assert r["mean_dice"] > 0.5  # bright discs in dark rings: learnt in a few epochs even from random init
    assert results["settings"]["grad_clip"] == 1.0 and results["settings"]["optimizer"] == "Adam"
    again = evaluate_segmentation("random", str(csv_path), arch="resnet18", width=4, image_size=32, epochs=8,
                                  batch_size=4, seeds=[1], classes="background,disc,ring")  # fmt: skip
    assert again["runs"]["random init"]["per_seed"]["1"]["dice"] == r["per_seed"]["1"]["dice"]  # deterministic


def test_exported_pretrained_weights_and_random_init_in_one_command(tmp_path, capsys):
    from train_utils import make_image_folder, tiny_config

    from lvmmed_ext.train import pretrain

    run = pretrain(tiny_config(make_image_folder(tmp_path / "imgs", n=8), tmp_path / "run", steps=2, ckpt_every=2))
    assert lvmmed(["export", run.checkpoint, str(tmp_path / "exp" / "backbone.pth")]) == 0
    weights = tmp_path / "exp" / "backbone.pth"
    net = build_unet("resnet18", out_channels=3, width=4)
    report = net.load_encoder(weights, verbose=False)
    assert report.missing == [] and report.mismatched == []
    out = tmp_path / "seg"
    csv_path = _pairs(tmp_path / "d", n=8, layout="csv")
    argv = ["eval", "segment", "--weights", str(weights), "--data", str(csv_path), "--epochs", "2", "--out", str(out)]
    assert lvmmed(argv) == 0  # arch, width and image size come from the export's JSON
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["pretrained", "random init"] and results["image_size"] == 32
    assert results["runs"]["pretrained"]["weights"] == str(weights) and results["width"] == 4


def _volumes(root, n=3, shape=(20, 20, 16)):
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        a = rng.integers(2, 6, 3)
        label[a[0] : a[0] + 8, a[1] : a[1] + 8, a[2] : a[2] + 5] = 1
        img = (400.0 * label + rng.normal(100, 30, shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "images" / f"v{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "masks" / f"v{i}.nii.gz"))
    return root


def test_nifti_volumes_sliced_for_2d_models_report_3d_dice(tmp_path):
    root = _volumes(tmp_path / "v")
    s = evaluate_segmentation("random", str(root), arch="resnet18", width=4, image_size=32, epochs=1, test_frac=0.3)
    assert s["n_test_files"] == 1 and s["n_test_images"] == 16  # the 16 axial slices of one volume
    r = s["runs"]["random init"]["per_seed"]["0"]
    (name,) = r["volume_dice"]  # one 3D Dice: the test volume's
    assert name.endswith(".nii.gz") and name in s["runs"]["random init"]["per_seed"]["0"]["volume_dice"]
    assert r["volume_mean_dice"] == mean_dice(np.array(list(r["volume_dice"][name].values()), np.float64))


def test_unet3d_on_whole_volumes(tmp_path):
    root = _volumes(tmp_path / "v")
    out = tmp_path / "out"
    s = evaluate_segmentation("random", str(root), out=str(out), arch="unet3d", width=4, crop=(16, 16, 16), epochs=2,
                              crops_per_volume=2)  # fmt: skip
    r = s["runs"]["random init"]["per_seed"]["0"]
    assert s["image_size"] is None and s["settings"]["crop"] == [16, 16, 16]
    assert len(r["volume_dice"]) == 1 and r["dice"] == r["volume_dice_mean"]
    assert (out / "overlay.png").exists() and (out / "results.json").exists()


# ---------------------------------------------------------------- the demo task


def test_mni152_segmentation_task(tmp_path):
    from lvmmed_ext.data.demo import SEGMENTATION_CLASSES, mni152_paths, mni152_segmentation_task

    if mni152_paths() is None:
        pytest.skip("nilearn is not installed")
    csv_path = mni152_segmentation_task(str(tmp_path / "seg"), step=3)
    pairs = list_pairs(csv_path)
    z = {sp: {int(os.path.basename(a)[1:4]) for a, _, s in pairs if s == sp} for sp in ("train", "test")}
    assert z["train"] and z["test"] and min(abs(a - b) for a in z["train"] for b in z["test"]) >= 5  # slabs apart
    data = load_pairs(csv_path, Preprocessing(), list(SEGMENTATION_CLASSES))
    assert data.images[0].shape == (1, 233, 197)
    counts = np.bincount(np.concatenate([m.ravel() for m in data.masks]), minlength=4)
    assert (counts > 0).all() and counts[1] > counts[3]  # every class present; more grey matter than CSF


def test_ablation_table_gets_a_segmentation_column():
    from lvmmed_ext.train.ablate import markdown_table

    mean = {"final_loss": 12.5, "t/linear_probe_bal_acc": 0.8, "t/knn_bal_acc": 0.7, "segment/mean_dice": 0.6543}
    row = dict(configuration="gm", loss="gm", options="-", about="full", per_seed={"0": {}}, mean=mean, std={})
    settings = dict(data="demo", arch="resnet18", width=32, image_size=96, crop_scale=[0.25, 1.0], batch_size=32,
                    accum=1, steps=150, lr=2e-3, halvings=4, seeds=[0], budget="short", eval_l2="auto", eval_k=20,
                    tasks=[dict(name="t", about="a task", classes=["a", "b"], n_train=10, n_test=5)],
                    segment=dict(n_train=36, n_test=30, classes=["bg", "gm"], image_size=96, epochs=20))  # fmt: skip
    text = markdown_table([row], settings)
    assert "| t: linear probe | t: kNN | seg Dice |" in text and "| 0.800 | 0.700 | 0.654 |" in text
    assert "- `segment`: U-Net fine-tuning (all weights trained, 20 epochs at 96 px; 2 classes" in text
    assert "seg Dice" not in markdown_table([row], {**settings, "segment": None})


def test_an_empty_mask_cell_is_named(tmp_path):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((8, 8), np.uint8))
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("image,mask\na.png,\n")
    with pytest.raises(UsageError, match=r"pairs.csv line 2: the mask column is empty"):
        list_pairs(str(csv_path))
