"""Training diagnostics (lvmmed_ext.diagnostics): matching accuracy, affinity margin and gradient-carrying nodes on
hand-built matchings with known values, the tie rule that keeps collapsed embeddings at chance, and their wiring
through gm_loss, the heads and the trainer's log."""

import itertools

import pytest
import torch

import lvmmed_ext
from lvmmed_ext.diagnostics import (
    StepStats,
    affinity_margin,
    cosine_matching,
    matching_accuracy,
    unshuffled_solve,
)
from lvmmed_ext.train.heads import build_head


def _perm_matrix(perm):
    n = len(perm)
    X = torch.zeros(n, n)
    X[torch.arange(n), torch.tensor(perm)] = 1
    return X


def test_matching_accuracy_on_known_matchings():
    X = torch.stack([_perm_matrix([0, 1, 2, 3]), _perm_matrix([1, 0, 2, 3]), _perm_matrix([1, 2, 3, 0])])
    assert matching_accuracy(X[:1]).item() == 1.0
    assert matching_accuracy(X[1:2]).item() == 0.5  # two of four rows swapped
    assert matching_accuracy(X[2:]).item() == 0.0
    assert matching_accuracy(X).item() == pytest.approx(1.5 / 3)
    partial = torch.zeros(1, 3, 3)
    partial[0, 0, 0] = 1  # rows 1 and 2 unmatched
    assert matching_accuracy(partial).item() == pytest.approx(1 / 3)


def test_affinity_margin_equals_a_float64_loop():
    score = torch.randn(5, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = 0.0
    for g, i in itertools.product(range(5), range(7)):
        best_other = max(score[g, i, a].item() for a in range(7) if a != i)
        want += score[g, i, i].item() - best_other
    assert affinity_margin(score).item() == pytest.approx(want / 35, abs=1e-6)
    hand = torch.tensor([[[1.0, 0.2], [0.5, 0.3]]])  # rows: 1 - 0.2 = 0.8 and 0.3 - 0.5 = -0.2
    assert affinity_margin(hand).item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 2 columns"):
        affinity_margin(torch.ones(1, 1, 1))


def test_ties_are_not_broken_towards_the_identity():
    """A collapsed embedding (every score equal) must score near chance, not 1: the solver's own tie rule would
    return the identity."""
    flat = torch.zeros(4, 16, 16)
    assert matching_accuracy(lvmmed_ext.linear_assignment(flat)).item() == 1.0  # why the shuffle is needed
    X = unshuffled_solve(lambda s, _: lvmmed_ext.linear_assignment(s), flat)
    assert torch.equal(X.sum(-1), torch.ones(4, 16)) and torch.equal(X.sum(-2), torch.ones(4, 16))
    assert matching_accuracy(X).item() <= 2 / 16
    z = torch.ones(32, 8)  # every image embedded at the same point
    assert cosine_matching(z, z, 16)["match_acc"] <= 2 / 16 and cosine_matching(z, z, 16)["margin"] == 0.0


def test_unshuffled_solve_keeps_the_answer_of_problems_without_ties():
    g = torch.Generator().manual_seed(1)
    score = torch.randn(6, 9, 9, generator=g)
    direct = lvmmed_ext.linear_assignment(score)
    assert torch.equal(unshuffled_solve(lambda s, _: lvmmed_ext.linear_assignment(s), score), direct)


def test_unshuffled_qap_relabels_the_target_edges():
    """With the columns shuffled, the target graph's edges must follow their nodes: the exact (brute-force) QAP
    optimum then has the same objective as the unshuffled problem's."""
    from lvmmed_ext.problems import lvmmed_problem

    p = lvmmed_problem(8, 5, k=2, noise=1.0, generator=torch.Generator().manual_seed(3))
    direct = lvmmed_ext.solve_qap(p.unary, p.quad, p.edges_s, p.edges_t, method="bruteforce")
    shuffled = unshuffled_solve(
        lambda s, label: lvmmed_ext.solve_qap(s, p.quad, p.edges_s, label[p.edges_t], method="bruteforce"), p.unary
    )
    f = lvmmed_ext.qap_objective
    assert torch.allclose(
        f(shuffled, p.unary, p.quad, p.edges_s, p.edges_t), f(direct, p.unary, p.quad, p.edges_s, p.edges_t)
    )


def test_cosine_matching():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 32, generator=g)
    same = cosine_matching(z, z + 0.01 * torch.randn(40, 32, generator=g), 8)  # 5 graphs of 8
    assert same["match_acc"] == 1.0 and same["margin"] > 0.5
    rolled = torch.cat([z[i : i + 8].roll(1, 0) for i in range(0, 40, 8)])  # every node's partner is another image
    off = cosine_matching(z, rolled, 8)
    assert off["match_acc"] == 0.0 and off["margin"] < 0
    assert cosine_matching(z[:5], z[:5], 8)["match_acc"] == 1.0  # fewer rows than a graph: one graph of 5
    assert cosine_matching(z[:1], z[:1], 8) == {}


def test_step_stats_means_and_late_values():
    s = StepStats()
    a = s.record({"match_acc": 0.5})
    s.record({"match_acc": 1.0, "margin": 0.2})
    a["grad_nodes"] = 0.25  # filled in later (by a backward)
    assert s.pop() == {"match_acc": 0.75, "margin": 0.2, "grad_nodes": 0.25}
    assert s.pop() == {}
    capped = StepStats(keep=3)
    for i in range(10):
        capped.record({"x": float(i)})
    assert capped.pop() == {"x": 8.0}


@pytest.mark.parametrize("quad_weight", [0.0, 0.5])
def test_gm_loss_reports_its_diagnostics(quad_weight):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    z_s = (z + 0.6 * torch.randn(32, 16, generator=g)).requires_grad_()
    z_t = (z + 0.6 * torch.randn(32, 16, generator=g)).requires_grad_()
    stats = {}
    loss, X = lvmmed_ext.gm_loss(
        z_s, z_t, quad_weight=quad_weight, noise_scale=1.0, generator=g, stats=stats, return_matching=True
    )
    clean = lvmmed_ext.gm_loss(z_s.detach(), z_t.detach(), quad_weight=quad_weight, noise="none",
                               return_matching=True)[1]  # fmt: skip
    assert stats["match_acc"] == pytest.approx(matching_accuracy(clean).item())
    unary = lvmmed_ext.global_affinity(z_s.detach().view(2, 16, 16), z_t.detach().view(2, 16, 16))
    assert stats["margin"] == pytest.approx(affinity_margin(unary).item(), abs=1e-6)
    assert "grad_nodes" not in stats
    loss.backward()
    # lam = 80 makes the target solve the identity, so the rows that carry gradient are the wrong rows of X
    wrong_rows = (X.diagonal(dim1=1, dim2=2) < 1).float().mean().item()
    assert stats["grad_nodes"] == pytest.approx(wrong_rows) and 0 < wrong_rows < 1


def test_heads_record_matching_diagnostics():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 24, generator=g)
    h_t = h + 0.05 * torch.randn(32, 24, generator=g)
    for name, opts in (("gm", {"dim": 16}), ("infonce", {"hidden_dim": 32, "out_dim": 16}),
                       ("vicreg", {"hidden_dim": 32, "out_dim": 32})):  # fmt: skip
        torch.manual_seed(0)
        head = build_head(name, 24, **opts)
        head(h, h_t).backward()
        stats = head.stats.pop()
        assert set(stats) >= {"match_acc", "margin"}, name
        assert 0 <= stats["match_acc"] <= 1, name
        assert ("grad_nodes" in stats) == (name == "gm")
