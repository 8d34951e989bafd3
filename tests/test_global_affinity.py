"""global_affinity: parity with the float64 reference, gradients, opcheck, torch.compile, errors."""

import pytest
import torch
from helpers import LOW_PRECISION, assert_low_precision_ok, assert_matches_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lvmmed_ext
from lvmmed_ext import reference


def make_pair(G, N, M, F, dtype, device, seed, zero_rows=False, duplicate=False):
    gen = torch.Generator().manual_seed(seed)
    z_s = torch.randn(G, N, F, generator=gen, dtype=torch.float64)
    z_t = torch.randn(G, M, F, generator=gen, dtype=torch.float64)
    if zero_rows and N > 0:
        z_s[:, 0] = 0
    if duplicate and N > 0 and M > 0:
        z_t[:, -1] = z_s[:, -1]
    return z_s.to(device, dtype), z_t.to(device, dtype)


shapes = st.tuples(
    st.integers(0, 3), st.integers(0, 7), st.integers(0, 7), st.integers(1, 9), st.integers(0, 2**31 - 1)
)


@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]), zero=st.booleans(), dup=st.booleans())
def test_forward_matches_reference_cpu(shape, dtype, zero, dup):
    G, N, M, F, seed = shape
    z_s, z_t = make_pair(G, N, M, F, dtype, "cpu", seed, zero, dup)
    out = lvmmed_ext.global_affinity(z_s, z_t)
    assert out.shape == (G, N, M) and out.dtype == dtype
    assert_matches_reference(out, reference.global_affinity(z_s, z_t), dtype)
    if zero and N > 0:
        assert (out[:, 0] == 0).all()


@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]), zero=st.booleans())
def test_backward_matches_reference_cpu(shape, dtype, zero):
    G, N, M, F, seed = shape
    z_s, z_t = make_pair(G, N, M, F, dtype, "cpu", seed, zero)
    w = torch.randn(G, N, M, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ours = torch.autograd.grad(
        (lvmmed_ext.global_affinity(z_s.requires_grad_(), z_t.requires_grad_()) * w.to(dtype)).sum(),
        (z_s, z_t),
        allow_unused=True,
    )
    a, b = z_s.detach().double().requires_grad_(), z_t.detach().double().requires_grad_()
    ref = torch.autograd.grad((reference.global_affinity(a, b) * w).sum(), (a, b), allow_unused=True)
    for o, r, like in zip(ours, ref, (a, b)):
        o = torch.zeros_like(like) if o is None else o
        r = torch.zeros_like(like) if r is None else r
        assert_matches_reference(o, r, dtype)


def test_non_contiguous_inputs(device):
    z_s = torch.randn(2, 8, 3, device=device, dtype=torch.float64).transpose(1, 2)  # [2,3,8]
    z_t = torch.randn(2, 4, 16, device=device, dtype=torch.float64)[:, :, ::2]  # [2,4,8], strided
    assert not z_s.is_contiguous() and not z_t.is_contiguous()
    assert_matches_reference(lvmmed_ext.global_affinity(z_s, z_t), reference.global_affinity(z_s, z_t), torch.float64)


def test_gradcheck(device):
    z_s, z_t = make_pair(2, 3, 4, 5, torch.float64, device, 0)
    assert torch.autograd.gradcheck(lvmmed_ext.global_affinity, (z_s.requires_grad_(), z_t.requires_grad_()))


def test_half_precision_on_cpu_is_computed_in_float32():
    z_s, z_t = make_pair(1, 3, 4, 16, torch.bfloat16, "cpu", 3)
    out = lvmmed_ext.global_affinity(z_s, z_t)
    assert out.dtype == torch.bfloat16
    peer = torch.nn.functional.cosine_similarity(z_s[:, :, None], z_t[:, None], dim=-1)
    assert_low_precision_ok(out, peer, reference.global_affinity(z_s, z_t))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    z_s, z_t = make_pair(2, 3, 4, 5, torch.float32, device, 1)
    z_s.requires_grad_(requires_grad)
    z_t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.lvmmed.global_affinity.default, (z_s, z_t))
    grad = torch.randn(2, 3, 4, device=device)
    torch.library.opcheck(torch.ops.lvmmed.global_affinity_backward.default, (grad, z_s.detach(), z_t.detach()))


