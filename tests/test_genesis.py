"""Models Genesis: the transformations (range, shape, that each changes what it should, the identity when disabled,
determinism per seed; 2D slices and 3D sub-volumes), the restoration head, 2D and 3D runs from the CLI."""

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from train_utils import make_image_folder

from lvmmed_ext.heads import build_head
from lvmmed_ext.heads.genesis import GenesisHead
from lvmmed_ext.heads.genesis_transforms import (
    GenesisConfig,
    bezier_curve,
    genesis_pair,
    inpaint,
    local_pixel_shuffle,
    nonlinear_transform,
    outpaint,
)
from lvmmed_ext.models import resnet18
from lvmmed_ext.models.unet import build_encoder
from lvmmed_ext.train.trainer import encoder_stages

SHAPES = [(48, 40), (12, 24, 20)]


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    return np.clip(sum(grid) / len(shape) + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)


def test_bezier_curve_endpoints_and_a_straight_line():
    x, y = bezier_curve(np.array([[0, 0], [1 / 3, 1 / 3], [2 / 3, 2 / 3], [1, 1]]), samples=11)
    np.testing.assert_allclose(x, np.linspace(0, 1, 11), atol=1e-12)
    np.testing.assert_allclose(y, x, atol=1e-12)
    x, y = bezier_curve(np.array([[0, 0], [0.9, 0.1], [0.2, 0.7], [1, 1]]))
    assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_nonlinear_transform_is_a_pointwise_intensity_map(shape):
    x = _image(shape)
    out = nonlinear_transform(x, np.random.default_rng(3))
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, x)
    # pointwise: equal inputs give equal outputs, whatever their position
    flat_x, flat_o = x.ravel(), out.ravel()
    j = np.argsort(flat_x)
    same = np.diff(flat_x[j]) == 0
    assert np.all(np.diff(flat_o[j])[same] == 0)
    # a mapping of intensities only: applying it to a permuted image permutes the output
    perm = np.random.default_rng(0).permutation(x.size)
    again = nonlinear_transform(flat_x[perm].reshape(shape), np.random.default_rng(3))
    np.testing.assert_array_equal(again.ravel(), flat_o[perm])


@pytest.mark.parametrize("shape", SHAPES)
def test_local_shuffle_permutes_values_within_small_blocks(shape):
    x = _image(shape)
    out = local_pixel_shuffle(x, np.random.default_rng(1), density=0.01, max_frac=0.2)
    assert out.shape == x.shape and not np.array_equal(out, x)
    # every output value comes from the original, near its position (blocks are at most 20% of each axis)
    changed = np.argwhere(out != x)
    assert len(changed) > 0
    for idx in changed[:200]:
        window = tuple(slice(max(0, i - int(0.2 * s)), i + int(0.2 * s) + 1) for i, s in zip(idx, shape))
        assert np.any(np.isclose(x[window], out[tuple(idx)]))
    np.testing.assert_allclose(np.sort(out.ravel()).mean(), np.sort(x.ravel()).mean(), atol=0.02)


@pytest.mark.parametrize("shape", SHAPES)
def test_inpainting_changes_only_inside_boxes_and_outpainting_keeps_windows(shape):
    x = _image(shape)
    inp = inpaint(x, np.random.default_rng(2), boxes=1, frac=(0.25, 0.25))
    changed = np.argwhere(inp != x)
    lo, hi = changed.min(0), changed.max(0) + 1
    box_size = np.prod(hi - lo)
    assert box_size <= np.prod([round(0.25 * s) for s in shape])  # one box of a quarter of each side
    out = outpaint(x, np.random.default_rng(2), boxes=1, frac=(0.5, 0.5))
    kept = out == x
    assert 0.5 ** len(shape) * 0.8 < kept.mean() < 0.5 ** len(shape) * 1.2  # the window (plus chance equalities)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
def test_identity_when_disabled(shape):
    x = _image(shape)
    inp, target = genesis_pair(x, np.random.default_rng(0), GenesisConfig.off())
    np.testing.assert_array_equal(inp, x)
    np.testing.assert_array_equal(target, x)


@pytest.mark.parametrize("shape", SHAPES)
def test_flip_applies_to_input_and_target_alike(shape):
    cfg = GenesisConfig(flip_p=1.0, nonlinear_p=0.0, shuffle_p=0.0, paint_p=0.0)
    x = _image(shape)
    inp, target = genesis_pair(x, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(target, np.flip(x, tuple(range(x.ndim))))
    np.testing.assert_array_equal(inp, target)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), three_d=st.booleans())
def test_pairs_are_in_range_shaped_and_deterministic_per_seed(seed, three_d):
    x = _image(SHAPES[int(three_d)], seed % 7)
    a = genesis_pair(x, np.random.default_rng(seed))
    b = genesis_pair(x, np.random.default_rng(seed))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
        assert u.shape == x.shape and u.min() >= 0 and u.max() <= 1


