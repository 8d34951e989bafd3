"""local_affinity: parity with the float64 reference (ties, duplicates, zero vectors, clamping), gradients,
opcheck, torch.compile, chunked Gram products, errors, CUDA parity and low precision."""

import pytest
import torch
from helpers import LOW_PRECISION, assert_low_precision_ok, assert_matches_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lvmmed_ext
from lvmmed_ext import reference


def make_maps(G, N, M, P, Q, D, dtype, device, seed, *, zero=False, dup=False, integer=False):
    """Feature maps y_s [G,N,P,D], y_t [G,M,Q,D]. zero: some zero cells; dup: duplicated cells within and across
    maps (exact distance ties); integer: small integers, so every distance is exact and ties abound."""
    gen = torch.Generator().manual_seed(seed)
    if integer:
        y_s = torch.randint(-2, 3, (G, N, P, D), generator=gen).double()
        y_t = torch.randint(-2, 3, (G, M, Q, D), generator=gen).double()
    else:
        y_s = torch.randn(G, N, P, D, generator=gen, dtype=torch.float64)
        y_t = torch.randn(G, M, Q, D, generator=gen, dtype=torch.float64)
    if zero:
        y_s[:, :, 0] = 0
        y_t[:, :, -1] = 0
    if dup:
        y_s[:, :, -1] = y_s[:, :, 0]
        y_t[:, :, -1] = y_t[:, :, 0]
        if N and M:
            y_t[:, 0, 0] = y_s[:, 0, 0]
    return y_s.to(device, dtype), y_t.to(device, dtype)


