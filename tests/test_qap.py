"""solve_qap and qap_objective: objective parity and gradients, validity of every method, optimality against brute
force, quality against pygmtools, permutation equivariance, determinism, warm starts, bad input."""

import contextlib
import io

import pytest
import torch
from helpers import assert_matches_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lvmmed_ext
from lvmmed_ext import reference
from lvmmed_ext.problems import NOISE_LEVELS, lvmmed_problem, planted_kb_problem, uniform_kb_problem
from lvmmed_ext.qap import METHODS

SOLVER_METHODS = [m for m in METHODS if m not in ("auto", "bruteforce")]


def random_problem(G, N, M, Es, Et, seed, dtype=torch.float64, loops=True, kb=False, device="cpu"):
    """Unstructured inputs: random edges (duplicates and, with `loops`, self loops), Gaussian costs."""
    gen = torch.Generator().manual_seed(seed)
    p = {"unary": torch.randn(G, N, M, generator=gen, dtype=torch.float64)}
    if Es >= 0:
        es = torch.randint(0, max(N, 1), (G, Es, 2), generator=gen)
        et = torch.randint(0, max(M, 1), (G, Et, 2), generator=gen)
        if not loops and N > 1 and M > 1:
            es[..., 1] = torch.where(es[..., 0] == es[..., 1], (es[..., 1] + 1) % N, es[..., 1])
            et[..., 1] = torch.where(et[..., 0] == et[..., 1], (et[..., 1] + 1) % M, et[..., 1])
        p.update(quad=0.5 * torch.randn(G, Es, Et, generator=gen, dtype=torch.float64), edges_s=es, edges_t=et)
    if kb:
        A = torch.rand(G, N, N, generator=gen, dtype=torch.float64)
        B = torch.rand(G, M, M, generator=gen, dtype=torch.float64)
        p.update(A=(A + A.transpose(1, 2)) / N, B=B / M)
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in p.items()}


def objective(X, p):
    return reference.qap_objective(X, **p)


def assert_assignment(X, partial):
    assert ((X == 0) | (X == 1)).all()
    assert (X.sum(2) <= 1).all() and (X.sum(1) <= 1).all()
    if not partial:
        assert (X.sum(2) == 1).all()


# ------------------------------------------------------------------------------------------ the objective
@given(
    shape=st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 6), st.integers(0, 12), st.integers(0, 12)),
    kb=st.booleans(),
    soft=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_objective_matches_reference(shape, kb, soft, dtype, seed):
    G, N, M, Es, Et = shape
    if N == 0 or M == 0:
        Es = Et = 0
    p = random_problem(G, N, M, Es, Et, seed, dtype, kb=kb)
    gen = torch.Generator().manual_seed(seed + 1)
    X = torch.rand(G, N, M, generator=gen, dtype=torch.float64)
    if not soft:
        X = (X > 0.7).double()
    X = X.to(dtype)
    f = lvmmed_ext.qap_objective(X, **p)
    assert f.shape == (G,) and f.dtype == dtype
    assert_matches_reference(f, objective(X, p), dtype) if dtype == torch.float64 else torch.testing.assert_close(
        f.double(), objective(X, p), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("kb", [False, True])
def test_objective_gradients_match_reference(kb):
    p = random_problem(3, 5, 6, 9, 11, 0, kb=kb)
    X = torch.rand(3, 5, 6, dtype=torch.float64)
    names = ["unary", "quad"] + (["A", "B"] if kb else [])
    ours_in = {k: v.clone().requires_grad_(k in names) for k, v in p.items()}
    Xo = X.clone().requires_grad_()
    w = torch.randn(3, dtype=torch.float64)
    go = torch.autograd.grad((lvmmed_ext.qap_objective(Xo, **ours_in) * w).sum(), [Xo] + [ours_in[k] for k in names])
    ref_in = {k: v.clone().requires_grad_(k in names) for k, v in p.items()}
    Xr = X.clone().requires_grad_()
    gr = torch.autograd.grad((objective(Xr, ref_in) * w).sum(), [Xr] + [ref_in[k] for k in names])
    for a, b in zip(go, gr):
        assert_matches_reference(a, b, torch.float64)


def test_objective_gradcheck():
    p = random_problem(2, 3, 4, 4, 5, 1, kb=True)
    X = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)

    def f(X, unary, quad, A, B):
        return lvmmed_ext.qap_objective(X, unary, quad, p["edges_s"], p["edges_t"], A=A, B=B)

    args = (X, *(p[k].clone().requires_grad_() for k in ("unary", "quad", "A", "B")))
    assert torch.autograd.gradcheck(f, args)


def test_objective_opcheck(device):
    p = random_problem(2, 4, 5, 6, 7, 2, torch.float32, kb=True, device=device)
    X = torch.rand(2, 4, 5, device=device)
    args = (X, p["unary"], p["quad"], p["edges_s"], p["edges_t"], p["A"], p["B"])
    torch.library.opcheck(torch.ops.lvmmed.qap_objective.default, args)
    torch.library.opcheck(torch.ops.lvmmed.qap_objective_backward.default, (torch.randn(2, device=device), *args))
    torch.library.opcheck(torch.ops.lvmmed.qap_objective.default, (X, p["unary"], None, None, None, None, None))


