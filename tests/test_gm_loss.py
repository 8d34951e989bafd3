"""gm_loss and LVMMedHead: the exact IMLE formula, learning toys, gradient flow, DDP, AMP, compile, errors."""

import os
import tempfile
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import lvmmed_ext
from lvmmed_ext import LVMMedHead, gm_loss, losses
from lvmmed_ext.imle import edge_pair_indicators


def views(B, F, noise=0.5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(B, F, generator=gen, dtype=dtype)
    zs = (z + noise * torch.randn(B, F, generator=gen, dtype=dtype)).requires_grad_()
    zt = (z + noise * torch.randn(B, F, generator=gen, dtype=dtype)).requires_grad_()
    return zs, zt


def grid_positions(B, side=7):
    g = torch.stack(torch.meshgrid(torch.arange(side * 1.0), torch.arange(side * 1.0), indexing="ij"), -1)
    return g.reshape(1, side * side, 2).expand(B, -1, -1).contiguous()


@pytest.mark.parametrize("quad_weight", [0.5, 0.0])
def test_noise_none_gradient_is_exactly_the_imle_formula(quad_weight):
    G, n, F, k, lam = 3, 8, 16, 3, 5.0
    zs, zt = views(G * n, F, noise=0.8)
    loss = gm_loss(zs, zt, graph_size=n, k=k, lam=lam, noise="none", quad_weight=quad_weight)
    got = torch.autograd.grad(loss, (zs, zt))

    a = zs.detach().reshape(G, n, F).requires_grad_()
    b = zt.detach().reshape(G, n, F).requires_grad_()
    es, et = lvmmed_ext.knn_graph(a.detach(), k), lvmmed_ext.knn_graph(b.detach(), k)
    unary = lvmmed_ext.global_affinity(a, b)
    dL_dX = (1 - 2 * torch.eye(n)) / G  # Hamming to the identity, mean over graphs
    if quad_weight:
        quad = quad_weight * lvmmed_ext.edge_affinity(a, es, b, et)
        X_f = lvmmed_ext.solve_qap(unary.detach(), quad.detach(), es, et)
        X_b = lvmmed_ext.solve_qap(unary.detach() - lam * dL_dX, quad.detach(), es, et, init=X_f)
        pairs = edge_pair_indicators(X_f, es, et) - edge_pair_indicators(X_b, es, et)
        surrogate = (unary * (X_f - X_b)).sum() / lam + (quad * pairs).sum() / lam
    else:
        X_f = lvmmed_ext.linear_assignment(unary.detach())
        X_b = lvmmed_ext.linear_assignment(unary.detach() - lam * dL_dX)
        surrogate = (unary * (X_f - X_b)).sum() / lam
    assert loss.item() == pytest.approx(float(((X_f * (1 - 2 * torch.eye(n))).sum((1, 2)) + n).mean()))
    want = torch.autograd.grad(surrogate, (a, b))
    assert any(w.abs().sum() > 0 for w in want), "the test instance should have a non-zero gradient"
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.reshape(G * n, F), rtol=1e-6, atol=1e-9)


def train_toy(quad_weight, steps=120, seed=0):
    """Random embeddings as parameters, two noisy views per step; returns the final noise-free Hamming loss."""
    torch.manual_seed(seed)
    B, F = 32, 16
    emb = nn.Parameter(0.05 * torch.randn(B, F))
    opt = torch.optim.Adam([emb], lr=0.05)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        zs = emb + 0.05 * torch.randn(B, F, generator=gen)
        zt = emb + 0.05 * torch.randn(B, F, generator=gen)
        loss = gm_loss(zs, zt, graph_size=16, k=5, noise_scale=0.05, quad_weight=quad_weight, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        zs = emb + 0.05 * torch.randn(B, F, generator=gen)
        zt = emb + 0.05 * torch.randn(B, F, generator=gen)
    return float(gm_loss(zs, zt, graph_size=16, k=5, noise="none", quad_weight=quad_weight)), float(
        gm_loss(0.05 * torch.randn(B, F), 0.05 * torch.randn(B, F), graph_size=16, k=5, noise="none")
    )


@pytest.mark.parametrize("quad_weight", [0.5, 0.0], ids=["edge-term-on", "edge-term-off"])
def test_learnable_toy_reaches_near_zero_hamming(quad_weight):
    final, untrained = train_toy(quad_weight)
    assert untrained > 10  # random embeddings mismatch most of the 16 nodes (Hamming 2 per wrong node)
    assert final <= 2.0, f"Hamming loss after training {final} (edge term {'on' if quad_weight else 'off'})"


def test_gradient_reaches_z_y_gcn_and_not_positions():
    B, D, P = 32, 24, 49
    head = LVMMedHead(
        in_dim=40, dim=16, graph_size=16, k=4, alpha=0.5, noise_scale=1.0, generator=torch.Generator().manual_seed(0)
    )
    h_s, h_t = (torch.randn(B, 40, requires_grad=True) for _ in range(2))
    y_s, y_t = (torch.randn(B, P, D, requires_grad=True) for _ in range(2))
    pos = grid_positions(B).requires_grad_()
    loss = head(h_s, h_t, y_s, y_t, pos, pos)
    loss.backward()
    assert h_s.grad.abs().sum() > 0 and h_t.grad.abs().sum() > 0
    assert y_s.grad.abs().sum() > 0 and y_t.grad.abs().sum() > 0
    # only the selected cells of the maps receive gradient
    assert (y_s.grad.abs().sum(-1) > 0).float().mean() < 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.gnn.parameters())
    assert pos.grad is None or pos.grad.abs().sum() == 0