def make_positions(G, N, M, P, Q, device, seed, *, grid=False):
    """pos_s [G,N,P,2], pos_t [G,M,Q,2] in float64. grid: integer grids offset by half a cell (exact location ties)."""
    gen = torch.Generator().manual_seed(seed)
    if grid:
        cells = lambda n: torch.stack((torch.arange(n) // 3, torch.arange(n) % 3), -1).double() * 2  # noqa: E731
        pos_s = (cells(P) + torch.randint(0, 3, (G, N, 1, 2), generator=gen)).double()
        pos_t = (cells(Q) + 1 + torch.randint(0, 3, (G, M, 1, 2), generator=gen)).double()
    else:
        pos_s = torch.rand(G, N, P, 2, generator=gen, dtype=torch.float64) * 100
        pos_t = torch.rand(G, M, Q, 2, generator=gen, dtype=torch.float64) * 100
    return pos_s.to(device), pos_t.to(device)


shapes = st.tuples(
    st.integers(0, 3),  # G
    st.integers(0, 4),  # N
    st.integers(0, 4),  # M
    st.integers(1, 7),  # P
    st.integers(1, 7),  # Q
    st.integers(1, 9),  # D
    st.integers(0, 2**31 - 1),
)
options = st.fixed_dictionaries(
    {
        "positions": st.sampled_from([None, "random", "grid"]),
        "top_loc": st.integers(1, 9),  # > P or Q: clamped
        "top_feat": st.none() | st.integers(1, 9),
        "data": st.sampled_from(["random", "zero", "dup", "integer"]),
    }
)


def inputs(shape, opts, dtype, device="cpu"):
    G, N, M, P, Q, D, seed = shape
    data = opts["data"]
    y_s, y_t = make_maps(
        G, N, M, P, Q, D, dtype, device, seed, zero=data == "zero", dup=data == "dup", integer=data == "integer"
    )
    pos = (None, None)
    if opts["positions"]:
        pos = make_positions(G, N, M, P, Q, device, seed + 1, grid=opts["positions"] == "grid")
    return y_s, y_t, pos, {"top_loc": opts["top_loc"], "top_feat": opts["top_feat"]}


@given(shape=shapes, opts=options, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_forward_matches_reference_cpu(shape, opts, dtype):
    y_s, y_t, pos, kw = inputs(shape, opts, dtype)
    out = lvmmed_ext.local_affinity(y_s, y_t, *pos, **kw)
    G, N, M = shape[:3]
    assert out.shape == (G, N, M) and out.dtype == dtype
    assert out.isfinite().all() and (out.abs() <= 1 + 1e-6).all()
    assert_matches_reference(out, reference.local_affinity(y_s, y_t, *pos, **kw), dtype)


@given(shape=shapes, opts=options, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_backward_matches_reference_cpu(shape, opts, dtype):
    y_s, y_t, pos, kw = inputs(shape, opts, dtype)
    G, N, M = shape[:3]
    w = torch.randn(G, N, M, generator=torch.Generator().manual_seed(shape[-1] + 2), dtype=torch.float64)
    a, b = y_s.clone().requires_grad_(), y_t.clone().requires_grad_()
    ours = torch.autograd.grad((lvmmed_ext.local_affinity(a, b, *pos, **kw) * w.to(dtype)).sum(), (a, b))
    a, b = y_s.double().requires_grad_(), y_t.double().requires_grad_()
    ref_out = reference.local_affinity(a, b, *pos, **kw)
    ref = torch.autograd.grad((ref_out * w).sum(), (a, b), allow_unused=True) if ref_out.requires_grad else (None, None)
    for o, r, like in zip(ours, ref, (a, b)):
        assert_matches_reference(o, torch.zeros_like(like) if r is None else r, dtype)


def test_hand_computed_example():
    # One pair, P = Q = 2, D = 2. Source cells e1, e2; target cells e1, (e1+e2)/sqrt2 scaled by 2.
    y_s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    y_t = torch.tensor([[[[1.0, 0.0], [2.0, 2.0]]]], dtype=torch.float64)
    c = 2**-0.5
    # features i->a: e1 -> t0 (dist 0), e2 -> t0 (dist 2 vs 5): cosines 1, 0; a->i: t0 -> e1 (1), t1 -> e1 (tie 5 vs
    # 5: lower index) cos c. feat(i->a) = 0.5, feat(a->i) = (1 + c)/2.
    out = lvmmed_ext.local_affinity(y_s, y_t)
    torch.testing.assert_close(out, torch.tensor([[[0.5 * (0.5 + (1 + c) / 2)]]], dtype=torch.float64))
    # top_feat=1 keeps the closest match per direction: i->a cell 0 (cos 1), a->i cell 0 (cos 1).
    assert lvmmed_ext.local_affinity(y_s, y_t, top_feat=1).item() == pytest.approx(1.0)
    # Positions: s cells at x=0, x=10; t cells at x=9, x=1 -> s0 -> t1 (dist 1, cos c), s1 -> t0 (dist 1, cos 0);
    # t0 -> s1 (dist 1, cos 0), t1 -> s0 (dist 1, cos c). top_loc = 1 keeps the lower index of each tie: s0, t0.
    pos_s = torch.tensor([[[[0.0, 0.0], [10.0, 0.0]]]])
    pos_t = torch.tensor([[[[9.0, 0.0], [1.0, 0.0]]]])
    loc = 0.5 * (0.5 * (0.5 + c) + 0.5 * ((1 + c) / 2 + 0.0))
    assert lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t, top_loc=1).item() == pytest.approx(loc)


def test_ties_go_to_the_lower_index():
    # The source cell (1, 0) is at squared distance 2 from target cells 1 and 2: its match is cell 1.
    y_s = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    y_t = torch.tensor([[[[5.0, 5.0], [0.0, 1.0], [0.0, -1.0]]]], dtype=torch.float64, requires_grad=True)
    out, m = torch.ops.lvmmed.local_affinity(y_s, y_t, None, None, 20, None)
    assert m[0, 0, 0].tolist() == [1, 0, 0, 0]  # i->a: cell 1; a->i: every target cell's only source cell 0
    grads = torch.autograd.grad(out.sum(), (y_s, y_t))
    a, b = y_s.detach().requires_grad_(), y_t.detach().requires_grad_()
    ref = torch.autograd.grad(reference.local_affinity(a, b).sum(), (a, b))
    for x, r in zip(grads, ref):
        assert_matches_reference(x, r, torch.float64)
    assert not torch.allclose(grads[1][0, 0, 1].abs(), grads[1][0, 0, 2].abs())  # mirror cells, only one matched


def test_zero_vectors_have_cosine_zero_and_no_nan():
    y_s = torch.zeros(1, 2, 3, 4, requires_grad=True)
    y_t = torch.randn(1, 2, 3, 4, requires_grad=True)
    out = lvmmed_ext.local_affinity(y_s, y_t)
    assert (out == 0).all()
    out.sum().backward()
    assert (y_s.grad == 0).all() and y_t.grad.isfinite().all()


def test_top_loc_larger_than_p_is_clamped():
    y_s, y_t = make_maps(2, 3, 2, 4, 6, 5, torch.float64, "cpu", 3)
    pos = make_positions(2, 3, 2, 4, 6, "cpu", 4)
    big = lvmmed_ext.local_affinity(y_s, y_t, *pos, top_loc=100, top_feat=100)
    assert torch.equal(big, lvmmed_ext.local_affinity(y_s, y_t, *pos, top_loc=6, top_feat=None))


def test_without_positions_is_feature_term_only():
    y_s, y_t = make_maps(1, 2, 3, 5, 4, 6, torch.float64, "cpu", 5)
    pos = make_positions(1, 2, 3, 5, 4, "cpu", 6)
    feat = lvmmed_ext.local_affinity(y_s, y_t)
    both = lvmmed_ext.local_affinity(y_s, y_t, *pos, top_loc=2)
    assert not torch.allclose(feat, both)
    assert_matches_reference(feat, reference.local_affinity(y_s, y_t), torch.float64)


def test_symmetry_swapping_views_transposes():
    y_s, y_t = make_maps(2, 3, 4, 5, 6, 7, torch.float64, "cpu", 7)
    pos_s, pos_t = make_positions(2, 3, 4, 5, 6, "cpu", 8)
    ab = lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t, top_loc=3, top_feat=4)
    ba = lvmmed_ext.local_affinity(y_t, y_s, pos_t, pos_s, top_loc=3, top_feat=4)
    torch.testing.assert_close(ab, ba.transpose(1, 2))


def test_non_contiguous_inputs(device):
    y_s = torch.randn(2, 3, 8, 5, device=device, dtype=torch.float64).transpose(2, 3)  # [2,3,5,8]
    y_t = torch.randn(2, 4, 6, 16, device=device, dtype=torch.float64)[..., ::2]  # [2,4,6,8]
    pos_s = torch.rand(2, 3, 2, 5, device=device).transpose(2, 3) * 10
    pos_t = torch.rand(2, 4, 6, 2, device=device, dtype=torch.float64) * 10
    assert not y_s.is_contiguous() and not y_t.is_contiguous() and not pos_s.is_contiguous()
    out = lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t, top_loc=3)
    assert_matches_reference(out, reference.local_affinity(y_s, y_t, pos_s, pos_t, top_loc=3), torch.float64)


@pytest.mark.parametrize("positions", [False, True])
def test_gradcheck(device, positions):
    y_s, y_t = make_maps(2, 2, 3, 4, 5, 3, torch.float64, device, 9)
    pos = make_positions(2, 2, 3, 4, 5, device, 10) if positions else (None, None)
    fn = lambda a, b: lvmmed_ext.local_affinity(a, b, *pos, top_loc=2, top_feat=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y_s.requires_grad_(), y_t.requires_grad_()))


