"""edge_affinity: parity with the float64 reference, gradients, opcheck, torch.compile, index validation,
NaN propagation, CUDA parity and low precision."""

import pytest
import torch
from helpers import LOW_PRECISION, assert_low_precision_ok, assert_matches_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lvmmed_ext
from lvmmed_ext import reference


def make_graphs(G, N, M, F, Es, Et, dtype, device, seed):
    """z_s [G,N,F], random edges_s [G,Es,2] (self loops and repeated edges included), z_t, edges_t."""
    gen = torch.Generator().manual_seed(seed)
    z_s = torch.randn(G, N, F, generator=gen, dtype=torch.float64).to(device, dtype)
    z_t = torch.randn(G, M, F, generator=gen, dtype=torch.float64).to(device, dtype)
    e_s = torch.randint(0, max(N, 1), (G, Es, 2), generator=gen).to(device)
    e_t = torch.randint(0, max(M, 1), (G, Et, 2), generator=gen).to(device)
    return z_s, e_s, z_t, e_t


shapes = st.tuples(
    st.integers(0, 3),  # G
    st.integers(1, 6),  # N
    st.integers(1, 6),  # M
    st.integers(1, 8),  # F
    st.integers(0, 12),  # Es
    st.integers(0, 12),  # Et
    st.integers(0, 2**31 - 1),
)


@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_forward_matches_reference_cpu(shape, dtype):
    G, N, M, F, Es, Et, seed = shape
    z_s, e_s, z_t, e_t = make_graphs(G, N, M, F, Es, Et, dtype, "cpu", seed)
    out = lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t)
    assert out.shape == (G, Es, Et) and out.dtype == dtype and out.isfinite().all()
    assert_matches_reference(out, reference.edge_affinity(z_s, e_s, z_t, e_t), dtype)


@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_backward_matches_reference_cpu(shape, dtype):
    G, N, M, F, Es, Et, seed = shape
    z_s, e_s, z_t, e_t = make_graphs(G, N, M, F, Es, Et, dtype, "cpu", seed)
    w = torch.randn(G, Es, Et, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    a, b = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    ours = torch.autograd.grad((lvmmed_ext.edge_affinity(a, e_s, b, e_t) * w.to(dtype)).sum(), (a, b))
    a, b = z_s.double().requires_grad_(), z_t.double().requires_grad_()
    ref = torch.autograd.grad((reference.edge_affinity(a, e_s, b, e_t) * w).sum(), (a, b), allow_unused=True)
    for o, r, like in zip(ours, ref, (a, b)):
        assert_matches_reference(o, torch.zeros_like(like) if r is None else r, dtype)


def test_knn_edges_and_self_loops():
    z = torch.randn(2, 16, 128, dtype=torch.float64)
    e = lvmmed_ext.knn_graph(z, 5)
    out = lvmmed_ext.edge_affinity(z, e, z, e)
    assert out.shape == (2, 80, 80)
    torch.testing.assert_close(out.diagonal(dim1=1, dim2=2), torch.ones(2, 80, dtype=torch.float64))
    loops = torch.tensor([[[0, 0], [1, 2]]]).expand(2, 2, 2)
    out = lvmmed_ext.edge_affinity(z, loops, z, e)
    assert (out[:, 0] == 0).all()  # a self loop's vector is zero: cosine 0, no NaN


def test_non_contiguous_inputs(device):
    z_s = torch.randn(2, 8, 5, device=device, dtype=torch.float64).transpose(1, 2)  # [2,5,8]
    z_t = torch.randn(2, 6, 16, device=device, dtype=torch.float64)[..., ::2]  # [2,6,8]
    e_s = torch.randint(0, 5, (2, 2, 7), device=device).transpose(1, 2)  # [2,7,2]
    e_t = torch.randint(0, 6, (2, 9, 2), device=device)
    out = lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t)
    assert_matches_reference(out, reference.edge_affinity(z_s, e_s, z_t, e_t), torch.float64)


def test_gradcheck(device):
    z_s, e_s, z_t, e_t = make_graphs(2, 4, 5, 3, 6, 7, torch.float64, device, 1)
    fn = lambda a, b: lvmmed_ext.edge_affinity(a, e_s, b, e_t)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z_s.requires_grad_(), z_t.requires_grad_()))


def test_half_precision_on_cpu_is_computed_in_float32():
    z_s, e_s, z_t, e_t = make_graphs(2, 8, 8, 32, 20, 20, torch.bfloat16, "cpu", 2)
    out = lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t)
    assert out.dtype == torch.bfloat16
    g = torch.arange(2)[:, None]
    d_s, d_t = z_s[g, e_s[..., 0]] - z_s[g, e_s[..., 1]], z_t[g, e_t[..., 0]] - z_t[g, e_t[..., 1]]
    peer = torch.nn.functional.normalize(d_s, dim=-1) @ torch.nn.functional.normalize(d_t, dim=-1).transpose(1, 2)
    assert_low_precision_ok(out, peer, reference.edge_affinity(z_s, e_s, z_t, e_t))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    z_s, e_s, z_t, e_t = make_graphs(2, 4, 5, 3, 6, 7, torch.float32, device, 3)
    z_s.requires_grad_(requires_grad)
    z_t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.lvmmed.edge_affinity.default, (z_s, e_s, z_t, e_t))
    grad = torch.randn(2, 6, 7, device=device)
    torch.library.opcheck(torch.ops.lvmmed.edge_affinity_backward.default, (grad, z_s.detach(), e_s, z_t.detach(), e_t))


