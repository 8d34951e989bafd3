"""vertex_affinity: the alpha-combination of global and local affinity (parity, special cases, gradients,
torch.compile, errors)."""

import pytest
import torch
from helpers import assert_matches_reference

import lvmmed_ext
from lvmmed_ext import reference


def make_inputs(G=2, N=3, M=4, F=8, P=5, Q=6, D=7, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    pos = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64) * 10  # noqa: E731
    return r(G, N, F), r(G, M, F), r(G, N, P, D), r(G, M, Q, D), pos(G, N, P, 2), pos(G, M, Q, 2)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(alpha, positions, dtype):
    z_s, z_t, y_s, y_t, p_s, p_t = make_inputs(dtype=dtype)
    pos = (p_s, p_t) if positions else (None, None)
    kw = {"alpha": alpha, "top_loc": 3, "top_feat": 4}
    out = lvmmed_ext.vertex_affinity(z_s, z_t, y_s, y_t, *pos, **kw)
    assert out.shape == (2, 3, 4) and out.dtype == dtype
    assert_matches_reference(out, reference.vertex_affinity(z_s, z_t, y_s, y_t, *pos, **kw), dtype)


def test_global_only_without_maps_or_with_alpha_one():
    z_s, z_t, y_s, y_t, p_s, p_t = make_inputs()
    glob = lvmmed_ext.global_affinity(z_s, z_t)
    assert torch.equal(lvmmed_ext.vertex_affinity(z_s, z_t), glob)
    assert torch.equal(lvmmed_ext.vertex_affinity(z_s, z_t, alpha=0.3), glob)
    y_s[0, 0, 0, 0] = float("nan")  # local_affinity would reject this: with alpha = 1 the maps are not read
    assert torch.equal(lvmmed_ext.vertex_affinity(z_s, z_t, y_s, y_t, p_s, p_t, alpha=1.0), glob)


def test_alpha_zero_is_local_only():
    z_s, z_t, y_s, y_t, p_s, p_t = make_inputs()
    z_s[0, 0, 0] = float("nan")  # the global term is not computed
    out = lvmmed_ext.vertex_affinity(z_s, z_t, y_s, y_t, p_s, p_t, alpha=0.0, top_loc=2)
    assert torch.equal(out, lvmmed_ext.local_affinity(y_s, y_t, p_s, p_t, top_loc=2))


def test_gradcheck():
    z_s, z_t, y_s, y_t, p_s, p_t = make_inputs(G=1, N=2, M=3, F=3, P=3, Q=4, D=3)
    fn = lambda a, b, c, d: lvmmed_ext.vertex_affinity(a, b, c, d, p_s, p_t, top_loc=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(x.requires_grad_() for x in (z_s, z_t, y_s, y_t)))


def test_torch_compile_fullgraph_forward_backward():
    z_s, z_t, y_s, y_t, p_s, p_t = make_inputs(dtype=torch.float32)

    def f(a, b, c, d):
        return lvmmed_ext.vertex_affinity(a, b, c, d, p_s, p_t, alpha=0.8, top_loc=3).sum()

    compiled = torch.compile(f, fullgraph=True)
    xs1 = [x.clone().requires_grad_() for x in (z_s, z_t, y_s, y_t)]
    xs2 = [x.clone().requires_grad_() for x in (z_s, z_t, y_s, y_t)]
    out_c, out_e = compiled(*xs1), f(*xs2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(xs1, xs2):
        torch.testing.assert_close(a.grad, b.grad)


def test_errors():
    z_s, z_t, y_s, y_t, _, _ = make_inputs()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        lvmmed_ext.vertex_affinity(z_s, z_t, y_s, y_t, alpha=1.5)
    with pytest.raises(ValueError, match=r"y_s and y_t must both be given or both be None, got y_s given and y_t None"):
        lvmmed_ext.vertex_affinity(z_s, z_t, y_s)
    with pytest.raises(
        ValueError, match=r"y_t \[G,N,P,D\] must have the graphs and nodes of z_t \[G,N,F\], got y_t \[2, 3, 6, 7\]"
    ):
        lvmmed_ext.vertex_affinity(z_s, z_t, y_s, y_t[:, :3])