def test_no_gradient_to_positions():
    y_s, y_t = make_maps(1, 2, 2, 3, 3, 4, torch.float64, "cpu", 11)
    pos_s, pos_t = make_positions(1, 2, 2, 3, 3, "cpu", 12)
    pos_s.requires_grad_()
    y_s.requires_grad_()
    lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t).sum().backward()
    assert pos_s.grad is None and y_s.grad is not None


def test_half_precision_on_cpu_is_computed_in_float32():
    y_s, y_t = make_maps(2, 3, 3, 9, 9, 32, torch.bfloat16, "cpu", 13)
    pos = make_positions(2, 3, 3, 9, 9, "cpu", 14)
    out = lvmmed_ext.local_affinity(y_s, y_t, *pos, top_loc=4)
    assert out.dtype == torch.bfloat16
    peer = reference.local_affinity(y_s, y_t, *pos, top_loc=4, dtype=torch.bfloat16)
    assert_low_precision_ok(out, peer, reference.local_affinity(y_s, y_t, *pos, top_loc=4))


@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, positions, requires_grad):
    y_s, y_t = make_maps(2, 3, 2, 4, 5, 6, torch.float32, device, 15)
    pos = make_positions(2, 3, 2, 4, 5, device, 16) if positions else (None, None)
    y_s.requires_grad_(requires_grad)
    y_t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.lvmmed.local_affinity.default, (y_s, y_t, *pos, 2, None))
    _, matches = torch.ops.lvmmed.local_affinity(y_s.detach(), y_t.detach(), *pos, 2, 3)
    grad = torch.randn(2, 3, 2, device=device)
    torch.library.opcheck(
        torch.ops.lvmmed.local_affinity_backward.default,
        (grad, y_s.detach(), y_t.detach(), matches, positions, 2, 3),
    )