def test_torch_compile_fullgraph_forward_backward(device):
    z_s, _, z_t, _ = make_graphs(2, 8, 8, 5, 0, 0, torch.float32, device, 4)

    def f(a, b):
        e_s, e_t = lvmmed_ext.knn_graph(a.detach(), 3), lvmmed_ext.knn_graph(b.detach(), 2)
        return (lvmmed_ext.edge_affinity(a * 2.0, e_s, b, e_t).exp() * 0.5).sum()

    compiled = torch.compile(f, fullgraph=True)
    a1, b1 = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    a2, b2 = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    out_c, out_e = compiled(a1, b1), f(a2, b2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(a1.grad, a2.grad)
    torch.testing.assert_close(b1.grad, b2.grad)


def test_nan_propagates_to_edges_of_the_node_only():
    z_s, _, z_t, e_t = make_graphs(1, 4, 4, 5, 0, 6, torch.float32, "cpu", 5)
    e_s = torch.tensor([[[0, 1], [2, 3], [3, 1]]])
    z_s[0, 1, 2] = float("nan")
    out = lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t)
    assert out[0, [0, 2]].isnan().all() and out[0, 1].isfinite().all()


def test_empty_edge_lists():
    z = torch.randn(2, 4, 3, requires_grad=True)
    e = torch.zeros(2, 0, 2, dtype=torch.int64)
    out = lvmmed_ext.edge_affinity(z, e, z, lvmmed_ext.knn_graph(z.detach(), 2))
    assert out.shape == (2, 0, 8)
    out.sum().backward()
    assert (z.grad == 0).all()


@pytest.mark.parametrize(
    "edges_s, exc, match",
    [
        (
            torch.tensor([[[0, 1], [1, 4]]]),
            ValueError,
            r"edges_s holds node index 4 outside \[0, N-1\] = \[0, 3\] of z_s \[1, 4, 3\]",
        ),
        (torch.tensor([[[0, -1]]]), ValueError, r"edges_s holds node index -1 outside \[0, N-1\] = \[0, 3\]"),
        (
            torch.tensor([[[0, 1]]], dtype=torch.int32),
            TypeError,
            r"edges_s must have dtype torch.int64, got torch.int32",
        ),
        (
            torch.tensor([[[0, 1, 2]]]),
            ValueError,
            r"edges_s must be \[G,E,2\] \(one \(i, j\) pair per edge\), got \[1, 1, 3\]",
        ),
        (torch.tensor([[0, 1]]), ValueError, r"edges_s must be \[G,E,2\]"),
        (
            torch.tensor([[[0, 1]], [[0, 1]]]),
            ValueError,
            r"edges_s \[G,E,2\] and z_s \[G,N,F\] must have the same number of graphs G",
        ),
    ],
)
def test_bad_edges_errors(edges_s, exc, match):
    z = torch.randn(1, 4, 3)
    with pytest.raises(exc, match=match):
        lvmmed_ext.edge_affinity(z, edges_s, z, torch.tensor([[[0, 1]]]))


def test_bad_embeddings_errors():
    e = torch.tensor([[[0, 1]]])
    with pytest.raises(ValueError, match=r"same feature size F"):
        lvmmed_ext.edge_affinity(torch.randn(1, 4, 3), e, torch.randn(1, 4, 5), e)
    with pytest.raises(TypeError, match=r"same dtype"):
        lvmmed_ext.edge_affinity(torch.randn(1, 4, 3), e, torch.randn(1, 4, 3, dtype=torch.float64), e)
    with pytest.raises(ValueError, match=r"grad must be \[G,Es,Et\] = \[1, 1, 1\], got \[1, 2, 1\]"):
        torch.ops.lvmmed.edge_affinity_backward(torch.randn(1, 2, 1), torch.randn(1, 4, 3), e, torch.randn(1, 4, 3), e)


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_mixed_devices_error():  # the real device only: the emulated backend has one device, the CPU
    z = torch.randn(1, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="z_s and edges_s must be on the same device"):
        lvmmed_ext.edge_affinity(z, torch.tensor([[[0, 1]]]), z, torch.tensor([[[0, 1]]], device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1), (12, 16, 16, 128, 80, 80), (3, 64, 50, 33, 640, 300)])
