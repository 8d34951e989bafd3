"""knn_graph: parity with the float64 reference (ties, duplicates), graph invariants, opcheck, torch.compile,
errors, CUDA parity."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lvmmed_ext
from lvmmed_ext import reference


def make_points(G, N, F, dtype, device, seed, data="random"):
    """z [G,N,F]. integer: small integers, so distances are exact and ties abound; dup: duplicated points."""
    gen = torch.Generator().manual_seed(seed)
    if data == "integer":
        z = torch.randint(-2, 3, (G, N, F), generator=gen).double()
    else:
        z = torch.randn(G, N, F, generator=gen, dtype=torch.float64)
    if data == "dup" and N > 2:
        z[:, -1] = z[:, 0]
        z[:, 1] = z[:, 0]
    return z.to(device, dtype)


cases = st.tuples(st.integers(0, 3), st.integers(2, 12), st.integers(1, 5), st.integers(0, 2**31 - 1)).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(1, t[1] - 1))
)


@given(
    case=cases,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    data=st.sampled_from(["random", "integer", "dup"]),
)
def test_matches_reference_cpu(case, dtype, data):
    (G, N, F, seed), k = case
    z = make_points(G, N, F, dtype, "cpu", seed, data)
    edges = lvmmed_ext.knn_graph(z, k)
    assert edges.shape == (G, N * k, 2) and edges.dtype == torch.int64
    assert torch.equal(edges, reference.knn_graph(z, k))


def test_docstring_example_and_ties():
    z = torch.tensor([[[0.0], [1.0], [3.0], [7.0]]])
    assert lvmmed_ext.knn_graph(z, 2)[0].tolist() == [[0, 1], [0, 2], [1, 0], [1, 2], [2, 1], [2, 0], [3, 2], [3, 1]]
    # Node 1 at 0 is equidistant from -1 (node 0) and +1 (node 2): the lower index comes first.
    z = torch.tensor([[[-1.0], [0.0], [1.0]]])
    assert lvmmed_ext.knn_graph(z, 1)[0].tolist() == [[0, 1], [1, 0], [2, 1]]


def test_invariants():
    z = make_points(3, 16, 8, torch.float32, "cpu", 1, "dup")
    k = 5
    edges = lvmmed_ext.knn_graph(z, k)
    i, j = edges[..., 0], edges[..., 1]
    assert torch.equal(i, torch.arange(16).repeat_interleave(k).expand(3, -1))  # k edges per node, in node order
    assert (i != j).all()  # no self loops, even for duplicated points
    assert all(len(set(row.tolist())) == k for row in j.reshape(3, 16, k).reshape(-1, k))  # distinct neighbours
    d = (z[torch.arange(3)[:, None], i] - z[torch.arange(3)[:, None], j]).norm(dim=-1).reshape(3, 16, k)
    assert (d[..., 1:] >= d[..., :-1]).all()  # nearest first


def test_empty_batch():
    assert lvmmed_ext.knn_graph(torch.randn(0, 4, 3), 2).shape == (0, 8, 2)


def test_half_precision_on_cpu():
    z = make_points(2, 10, 4, torch.bfloat16, "cpu", 2, "integer")
    assert torch.equal(lvmmed_ext.knn_graph(z, 3), reference.knn_graph(z, 3))


def test_opcheck(device):
    z = make_points(2, 6, 3, torch.float32, device, 3)
    torch.library.opcheck(torch.ops.lvmmed.knn_graph.default, (z, 2))


def test_torch_compile_fullgraph(device):
    z = make_points(2, 8, 3, torch.float32, device, 4)
    compiled = torch.compile(lambda x: lvmmed_ext.knn_graph(x * 2.0, 3), fullgraph=True)
    assert torch.equal(compiled(z), lvmmed_ext.knn_graph(z, 3))


@pytest.mark.parametrize(
    "z, k, exc, match",
    [
        (torch.randn(2, 16, 3), 16, ValueError, r"k must be in \[1, N-1\] = \[1, 15\], got 16"),
        (torch.randn(2, 16, 3), 0, ValueError, r"k must be in \[1, N-1\] = \[1, 15\], got 0"),
        (torch.randn(2, 16, 3), -3, ValueError, r"k must be in \[1, N-1\] = \[1, 15\], got -3"),
        (torch.randn(2, 1, 3), 1, ValueError, r"k must be in \[1, N-1\] = \[1, 0\], got 1"),
        (torch.randn(16, 3), 2, ValueError, r"z must be \[G,N,F\] \(3-D\), got shape \[16, 3\]"),
        (torch.randn(1, 4, 0), 2, ValueError, r"at least one feature"),
        (torch.ones(1, 4, 3, dtype=torch.int64), 2, TypeError, r"z must have a floating-point dtype"),
        (torch.tensor([[[0.0], [float("nan")], [1.0]]]), 1, ValueError, r"z contains NaN or Inf"),
        (torch.tensor([[[0.0], [float("inf")], [1.0]]]), 1, ValueError, r"z contains NaN or Inf"),
    ],
)
def test_bad_input_errors(z, k, exc, match):
    with pytest.raises(exc, match=match):
        lvmmed_ext.knn_graph(z, k)


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (12, 16, 128, 5), (3, 64, 33, 10), (2, 1000, 7, 5), (1, 40, 4, 39)])
@pytest.mark.parametrize("data", ["random", "integer", "dup"])
def test_cuda_matches_cpu(gpu, dtype, shape, data):
    G, N, F, k = gpu.pick(shape, (shape[0], min(shape[1], 100), shape[2], shape[3]))  # emulated: N <= 100
    if dtype in (torch.float16, torch.bfloat16) and data == "random":
        data = "integer"  # exact distances: the CPU (float32) and CUDA (float32 accumulation) orders agree
    z = make_points(G, N, F, dtype, gpu.device, 5, data)
    with gpu:
        edges = lvmmed_ext.knn_graph(z, k)
    assert edges.device.type == gpu.device.type
    want = lvmmed_ext.knn_graph(z.cpu(), k)
    if dtype == torch.float32 and data == "random":
        # the GPU sums squared differences in another order (and with FMA): two neighbours within one rounding
        # step of each other may swap, so compare the neighbours' exact distances, in order, not their indices
        x = z.cpu().double()

        def dists(e):
            return (x.gather(1, e[..., :1].expand(-1, -1, F)) - x.gather(1, e[..., 1:].expand(-1, -1, F))).norm(dim=2)

        assert torch.equal(edges[..., 0].cpu(), want[..., 0])
        torch.testing.assert_close(dists(edges.cpu()), dists(want), rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(edges.cpu(), want)


def test_cuda_too_many_nodes_error(gpu):
    with gpu, pytest.raises(ValueError, match=r"at most 4096 nodes"):
        lvmmed_ext.knn_graph(torch.randn(1, 4097, 2, device=gpu.device), 3)


def test_cuda_empty_batch_and_largest_graph_match_cpu(gpu):
    with gpu:
        assert lvmmed_ext.knn_graph(torch.randn(0, 5, 3, device=gpu.device), 2).shape == (0, 10, 2)
    # N = 4096: the largest row of float64 distances in shared memory (36.9 KB); integer points: many exact ties.
    # The emulator takes 300 nodes (4096 rows of 4096 distances are too slow for it) on a device of at most 3 blocks
    # per grid, so every block strides over 100 rows.
    z = make_points(1, gpu.pick(4096, 300), 3, torch.float64, "cpu", 6, "integer")
    want = lvmmed_ext.knn_graph(z, 4)
    with gpu, gpu.device_limits(max_grid_x=3):
        got = lvmmed_ext.knn_graph(z.to(gpu.device), 4)
    assert torch.equal(got.cpu(), want)