def test_matches_record_the_selections():
    y_s, y_t = make_maps(1, 2, 3, 5, 4, 6, torch.float64, "cpu", 17)
    pos = make_positions(1, 2, 3, 5, 4, "cpu", 18)
    _, m = torch.ops.lvmmed.local_affinity(y_s, y_t, *pos, 2, 3)
    assert m.shape == (1, 2, 3, 18) and m.dtype == torch.int32
    P, Q = 5, 4
    kept = (m >= 0).sum(-1)  # feat: 3 + 3, loc: 2 + 2
    assert (kept == 10).all()
    assert (m[..., :P] < Q).all() and (m[..., P : P + Q] < P).all()


def test_torch_compile_fullgraph_forward_backward(device):
    y_s, y_t = make_maps(2, 3, 3, 4, 4, 5, torch.float32, device, 19)
    pos = make_positions(2, 3, 3, 4, 4, device, 20)

    def f(a, b):
        return (lvmmed_ext.local_affinity(a * 2.0, b, *pos, top_loc=2).exp() * 0.5).sum()

    compiled = torch.compile(f, fullgraph=True)
    a1, b1 = y_s.clone().requires_grad_(), y_t.clone().requires_grad_()
    a2, b2 = y_s.clone().requires_grad_(), y_t.clone().requires_grad_()
    out_c, out_e = compiled(a1, b1), f(a2, b2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(a1.grad, a2.grad)
    torch.testing.assert_close(b1.grad, b2.grad)


def test_empty_batches_give_empty_results():
    assert lvmmed_ext.local_affinity(torch.randn(0, 3, 4, 5), torch.randn(0, 2, 4, 5)).shape == (0, 3, 2)
    assert lvmmed_ext.local_affinity(torch.randn(2, 0, 4, 5), torch.randn(2, 2, 4, 5)).shape == (2, 0, 2)
    y_s = torch.randn(2, 3, 4, 5, requires_grad=True)
    lvmmed_ext.local_affinity(y_s, torch.randn(2, 0, 4, 5)).sum().backward()
    assert (y_s.grad == 0).all()


def test_zero_upstream_gradient_gives_zero_gradient():
    y_s, y_t = make_maps(1, 2, 2, 3, 3, 4, torch.float64, "cpu", 21)
    _, m = torch.ops.lvmmed.local_affinity(y_s, y_t, None, None, 20, None)
    g_s, g_t = torch.ops.lvmmed.local_affinity_backward(
        torch.zeros(1, 2, 2, dtype=torch.float64), y_s, y_t, m, False, 20, None
    )
    assert (g_s == 0).all() and (g_t == 0).all()


def test_chunked_gram_products_match_single_chunk_calls():
    # Gram chunks hold at most 2^24 elements: 65 x 64 x 64 x 64 splits one graph's source nodes (64 + 1), and
    # 64 x 45 x 64 x 45 = 8.3M per graph puts 2 graphs per chunk (3 graphs -> chunks of 2 and 1). Each pair only
    # reads its own maps, so slices computed in one small chunk must agree.
    for G, N, M, P, Q in [(1, 65, 64, 64, 64), (3, 64, 64, 45, 45)]:
        y_s, y_t = make_maps(G, N, M, P, Q, 8, torch.float32, "cpu", 22)
        out = lvmmed_ext.local_affinity(y_s, y_t, top_feat=7)
        for g in range(G):
            for i0 in (0, N - 3):
                part = lvmmed_ext.local_affinity(y_s[g : g + 1, i0 : i0 + 3], y_t[g : g + 1], top_feat=7)
                assert_matches_reference(out[g : g + 1, i0 : i0 + 3], part, torch.float32)


@pytest.mark.slow
def test_resnet50_scale_on_cpu():
    # The paper's shape: 12 graphs of 16 nodes, 7x7 layer-4 maps of 2048 channels (inputs 2 x 77 MB).
    G, N, P, D = 12, 16, 49, 2048
    y_s, y_t = make_maps(G, N, N, P, P, D, torch.float32, "cpu", 23)
    pos_s, pos_t = make_positions(G, N, N, P, P, "cpu", 24)
    y_s.requires_grad_()
    out = lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t)
    out.sum().backward()
    assert out.shape == (G, N, N) and out.isfinite().all() and y_s.grad.isfinite().all()
    # Every pair only reads its own two maps: check a corner of the batch against the reference.
    sub = (slice(0, 2), slice(0, 3))
    ref = reference.local_affinity(y_s[sub].detach(), y_t[:2, :2], pos_s[sub], pos_t[:2, :2])
    assert_matches_reference(out[:2, :3, :2], ref, torch.float32)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (
            (torch.randn(3, 4, 5), torch.randn(1, 3, 4, 5)),
            ValueError,
            r"y_s must be \[G,N,P,D\] \(4-D\), got shape \[3, 4, 5\]",
        ),
        ((torch.randn(2, 3, 4, 5), torch.randn(1, 3, 4, 5)), ValueError, r"same number of graphs G"),
        (
            (torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 6)),
            ValueError,
            r"same number of channels D.*\[1, 3, 4, 5\].*\[1, 3, 4, 6\]",
        ),
        ((torch.randn(1, 3, 0, 5), torch.randn(1, 3, 4, 5)), ValueError, r"at least one position and one channel"),
        ((torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5, dtype=torch.float64)), TypeError, r"same dtype"),
        (
            (torch.ones(1, 3, 4, 5, dtype=torch.int32), torch.ones(1, 3, 4, 5, dtype=torch.int32)),
            TypeError,
            r"floating-point dtype",
        ),
        (
            (torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5), torch.rand(1, 3, 4, 2), None),
            ValueError,
            r"pos_s and pos_t must both be given or both be None, got pos_s given and pos_t None",
        ),
        (
            (torch.randn(1, 3, 4, 5), torch.randn(1, 2, 4, 5), torch.rand(1, 3, 4, 2), torch.rand(1, 3, 4, 2)),
            ValueError,
            r"pos_t must be \[G,M,Q,2\] = \[1, 2, 4, 2\].*got \[1, 3, 4, 2\]",
        ),
        (
            (
                torch.randn(1, 3, 4, 5),
                torch.randn(1, 3, 4, 5),
                torch.ones(1, 3, 4, 2, dtype=torch.int64),
                torch.rand(1, 3, 4, 2),
            ),
            TypeError,
            r"pos_s must have a floating-point dtype",
        ),
    ],
)
def test_bad_input_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        lvmmed_ext.local_affinity(*args)