def test_cuda_matches_reference_and_cpu(gpu, dtype, shape):
    G, N, M, F, Es, Et = shape
    z_s, e_s, z_t, e_t = make_graphs(G, N, M, F, Es, Et, dtype, gpu.device, 6)
    w = torch.randn(G, Es, Et, dtype=dtype)
    with gpu:
        out = lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t)
        g_gpu = torch.autograd.grad(
            (lvmmed_ext.edge_affinity(z_s.requires_grad_(), e_s, z_t.requires_grad_(), e_t) * w.to(gpu.device)).sum(),
            (z_s, z_t),
        )
    assert_matches_reference(out, reference.edge_affinity(z_s.detach(), e_s, z_t.detach(), e_t), dtype)
    a, b = z_s.detach().cpu().requires_grad_(), z_t.detach().cpu().requires_grad_()
    g_cpu = torch.autograd.grad((lvmmed_ext.edge_affinity(a, e_s.cpu(), b, e_t.cpu()) * w).sum(), (a, b))
    for x, y in zip(g_gpu, g_cpu):
        assert_matches_reference(x, y, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_cuda_low_precision_within_2x_of_torch(gpu, dtype):
    z_s, e_s, z_t, e_t = make_graphs(4, 16, 16, 128, 80, 80, dtype, gpu.device, 7)

    def unit(d):  # our convention for a zero vector (a self loop): cosine 0 and no gradient; normalize's 1e-12 eps
        norm = d.norm(dim=-1, keepdim=True)  # is 0 in float16 (0/0 forward) and gives 1/eps gradients
        nonzero = norm > 0
        return torch.where(nonzero, d / torch.where(nonzero, norm, torch.ones_like(norm)), torch.zeros_like(d))

    def peer(a, b):
        g = torch.arange(4, device=gpu.device)[:, None]
        d_s, d_t = a[g, e_s[..., 0]] - a[g, e_s[..., 1]], b[g, e_t[..., 0]] - b[g, e_t[..., 1]]
        return unit(d_s) @ unit(d_t).transpose(1, 2)

    w = torch.randn(4, 80, 80, dtype=dtype, device=gpu.device)
    with gpu:
        out = lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t)
        (g_ours,) = torch.autograd.grad(
            (lvmmed_ext.edge_affinity(z_s.requires_grad_(), e_s, z_t, e_t) * w).sum(), (z_s,)
        )
    assert out.dtype == dtype
    assert_low_precision_ok(out, peer(z_s.detach(), z_t), reference.edge_affinity(z_s.detach(), e_s, z_t, e_t))
    zp = z_s.detach().requires_grad_()
    (g_peer,) = torch.autograd.grad((peer(zp, z_t) * w).sum(), (zp,))
    a = z_s.detach().double().requires_grad_()
    (g_ref,) = torch.autograd.grad((reference.edge_affinity(a, e_s, z_t, e_t) * w.double()).sum(), (a,))
    assert_low_precision_ok(g_ours, g_peer, g_ref)


@pytest.mark.parametrize(
    "shape", [(0, 4, 4, 3, 5, 5), (2, 5, 6, 3, 0, 7), (2, 5, 6, 3, 129, 1), (3, 2, 9, 130, 7, 257)]
)
def test_cuda_edge_shapes_match_cpu(gpu, shape):
    # empty batch, an empty edge list, edge/feature counts that are not multiples of the block size; the emulated
    # device has at most 2 blocks per grid axis, so the grid-stride loops and the product's slices all iterate
    G, N, M, F, Es, Et = shape
    z_s, e_s, z_t, e_t = make_graphs(G, N, M, F, Es, Et, torch.float64, "cpu", 8)
    w = torch.randn(G, Es, Et, dtype=torch.float64)
    a, b = z_s.to(gpu.device).requires_grad_(), z_t.to(gpu.device).requires_grad_()
    with gpu, gpu.device_limits(max_grid_x=2, max_grid_y=2, max_grid_z=2):
        out = lvmmed_ext.edge_affinity(a, e_s.to(gpu.device), b, e_t.to(gpu.device))
        g_gpu = torch.autograd.grad((out * w.to(gpu.device)).sum(), (a, b), allow_unused=True)
    assert out.shape == (G, Es, Et)
    assert_matches_reference(out.cpu(), lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t), torch.float64)
    a, b = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    g_cpu = torch.autograd.grad((lvmmed_ext.edge_affinity(a, e_s, b, e_t) * w).sum(), (a, b), allow_unused=True)
    for x, y in zip(g_gpu, g_cpu):
        if x is not None and y is not None:
            assert_matches_reference(x.cpu(), y, torch.float64)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes)
def test_cuda_property_matches_cpu(gpu, shape):
    G, N, M, F, Es, Et, seed = shape
    z_s, e_s, z_t, e_t = make_graphs(G, N, M, F, Es, Et, torch.float64, "cpu", seed)
    w = torch.randn(G, Es, Et, dtype=torch.float64)
    dev = [t.to(gpu.device) for t in (z_s, e_s, z_t, e_t)]
    with gpu:
        out = lvmmed_ext.edge_affinity(*dev)
        grads = torch.ops.lvmmed.edge_affinity_backward(w.to(gpu.device), *dev)
    assert_matches_reference(out, lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t), torch.float64)
    for a, b in zip(grads, torch.ops.lvmmed.edge_affinity_backward(w, z_s, e_s, z_t, e_t)):
        assert_matches_reference(a, b, torch.float64)