def test_torch_compile_fullgraph_forward_backward(device):
    z_s, z_t = make_pair(2, 3, 4, 5, torch.float32, device, 2)

    def f(a, b):
        return (lvmmed_ext.global_affinity(a * 2.0, b).exp() * 0.5).sum()

    compiled = torch.compile(f, fullgraph=True)
    a1, b1 = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    a2, b2 = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    out_c, out_e = compiled(a1, b1), f(a2, b2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(a1.grad, a2.grad)
    torch.testing.assert_close(b1.grad, b2.grad)


def test_empty_batches_give_empty_results():
    assert lvmmed_ext.global_affinity(torch.randn(0, 3, 4), torch.randn(0, 5, 4)).shape == (0, 3, 5)
    assert lvmmed_ext.global_affinity(torch.randn(2, 0, 4), torch.randn(2, 5, 4)).shape == (2, 0, 5)
    z_s = torch.randn(2, 3, 4, requires_grad=True)
    lvmmed_ext.global_affinity(z_s, torch.randn(2, 0, 4)).sum().backward()
    assert (z_s.grad == 0).all()


def test_nan_propagates_to_affected_rows_only():
    z_s, z_t = make_pair(1, 3, 4, 5, torch.float32, "cpu", 4)
    z_s[0, 1, 2] = float("nan")
    out = lvmmed_ext.global_affinity(z_s, z_t)
    assert out[0, 1].isnan().all()
    assert out[0, [0, 2]].isfinite().all()


@pytest.mark.parametrize(
    "z_s, z_t, exc, match",
    [
        (torch.randn(3, 4), torch.randn(1, 3, 4), ValueError, r"z_s must be \[G,N,F\] \(3-D\), got shape \[3, 4\]"),
        (torch.randn(1, 3, 4), torch.randn(1, 3, 5), ValueError, r"same feature size F.*\[1, 3, 4\].*\[1, 3, 5\]"),
        (torch.randn(2, 3, 4), torch.randn(1, 3, 4), ValueError, r"same number of graphs G"),
        (
            torch.randn(1, 3, 4),
            torch.randn(1, 3, 4, dtype=torch.float64),
            TypeError,
            r"same dtype, got z_s torch.float32 and z_t torch.float64",
        ),
        (
            torch.ones(1, 3, 4, dtype=torch.int64),
            torch.ones(1, 3, 4, dtype=torch.int64),
            TypeError,
            r"z_s must have a floating-point dtype .*, got torch.int64",
        ),
        (torch.randn(1, 3, 0), torch.randn(1, 3, 0), ValueError, r"at least one feature"),
    ],
)
def test_bad_input_errors(z_s, z_t, exc, match):
    with pytest.raises(exc, match=match):
        lvmmed_ext.global_affinity(z_s, z_t)


def test_backward_op_checks_grad_shape():
    with pytest.raises(ValueError, match=r"grad must be \[G,N,M\] = \[1, 3, 2\], got \[1, 2, 3\]"):
        torch.ops.lvmmed.global_affinity_backward(torch.randn(1, 2, 3), torch.randn(1, 3, 4), torch.randn(1, 2, 4))


def test_large_graphs_on_cpu_use_gemms_with_the_same_semantics():
    # N*M*F >= 2^20 multiply-adds per graph switch the CPU backend to library GEMMs.
    z_s, z_t = make_pair(2, 128, 100, 96, torch.float64, "cpu", 8, zero_rows=True, duplicate=True)
    w = torch.randn(2, 128, 100, dtype=torch.float64)
    a, b = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    out = lvmmed_ext.global_affinity(a, b)
    assert (out[:, 0] == 0).all()
    assert_matches_reference(out, reference.global_affinity(z_s, z_t), torch.float64)
    ours = torch.autograd.grad((out * w).sum(), (a, b))
    a, b = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    ref = torch.autograd.grad((reference.global_affinity(a, b) * w).sum(), (a, b))
    for o, r in zip(ours, ref):
        assert_matches_reference(o, r, torch.float64)
    z_s[0, 3, 5] = float("nan")
    out = lvmmed_ext.global_affinity(z_s, z_t)
    assert out[0, 3].isnan().all() and out[0, [2, 4]].isfinite().all() and out[1].isfinite().all()


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_mixed_devices_error():  # the real device only: the emulated backend has one device, the CPU
    with pytest.raises(ValueError, match="same device"):
        lvmmed_ext.global_affinity(torch.randn(1, 3, 4, device="cuda"), torch.randn(1, 3, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 16, 16, 128), (2, 33, 70, 65), (5, 7, 3, 2048)])