@pytest.mark.parametrize(
    "kw, match",
    [({"top_loc": 0}, r"top_loc must be >= 1, got 0"), ({"top_feat": -2}, r"top_feat must be >= 1 or None, got -2")],
)
def test_bad_top_k_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        lvmmed_ext.local_affinity(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), **kw)


@pytest.mark.parametrize("where", ["y_s", "y_t", "pos_s", "pos_t"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_are_rejected(device, where, value):
    y_s, y_t = make_maps(2, 3, 2, 4, 5, 6, torch.float32, device, 25)
    pos_s, pos_t = make_positions(2, 3, 2, 4, 5, device, 26)
    t = {"y_s": y_s, "y_t": y_t, "pos_s": pos_s, "pos_t": pos_t}[where]
    t[1, 1, 2, 1] = value
    match = {
        "y_s": r"y_s contains NaN or Inf \(first in the vector y_s\[1, 1, 2, :\]",
        "y_t": r"y_t contains NaN or Inf \(first in the vector y_t\[1, 1, 2, :\]",
        "pos_s": r"pos_s contains NaN or Inf",
        "pos_t": r"pos_t contains NaN or Inf",
    }[where]
    with pytest.raises(ValueError, match=match):
        lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t)


def test_overflowing_squared_norm_is_rejected():
    y_s = torch.full((1, 1, 2, 4), 3e19)  # finite, but ||y||^2 overflows float32
    with pytest.raises(ValueError, match=r"y_s contains NaN or Inf .*or its squared norm overflows"):
        lvmmed_ext.local_affinity(y_s, torch.randn(1, 1, 2, 4))


def test_backward_op_checks_its_arguments():
    y_s, y_t = torch.randn(1, 2, 3, 4), torch.randn(1, 3, 5, 4)
    _, m = torch.ops.lvmmed.local_affinity(y_s, y_t, None, None, 20, None)
    with pytest.raises(ValueError, match=r"grad must be \[G,N,M\] = \[1, 2, 3\], got \[1, 3, 2\]"):
        torch.ops.lvmmed.local_affinity_backward(torch.randn(1, 3, 2), y_s, y_t, m, False, 20, None)
    with pytest.raises(ValueError, match=r"matches must be \[G,N,M,W\] = \[1, 2, 3, 16\] \(W = 2\(P\+Q\)\)"):
        torch.ops.lvmmed.local_affinity_backward(torch.randn(1, 2, 3), y_s, y_t, m, True, 20, None)
    with pytest.raises(TypeError, match=r"matches must have dtype torch.int32, got torch.int64"):
        torch.ops.lvmmed.local_affinity_backward(torch.randn(1, 2, 3), y_s, y_t, m.long(), False, 20, None)


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_mixed_devices_error():  # the real device only: the emulated backend has one device, the CPU
    with pytest.raises(ValueError, match="same device"):
        lvmmed_ext.local_affinity(torch.randn(1, 3, 4, 5, device="cuda"), torch.randn(1, 3, 4, 5))
    with pytest.raises(ValueError, match="y_s and pos_s must be on the same device"):
        y = torch.randn(1, 3, 4, 5, device="cuda")
        lvmmed_ext.local_affinity(y, y, torch.rand(1, 3, 4, 2), torch.rand(1, 3, 4, 2, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, emulated",
    [
        ((1, 1, 1, 1, 1, 1), None),
        ((3, 4, 5, 7, 6, 33), None),
        ((2, 16, 16, 49, 49, 256), (1, 4, 5, 49, 49, 64)),
        ((1, 3, 2, 196, 200, 64), (1, 2, 2, 196, 200, 16)),
    ],
)
@pytest.mark.parametrize("positions", [False, True])
def test_cuda_matches_reference_and_cpu(gpu, dtype, shape, emulated, positions):
    G, N, M, P, Q, D = gpu.pick(shape, emulated or shape)
    y_s, y_t = make_maps(G, N, M, P, Q, D, dtype, gpu.device, 27, zero=True, dup=True)
    pos = make_positions(G, N, M, P, Q, gpu.device, 28) if positions else (None, None)
    kw = {"top_loc": 20, "top_feat": 30}
    w = torch.randn(G, N, M, dtype=dtype)
    with gpu:
        out = lvmmed_ext.local_affinity(y_s, y_t, *pos, **kw)
        y_s.requires_grad_()
        y_t.requires_grad_()
        loss = (lvmmed_ext.local_affinity(y_s, y_t, *pos, **kw) * w.to(gpu.device)).sum()
        g_gpu = torch.autograd.grad(loss, (y_s, y_t))
    y_s, y_t = y_s.detach(), y_t.detach()
    if P * Q * N * M <= 5000:
        assert_matches_reference(out, reference.local_affinity(y_s, y_t, *pos, **kw), dtype)
    cpu_pos = tuple(p.cpu() if p is not None else None for p in pos)
    assert_matches_reference(out, lvmmed_ext.local_affinity(y_s.cpu(), y_t.cpu(), *cpu_pos, **kw), dtype)
    a, b = y_s.cpu().requires_grad_(), y_t.cpu().requires_grad_()
    g_cpu = torch.autograd.grad((lvmmed_ext.local_affinity(a, b, *cpu_pos, **kw) * w).sum(), (a, b))
    for x, y in zip(g_gpu, g_cpu):
        assert_matches_reference(x, y, dtype)


def test_cuda_chunked_gram_products_match_cpu(gpu):
    # more than 2^24 Gram elements per graph (chunks of source nodes, whose backward contributions to y_t add up) or
    # per batch (chunks of graphs); the emulator runs one graph of 3 nodes split into chunks of 2 + 1 (few, large
    # pairs: it pays per pair), gradients included
    shapes = gpu.pick([(1, 65, 64, 64, 64, 8), (3, 64, 64, 45, 45, 8)], [(1, 3, 2, 2048, 2048, 1)])
    for G, N, M, P, Q, D in shapes:
        y_s, y_t = make_maps(G, N, M, P, Q, D, torch.float64, gpu.device, 29)
        w = torch.randn(G, N, M, dtype=torch.float64)
        with gpu:
            a, b = y_s.clone().requires_grad_(), y_t.clone().requires_grad_()
            out = lvmmed_ext.local_affinity(a, b, top_feat=7)
            g_gpu = torch.autograd.grad((out * w.to(gpu.device)).sum(), (a, b))
        a, b = y_s.cpu().requires_grad_(), y_t.cpu().requires_grad_()
        want = lvmmed_ext.local_affinity(a, b, top_feat=7)
        assert_matches_reference(out, want, torch.float64)
        for x, y in zip(g_gpu, torch.autograd.grad((want * w).sum(), (a, b))):
            assert_matches_reference(x, y, torch.float64)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_cuda_low_precision_within_2x_of_torch(gpu, dtype):
    y_s, y_t = make_maps(3, 8, 8, 9, 9, 64, dtype, gpu.device, 30)
    pos = make_positions(3, 8, 8, 9, 9, gpu.device, 31)
    w = torch.randn(3, 8, 8, dtype=dtype, device=gpu.device)
    with gpu:
        out = lvmmed_ext.local_affinity(y_s, y_t, *pos, top_loc=4)
        (g_ours,) = torch.autograd.grad(
            (lvmmed_ext.local_affinity(y_s.requires_grad_(), y_t, *pos, top_loc=4) * w).sum(), (y_s,)
        )
    y_s = y_s.detach()
    assert out.dtype == dtype
    peer = reference.local_affinity(y_s, y_t, *pos, top_loc=4, dtype=dtype)
    assert_low_precision_ok(out, peer, reference.local_affinity(y_s, y_t, *pos, top_loc=4))
    yp = y_s.detach().requires_grad_()
    (g_peer,) = torch.autograd.grad((reference.local_affinity(yp, y_t, *pos, top_loc=4, dtype=dtype) * w).sum(), (yp,))
    a = y_s.detach().double().requires_grad_()
    (g_ref,) = torch.autograd.grad((reference.local_affinity(a, y_t, *pos, top_loc=4) * w.double()).sum(), (a,))
    assert_low_precision_ok(g_ours, g_peer, g_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape,kw",
    [
        ((2, 3, 2, 9, 9, 4), {"top_loc": 4, "top_feat": 3}),
        ((2, 2, 3, 5, 12, 3), {"top_loc": 100, "top_feat": 100}),  # clamped to P and Q
        ((1, 1, 4, 1, 7, 2), {"top_loc": 2, "top_feat": None}),  # P = 1
        ((3, 4, 1, 11, 1, 5), {"top_loc": 1, "top_feat": 1}),  # Q = 1
    ],
)
def test_cuda_ties_and_zero_vectors_select_like_cpu(gpu, dtype, shape, kw):
    # integer maps on integer grids: exact feature and location ties everywhere (the lower index wins in the
    # nearest neighbours and in the top-k) and zero vectors (cosine 0): the recorded selections equal the CPU's
    G, N, M, P, Q, D = shape
    y_s, y_t = make_maps(G, N, M, P, Q, D, dtype, "cpu", 40, zero=True, integer=True)
    pos = make_positions(G, N, M, P, Q, "cpu", 41, grid=True)
    dev = [t.to(gpu.device) for t in (y_s, y_t, *pos)]
    with gpu:
        out, m = torch.ops.lvmmed.local_affinity(*dev, kw["top_loc"], kw["top_feat"])
        out2, m2 = torch.ops.lvmmed.local_affinity(dev[0], dev[1], None, None, kw["top_loc"], kw["top_feat"])
    out_cpu, m_cpu = torch.ops.lvmmed.local_affinity(y_s, y_t, *pos, kw["top_loc"], kw["top_feat"])
    assert torch.equal(m.cpu(), m_cpu)
    assert_matches_reference(out, out_cpu, dtype)
    out_cpu, m_cpu = torch.ops.lvmmed.local_affinity(y_s, y_t, None, None, kw["top_loc"], kw["top_feat"])
    assert torch.equal(m2.cpu(), m_cpu)
    assert_matches_reference(out2, out_cpu, dtype)


def test_cuda_empty_batches_and_zero_maps(gpu):
    dev = gpu.device
    with gpu:
        out = lvmmed_ext.local_affinity(torch.randn(0, 3, 4, 5, device=dev), torch.randn(0, 2, 4, 5, device=dev))
        assert out.shape == (0, 3, 2)
        out = lvmmed_ext.local_affinity(torch.randn(2, 0, 4, 5, device=dev), torch.randn(2, 2, 4, 5, device=dev))
        assert out.shape == (2, 0, 2)
        y_s = torch.randn(2, 3, 4, 5, device=dev, requires_grad=True)
        lvmmed_ext.local_affinity(y_s, torch.randn(2, 0, 4, 5, device=dev)).sum().backward()
        assert (y_s.grad == 0).all()
        y_s = torch.zeros(1, 2, 3, 4, device=dev, requires_grad=True)
        y_t = torch.randn(1, 2, 3, 4, device=dev, requires_grad=True)
        out = lvmmed_ext.local_affinity(y_s, y_t)
        assert (out == 0).all()
        out.sum().backward()
    assert (y_s.grad == 0).all() and y_t.grad.isfinite().all()


def test_cuda_grid_stride_and_largest_maps_match_cpu(gpu):
    # P = 4000 (kLocalAffinityMaxCells: 48 000 B of dynamic shared memory, under the 48 KB without opt-in) on a device
    # of at most 2 blocks per grid: every kernel strides over the pairs and rows; Q small, everything kept (no top-k
    # ranking: the emulator's time goes to the shared-memory footprint, not to 16M comparisons)
    y_s, y_t = make_maps(1, 2, 2, 4000, 16, 3, torch.float64, "cpu", 42, integer=True)
    pos = make_positions(1, 2, 2, 4000, 16, "cpu", 43, grid=True)
    w = torch.randn(1, 2, 2, dtype=torch.float64)
    dev = [t.to(gpu.device) for t in (y_s, y_t, *pos)]
    with gpu, gpu.device_limits(max_grid_x=2):
        a, b = dev[0].requires_grad_(), dev[1].requires_grad_()
        out = lvmmed_ext.local_affinity(a, b, *dev[2:], top_loc=4000)
        g_gpu = torch.autograd.grad((out * w.to(gpu.device)).sum(), (a, b))
    a, b = y_s.requires_grad_(), y_t.requires_grad_()
    want = lvmmed_ext.local_affinity(a, b, *pos, top_loc=4000)
    assert_matches_reference(out, want, torch.float64)
    for x, y in zip(g_gpu, torch.autograd.grad((want * w).sum(), (a, b))):
        assert_matches_reference(x, y, torch.float64)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 30), st.integers(1, 30)),
    D=st.integers(2, 6),
    positions=st.sampled_from(["none", "random", "grid"]),
    top_loc=st.integers(1, 35),
    top_feat=st.none() | st.integers(1, 35),
    zero=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_cuda_property_selections_and_gradients_match_cpu(gpu, shape, D, positions, top_loc, top_feat, zero, seed):
    # integer maps: exact distances, so the CUDA kernels must make the CPU's selections (ties included) and give its
    # values and gradients for any shape, top-k and positions
    G, N, M, P, Q = shape
    y_s, y_t = make_maps(G, N, M, P, Q, D, torch.float64, "cpu", seed, zero=zero, integer=True)
    pos = (None, None) if positions == "none" else make_positions(G, N, M, P, Q, "cpu", seed, grid=positions == "grid")
    dev = [None if t is None else t.to(gpu.device) for t in (y_s, y_t, *pos)]
    w = torch.randn(G, N, M, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    kw = (pos[0] is not None, top_loc, top_feat)
    with gpu:
        out, m = torch.ops.lvmmed.local_affinity(*dev, top_loc, top_feat)
        grads = torch.ops.lvmmed.local_affinity_backward(w.to(gpu.device), *dev[:2], m, *kw)
    out_cpu, m_cpu = torch.ops.lvmmed.local_affinity(y_s, y_t, *pos, top_loc, top_feat)
    assert torch.equal(m.cpu(), m_cpu)
    assert_matches_reference(out, out_cpu, torch.float64)
    for a, b in zip(grads, torch.ops.lvmmed.local_affinity_backward(w, y_s, y_t, m_cpu, *kw)):
        assert_matches_reference(a, b, torch.float64)
