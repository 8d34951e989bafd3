"""lvmmed_ext.problems: shapes, kNN edges (tie-break, no loops), planted solutions, reproducibility."""

import pytest
import torch

from lvmmed_ext import reference
from lvmmed_ext.problems import (
    NOISE_LEVELS,
    knn_edges,
    lvmmed_problem,
    planted_kb_problem,
    uniform_kb_problem,
)


def test_knn_edges_nearest_first_lower_index_on_ties_no_loops():
    z = torch.tensor([[[0.0], [1.0], [-1.0], [3.0]]])  # node 0 is equidistant from 1 and 2
    e = knn_edges(z, 2)
    assert e.shape == (1, 8, 2) and e.dtype == torch.int64
    assert e[0, :2].tolist() == [[0, 1], [0, 2]]
    assert e[0, 6:].tolist() == [[3, 1], [3, 0]]
    assert (e[..., 0] != e[..., 1]).all()
    with pytest.raises(ValueError, match=r"k must be in \[1, N-1\] = \[1, 3\], got 4"):
        knn_edges(z, 4)


def test_lvmmed_problem_shapes_and_affinities():
    gen = torch.Generator().manual_seed(0)
    p = lvmmed_problem(3, 16, M=20, k=5, generator=gen, dtype=torch.float64)
    assert p.unary.shape == (3, 16, 20) and p.quad.shape == (3, 80, 100)
    assert p.edges_s.shape == (3, 80, 2) and p.edges_t.shape == (3, 100, 2)
    assert p.unary.abs().max() <= 1 + 1e-12 and p.quad.abs().max() <= 0.5 + 1e-12
    assert p.edges_s.max() < 16 and p.edges_t.max() < 20
    assert torch.equal(p.planted, torch.arange(16).expand(3, 16))
    assert p.planted_matrix.sum() == 3 * 16


def test_easy_instances_have_the_planted_matching_as_unary_optimum():
    p = lvmmed_problem(8, 16, noise=NOISE_LEVELS["easy"], generator=torch.Generator().manual_seed(1))
    assert (p.unary.argmax(2) == p.planted).float().mean() > 0.95


def test_shuffle_relabels_the_target_and_is_reproducible():
    easy = NOISE_LEVELS["easy"]
    a = lvmmed_problem(2, 8, k=3, noise=easy, shuffle=True, generator=torch.Generator().manual_seed(2))
    b = lvmmed_problem(2, 8, k=3, noise=easy, shuffle=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.unary, b.unary) and torch.equal(a.edges_t, b.edges_t)
    assert not torch.equal(a.planted, torch.arange(8).expand(2, 8))
    assert (a.unary.argmax(2) == a.planted).float().mean() > 0.9  # the planted pairs stay the most similar


@pytest.mark.parametrize("unary_noise", [None, 3.0])
def test_planted_kb_problem(unary_noise):
    p = planted_kb_problem(2, 12, unary_noise=unary_noise, generator=torch.Generator().manual_seed(3))
    assert p.A.shape == p.B.shape == p.unary.shape == (2, 12, 12)
    assert torch.allclose(p.A, p.A.transpose(1, 2)) and (p.A.diagonal(dim1=1, dim2=2) == 0).all()
    f_planted = reference.qap_objective(p.planted_matrix, **p.inputs())
    f_identity = reference.qap_objective(torch.eye(12).expand(2, 12, 12), **p.inputs())
    assert (f_planted > f_identity).all()
    if unary_noise is None:
        assert (p.unary == 0).all()


def test_uniform_kb_problem_and_slice():
    p = uniform_kb_problem(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert p.A.dtype == torch.float64 and p.planted is None and p.planted_matrix is None
    q = p.slice(1, 3)
    assert q.A.shape == (2, 5, 5) and torch.equal(q.B, p.B[1:3])
