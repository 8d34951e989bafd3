"""Backbones: torchvision parameter layout (names, shapes, counts), feature shapes, and load_pretrained."""

import pytest
import torch

import lvmmed_ext
from lvmmed_ext.errors import UsageError
from lvmmed_ext.models import VisionTransformer, backbone_state_dict, build_backbone, resnet18, resnet50, vit_b_16


def _bn(prefix, c):
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def torchvision_resnet_layout(depth: int, num_classes: int = 1000, in_chans: int = 3) -> dict:
    """torchvision.models.resnet{18,50}().state_dict() as {key: shape}, written out from torchvision's layout."""
    bottleneck = depth == 50
    blocks = [3, 4, 6, 3] if bottleneck else [2, 2, 2, 2]
    exp = 4 if bottleneck else 1
    out = {"conv1.weight": (64, in_chans, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                out[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                out.update(_bn(f"{p}.bn3", planes * 4))
            else:
                out[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
            if b == 0 and (stage > 1 or cin != planes * exp):
                out[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                out.update(_bn(f"{p}.downsample.1", planes * exp))
            cin = planes * exp
    if num_classes:
        out["fc.weight"] = (num_classes, 512 * exp)
        out["fc.bias"] = (num_classes,)
    return out


def torchvision_vit_b_16_layout(num_classes: int = 1000, in_chans: int = 3) -> dict:
    d, mlp = 768, 3072
    out = {
        "class_token": (1, 1, d),
        "conv_proj.weight": (d, in_chans, 16, 16),
        "conv_proj.bias": (d,),
        "encoder.pos_embedding": (1, 197, d),
    }
    for i in range(12):
        p = f"encoder.layers.encoder_layer_{i}"
        out.update(
            {
                f"{p}.ln_1.weight": (d,),
                f"{p}.ln_1.bias": (d,),
                f"{p}.self_attention.in_proj_weight": (3 * d, d),
                f"{p}.self_attention.in_proj_bias": (3 * d,),
                f"{p}.self_attention.out_proj.weight": (d, d),
                f"{p}.self_attention.out_proj.bias": (d,),
                f"{p}.ln_2.weight": (d,),
                f"{p}.ln_2.bias": (d,),
                f"{p}.mlp.0.weight": (mlp, d),
                f"{p}.mlp.0.bias": (mlp,),
                f"{p}.mlp.3.weight": (d, mlp),
                f"{p}.mlp.3.bias": (d,),
            }
        )
    out.update({"encoder.ln.weight": (d,), "encoder.ln.bias": (d,)})
    if num_classes:
        out.update({"heads.head.weight": (num_classes, d), "heads.head.bias": (num_classes,)})
    return out


def _layout(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "factory,depth,params", [(resnet18, 18, 11_689_512), (resnet50, 50, 25_557_032)], ids=["resnet18", "resnet50"]
)
def test_resnet_matches_torchvision_layout(factory, depth, params):
    model = factory(in_chans=3, num_classes=1000)
    assert _layout(model) == torchvision_resnet_layout(depth)
    assert sum(p.numel() for p in model.parameters()) == params
    # the pure backbone (no fc) and the 1-channel stem differ only where expected
    gray = factory(in_chans=1)
    assert _layout(gray) == torchvision_resnet_layout(depth, num_classes=0, in_chans=1)


def test_vit_b_16_matches_torchvision_layout():
    model = vit_b_16(in_chans=3, num_classes=1000)
    assert _layout(model) == torchvision_vit_b_16_layout()
    assert sum(p.numel() for p in model.parameters()) == 86_567_656
    assert list(model.state_dict())[:4] == [
        "class_token",
        "conv_proj.weight",
        "conv_proj.bias",
        "encoder.pos_embedding",
    ]


@pytest.mark.parametrize("size,grid", [(224, 7), (96, 3), (64, 2), (100, 4)])
def test_resnet_feature_map_and_pool(size, grid):
    net = resnet18(in_chans=1, width=8).eval()
    x = torch.randn(2, 1, size, size)
    pooled, fmap = net.features(x)
    assert fmap.shape == (2, 64, grid, grid) and net.feature_grid(size) == (grid, grid)
    assert pooled.shape == (2, 64) and net.out_dim == 64
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    torch.testing.assert_close(net(x), pooled)


def test_resnet50_tiny_width_out_dim():
    net = resnet50(in_chans=1, width=4)
    pooled, fmap = net.features(torch.randn(2, 1, 64, 64))
    assert net.out_dim == 4 * 8 * 4 and pooled.shape == (2, 128) and fmap.shape == (2, 128, 2, 2)


def test_vit_features_any_grid():
    net = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    pooled, fmap = net.features(torch.randn(3, 1, 32, 32))
    assert pooled.shape == (3, 16) and fmap.shape == (3, 16, 2, 2)
    pooled, fmap = net.features(torch.randn(1, 1, 48, 64))  # position embedding interpolated to 3x4
    assert fmap.shape == (1, 16, 3, 4) and net.feature_grid(48, 64) == (3, 4)
    with pytest.raises(ValueError, match="multiples of patch_size = 16"):
        net.feature_grid(40)


def test_build_backbone_errors():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_backbone("resnet101")
    with pytest.raises(ValueError, match="in_chans must be 1 or 3, got 2"):
        build_backbone("resnet18", in_chans=2)
    with pytest.raises(ValueError, match="width applies to ResNets only"):
        build_backbone("vit_b_16", width=8)


def test_load_pretrained_adapts_rgb_stem_and_reports(tmp_path):
    rgb = resnet18(in_chans=3, width=8, num_classes=10)
    state = {"module." + k: v for k, v in rgb.state_dict().items()}  # DataParallel-style prefix
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)
    gray = resnet18(in_chans=1, width=8, num_classes=5)
    report = lvmmed_ext.load_pretrained(gray, path, verbose=False)
    torch.testing.assert_close(gray.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(gray.layer3[1].conv2.weight, rgb.layer3[1].conv2.weight)
    assert report.adapted == ["conv1.weight (3 -> 1 input channels, summed)"]
    assert [m.split(":")[0] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    assert report.missing == [] and report.unexpected == [] and not report.ok
    # a gray image sees the same response through both stems
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(gray.eval().features(x)[1], rgb.eval().features(x.expand(1, 3, 32, 32))[1])


def test_load_pretrained_backbone_only_into_classifier_model():
    src = resnet18(in_chans=1, width=8)
    dst = resnet18(in_chans=1, width=8, num_classes=3)
    report = lvmmed_ext.load_pretrained(dst, backbone_state_dict(src), verbose=False)
    assert report.missing == ["fc.weight", "fc.bias"] and report.loaded == len(backbone_state_dict(src))
    with pytest.raises(UsageError, match="strict load failed"):
        lvmmed_ext.load_pretrained(dst, backbone_state_dict(src), strict=True, verbose=False)


def test_load_pretrained_vit_interpolates_position_grid():
    src = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    dst = VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    report = lvmmed_ext.load_pretrained(dst, src.state_dict(), verbose=False)
    assert report.ok and report.adapted == ["encoder.pos_embedding (2x2 -> 4x4 grid, interpolated)"]


def test_load_pretrained_bad_files(tmp_path):
    net = resnet18(width=8)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match=r"cannot read weights .*garbage.pth"):
        lvmmed_ext.load_pretrained(net, garbage)
    with pytest.raises(UsageError, match="does not exist"):
        lvmmed_ext.load_pretrained(net, tmp_path / "nope.pth")
    other = tmp_path / "other.pth"
    torch.save({"a.weight": torch.zeros(2)}, other)
    with pytest.raises(UsageError, match="none of the 1 tensors .* wrong file or wrong --arch"):
        lvmmed_ext.load_pretrained(net, other)
    notdict = tmp_path / "list.pth"
    torch.save([1, 2], notdict)
    with pytest.raises(UsageError, match="hold no state_dict"):
        lvmmed_ext.load_pretrained(net, notdict)