def test_objective_with_empty_edge_lists_and_torch_compile():
    p = random_problem(2, 4, 4, 0, 5, 3)
    X = torch.rand(2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(lvmmed_ext.qap_objective(X, **p), (X * p["unary"]).sum((1, 2)))
    q = p["quad"].clone().requires_grad_()
    lvmmed_ext.qap_objective(X, p["unary"], q, p["edges_s"], p["edges_t"]).sum().backward()
    assert q.grad.shape == q.shape and (q.grad == 0).all()

    p = random_problem(2, 4, 5, 6, 6, 4, torch.float32)

    def f(X, unary):
        return lvmmed_ext.qap_objective(X * 2.0, unary, p["quad"], p["edges_s"], p["edges_t"]).square().sum()

    X = torch.rand(2, 4, 5)
    X1, X2 = X.clone().requires_grad_(), X.clone().requires_grad_()
    out_c, out_e = torch.compile(f, fullgraph=True)(X1, p["unary"]), f(X2, p["unary"])
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(X1.grad, X2.grad)


# ------------------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("method", SOLVER_METHODS)
@pytest.mark.parametrize(
    "N, M, partial, kb",
    [(7, 7, False, False), (6, 9, False, False), (7, 7, True, False), (9, 6, True, False), (8, 8, False, True)],
)
def test_every_method_returns_a_valid_assignment(method, N, M, partial, kb):
    p = random_problem(2, N, M, 2 * N, 2 * M, N + M, torch.float32, kb=kb)
    X = lvmmed_ext.solve_qap(**p, partial=partial, method=method)
    assert X.shape == (2, N, M) and X.dtype == torch.float32 and not X.requires_grad
    assert_assignment(X, partial)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes_and_loops_and_duplicate_edges(dtype):
    p = random_problem(4, 6, 6, 30, 30, 5, dtype)  # 30 random edges on 6 nodes: loops and duplicates
    X = lvmmed_ext.solve_qap(**p)
    assert X.dtype == dtype
    assert_assignment(X, False)
    pd = {k: (v.double() if v.is_floating_point() else v) for k, v in p.items()}
    best = reference.qap_bruteforce(**pd)
    torch.testing.assert_close(objective(X.double(), pd), objective(best, pd), atol=1e-2, rtol=1e-2)


def lvmmed_tiny(G, N, seed, noise, partial=False):
    gen = torch.Generator().manual_seed(seed)
    p = lvmmed_problem(G, N, k=min(3, N - 1), noise=noise, generator=gen, dtype=torch.float64)
    if partial:  # LPMP-style offsets make low-affinity pairs cheaper unmatched
        return {**p.inputs(), "unary": p.unary - 0.3, "quad": p.quad - 0.05}
    return p.inputs()


@pytest.mark.parametrize("partial", [False, True])
def test_tiny_problems_against_bruteforce(partial):
    """Acceptance: N <= 8, LVM-Med-shaped, easy -> noisy: mean objective >= 99.5 % of the optimum and the optimum
    itself in >= 90 % of the instances."""
    ours, best, exact = [], [], []
    sizes = (4, 5, 6, 7, 8) if not partial else (4, 5, 6)
    for N in sizes:
        for i, noise in enumerate(NOISE_LEVELS.values()):
            p = lvmmed_tiny(3, N, 100 * N + i, noise, partial)
            X = lvmmed_ext.solve_qap(**p, partial=partial)
            assert_assignment(X, partial)
            Xb = reference.qap_bruteforce(**p, partial=partial)
            f, fb = objective(X, p), objective(Xb, p)
            assert (f <= fb + 1e-9).all()
            ours += f.tolist()
            best += fb.tolist()
            exact += (f >= fb - 1e-9).tolist()
    assert sum(ours) >= 0.995 * sum(best), (sum(ours), sum(best))
    assert sum(exact) >= 0.9 * len(exact), f"optimum in {sum(exact)} of {len(exact)}"


def test_bruteforce_method_and_dense_term():
    p = random_problem(4, 5, 6, -1, 0, 6, kb=True)
    Xb = lvmmed_ext.solve_qap(**p, method="bruteforce")
    torch.testing.assert_close(Xb, reference.qap_bruteforce(**p))
    for method in ("ls", "ga"):
        X = lvmmed_ext.solve_qap(**p, method=method)
        assert objective(X, p).sum() >= 0.99 * objective(Xb, p).sum()
    with pytest.raises(ValueError, match="at most 5000000 are allowed"):
        lvmmed_ext.solve_qap(torch.randn(1, 12, 12), method="bruteforce")


def test_local_search_never_worse_than_its_lap_start():
    p = lvmmed_problem(32, 16, noise=NOISE_LEVELS["noisy"], generator=torch.Generator().manual_seed(7)).inputs()
    f_lap = objective(lvmmed_ext.solve_qap(**p, method="lap"), p)
    for method, max_iter in (("ls", 0), ("ls", None), ("ils", None)):
        assert (objective(lvmmed_ext.solve_qap(**p, method=method, max_iter=max_iter), p) >= f_lap - 1e-5).all()


def run_pygm(K, N, M, name):
    pygm = pytest.importorskip("pygmtools")
    solver = {"sm": pygm.sm, "rrwm": pygm.rrwm, "ipfp": pygm.ipfp}[name]
    with contextlib.redirect_stdout(io.StringIO()):
        X = solver(K.numpy(), n1max=N, n2max=M, backend="numpy")
        return torch.from_numpy(pygm.hungarian(X, backend="numpy"))


def dense_lawler(p):
    """pygmtools' K [G, NM, NM] (column-major vec(X): index a*N + i), unary on the diagonal."""
    unary, quad, es, et = p["unary"], p["quad"], p["edges_s"], p["edges_t"]
    G, N, M = unary.shape
    K = torch.zeros(G, M, N, M, N, dtype=torch.float64)
    for g in range(G):
        q = quad[g].double()
        i, j = (es[g, :, c].view(-1, 1).expand(q.shape) for c in (0, 1))
        a, b = (et[g, :, c].view(1, -1).expand(q.shape) for c in (0, 1))
        K[g].index_put_((a, i, b, j), q, accumulate=True)
    K = K.reshape(G, N * M, N * M)
    K.diagonal(dim1=1, dim2=2).add_(unary.double().transpose(1, 2).reshape(G, -1))
    return K


@pytest.mark.parametrize("N", [16, pytest.param(32, marks=pytest.mark.slow)])
def test_at_least_as_good_as_pygmtools(N):
    """Acceptance: LVM-Med-shaped instances (k = 5), easy -> noisy: mean objective >= the best of pygmtools
    SM / RRWM / IPFP + Hungarian on the same instances."""
    pytest.importorskip("pygmtools")
    for i, noise in enumerate(NOISE_LEVELS.values()):
        p = lvmmed_problem(6, N, noise=noise, generator=torch.Generator().manual_seed(10 * N + i), dtype=torch.float64)
        K = dense_lawler(p.inputs())
        theirs = max(objective(run_pygm(K, N, N, name), p.inputs()).mean().item() for name in ("sm", "rrwm", "ipfp"))
        ours = objective(lvmmed_ext.solve_qap(**p.inputs()), p.inputs()).mean().item()
        assert ours >= theirs - 1e-9, (noise, ours, theirs)


def test_sm_rrwm_ipfp_follow_pygmtools():
    pytest.importorskip("pygmtools")
    p = lvmmed_problem(8, 10, k=3, noise=2.5, generator=torch.Generator().manual_seed(3), dtype=torch.float64).inputs()
    K = dense_lawler(p)
    x = lvmmed_ext.linear_assignment(torch.randn(8, 10, 10, dtype=torch.float64))  # vec(X)^T K vec(X), 0/1 X
    xv = x.transpose(1, 2).reshape(8, -1, 1)
    torch.testing.assert_close((xv.transpose(1, 2) @ K @ xv).view(-1), objective(x, p))
    for name, min_agree in (("sm", 8), ("rrwm", 8), ("ipfp", 6)):
        ours = lvmmed_ext.solve_qap(**p, method=name)
        theirs = run_pygm(K, 10, 10, name)
        assert (ours == theirs).flatten(1).all(1).sum() >= min_agree, name
        torch.testing.assert_close(objective(ours, p).mean(), objective(theirs, p).mean(), atol=0.02, rtol=0.02)


def relabel(p, seed):
    """The problem with the nodes of both graphs renamed, and the renaming (new name of old node)."""
    gen = torch.Generator().manual_seed(seed)
    G, N, M = p["unary"].shape
    ps = torch.stack([torch.randperm(N, generator=gen) for _ in range(G)])
    pt = torch.stack([torch.randperm(M, generator=gen) for _ in range(G)])
    g = torch.arange(G).view(G, 1, 1)
    out = dict(p)
    out["unary"] = torch.empty_like(p["unary"]).index_put_((g, ps.unsqueeze(2), pt.unsqueeze(1)), p["unary"])
    if "edges_s" in p:
        out["edges_s"] = torch.gather(ps, 1, p["edges_s"].flatten(1)).view_as(p["edges_s"])
        out["edges_t"] = torch.gather(pt, 1, p["edges_t"].flatten(1)).view_as(p["edges_t"])
    if "A" in p:
        out["A"] = torch.empty_like(p["A"]).index_put_((g, ps.unsqueeze(2), ps.unsqueeze(1)), p["A"])
        out["B"] = torch.empty_like(p["B"]).index_put_((g, pt.unsqueeze(2), pt.unsqueeze(1)), p["B"])
    return out, ps, pt


@pytest.mark.parametrize("method", ["ls", "ga", "rrwm"])
@pytest.mark.parametrize("N, noise", [(16, NOISE_LEVELS["medium"]), (24, NOISE_LEVELS["noisy"])])
def test_permutation_equivariance(method, N, noise):
    """Renaming the nodes of either graph renames the answer (continuous random costs: no exact ties)."""
    p = lvmmed_problem(12, N, noise=noise, generator=torch.Generator().manual_seed(N), dtype=torch.float64).inputs()
    X = lvmmed_ext.solve_qap(**p, method=method)
    q, ps, pt = relabel({k: v for k, v in p.items() if v is not None}, N + 1)
    X2 = lvmmed_ext.solve_qap(**q, method=method)
    g = torch.arange(12).view(12, 1, 1)
    expected = torch.empty_like(X).index_put_((g, ps.unsqueeze(2), pt.unsqueeze(1)), X)
    assert torch.equal(X2, expected)


def test_deterministic_across_runs_threads_and_generators():
    p = lvmmed_problem(24, 16, noise=NOISE_LEVELS["hard"], generator=torch.Generator().manual_seed(1)).inputs()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = lvmmed_ext.solve_qap(**p)
        ia = lvmmed_ext.solve_qap(**p, method="ils", generator=torch.Generator().manual_seed(5))
        torch.set_num_threads(2)
        b = lvmmed_ext.solve_qap(**p)
        ib = lvmmed_ext.solve_qap(**p, method="ils", generator=torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert torch.equal(a, lvmmed_ext.solve_qap(**p))


def test_warm_starts():
    gen = torch.Generator().manual_seed(2)
    p = lvmmed_problem(8, 8, k=3, noise=NOISE_LEVELS["noisy"], generator=gen, dtype=torch.float64).inputs()
    best = reference.qap_bruteforce(**p)
    f_best = objective(best, p)
    for method in ("ls", "ils", "ga", "faq"):
        X = lvmmed_ext.solve_qap(**p, method=method, init=best, max_iter=0 if method == "ls" else None)
        assert_assignment(X, False)
        if method in ("ls", "ils"):  # a valid 0/1 warm start is a start of the local search: never worse
            assert (objective(X, p) >= f_best - 1e-9).all()
    soft = torch.softmax(torch.randn(8, 8, 8, dtype=torch.float64), 2)
    assert_assignment(lvmmed_ext.solve_qap(**p, init=soft), False)
    part = best.clone()
    part[:, 0] = 0  # a valid partial assignment as the warm start of a partial problem
    assert_assignment(lvmmed_ext.solve_qap(**p, init=part, partial=True), True)


def test_batched_forward_and_perturbed_backward_in_one_call():
    """The IMLE pattern: the target problem (unary pushed to the identity) warm-started from the forward answer."""
    p = lvmmed_problem(16, 16, noise=NOISE_LEVELS["noisy"], generator=torch.Generator().manual_seed(4)).inputs()
    X = lvmmed_ext.solve_qap(**p)
    target = {**p, "unary": p["unary"] + 5.0 * torch.eye(16)}
    Xt = lvmmed_ext.solve_qap(**target, init=X)
    assert (Xt.argmax(2) == torch.arange(16)).all()


def test_kb_problems():
    pk = planted_kb_problem(4, 32, generator=torch.Generator().manual_seed(0))
    X = lvmmed_ext.solve_qap(**pk.inputs(), method="ga")
    assert (X.argmax(2) == pk.planted).float().mean() >= 0.9
    quadratic_assignment = pytest.importorskip("scipy.optimize").quadratic_assignment
    pu = uniform_kb_problem(4, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = objective(lvmmed_ext.solve_qap(**pu.inputs(), method="ga"), pu.inputs())
    for g in range(4):
        res = quadratic_assignment(pu.A[g].numpy(), pu.B[g].numpy(), method="faq", options={"maximize": True})
        assert ours[g] >= res.fun - 1e-9
    Xa = lvmmed_ext.solve_qap(**planted_kb_problem(2, 70, generator=torch.Generator().manual_seed(2)).inputs())
    assert_assignment(Xa, False)  # auto: N > 64 -> "ga"


# ------------------------------------------------------------------------------- its and the anytime budget
def integer_kb(G, N, seed, sym_a=True, sym_b=True, unary=False):
    """Koopmans-Beckmann problems with small integer entries: every sum in the search is exact, so its path does not
    depend on the order of the additions (CPU and CUDA follow the same one)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randint(0, 10, (G, N, N), generator=gen).double()
    B = -torch.randint(0, 10, (G, N, N), generator=gen).double()
    A = A + A.transpose(1, 2) if sym_a else A
    B = B + B.transpose(1, 2) if sym_b else B
    U = torch.randint(-20, 20, (G, N, N), generator=gen).double() if unary else torch.zeros(G, N, N).double()
    return {"unary": U, "A": A, "B": B}


def integer_tree_kb(G, N, seed, unary=False):
    """Like integer_kb, with A a random tree with integer weights (QAPLIB's chr shape): a sparse problem, on which
    the dense search runs its iterated local search."""
    p = integer_kb(G, N, seed, unary=unary)
    gen = torch.Generator().manual_seed(seed + 1)
    A = torch.zeros(G, N, N, dtype=torch.float64)
    for g in range(G):
        for v in range(1, N):
            u, w = int(torch.randint(0, v, (1,), generator=gen)), float(torch.randint(1, 10, (1,), generator=gen))
            A[g, u, v] = A[g, v, u] = w
    p["A"] = A
    return p


@pytest.mark.parametrize("sym_a, sym_b, unary", [(True, True, False), (False, False, True), (True, False, True)])
def test_its_reaches_the_bruteforce_optimum_of_tiny_dense_problems(sym_a, sym_b, unary):
    # the dense search (symmetric, asymmetric, one side symmetric; with a unary term) on N = 5..7
    for N in (5, 6, 7):
        p = integer_kb(4, N, 10 * N, sym_a, sym_b, unary)
        X = lvmmed_ext.solve_qap(**p, method="its", max_iter=400, generator=torch.Generator().manual_seed(0))
        assert_assignment(X, False)
        torch.testing.assert_close(objective(X, p), objective(reference.qap_bruteforce(**p), p))


@pytest.mark.parametrize("unary", [False, True])
def test_its_reaches_the_bruteforce_optimum_of_tiny_sparse_problems(unary):
    # the dense search's iterated local search (tree-shaped A) on N = 5..7
    for N in (5, 6, 7):
        p = integer_tree_kb(4, N, 10 * N, unary)
        X = lvmmed_ext.solve_qap(**p, method="its", max_iter=400, generator=torch.Generator().manual_seed(0))
        assert_assignment(X, False)
        torch.testing.assert_close(objective(X, p), objective(reference.qap_bruteforce(**p), p))


@pytest.mark.parametrize("partial", [False, True])
def test_its_reaches_the_bruteforce_optimum_of_tiny_edge_problems(partial):
    # the generic iterated tabu search (edges; partial; N < M with free columns)
    for N, M in ((5, 5), (5, 6)):
        p = random_problem(3, N, M, 2 * N, 2 * M, N + M, kb=True)
        X = lvmmed_ext.solve_qap(**p, partial=partial, method="its", max_iter=300)
        assert_assignment(X, partial)
        best = reference.qap_bruteforce(**p, partial=partial)
        torch.testing.assert_close(objective(X, p), objective(best, p))


def test_its_budget_is_deterministic_on_any_thread_count():
    dense = integer_kb(6, 12, 3, sym_a=False, sym_b=True, unary=True)
    edges = lvmmed_problem(6, 12, noise=NOISE_LEVELS["hard"], generator=torch.Generator().manual_seed(3)).inputs()
    sparse = integer_tree_kb(6, 12, 3)
    threads = torch.get_num_threads()
    answers = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            answers.append(
                [
                    lvmmed_ext.solve_qap(**p, method="its", max_iter=500, generator=torch.Generator().manual_seed(9))
                    for p in (dense, edges, sparse)
                ]
            )
    finally:
        torch.set_num_threads(threads)
    for other in answers[1:]:
        assert all(torch.equal(a, b) for a, b in zip(answers[0], other))
    # another seed explores elsewhere; a larger budget never ends worse (the same search, run further)
    more = lvmmed_ext.solve_qap(**dense, method="its", max_iter=2000, generator=torch.Generator().manual_seed(9))
    assert (objective(more, dense) >= objective(answers[0][0], dense)).all()
    more = lvmmed_ext.solve_qap(**sparse, method="its", max_iter=2000, generator=torch.Generator().manual_seed(9))
    assert (objective(more, sparse) >= objective(answers[0][2], sparse)).all()


def test_its_beats_ls_on_unstructured_dense_problems():
    pu = uniform_kb_problem(4, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64).inputs()
    f_ls = objective(lvmmed_ext.solve_qap(**pu, method="ls"), pu)
    f_its = objective(lvmmed_ext.solve_qap(**pu, method="its", max_iter=2000), pu)
    assert (f_its >= f_ls - 1e-9).all() and (f_its > f_ls + 1e-9).any()


def test_time_limit_gives_valid_answers_and_auto_picks_its():
    p = integer_kb(3, 30, 4)
    X = lvmmed_ext.solve_qap(**p, time_limit=1e-4)  # auto -> its; a limit shorter than the search
    assert_assignment(X, False)
    q = lvmmed_problem(4, 16, noise=NOISE_LEVELS["hard"], generator=torch.Generator().manual_seed(6)).inputs()
    for method in ("ls", "ils", "its"):
        assert_assignment(lvmmed_ext.solve_qap(**q, method=method, time_limit=1e-4), False)
    # a generous limit with a move budget: the budget decides, the answer is the deterministic one
    a = lvmmed_ext.solve_qap(**p, method="its", max_iter=300, time_limit=60.0)
    assert torch.equal(a, lvmmed_ext.solve_qap(**p, method="its", max_iter=300))


# ------------------------------------------------------------------------------------------ input handling
def test_empty_inputs_give_documented_results():
    assert lvmmed_ext.solve_qap(torch.randn(0, 4, 5)).shape == (0, 4, 5)
    assert lvmmed_ext.solve_qap(torch.randn(2, 0, 5)).shape == (2, 0, 5)
    assert lvmmed_ext.solve_qap(torch.randn(2, 3, 0), partial=True).sum() == 0
    p = random_problem(2, 5, 5, 0, 0, 1)  # empty edge lists: the LAP of the unary
    torch.testing.assert_close(lvmmed_ext.solve_qap(**p), lvmmed_ext.linear_assignment(p["unary"]))


def _bad(**kw):
    p = random_problem(2, 4, 5, 6, 7, 0, torch.float32)
    p.update(kw)
    return p


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (_bad(unary=torch.full((2, 4, 5), float("nan"))), ValueError, "unary contains NaN or Inf"),
        (_bad(quad=torch.full((2, 6, 7), float("inf"))), ValueError, "quad contains NaN or Inf"),
        (
            _bad(edges_s=torch.full((2, 6, 2), 4)),
            ValueError,
            r"edges_s holds node index 4 outside \[0, N-1\] = \[0, 3\] of unary",
        ),
        (_bad(edges_t=torch.full((2, 7, 2), -1)), ValueError, r"edges_t holds node index -1 outside \[0, M-1\]"),
        (_bad(edges_s=torch.zeros(2, 6, 3, dtype=torch.long)), ValueError, r"edges_s must be \[G,E,2\]"),
        (_bad(edges_s=torch.zeros(2, 6, 2)), TypeError, "edges_s must have dtype torch.int64, got torch.float32"),
        (_bad(quad=torch.zeros(2, 6, 8)), ValueError, r"quad must be \[G,Es,Et\] = \[2, 6, 7\]"),
        (_bad(edges_t=None), ValueError, "quad, edges_s and edges_t go together"),
        (_bad(A=torch.zeros(2, 4, 4)), ValueError, "A and B go together"),
        (_bad(A=torch.zeros(2, 4, 4), B=torch.zeros(2, 4, 4)), ValueError, r"B must be \[G,M,M\] = \[2, 5, 5\]"),
        (_bad(init=torch.zeros(2, 5, 4)), ValueError, r"init must be \[G,N,M\] = \[2, 4, 5\]"),
        (_bad(init=torch.full((2, 4, 5), float("nan"))), ValueError, "init contains NaN or Inf"),
        (
            _bad(unary=torch.randn(3, 4, 5)),
            ValueError,
            r"edges_s \[G,E,2\] and unary \[G,N,M\] must have the same number of graphs G",
        ),
        (_bad(method="hungarian"), ValueError, "method must be one of"),
        (_bad(max_iter=-1), ValueError, "max_iter must be None or an int >= 0"),
        (_bad(time_limit=0), ValueError, "time_limit must be None or a number of seconds > 0"),
        (_bad(time_limit="1s"), ValueError, "time_limit must be None or a number of seconds > 0"),
        (_bad(time_limit=0.1, method="ga"), ValueError, "time_limit applies to the search methods"),
        (_bad(unary=torch.randn(2, 4, 5).double()), TypeError, "same dtype"),
    ],
)
def test_bad_input_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lvmmed_ext.solve_qap(**kwargs)


def test_more_rows_than_columns_needs_partial():
    with pytest.raises(ValueError, match="partial=False matches every row, so it needs N <= M, got N = 5 > M = 4"):
        lvmmed_ext.solve_qap(torch.randn(1, 5, 4))
    assert_assignment(lvmmed_ext.solve_qap(torch.randn(1, 5, 4), partial=True), True)


def test_opcheck_and_compile_solve_qap():
    p = random_problem(2, 5, 6, 7, 8, 0, torch.float32)
    args = (p["unary"], p["quad"], p["edges_s"], p["edges_t"], None, None, None, False, "ls", -1, -1.0, 0)
    torch.library.opcheck(torch.ops.lvmmed.solve_qap.default, args)

    def f(unary):
        X = lvmmed_ext.solve_qap(unary * 1.5, p["quad"], p["edges_s"], p["edges_t"])
        return (X * unary).sum()

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(p["unary"]), f(p["unary"]))


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("method", SOLVER_METHODS)
@pytest.mark.parametrize("partial", [False, True])
def test_cuda_valid_and_as_good_as_cpu(gpu, method, partial):
    p = lvmmed_problem(gpu.pick(256, 12), 16, noise=NOISE_LEVELS["hard"], generator=torch.Generator().manual_seed(0))
    p = p.inputs()
    pc = {k: v.to(gpu.device) for k, v in p.items() if v is not None}
    with gpu:
        X = lvmmed_ext.solve_qap(**pc, method=method, partial=partial).cpu()
    assert_assignment(X, partial)
    f_gpu = objective(X, p).mean()
    f_cpu = objective(lvmmed_ext.solve_qap(**p, method=method, partial=partial), p).mean()
    assert f_gpu >= f_cpu - 0.01 * f_cpu.abs()


@pytest.mark.parametrize("kb", [False, True])
def test_cuda_objective_and_gradients_match_cpu(gpu, kb):
    p = random_problem(4, 9, 11, 20, 25, 3, kb=kb)
    X = torch.rand(4, 9, 11, dtype=torch.float64)
    names = ["unary", "quad"] + (["A", "B"] if kb else [])
    grads = []
    for dev, ctx in ((torch.device("cpu"), contextlib.nullcontext()), (gpu.device, gpu)):
        q = {k: v.to(dev).requires_grad_(k in names) for k, v in p.items()}
        Xd = X.to(dev).requires_grad_()
        # the emulated device has at most 2 blocks per grid: the objective and quad-gradient kernels stride
        with ctx, gpu.device_limits(max_grid_x=2) if ctx is gpu else contextlib.nullcontext():
            f = lvmmed_ext.qap_objective(Xd, **q)
            g = torch.autograd.grad(f.sum(), [Xd] + [q[k] for k in names])
        grads.append([f.detach().cpu()] + [t.cpu() for t in g])
    for a, b in zip(*grads):
        assert_matches_reference(a, b, torch.float64)


def test_cuda_large_kb_and_dense_and_many_small(gpu):
    G, N = gpu.pick((8, 128), (2, 96))
    pk = planted_kb_problem(G, N, generator=torch.Generator().manual_seed(0), device=gpu.device)
    with gpu:
        X = lvmmed_ext.solve_qap(**pk.inputs())
    assert_assignment(X.cpu(), False)
    assert (X.argmax(2) == pk.planted).float().mean() >= 0.9
    gen = torch.Generator().manual_seed(1)
    p = lvmmed_problem(gpu.pick(4096, 48), 16, noise=NOISE_LEVELS["medium"], generator=gen, device=gpu.device)
    with gpu:
        X = lvmmed_ext.solve_qap(**p.inputs())
        again = lvmmed_ext.solve_qap(**p.inputs())
    assert_assignment(X.cpu(), False)
    assert torch.equal(X, again)  # deterministic on the GPU too


@pytest.mark.parametrize(
    "shape,partial",
    [
        ((0, 4, 4, 5, 5), False),  # G = 0
        ((3, 1, 1, 1, 1), False),  # N = M = 1
        ((3, 1, 5, 2, 3), True),  # N = 1
        ((4, 6, 9, 10, 12), False),  # N < M: free columns
        ((4, 9, 6, 12, 10), True),  # N > M: partial only
        ((3, 5, 5, 0, 7), False),  # an empty edge list (no quadratic edge term)
        ((3, 5, 7, -1, -1), True),  # no edges at all
    ],
)
@pytest.mark.parametrize("method", ["lap", "ls", "ils", "its", "ga", "faq"])
@pytest.mark.parametrize("kb", [False, True])
def test_cuda_edge_shapes_valid_and_as_good_as_cpu(gpu, shape, partial, method, kb):
    G, N, M, Es, Et = shape
    p = random_problem(G, N, M, Es, Et, 11, kb=kb, loops=True)
    pc = {k: v.to(gpu.device) for k, v in p.items()}
    with gpu:
        X = lvmmed_ext.solve_qap(**pc, method=method, partial=partial, generator=torch.Generator().manual_seed(0))
    assert X.shape == (G, N, M) and X.device.type == gpu.device.type
    X = X.cpu()
    assert_assignment(X, partial)
    Xc = lvmmed_ext.solve_qap(**p, method=method, partial=partial, generator=torch.Generator().manual_seed(0))
    assert_assignment(Xc, partial)
    if method == "lap":  # the exact LAP picks the same assignment on both devices
        assert torch.equal(X, Xc)
    if method in ("ls", "ils", "its"):  # the same engine on both devices (rounding may still steer it elsewhere)
        f_gpu, f_cpu = objective(X, p).sum(), objective(Xc, p).sum()
        assert f_gpu >= f_cpu - 0.05 * objective(Xc, p).abs().sum() - 1e-9, (f_gpu, f_cpu)


@pytest.mark.parametrize("partial", [False, True])
def test_cuda_warm_starts(gpu, partial):
    # a valid 0/1 init is taken as is, a soft one is rounded by the team LAP; the search never ends below the start
    p = random_problem(5, 7, 9, 14, 18, 12)
    pc = {k: v.to(gpu.device) for k, v in p.items()}
    soft = torch.rand(5, 7, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hard = lvmmed_ext.linear_assignment(soft, partial=partial)
    for init in (soft, hard):
        with gpu:
            X = lvmmed_ext.solve_qap(**pc, init=init.to(gpu.device), partial=partial, method="ls").cpu()
        assert_assignment(X, partial)
        Xc = lvmmed_ext.solve_qap(**p, init=init, partial=partial, method="ls")
        f_gpu, f_cpu = objective(X, p).sum(), objective(Xc, p).sum()
        assert f_gpu >= f_cpu - 0.05 * objective(Xc, p).abs().sum() - 1e-9, (f_gpu, f_cpu)
    with gpu:
        X = lvmmed_ext.solve_qap(**pc, init=hard.to(gpu.device), partial=partial, method="ls", max_iter=0).cpu()
    assert (objective(X, p) >= objective(hard, p) - 1e-9).all()


@pytest.mark.parametrize(
    "sym_a, sym_b, unary", [(True, True, False), (False, False, True), (False, True, True), ("tree", True, True)]
)
def test_cuda_its_follows_the_cpu_on_exact_data(gpu, sym_a, sym_b, unary):
    # integer data: every sum is exact, so the block runs the very search of the CPU team (same assignment), in
    # shared memory and in the global workspace with blocks looping over graphs; a tree-shaped A: the iterated
    # local search of sparse problems, long enough for its kicks, restarts and crossovers
    G, N = gpu.pick(16, 3), gpu.pick(24, 9)
    p = integer_tree_kb(G, N, 8, unary) if sym_a == "tree" else integer_kb(G, N, 8, sym_a, sym_b, unary)
    moves = gpu.pick(4000, 600) if sym_a == "tree" else gpu.pick(2000, 150)
    kw = {"method": "its", "max_iter": moves, "generator": torch.Generator().manual_seed(1)}
    Xc = lvmmed_ext.solve_qap(**p, **kw)
    pc = {k: v.to(gpu.device) for k, v in p.items()}
    kw["generator"] = torch.Generator().manual_seed(1)
    with gpu:
        X = lvmmed_ext.solve_qap(**pc, **kw)
        kw["generator"] = torch.Generator().manual_seed(1)
        with gpu.device_limits(smem_per_block_optin=2048, max_grid_x=2):
            Xw = lvmmed_ext.solve_qap(**pc, **kw)
    assert torch.equal(X.cpu(), Xc) and torch.equal(Xw.cpu(), Xc)


def test_cuda_its_edges_and_time_limit(gpu):
    p = lvmmed_problem(gpu.pick(64, 3), 12, noise=NOISE_LEVELS["hard"], generator=torch.Generator().manual_seed(2))
    p = {k: v for k, v in p.inputs().items() if v is not None}
    pc = {k: v.to(gpu.device) for k, v in p.items()}
    dense = {k: v.to(gpu.device) for k, v in integer_kb(2, 10, 3, unary=True).items()}
    with gpu:
        X = lvmmed_ext.solve_qap(**pc, method="its", max_iter=gpu.pick(2000, 60))
        again = lvmmed_ext.solve_qap(**pc, method="its", max_iter=gpu.pick(2000, 60))
        Xt = lvmmed_ext.solve_qap(**dense, time_limit=1e-3)  # auto -> its, dense
    assert torch.equal(X, again)
    assert_assignment(X.cpu(), False)
    assert_assignment(Xt.cpu(), False)
    Xc = lvmmed_ext.solve_qap(**p, method="its", max_iter=gpu.pick(2000, 60))
    assert objective(X.cpu(), p).sum() >= objective(Xc, p).sum() - 0.05 * objective(Xc, p).abs().sum()


@pytest.mark.parametrize("method", ["ls", "ils", "ga"])
@pytest.mark.parametrize("kb", [False, True])
def test_cuda_team_kernels_global_workspace_and_grid_stride(gpu, method, kb):
    # the per-graph team kernels (LAP, local search, edge products) with their scratch in a global workspace (the
    # device's opt-in shared memory below one team's scratch) and fewer blocks than graphs (blocks loop over
    # graphs): the same answer as with shared memory and one block per graph
    p = random_problem(7, 10, 12, 30, 36, 13, kb=kb, loops=False)
    pc = {k: v.to(gpu.device) for k, v in p.items()}
    kw = {"method": method, "generator": torch.Generator().manual_seed(0)}
    with gpu:
        X = lvmmed_ext.solve_qap(**pc, **kw)
        kw["generator"] = torch.Generator().manual_seed(0)
        with gpu.device_limits(smem_per_block_optin=2048, max_grid_x=2):
            Xw = lvmmed_ext.solve_qap(**pc, **kw)
            f = lvmmed_ext.qap_objective(Xw, **pc)
    assert torch.equal(X, Xw)
    assert_assignment(Xw.cpu(), False)
    torch.testing.assert_close(f.cpu(), objective(Xw.cpu(), p))


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(0, 4), st.integers(-1, 30), st.integers(0, 30)),
    method=st.sampled_from(["lap", "ls", "ils", "its", "ga", "faq", "sm", "rrwm", "ipfp"]),
    partial=st.booleans(),
    kb=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_cuda_property_valid_deterministic_and_objective(gpu, shape, method, partial, kb, seed):
    # any problem: a valid assignment, the same one twice, and the objective the CPU computes for it
    G, N, extra, Es, Et = shape
    p = random_problem(G, N, N + extra, Es, Et if Es >= 0 else -1, seed, kb=kb, loops=True)
    pc = {k: v.to(gpu.device) for k, v in p.items()}
    kw = {"method": method, "partial": partial}
    with gpu:
        X = lvmmed_ext.solve_qap(**pc, **kw, generator=torch.Generator().manual_seed(seed))
        again = lvmmed_ext.solve_qap(**pc, **kw, generator=torch.Generator().manual_seed(seed))
        f = lvmmed_ext.qap_objective(X, **pc)
    assert torch.equal(X, again)
    assert_assignment(X.cpu(), partial)
    assert_matches_reference(f.cpu(), lvmmed_ext.qap_objective(X.cpu(), **p), torch.float64)