def test_local_term_off_never_reads_maps():
    head = LVMMedHead(in_dim=8, dim=8, graph_size=4, k=2, alpha=1.0)
    assert not head.needs_maps
    poisoned = torch.full((8, 9, 4), float("nan"))  # would raise if the local affinity read it
    head(torch.randn(8, 8), torch.randn(8, 8), poisoned, poisoned, grid_positions(8, 3), grid_positions(8, 3))


def test_no_gnn_and_options_run():
    torch.manual_seed(0)
    head = LVMMedHead(
        in_dim=8,
        dim=8,
        graph_size=8,
        k=3,
        use_gnn=False,
        samples=3,
        noise="sum_of_gamma",
        partial=True,
        projector_hidden=16,
    )
    assert head.gnn is None
    loss = head(torch.randn(16, 8), torch.randn(16, 8))
    loss.backward()
    assert torch.isfinite(loss)


def test_return_matching_and_margin():
    zs, zt = views(32, 8)
    loss, X = gm_loss(zs, zt, return_matching=True, noise="none")
    assert X.shape == (2, 16, 16) and set(X.unique().tolist()) <= {0.0, 1.0}
    assert (X.sum(2) == 1).all() and (X.sum(1) == 1).all()
    same = gm_loss(zs.detach(), zs.detach(), noise="none")
    assert float(same) == 0.0
    harder = gm_loss(zs.detach(), zs.detach(), noise="none", margin=5.0)  # the identity now costs 5 per node
    assert float(harder) > 0


def test_remainder_is_ignored_and_warned_once(monkeypatch):
    monkeypatch.setattr(losses, "_warned_remainder", False)
    zs, zt = views(37, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm_loss(zs, zt, noise="none")
        gm_loss(zs, zt, noise="none")
    msgs = [str(w.message) for w in caught if "not a multiple of graph_size" in str(w.message)]
    assert len(msgs) == 1 and "last 5 samples are ignored" in msgs[0]
    torch.testing.assert_close(gm_loss(zs, zt, noise="none"), gm_loss(zs[:32], zt[:32], noise="none"))


def test_amp_bf16_and_compiled_surrounding_model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32))
    head = LVMMedHead(in_dim=32, dim=16, graph_size=8, k=3, noise_scale=0.5)

    def step(x_s, x_t):
        return head(backbone(x_s), backbone(x_t))

    x_s, x_t = torch.randn(16, 12), torch.randn(16, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = step(x_s, x_t)
    loss.backward()
    assert torch.isfinite(loss) and backbone[0].weight.grad.abs().sum() > 0
    backbone.zero_grad()
    compiled = torch.compile(step)
    loss = compiled(x_s, x_t)
    loss.backward()
    assert torch.isfinite(loss) and backbone[0].weight.grad.abs().sum() > 0


def test_head_rejects_unknown_options():
    with pytest.raises(TypeError, match=r"unknown options \['lamb'\]"):
        LVMMedHead(in_dim=8, lamb=3.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda zs, zt: gm_loss(zs[:8], zt[:8]), r"B=8 < graph_size=16"),
        (lambda zs, zt: gm_loss(zs, zt[:, :4]), "same shape"),
        (lambda zs, zt: gm_loss(zs, zt, graph_size=1), "graph_size must be an integer >= 2, got 1"),
        (lambda zs, zt: gm_loss(zs, zt, k=16), r"k must be in \[1, graph_size-1\] = \[1, 15\], got 16"),
        (lambda zs, zt: gm_loss(zs, zt, k=0), r"k must be in \[1, graph_size-1\]"),
        (lambda zs, zt: gm_loss(zs, zt, lam=0.0), "lam must be a finite number > 0, got 0.0"),
        (lambda zs, zt: gm_loss(zs, zt, lam=-80.0), "lam must be a finite number > 0"),
        (
            lambda zs, zt: gm_loss(zs.detach().clone().index_fill_(0, torch.tensor([3]), float("nan")), zt),
            "z_s contains NaN or Inf",
        ),
        (lambda zs, zt: gm_loss(zs, zt, noise="normal"), "noise must be one of"),
        (lambda zs, zt: gm_loss(zs[0], zt[0]), r"z_s and z_t must be \[B,F\]"),
    ],
)
def test_bad_input(call, match):
    zs, zt = views(32, 8)
    with pytest.raises(ValueError, match=match):
        call(zs, zt)


def _ddp_worker(rank, world, store_path, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    zs, zt = views(48, 8, noise=0.8)  # the same global batch on every rank
    n = zs.shape[0] // world
    mine_s = zs.detach()[rank * n : (rank + 1) * n].clone().requires_grad_()
    mine_t = zt.detach()[rank * n : (rank + 1) * n].clone().requires_grad_()
    loss = gm_loss(mine_s, mine_t, graph_size=8, k=3, lam=5.0, noise="none", distributed=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "gs": mine_s.grad, "gt": mine_t.grad}, os.path.join(out_dir, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_distributed_gather_matches_single_process():
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(world, os.path.join(tmp, "store"), tmp), nprocs=world, join=True)
        parts = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    zs, zt = views(48, 8, noise=0.8)
    loss = gm_loss(zs, zt, graph_size=8, k=3, lam=5.0, noise="none")
    gs, gt = torch.autograd.grad(loss, (zs, zt))
    # the ranks' losses average to the global loss; DDP's average of gradients then equals the global gradient
    assert float(sum(p["loss"] for p in parts) / world) == pytest.approx(loss.item())
    torch.testing.assert_close(torch.cat([p["gs"] for p in parts]) / world, gs)
    torch.testing.assert_close(torch.cat([p["gt"] for p in parts]) / world, gt)
