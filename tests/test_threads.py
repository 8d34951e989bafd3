"""CPU ops split their graphs over torch's thread pool: results (values, gradients, selections) are bit-identical
for any thread count, including batches that do not divide evenly among the threads."""

import pytest
import torch

import lvmmed_ext
from lvmmed_ext.problems import lvmmed_problem


@pytest.fixture
def thread_counts():
    before = torch.get_num_threads()
    yield (1, 2, 3)
    torch.set_num_threads(before)


def _run_all(g: torch.Generator) -> dict[str, torch.Tensor]:
    G, N, M, P, D, F = 7, 5, 6, 9, 24, 16
    y_s = torch.randn(G, N, P, D, generator=g, dtype=torch.float64, requires_grad=True)
    y_t = torch.randn(G, M, P, D, generator=g, dtype=torch.float64, requires_grad=True)
    pos_s = torch.rand(G, N, P, 2, generator=g, dtype=torch.float64) * 32
    pos_t = torch.rand(G, M, P, 2, generator=g, dtype=torch.float64) * 32
    z_s = torch.randn(G, N, F, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(G, M, F, generator=g, dtype=torch.float64, requires_grad=True)
    e_s, e_t = lvmmed_ext.knn_graph(z_s.detach(), 2), lvmmed_ext.knn_graph(z_t.detach(), 3)
    loc = lvmmed_ext.local_affinity(y_s, y_t, pos_s, pos_t, top_loc=4)
    glob = lvmmed_ext.global_affinity(z_s, z_t)
    edge = lvmmed_ext.edge_affinity(z_s, e_s, z_t, e_t)
    w = torch.randn(loc.shape, generator=g, dtype=torch.float64)
    we = torch.randn(edge.shape, generator=g, dtype=torch.float64)
    ((loc * w).sum() + (glob * w).sum() + (edge * we).sum()).backward()
    p = lvmmed_problem(13, 9, generator=g).inputs()
    return {
        "local_affinity": loc.detach(),
        "global_affinity": glob.detach(),
        "edge_affinity": edge.detach(),
        "knn_graph": torch.cat([e_s, e_t], 1),
        "grad_y_s": y_s.grad,
        "grad_y_t": y_t.grad,
        "grad_z_s": z_s.grad,
        "grad_z_t": z_t.grad,
        "solve_qap": lvmmed_ext.solve_qap(**p),
        "linear_assignment": lvmmed_ext.linear_assignment(p["unary"]),
        "qap_objective": lvmmed_ext.qap_objective(lvmmed_ext.solve_qap(**p, method="lap"), **p),
    }


def test_every_cpu_op_is_identical_for_any_thread_count(thread_counts):
    results = []
    for n in thread_counts:
        torch.set_num_threads(n)
        results.append(_run_all(torch.Generator().manual_seed(3)))
    for other in results[1:]:
        for name, value in results[0].items():
            assert torch.equal(value, other[name]), f"{name} depends on the thread count"
