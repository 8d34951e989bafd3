"""imle() and the noise samplers, with brute-force solvers as the MAP oracle (no compiled solver needed)."""

import itertools
import math

import pytest
import torch

from lvmmed_ext import noise
from lvmmed_ext.imle import edge_pair_indicators, imle


def brute_qap(unary, quad, edges_s, edges_t):
    """Exact MAP over permutations for tiny N (N == M): returns X [B,N,N] and the list of calls made."""
    B, N, _ = unary.shape
    perms = torch.tensor(list(itertools.permutations(range(N))))  # [P,N]
    Xs = torch.zeros(len(perms), N, N, dtype=unary.dtype)
    Xs[torch.arange(len(perms))[:, None], torch.arange(N)[None], perms] = 1
    out = torch.empty_like(unary)
    for b in range(B):
        score = (Xs * unary[b]).sum((1, 2))
        if quad is not None:
            pairs = edge_pair_indicators(
                Xs, edges_s[b : b + 1].expand(len(perms), -1, -1), edges_t[b : b + 1].expand(len(perms), -1, -1)
            )
            score = score + (pairs * quad[b]).sum((1, 2))
        out[b] = Xs[score.argmax()]
    return out


class Recorder:
    def __init__(self, edges_s=None, edges_t=None):
        self.calls, self.es, self.et = [], edges_s, edges_t

    def __call__(self, u, q, init):
        self.calls.append((u.clone(), None if q is None else q.clone(), init))
        S = u.shape[0] // (1 if self.es is None else self.es.shape[0])
        es = None if self.es is None else self.es.repeat(S, 1, 1)
        et = None if self.et is None else self.et.repeat(S, 1, 1)
        return brute_qap(u, q, es, et)


def ring_edges(G, N):
    e = torch.tensor([[i, (i + 1) % N] for i in range(N)])
    return e.expand(G, N, 2).contiguous()


def test_edge_pair_indicators_match_definition():
    X = torch.zeros(1, 3, 3)
    X[0, [0, 1, 2], [2, 0, 1]] = 1
    es, et = torch.tensor([[[0, 1], [1, 2]]]), torch.tensor([[[2, 0], [0, 1], [1, 2]]])
    ind = edge_pair_indicators(X, es, et)
    expected = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]])  # (0->2,1->0) pays edge (2,0); (1->0,2->1) pays (0,1)
    assert torch.equal(ind, expected)


@pytest.mark.parametrize("with_quad", [False, True])
def test_noise_none_gradient_is_exactly_the_formula(with_quad):
    torch.manual_seed(0)
    G, N, lam = 3, 4, 5.0
    unary = torch.randn(G, N, N, dtype=torch.float64, requires_grad=True)
    es = et = ring_edges(G, N)
    quad = torch.randn(G, N, N, dtype=torch.float64, requires_grad=True) if with_quad else None
    rec = Recorder(es, et)
    X = imle(unary, quad, es, et, solver=rec, lam=lam, noise="none")
    target = 1 - 2 * torch.eye(N, dtype=torch.float64)  # Hamming loss to the identity: dL/dX
    (X * target).sum().backward()
    X_fwd = brute_qap(unary.detach(), None if quad is None else quad.detach(), es, et)
    X_bwd = brute_qap(unary.detach() - lam * target, None if quad is None else quad.detach(), es, et)
    assert torch.equal(X, X_fwd)
    torch.testing.assert_close(unary.grad, (X_fwd - X_bwd) / lam, rtol=0, atol=0)
    if with_quad:
        expected = (edge_pair_indicators(X_fwd, es, et) - edge_pair_indicators(X_bwd, es, et)) / lam
        torch.testing.assert_close(quad.grad, expected, rtol=0, atol=0)
    assert len(rec.calls) == 2 and rec.calls[1][2] is not None  # backward warm-starts from the forward result


def test_backward_reuses_the_forward_noise_and_batches_samples():
    G, N, S, lam = 2, 4, 3, 2.0
    unary = torch.randn(G, N, N, requires_grad=True)
    rec = Recorder()
    gen = torch.Generator().manual_seed(7)
    X = imle(unary, solver=rec, lam=lam, noise="gumbel", samples=S, generator=gen)
    grad = torch.randn(G, N, N)
    X.backward(grad)
    (fwd_u, _, _), (bwd_u, _, init) = rec.calls
    assert fwd_u.shape == (S * G, N, N)  # one batched call over samples x graphs
    torch.testing.assert_close(bwd_u, fwd_u - lam * grad.repeat(S, 1, 1))
    assert init.shape == (S * G, N, N)
    assert ((X * S).round() == X * S).all() and X.min() >= 0 and X.max() <= 1  # mean of S 0/1 matchings


