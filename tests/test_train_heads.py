"""Loss heads: InfoNCE against a float64 loop reference (loss and gradient), the registry, the trainer's
view pairing, the lr schedule."""

import math

import pytest
import torch

from lvmmed_ext.errors import UsageError
from lvmmed_ext.losses import LVMMedHead
from lvmmed_ext.models import resnet18
from lvmmed_ext.train import SSLModel, build_head, info_nce, milestones
from lvmmed_ext.train.heads import Head, HeadUnavailable


def info_nce_loop_reference(z_s, z_t, tau):
    """NT-Xent written anchor by anchor in float64: -log(exp(s_pos/tau) / sum_{k != anchor} exp(s_k/tau))."""
    z = torch.cat([z_s, z_t]).double()
    z = z / z.norm(dim=1, keepdim=True)
    b = z_s.shape[0]
    total = 0.0
    for i in range(2 * b):
        pos = i + b if i < b else i - b
        denom = sum(torch.exp(z[i] @ z[k] / tau) for k in range(2 * b) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[pos] / tau) / denom)
    return total / (2 * b)


@pytest.mark.parametrize("b,f,tau", [(2, 3, 0.5), (5, 8, 0.1), (7, 4, 1.0)])
def test_info_nce_matches_float64_reference_and_gradient(b, f, tau):
    g = torch.Generator().manual_seed(b * 100 + f)
    z_s = torch.randn(b, f, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(b, f, generator=g, dtype=torch.float64, requires_grad=True)
    ours = info_nce(z_s, z_t, tau)
    ref = info_nce_loop_reference(z_s, z_t, tau)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad(ours, (z_s, z_t))
    g_ref = torch.autograd.grad(ref, (z_s, z_t))
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_info_nce_gradcheck_and_float32():
    z_s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: info_nce(a, c, 0.3), (z_s, z_t))
    out32 = info_nce(z_s.float(), z_t.float(), 0.3)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), info_nce(z_s, z_t, 0.3), rtol=1e-5, atol=1e-6)


def test_info_nce_perfect_alignment_bound():
    z = torch.eye(4, 8, dtype=torch.float64)  # orthogonal images, identical views
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 6))  # positive 1, six negatives at cosine 0
    torch.testing.assert_close(info_nce(z, z, 0.5), torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"must both be \[B, F\]"):
        info_nce(torch.zeros(3, 2), torch.zeros(2, 2))


def test_infonce_head_builds_and_trains():
    head = build_head("infonce", 16, hidden_dim=8, out_dim=4, temperature=0.2)
    assert head.symmetric and not head.needs_maps
    h = torch.randn(6, 16, requires_grad=True)
    loss = head(h, h + 0.1)
    loss.backward()
    assert loss.shape == () and h.grad is not None and all(p.grad is not None for p in head.parameters())
    with pytest.raises(UsageError, match="temperature must be > 0"):
        build_head("infonce", 16, temperature=0)
    with pytest.raises(UsageError, match="bad option for --loss infonce"):
        build_head("infonce", 16, colour="red")


def test_registry_and_gm_entry():
    with pytest.raises(HeadUnavailable, match="unknown --loss 'nope'; available: gm, infonce"):
        build_head("nope", 8)
    head = build_head("gm", 8, dim=8, graph_size=4, k=2)
    assert isinstance(head, LVMMedHead) and head.symmetric and head.needs_maps
    with pytest.raises(UsageError, match="bad option for --loss gm: .*unknown options \\['lamb'\\]"):
        build_head("gm", 8, lamb=1.0)


class _Recorder(Head):
    """Records the view pairs and the shapes it receives; loss = mean of pooled features."""

    def __init__(self, needs_maps, symmetric):
        super().__init__()
        self.needs_maps, self.symmetric, self.calls = needs_maps, symmetric, []

    def forward(self, h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None):
        self.calls.append((h_s.shape, None if y_s is None else y_s.shape, None if pos_s is None else pos_s.shape))
        return (h_s * h_t).mean()


@pytest.mark.parametrize("needs_maps,symmetric,n_pairs", [(True, False, 6), (False, True, 5)])
def test_ssl_model_view_pairs_and_map_shapes(needs_maps, symmetric, n_pairs):
    head = _Recorder(needs_maps, symmetric)
    model = SSLModel(resnet18(width=4), head, n_global=2, amp_dtype=None)
    views = [torch.randn(3, 1, 64, 64)] * 2 + [torch.randn(3, 1, 32, 32)] * 2
    pos = [torch.zeros(3, 4, 2)] * 2 + [torch.zeros(3, 1, 2)] * 2
    model(views, pos).backward()
    assert len(head.calls) == n_pairs  # (0,1),(0,2),(0,3),(1,0)?,(1,2),(1,3)
    h, y, p = head.calls[0]
    assert h == (3, 32)
    assert (y, p) == (((3, 4, 32), (3, 4, 2)) if needs_maps else (None, None))


def test_ssl_model_with_a_vit_backbone_passes_patch_maps():
    from lvmmed_ext.models import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    head = _Recorder(needs_maps=True, symmetric=False)
    SSLModel(vit, head, 2, None)([torch.randn(2, 1, 32, 32)] * 2, [torch.zeros(2, 4, 2)] * 2).backward()
    assert head.calls[0] == ((2, 16), (2, 4, 16), (2, 4, 2))


def test_ssl_model_bf16_autocast_keeps_float32_outputs():
    model = SSLModel(resnet18(width=4), build_head("infonce", 32, hidden_dim=8, out_dim=4), 2, torch.bfloat16)
    loss = model([torch.randn(4, 1, 32, 32)] * 2, [None, None])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_milestones_halve_four_times_evenly():
    assert milestones(100, 4) == [20, 40, 60, 80]
    assert milestones(3, 4) == [1, 2]
    assert milestones(10, 0) == []
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(10, 4), gamma=0.5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [2e-3] * 2 + [1e-3] * 2 + [5e-4] * 2 + [2.5e-4] * 2 + [1.25e-4] * 2
