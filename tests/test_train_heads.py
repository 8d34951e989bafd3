"""Loss heads: InfoNCE and VICReg against float64 loop references (loss and gradient), the registry, the
trainer's view pairing, the lr schedule."""

import math

import pytest
import torch

from lvmmed_ext import LVMMedHead
from lvmmed_ext.errors import UsageError
from lvmmed_ext.models import resnet18
from lvmmed_ext.train import SSLModel, build_head, info_nce, milestones, vicreg
from lvmmed_ext.train.heads import Head, HeadUnavailable, InfoNCEHead, VICRegHead


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


def test_info_nce_head_gradient_matches_reference_through_the_projector():
    """The whole head (projector + loss) against the loop reference on the head's own embeddings, float64."""
    torch.manual_seed(3)
    head = InfoNCEHead(6, hidden_dim=5, out_dim=4, temperature=0.3).double()
    h_s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    h_t = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    ours = head(h_s, h_t)
    g_ours = torch.autograd.grad(ours, (h_s, h_t, *head.parameters()))
    z_s, z_t = head.projector(torch.cat([h_s, h_t])).split(5)
    ref = info_nce_loop_reference(z_s, z_t, 0.3)
    g_ref = torch.autograd.grad(ref, (h_s, h_t, *head.parameters()))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def vicreg_loop_reference(z_s, z_t, inv=25.0, var=25.0, cov=1.0, gamma=1.0, eps=1e-4):
    """VICReg written entry by entry in float64 from the paper's definitions (Eq. 1-6, Algorithm 1)."""
    z_s, z_t = z_s.double(), z_t.double()
    n, f = z_s.shape
    s = sum((z_s[i, j] - z_t[i, j]) ** 2 for i in range(n) for j in range(f)) / (n * f)

    def v_and_c(z):
        mean = [sum(z[i, j] for i in range(n)) / n for j in range(f)]
        v = 0.0
        for j in range(f):
            var_j = sum((z[i, j] - mean[j]) ** 2 for i in range(n)) / (n - 1)
            v = v + torch.clamp(gamma - torch.sqrt(var_j + eps), min=0.0)
        c = 0.0
        for a in range(f):
            for b in range(f):
                if a != b:
                    c_ab = sum((z[i, a] - mean[a]) * (z[i, b] - mean[b]) for i in range(n)) / (n - 1)
                    c = c + c_ab**2
        return v / f, c / f

    v_s, c_s = v_and_c(z_s)
    v_t, c_t = v_and_c(z_t)
    return inv * s + var * (v_s + v_t) + cov * (c_s + c_t)


@pytest.mark.parametrize(
    "n,f,scale,weights",
    [(4, 3, 0.3, (25.0, 25.0, 1.0)), (6, 5, 2.0, (25.0, 25.0, 1.0)), (5, 4, 0.8, (1.0, 2.0, 3.0))],
)
def test_vicreg_matches_float64_reference_and_gradient(n, f, scale, weights):
    # scale 0.3: every std below gamma (all hinges active); 2.0: none active; 0.8: a mix
    g = torch.Generator().manual_seed(n * 10 + f)
    z_s = (scale * torch.randn(n, f, generator=g, dtype=torch.float64)).requires_grad_()
    z_t = (scale * torch.randn(n, f, generator=g, dtype=torch.float64)).requires_grad_()
    inv, var, cov = weights
    ours = vicreg(z_s, z_t, inv, var, cov)
    ref = vicreg_loop_reference(z_s, z_t, inv, var, cov)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(torch.autograd.grad(ours, (z_s, z_t)), torch.autograd.grad(ref, (z_s, z_t))):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_vicreg_terms_gradcheck_and_float32():
    z_s = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: vicreg(a, c), (z_s, z_t))
    torch.testing.assert_close(vicreg(z_s.float(), z_t.float()).double(), vicreg(z_s, z_t), rtol=1e-5, atol=1e-5)
    # each coefficient scales its own term: identical views -> no invariance term
    z = z_s.detach()
    torch.testing.assert_close(vicreg(z, z, inv_weight=1e6), vicreg(z, z, inv_weight=0.0))
    # centred, decorrelated embeddings with every std above gamma cost nothing: columns 2.. of an orthonormal
    # basis that starts with the all-ones direction, scaled to norm 4 (std 4 / sqrt(7) > 1)
    basis = torch.cat([torch.ones(8, 1, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)], 1)
    q = torch.linalg.qr(basis)[0][:, 1:] * 4
    torch.testing.assert_close(vicreg(q, q), torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"at least 2 images"):
        vicreg(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"must both be \[B, F\]"):
        vicreg(torch.zeros(3, 2), torch.zeros(2, 2))


def test_vicreg_head_builds_and_trains():
    head = build_head("vicreg", 16, hidden_dim=8, out_dim=6)
    assert isinstance(head, VICRegHead) and head.symmetric and not head.needs_maps
    linears = [m for m in head.expander if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 8), (8, 6)]
    h = torch.randn(6, 16, requires_grad=True)
    loss = head(h, h + 0.1)
    loss.backward()
    assert loss.shape == () and h.grad is not None and all(p.grad is not None for p in head.parameters())
    with pytest.raises(UsageError, match="vicreg weights must be >= 0"):
        build_head("vicreg", 16, cov_weight=-1)
    with pytest.raises(UsageError, match="bad option for --loss vicreg"):
        build_head("vicreg", 16, temperature=0.1)


def test_registry_and_gm_entry():
    names = "ark, genesis, gm, infonce, peac, vicreg"
    with pytest.raises(HeadUnavailable, match=f"unknown --loss 'nope'; available: {names}"):
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