def test_generator_makes_it_reproducible():
    u = torch.randn(2, 4, 4)
    a = imle(u, solver=Recorder(), generator=torch.Generator().manual_seed(1), samples=2)
    b = imle(u, solver=Recorder(), generator=torch.Generator().manual_seed(1), samples=2)
    assert torch.equal(a, b)


def test_learning_a_toy_matching_reaches_zero_hamming():
    torch.manual_seed(0)
    N = 5
    scores = torch.nn.Parameter(torch.randn(4, N, N))
    opt = torch.optim.Adam([scores], lr=0.1)
    target = 1 - 2 * torch.eye(N)
    for _ in range(60):
        opt.zero_grad()
        X = imle(scores, solver=Recorder(), lam=10.0, noise="gumbel", noise_scale=0.1)
        loss = (X * target).sum() / 4 + N  # Hamming distance to the identity, mean over graphs
        loss.backward()
        opt.step()
    X = imle(scores.detach(), solver=Recorder(), noise="none")
    assert torch.equal(X, torch.eye(N).expand(4, N, N))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam=0.0), "lam must be a finite number > 0, got 0.0"),
        (dict(lam=float("nan")), "lam must be a finite number > 0"),
        (dict(samples=0), "samples must be an integer >= 1, got 0"),
        (dict(noise="laplace"), "noise must be one of"),
        (dict(noise_scale=-1.0), "noise_scale must be a finite number >= 0, got -1.0"),
        (dict(solver="magic"), "solver must be 'qap', 'lap' or a callable"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        imle(torch.randn(1, 3, 3), **{"solver": Recorder(), **kwargs})


def test_noise_moments():
    gen = torch.Generator().manual_seed(0)
    g = noise.sample("gumbel", (100_000,), generator=gen)
    assert abs(g.mean().item() - 0.5772) < 0.02 and abs(g.var().item() - math.pi**2 / 6) < 0.05
    for alpha in (0.3, 1.0, 3.0):
        x = noise.standard_gamma(alpha, (100_000,), generator=gen)
        assert abs(x.mean().item() - alpha) < 0.03 * max(1, alpha) and abs(x.var().item() - alpha) < 0.06 * max(
            1, alpha
        )
    s = noise.sample("sum_of_gamma", (50_000,), scale=2.0, generator=gen)
    assert 0.8 < s.mean().item() < 1.4  # ≈ 2·(H_10 − log 10) ≈ 1.25 with kappa = 1
    assert torch.count_nonzero(noise.sample("none", (3, 3))) == 0


def test_noise_generator_on_the_wrong_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put the noise on")
    with pytest.raises(ValueError, match="generator is on cpu but the noise is drawn on cuda"):
        noise.sample("gumbel", (3,), generator=torch.Generator(), device="cuda")


def _recorded_noise_scales(monkeypatch):
    scales = []
    real = noise.sample

    def record(kind, shape, **kw):
        scales.append((tuple(shape), kw["scale"]))
        return real(kind, shape, **kw)

    monkeypatch.setattr(noise, "sample", record)
    return scales


def test_quad_noise_scale(monkeypatch):
    scales = _recorded_noise_scales(monkeypatch)
    unary, quad = torch.randn(2, 4, 4), torch.randn(2, 6, 6)
    edges = torch.tensor([[[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]]] * 2)
    imle(unary, quad, edges, edges, noise_scale=0.3)
    imle(unary, quad, edges, edges, noise_scale=0.3, quad_noise_scale=0.05)
    assert scales == [((1, 2, 4, 4), 0.3), ((1, 2, 6, 6), 0.3), ((1, 2, 4, 4), 0.3), ((1, 2, 6, 6), 0.05)]


def test_gm_loss_perturbs_the_edge_affinities_before_weighting(monkeypatch):
    """By default the edge noise is noise_scale * quad_weight (the perturbed edge affinity is then weighted), so
    the noise keeps its proportion to the edge signal; edge_noise_scale sets it explicitly."""
    import lvmmed_ext

    scales = _recorded_noise_scales(monkeypatch)
    z = torch.randn(16, 8)
    lvmmed_ext.gm_loss(z, z + 0.1, graph_size=8, k=3, noise_scale=0.2, quad_weight=0.5)
    lvmmed_ext.gm_loss(z, z + 0.1, graph_size=8, k=3, noise_scale=0.2, quad_weight=0.5, edge_noise_scale=0.2)
    assert [s for _, s in scales] == [0.2, pytest.approx(0.1), 0.2, 0.2]
    with pytest.raises(ValueError, match="edge_noise_scale must be None or a finite number >= 0"):
        lvmmed_ext.gm_loss(z, z, graph_size=8, k=3, edge_noise_scale=float("nan"))