def test_cuda_matches_reference_and_cpu(gpu, dtype, shape):
    G, N, M, F = shape
    z_s, z_t = make_pair(G, N, M, F, dtype, gpu.device, 5, zero_rows=True, duplicate=True)
    w = torch.randn(G, N, M, dtype=dtype)
    with gpu:
        out = lvmmed_ext.global_affinity(z_s, z_t)
        g_gpu = torch.autograd.grad(
            (lvmmed_ext.global_affinity(z_s.requires_grad_(), z_t.requires_grad_()) * w.to(gpu.device)).sum(),
            (z_s, z_t),
        )
    assert_matches_reference(out, reference.global_affinity(z_s.detach(), z_t.detach()), dtype)
    assert_matches_reference(out, lvmmed_ext.global_affinity(z_s.detach().cpu(), z_t.detach().cpu()), dtype)
    a, b = z_s.detach().cpu().requires_grad_(), z_t.detach().cpu().requires_grad_()
    g_cpu = torch.autograd.grad((lvmmed_ext.global_affinity(a, b) * w).sum(), (a, b))
    for x, y in zip(g_gpu, g_cpu):
        assert_matches_reference(x, y, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_cuda_low_precision_within_2x_of_torch(gpu, dtype):
    z_s, z_t = make_pair(4, 16, 16, 128, dtype, gpu.device, 6)
    w = torch.randn(4, 16, 16, dtype=dtype, device=gpu.device)
    with gpu:
        out = lvmmed_ext.global_affinity(z_s, z_t)
        (g_ours,) = torch.autograd.grad((lvmmed_ext.global_affinity(z_s.requires_grad_(), z_t) * w).sum(), (z_s,))
    assert out.dtype == dtype
    peer = torch.nn.functional.normalize(z_s, dim=-1) @ torch.nn.functional.normalize(z_t, dim=-1).transpose(1, 2)
    assert_low_precision_ok(out, peer, reference.global_affinity(z_s.detach(), z_t))
    zp = z_s.detach().requires_grad_()
    peer = torch.nn.functional.normalize(zp, dim=-1) @ torch.nn.functional.normalize(z_t, dim=-1).transpose(1, 2)
    (g_peer,) = torch.autograd.grad((peer * w).sum(), (zp,))
    a = z_s.detach().double().requires_grad_()
    (g_ref,) = torch.autograd.grad((reference.global_affinity(a, z_t.double()) * w.double()).sum(), (a,))
    assert_low_precision_ok(g_ours, g_peer, g_ref)


@pytest.mark.parametrize(
    "shape, emulated",
    [
        ((0, 3, 4, 5), None),
        ((2, 0, 4, 5), None),
        ((2, 3, 0, 5), None),
        ((70000, 2, 3, 4), (7, 2, 3, 4)),
        ((1, 40, 1, 33), None),
        ((1, 2_100_000, 2, 1), (1, 100, 2, 1)),
    ],
)
def test_cuda_edge_shapes_match_cpu(gpu, shape, emulated):
    # empty batches (no launch), G > 65535 (the batched product loops over grid.z slices), M = 1, zero rows, more
    # than 65535 row tiles of 32 (grid.y slices); the emulator reaches the slicing with a device of 3 x 2 x 3 blocks
    G, N, M, F = gpu.pick(shape, emulated or shape)
    z_s, z_t = make_pair(G, N, M, F, torch.float64, "cpu", 9, zero_rows=True, duplicate=True)
    w = torch.randn(G, N, M, dtype=torch.float64)
    a, b = z_s.to(gpu.device).requires_grad_(), z_t.to(gpu.device).requires_grad_()
    with gpu, gpu.device_limits(max_grid_x=3, max_grid_y=2, max_grid_z=3):
        out = lvmmed_ext.global_affinity(a, b)
        g_gpu = torch.autograd.grad((out * w.to(gpu.device)).sum(), (a, b), allow_unused=True)
    assert out.shape == (G, N, M)
    assert_matches_reference(out.cpu(), lvmmed_ext.global_affinity(z_s, z_t), torch.float64)
    if N > 0:
        assert (out[:, 0] == 0).all()  # zero vectors: cosine 0
    a, b = z_s.clone().requires_grad_(), z_t.clone().requires_grad_()
    g_cpu = torch.autograd.grad((lvmmed_ext.global_affinity(a, b) * w).sum(), (a, b), allow_unused=True)
    for x, y in zip(g_gpu, g_cpu):
        if x is not None and y is not None:
            assert_matches_reference(x.cpu(), y, torch.float64)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, zero=st.booleans(), dup=st.booleans())
def test_cuda_property_matches_cpu(gpu, shape, zero, dup):
    G, N, M, F, seed = shape
    z_s, z_t = make_pair(G, N, M, F, torch.float64, "cpu", seed, zero, dup)
    w = torch.randn(G, N, M, dtype=torch.float64)
    with gpu:
        out = lvmmed_ext.global_affinity(z_s.to(gpu.device), z_t.to(gpu.device))
        grads = torch.ops.lvmmed.global_affinity_backward(w.to(gpu.device), z_s.to(gpu.device), z_t.to(gpu.device))
    assert_matches_reference(out, lvmmed_ext.global_affinity(z_s, z_t), torch.float64)
    for a, b in zip(grads, torch.ops.lvmmed.global_affinity_backward(w, z_s, z_t)):
        assert_matches_reference(a, b, torch.float64)
