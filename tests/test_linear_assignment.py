"""linear_assignment: exact against scipy and the brute-force reference, valid, deterministic, opcheck, errors."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lvmmed_ext
from lvmmed_ext import reference

linear_sum_assignment = pytest.importorskip("scipy.optimize").linear_sum_assignment


def scipy_value(score: torch.Tensor, maximize: bool, partial: bool) -> float:
    """Optimal total score of one [N,M] problem; partial = a zero-score "unmatched" column per row."""
    s = score.double().cpu().numpy()
    if partial:
        s = np.concatenate([s, np.zeros((s.shape[0], s.shape[0]))], 1)
    r, c = linear_sum_assignment(s, maximize=maximize)
    return float(s[r, c].sum())


def assert_valid(X: torch.Tensor, partial: bool) -> None:
    G, N, M = X.shape
    assert ((X == 0) | (X == 1)).all()
    assert (X.sum(2) <= 1).all() and (X.sum(1) <= 1).all()
    if not partial:
        assert (X.sum((1, 2)) == min(N, M)).all()


def assert_optimal(X, S, maximize, partial, rtol=1e-9):
    for g in range(S.shape[0]):
        ours = float((X[g].double() * S[g].double()).sum())
        best = scipy_value(S[g], maximize, partial)
        assert abs(ours - best) <= rtol * (1 + abs(best)), (g, ours, best)


@given(
    shape=st.tuples(st.integers(0, 3), st.integers(0, 9), st.integers(0, 9)),
    maximize=st.booleans(),
    partial=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_scipy(shape, maximize, partial, dtype, seed):
    S = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    X = lvmmed_ext.linear_assignment(S, maximize=maximize, partial=partial)
    assert X.shape == S.shape and X.dtype == dtype
    assert_valid(X, partial)
    assert_optimal(X, S, maximize, partial, rtol=1e-9 if dtype == torch.float64 else 1e-5)


@given(
    shape=st.tuples(st.integers(1, 2), st.integers(0, 5), st.integers(0, 5)),
    maximize=st.booleans(),
    partial=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_bruteforce_reference(shape, maximize, partial, seed):
    S = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X = lvmmed_ext.linear_assignment(S, maximize=maximize, partial=partial)
    ref = reference.linear_assignment(S, maximize=maximize, partial=partial)
    torch.testing.assert_close((X * S).sum((1, 2)), (ref * S).sum((1, 2)), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("N, M", [(64, 64), (100, 130), (130, 100), (200, 200)])
def test_larger_problems_are_exact(N, M):
    S = torch.randn(2, N, M, generator=torch.Generator().manual_seed(N + M), dtype=torch.float64)
    for partial in (False, True):
        X = lvmmed_ext.linear_assignment(S, partial=partial)
        assert_valid(X, partial)
        assert_optimal(X, S, True, partial)


def test_ties_and_integer_scores():
    gen = torch.Generator().manual_seed(3)
    S = torch.randint(0, 3, (20, 12, 12), generator=gen).double()
    for partial in (False, True):
        X = lvmmed_ext.linear_assignment(S, maximize=False, partial=partial)
        assert_valid(X, partial)
        assert_optimal(X, S, False, partial)
    X = lvmmed_ext.linear_assignment(torch.zeros(3, 5, 7))
    assert_valid(X, False)


def test_deterministic_across_runs_and_threads():
    S = torch.randint(0, 4, (64, 16, 16), generator=torch.Generator().manual_seed(0)).float()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = lvmmed_ext.linear_assignment(S)
        torch.set_num_threads(2)
        b = lvmmed_ext.linear_assignment(S)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b) and torch.equal(a, lvmmed_ext.linear_assignment(S))


def test_non_contiguous_and_half_precision():
    S = torch.randn(2, 9, 7, dtype=torch.float64).transpose(1, 2)  # [2,7,9] strided
    assert not S.is_contiguous()
    assert_optimal(lvmmed_ext.linear_assignment(S), S, True, False)
    Sb = torch.randn(3, 6, 6).to(torch.bfloat16)
    Xb = lvmmed_ext.linear_assignment(Sb)
    assert Xb.dtype == torch.bfloat16
    assert_optimal(Xb.float(), Sb.float(), True, False, rtol=1e-6)


def test_empty_shapes():
    assert lvmmed_ext.linear_assignment(torch.randn(0, 3, 4)).shape == (0, 3, 4)
    assert lvmmed_ext.linear_assignment(torch.randn(2, 0, 4)).shape == (2, 0, 4)
    X = lvmmed_ext.linear_assignment(torch.randn(2, 3, 0))
    assert X.shape == (2, 3, 0)


def test_partial_leaves_unprofitable_pairs_unmatched():
    S = torch.tensor([[[-1.0, 2.0], [-3.0, -4.0]]])
    X = lvmmed_ext.linear_assignment(S, partial=True)
    assert X.tolist() == [[[0.0, 1.0], [0.0, 0.0]]]
    X = lvmmed_ext.linear_assignment(S, maximize=False, partial=True)
    assert X.tolist() == [[[0.0, 0.0], [0.0, 1.0]]] or X.tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    assert float((X * S).sum()) == -5.0


@pytest.mark.parametrize("partial", [False, True])
def test_opcheck(device, partial):
    S = torch.randn(3, 4, 5, device=device)
    torch.library.opcheck(torch.ops.lvmmed.linear_assignment.default, (S, True, partial))


def test_torch_compile_fullgraph():
    S = torch.randn(4, 6, 6)

    def f(s):
        return (lvmmed_ext.linear_assignment(s * 2.0) * s).sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(S), f(S))


@pytest.mark.parametrize(
    "score, exc, match",
    [
        (torch.tensor([[[1.0, float("nan")]]]), ValueError, "score contains NaN or Inf"),
        (torch.tensor([[[1.0, float("inf")]]]), ValueError, "score contains NaN or Inf"),
        (torch.randn(3, 4), ValueError, r"score must be \[G,N,M\] \(3-D\), got shape \[3, 4\]"),
        (torch.ones(1, 2, 2, dtype=torch.int64), TypeError, "floating-point dtype"),
    ],
)
def test_errors(score, exc, match):
    with pytest.raises(exc, match=match):
        lvmmed_ext.linear_assignment(score)


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize(
    "shape, emulated",
    [
        ((1, 1, 1), None),
        ((500, 16, 16), (20, 16, 16)),
        ((7, 33, 40), (3, 33, 40)),
        ((5, 40, 33), (3, 40, 33)),
        ((3, 256, 256), (1, 100, 100)),
        ((2, 300, 700), (1, 300, 700)),  # 48 808 B of scratch: the shared-memory opt-in
    ],
)
@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_exact_and_matches_cpu(gpu, shape, emulated, partial, dtype):
    shape = gpu.pick(shape, emulated or shape)
    S = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    with gpu:
        X = lvmmed_ext.linear_assignment(S.to(gpu.device), partial=partial).cpu()
    assert_valid(X, partial)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(
        (X.double() * S.double()).sum((1, 2)),
        (lvmmed_ext.linear_assignment(S, partial=partial).double() * S.double()).sum((1, 2)),
        atol=tol * shape[1],
        rtol=tol,
    )
    assert_optimal(X[:3], S[:3], True, partial, rtol=tol)


def test_cuda_ties_are_deterministic(gpu):
    S = torch.randint(0, 3, (gpu.pick(1000, 40), 16, 16), generator=torch.Generator().manual_seed(0)).float()
    with gpu:
        a = lvmmed_ext.linear_assignment(S.to(gpu.device))
        b = lvmmed_ext.linear_assignment(S.to(gpu.device))
    assert torch.equal(a, b)
    assert_valid(a.cpu(), False)


@pytest.mark.parametrize("shape", [(0, 4, 4), (3, 0, 5), (3, 5, 0), (4, 1, 1), (4, 1, 6), (4, 6, 1), (3, 9, 4)])
@pytest.mark.parametrize("partial", [False, True])
def test_cuda_edge_shapes_match_cpu_exactly(gpu, shape, partial):
    # empty batches, N = 1, M = 1 and N > M (every column matched, or partial): the same assignment as the CPU
    S = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with gpu:
        X = lvmmed_ext.linear_assignment(S.to(gpu.device), partial=partial)
    assert X.shape == shape and X.device.type == gpu.device.type
    assert_valid(X.cpu(), partial)
    assert torch.equal(X.cpu(), lvmmed_ext.linear_assignment(S, partial=partial))


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("shape", [(200, 12, 12), (50, 7, 19), (50, 19, 7)])
def test_cuda_ties_match_cpu_exactly(gpu, shape, partial):
    # integer scores are full of exact ties: the CUDA team and the CPU use the same reduced costs and tie rules
    shape = gpu.pick(shape, (min(shape[0], 30), *shape[1:]))
    S = torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(3)).double()
    for dtype in (torch.float64, torch.float32):
        with gpu:
            X = lvmmed_ext.linear_assignment(S.to(dtype).to(gpu.device), partial=partial).cpu()
        assert torch.equal(X, lvmmed_ext.linear_assignment(S.to(dtype), partial=partial))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_is_solved_in_float32(gpu, dtype):
    S = torch.randint(-4, 5, (8, 6, 9), generator=torch.Generator().manual_seed(4)).to(dtype)
    with gpu:
        X = lvmmed_ext.linear_assignment(S.to(gpu.device))
    assert X.dtype == dtype
    assert torch.equal(X.cpu(), lvmmed_ext.linear_assignment(S))


@pytest.mark.parametrize("partial", [False, True])
def test_cuda_global_workspace_and_grid_stride_match_cpu(gpu, partial):
    # the team kernel's other two paths: scratch in a global workspace (the device's opt-in limit below one team's
    # scratch), and fewer blocks than problems (blocks loop over the problems)
    S = torch.randn(9, 20, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with gpu, gpu.device_limits(smem_per_block_optin=2048, max_grid_x=4):
        X = lvmmed_ext.linear_assignment(S.to(gpu.device), partial=partial)
    assert torch.equal(X.cpu(), lvmmed_ext.linear_assignment(S, partial=partial))


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(0, 4), st.integers(0, 24), st.integers(0, 24)),
    integer=st.booleans(),
    maximize=st.booleans(),
    partial=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cuda_property_same_assignment_as_cpu(gpu, shape, integer, maximize, partial, dtype, seed):
    # the team LAP and the CPU share the reduced costs and tie rules: the same assignment, ties included
    gen = torch.Generator().manual_seed(seed)
    S = (torch.randint(-3, 4, shape, generator=gen) if integer else torch.randn(*shape, generator=gen)).to(dtype)
    with gpu:
        X = lvmmed_ext.linear_assignment(S.to(gpu.device), maximize=maximize, partial=partial)
    assert torch.equal(X.cpu(), lvmmed_ext.linear_assignment(S, maximize=maximize, partial=partial))