def test_config_is_checked():
    with pytest.raises(ValueError, match="nonlinear_p must be in \\[0, 1\\], got 1.5"):
        GenesisConfig(nonlinear_p=1.5)
    with pytest.raises(ValueError, match="inpaint_frac must satisfy"):
        GenesisConfig(inpaint_frac=(0.5, 0.2))


# --- the head and the trainer --------------------------------------------------------------------------------------

HAS_NIBABEL = importlib.util.find_spec("nibabel") is not None


@pytest.mark.parametrize("arch,shape", [("resnet18", (2, 1, 32, 48)), ("unet3d", (1, 1, 8, 16, 16))])
def test_genesis_head_is_the_mse_of_the_restored_image(arch, shape):
    torch.manual_seed(0)
    enc = resnet18(width=4) if arch == "resnet18" else build_encoder("unet3d", width=4, levels=3)
    head = GenesisHead(enc.out_dim, stages=encoder_stages(enc, 1))
    x_in, target = torch.randn(shape), torch.randn(shape)
    out = head.decoder.decode(enc.stages(x_in), x_in.shape[2:])  # the network alone; the loss written out below
    assert out.shape == shape
    loss = head(enc, x_in, target)
    diff = (out - target).reshape(-1)
    torch.testing.assert_close(loss, (diff * diff).sum() / diff.numel())
    loss.backward()
    assert all(p.grad is not None for p in head.decoder.parameters())
    assert any(p.grad is not None for p in enc.parameters())
    assert not any(n.startswith("decoder.encoder") for n, _ in head.named_parameters())  # encoder not owned


def test_genesis_restoration_loss_falls_when_fitting_a_batch():
    torch.manual_seed(0)
    enc = resnet18(width=4)
    head = GenesisHead(enc.out_dim, stages=encoder_stages(enc, 1))
    rng = np.random.default_rng(0)
    pairs = [genesis_pair(_image((32, 32), s), rng) for s in range(8)]
    x_in = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None]).float()
    target = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None]).float()
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = head(enc, x_in, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_genesis_head_options_are_checked():
    from lvmmed_ext.errors import UsageError

    stages = {"strides": [2, 4], "channels": [4, 8], "dims": 2}
    with pytest.raises(UsageError, match="paint_p must be in \\[0, 1\\], got 2"):
        build_head("genesis", 8, stages=stages, paint_p=2)
    with pytest.raises(UsageError, match="genesis needs the encoder's stages"):
        build_head("genesis", 8)


def test_genesis_2d_runs_from_the_cli_and_exports_the_encoder(tmp_path):
    from lvmmed_ext.models import build_unet
    from lvmmed_ext.train.cli import main

    data = make_image_folder(tmp_path / "imgs", n=6)
    out = tmp_path / "r"
    args = ["--data", str(data), "--loss", "genesis", "--steps", "2", "--batch-size", "2", "--workers", "0",
            "--max-side", "64", "--no-eval", "--arch", "resnet18", "--width", "4", "--image-size", "32",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    unet = build_unet("resnet18", out_channels=3, width=4)
    report = unet.load_encoder(str(out / "backbone.pth"))
    assert not report.missing


def _volume_folder(tmp_path, shape=(24, 20, 12)):
    import nibabel as nib

    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(2):
        vol = (_image(shape, i) * 1000).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"v{i}.nii.gz"))
    return folder


@pytest.mark.skipif(not HAS_NIBABEL, reason="nibabel not installed")
def test_genesis_3d_runs_a_few_steps_and_the_3d_encoder_exports(tmp_path):
    from lvmmed_ext.models import build_unet
    from lvmmed_ext.train.cli import main

    data = _volume_folder(tmp_path)
    out = tmp_path / "r3"
    args = ["--data", str(data), "--loss", "genesis", "--arch", "unet3d", "--width", "4", "--crop3d", "8", "16", "16",
            "--steps", "2", "--batch-size", "2", "--workers", "0", "--no-eval", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    unet = build_unet("unet3d", out_channels=2, width=4)
    report = unet.load_encoder(str(out / "backbone.pth"))
    assert not report.missing


@pytest.mark.skipif(not HAS_NIBABEL, reason="nibabel not installed")
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--crop3d", "40", "16", "16", "--loss", "genesis"], "no volume has the 40 slices --crop3d 40 16 16 needs"),
        (["--crop3d", "8", "16", "16", "--loss", "infonce"], "--arch unet3d is the 3D encoder of --loss genesis"),
    ],
)
def test_3d_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    from lvmmed_ext.train.cli import main

    data = _volume_folder(tmp_path)
    out = tmp_path / "r3"
    args = ["--data", str(data), "--arch", "unet3d", "--width", "4", "--steps", "1", "--batch-size", "2",
            "--workers", "0", "--no-eval", "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()
