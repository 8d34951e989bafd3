"""The gm ablation switches (LVMMED_SPEC §5 Table 6) each change what they claim, as gm_loss/LVMMedHead arguments
and as `lvmmed pretrain` flags that map onto head options."""

import pytest
import torch

import lvmmed_ext
from lvmmed_ext import LVMMedHead, gm_loss, losses, ops, qap
from lvmmed_ext.data.demo import DEMO_HEAD_OPTS
from lvmmed_ext.errors import UsageError
from lvmmed_ext.heads import gm as gm_head
from lvmmed_ext.models import resnet18
from lvmmed_ext.train import SSLModel
from lvmmed_ext.train.cli import parser
from lvmmed_ext.train.config import GM_OPTIONS, build_config, gm_defaults

B, D = 16, 12


def _inputs(seed=0, P=4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, D, generator=g)
    h_s = (h + 0.3 * torch.randn(B, D, generator=g)).requires_grad_()
    h_t = (h + 0.3 * torch.randn(B, D, generator=g)).requires_grad_()
    y = torch.randn(B, P, D, generator=g)
    pos = torch.rand(B, P, 2, generator=g) * 32
    return h_s, h_t, y, y + 0.1, pos, pos


def _head(**kw):
    torch.manual_seed(0)
    return LVMMedHead(D, dim=8, **{"graph_size": 8, "k": 3, **kw})


class _Calls:
    """Wraps a function and records its positional tensor arguments' shapes."""

    def __init__(self, fn):
        self.fn, self.shapes = fn, []

    def __call__(self, *args, **kwargs):
        self.shapes.append([tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args])
        return self.fn(*args, **kwargs)


@pytest.fixture
def spy(monkeypatch):
    """Record every call of the two solvers and the edge affinity."""
    calls = {"qap": _Calls(qap.solve_qap), "lap": _Calls(qap.linear_assignment), "edge": _Calls(ops.edge_affinity)}
    monkeypatch.setattr(qap, "solve_qap", calls["qap"])
    monkeypatch.setattr(qap, "linear_assignment", calls["lap"])
    monkeypatch.setattr(ops, "edge_affinity", calls["edge"])
    return calls


# --- no edge term: first-order matching -------------------------------------------------------------------------


def test_no_edge_term_calls_only_the_linear_assignment(spy, monkeypatch):
    h_s, h_t, *maps = _inputs()
    _head()(h_s, h_t, *maps).backward()
    # the full loss: the head's noise-free diagnostic solve, the forward solve and the IMLE target solve
    assert len(spy["qap"].shapes) == 3 and not spy["lap"].shapes and len(spy["edge"].shapes) == 1

    def no_qap(*a, **k):
        raise AssertionError("solve_qap called without an edge term")

    monkeypatch.setattr(qap, "solve_qap", no_qap)
    spy["lap"].shapes.clear()
    h_s, h_t, *maps = _inputs()
    _head(quad_weight=0.0)(h_s, h_t, *maps).backward()
    assert len(spy["lap"].shapes) == 3  # diagnostic, forward and IMLE target solves
    assert len(spy["edge"].shapes) == 1  # only the full run above computed edge affinities
    assert h_s.grad.abs().sum() > 0
    spy["lap"].shapes.clear()
    zs, zt = h_s.detach()[:, :8].requires_grad_(), h_t.detach()[:, :8]
    gm_loss(zs, zt, graph_size=8, k=3, quad_weight=0.0).backward()  # the function too
    assert len(spy["lap"].shapes) == 2 and zs.grad is not None


# --- no local term: alpha = 1, feature maps never read ----------------------------------------------------------


def test_no_local_term_never_reads_feature_maps(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the local affinity was computed")

    h_s, h_t, y_s, y_t, pos_s, pos_t = _inputs()
    with_maps = _head()(h_s, h_t, y_s, y_t, pos_s, pos_t)
    monkeypatch.setattr(ops, "local_affinity", forbidden)
    monkeypatch.setattr(ops, "vertex_affinity", forbidden)
    head = _head(alpha=1.0)
    assert not head.needs_maps
    poison = torch.full_like(y_s, float("nan"))
    torch.manual_seed(5)
    poisoned = head(h_s, h_t, poison, poison, poison[..., :2], poison[..., :2])
    torch.manual_seed(5)
    without = head(h_s, h_t)
    assert torch.isfinite(poisoned) and poisoned.item() == without.item()
    assert with_maps.item() >= 0  # the full head did read them (and the monkeypatch came after it)
    torch.manual_seed(5)
    assert gm_loss(h_s, h_t, y_s=poison, y_t=poison, graph_size=8, k=3, alpha=1.0).item() >= 0


def test_trainer_computes_no_feature_maps_without_the_local_term():
    seen = []

    class Spy(LVMMedHead):
        def forward(self, h_s, h_t, y_s=None, y_t=None, pos_s=None, pos_t=None):
            seen.append((y_s, pos_s))
            return super().forward(h_s, h_t, y_s, y_t, pos_s, pos_t)

    views = [torch.randn(8, 1, 32, 32)] * 2
    pos = [torch.zeros(8, 1, 2)] * 2
    for alpha, expect_maps in ((1.0, False), (0.8, True)):
        seen.clear()
        torch.manual_seed(0)
        model = SSLModel(resnet18(width=4), Spy(32, dim=8, graph_size=4, k=2, alpha=alpha), 2, None)
        assert model.needs_maps is expect_maps
        model(views, pos).backward()
        assert all((y is not None, p is not None) == (expect_maps, expect_maps) for y, p in seen) and seen


# --- no message passing -----------------------------------------------------------------------------------------


def test_no_gnn_has_no_gcn_parameters_and_matches_the_projector_only_loss(monkeypatch):
    full, plain = _head(), _head(use_gnn=False)
    assert any(n.startswith("gnn.") for n, _ in full.named_parameters())
    assert plain.gnn is None and not any(n.startswith("gnn.") for n, _ in plain.named_parameters())
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in full.projector.parameters())
    seen = []
    real = gm_head.graph_matching_loss

    def record(zs, zt, *a, **k):
        seen.append(zs.detach().clone())
        return real(zs, zt, *a, **k)

    monkeypatch.setattr(gm_head, "graph_matching_loss", record)
    h_s, h_t, *maps = _inputs()
    plain(h_s, h_t, *maps)
    full(h_s, h_t, *maps)
    projected = full.projector(h_s).detach().reshape(2, 8, -1)  # same projector weights (same seed)
    torch.testing.assert_close(seen[0], projected)  # without a GNN the matching sees the projector output
    assert not torch.allclose(seen[1], projected)  # with it, the GCN's output


@pytest.mark.parametrize("aggr", ["mean", "sum", "max"])
def test_graphconv_equals_a_float64_loop(aggr):
    """x_i <- W_root x_i + b + W_nbr aggr_{j in kNN(i)} x_j, ReLU between layers, none after the last."""
    torch.manual_seed(0)
    net = gm_head.GraphConv(6, layers=2, aggr=aggr).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    edges = torch.tensor([[[0, 1], [0, 2], [1, 0], [2, 4], [3, 4], [4, 3]]] * 2)
    edges[1, 0] = torch.tensor([0, 3])
    want = x.clone()
    for layer in range(2):
        root, nbr = net.root[layer], net.nbr[layer]
        new = torch.empty_like(want)
        for g in range(2):
            for i in range(5):
                nb = [int(j) for a, j in edges[g].tolist() if a == i]
                msgs = torch.stack([want[g, j] for j in nb]) if nb else torch.zeros(1, 6, dtype=torch.float64)
                agg = {"mean": msgs.mean(0), "sum": msgs.sum(0), "max": msgs.max(0).values}[aggr]
                new[g, i] = root.weight @ want[g, i] + root.bias + nbr.weight @ agg
        want = torch.relu(new) if layer == 0 else new
    torch.testing.assert_close(net(x, edges), want)


def test_gnn_kind_and_normalize_options(monkeypatch):
    assert isinstance(_head().gnn, gm_head.GraphConv) and isinstance(_head(gnn="gcn").gnn, gm_head.GCN)  # default
    assert _head(gnn="graphconv", gnn_aggr="max").gnn.aggr == "max"
    with pytest.raises(ValueError, match="gnn must be one of"):
        _head(gnn="gat")
    with pytest.raises(ValueError, match="gnn_aggr must be one of"):
        _head(gnn="graphconv", gnn_aggr="median")
    seen = []
    real = gm_head.graph_matching_loss

    def record(zs, zt, *a, **k):
        seen.append(zs.detach().clone())
        return real(zs, zt, *a, **k)

    monkeypatch.setattr(gm_head, "graph_matching_loss", record)
    h_s, h_t, *maps = _inputs()
    _head(normalize=True)(h_s, h_t, *maps)
    torch.testing.assert_close(seen[0].norm(dim=-1), torch.ones(2, 8))  # unit node embeddings reach the matching


# --- no noise (+ margin) ----------------------------------------------------------------------------------------


def test_noise_none_is_deterministic_and_gumbel_is_not():
    h_s, h_t, *maps = _inputs()
    head = _head(noise="none", margin=0.5)
    results = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        h_s.grad = None
        loss = head(h_s, h_t, *maps)
        loss.backward()
        results.append((loss.detach(), h_s.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    noisy = _head(noise_scale=3.0)
    values = set()
    for seed in range(6):
        torch.manual_seed(seed)
        values.add(noisy(h_s, h_t, *maps).item())
    assert len(values) > 1


def test_margin_lowers_the_diagonal_affinities(monkeypatch):
    captured = []
    real = losses.imle

    def record(unary, *a, **k):
        captured.append(unary.detach().clone())
        return real(unary, *a, **k)

    monkeypatch.setattr(losses, "imle", record)
    h_s, h_t, *maps = _inputs()
    for margin in (0.0, 0.7):
        _head(noise="none", margin=margin)(h_s, h_t, *maps)
    base, lowered = captured
    eye = torch.eye(8).expand_as(base)
    torch.testing.assert_close(lowered, base - 0.7 * eye)


# --- graph size and samples -------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph_size,k,samples", [(8, 3, 1), (4, 2, 3), (16, 5, 2)])
def test_graph_size_and_samples_reach_the_solver(spy, graph_size, k, samples):
    h_s, h_t, *maps = _inputs()
    _head(graph_size=graph_size, k=k, samples=samples)(h_s, h_t, *maps).backward()
    G = B // graph_size
    assert spy["qap"].shapes[0][0] == (G, graph_size, graph_size)  # the noise-free diagnostic solve
    unary, quad, edges_s = spy["qap"].shapes[1][:3]
    assert unary == (G * samples, graph_size, graph_size)  # the noise samples are solved in one batch
    assert quad == (G * samples, graph_size * k, graph_size * k) and edges_s == (G * samples, graph_size * k, 2)
    spy["lap"].shapes.clear()
    _head(graph_size=graph_size, k=k, samples=samples, quad_weight=0.0)(h_s, h_t, *maps)
    assert spy["lap"].shapes[1][0] == (G * samples, graph_size, graph_size)


# --- the flags of lvmmed pretrain map onto head options ---------------------------------------------------------


def _cfg(*argv):
    return build_config(parser().parse_args(["--data", "x", *argv]), None)


def test_each_flag_sets_its_head_option():
    argv_opts = [
        (["--no-edge-term"], {"quad_weight": 0.0}),
        (["--no-local-term"], {"alpha": 1.0}),
        (["--no-gnn"], {"use_gnn": False}),
        (["--noise", "none", "--margin", "1"], {"noise": "none", "margin": 1.0}),
        (["--graph-size", "8", "--samples", "3"], {"graph_size": 8, "samples": 3}),
        (["--noise-scale", "0.05", "--lam", "20", "--alpha", "0.7", "--k", "4"],
         {"noise_scale": 0.05, "lam": 20.0, "alpha": 0.7, "k": 4}),
        ([], {}),
    ]  # fmt: skip
    for argv, opts in argv_opts:
        cfg = _cfg(*argv)
        assert cfg.head_opts == opts, argv
        head = lvmmed_ext.train.build_head(cfg.loss, 8, **cfg.head_opts)  # every option is a real head argument
        for key, value in opts.items():
            got = head.gnn is not None if key == "use_gnn" else getattr(head, key, head.loss_kwargs.get(key))
            assert got == value, key
    flags = {o.flag for o in GM_OPTIONS}
    assert {
        "--no-edge-term",
        "--no-local-term",
        "--no-gnn",
        "--noise",
        "--margin",
        "--graph-size",
        "--samples",
    } <= flags
    assert set(gm_defaults()) >= {o.head_option for o in GM_OPTIONS}  # every flag's default comes from a signature


def test_flags_combine_with_head_opt_and_the_demo_and_refuse_conflicts():
    assert _cfg("--head-opt", "lam=5", "--no-gnn").head_opts == {"lam": 5, "use_gnn": False}
    demo = build_config(parser().parse_args(["--demo", "--no-edge-term"]), None)
    assert demo.head_opts == {"quad_weight": 0.0}  # the demo's own gm options are added when the run starts
    assert "gm" not in DEMO_HEAD_OPTS and "vicreg" in DEMO_HEAD_OPTS  # gm runs the demo with its defaults
    with pytest.raises(UsageError, match="--no-local-term sets alpha = 1.0 but --alpha sets it to 0.5"):
        _cfg("--no-local-term", "--alpha", "0.5")
    assert _cfg("--no-local-term", "--alpha", "1").head_opts == {"alpha": 1.0}
    with pytest.raises(UsageError, match="--head-opt alpha=0.3 conflicts"):
        _cfg("--head-opt", "alpha=0.3", "--alpha", "0.5")
    with pytest.raises(UsageError, match="--samples, --no-gnn: graph-matching options apply to --loss gm, not --loss"):
        _cfg("--loss", "infonce", "--no-gnn", "--samples", "2")


def test_pretrain_command_records_the_switches(tmp_path):
    from train_utils import make_image_folder

    from lvmmed_ext.cli import main as lvmmed

    data = make_image_folder(tmp_path / "data", n=8)
    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(data), "--out", str(out), "--arch", "resnet18", "--width", "4",
            "--image-size", "32", "--batch-size", "8", "--steps", "2", "--workers", "0", "--max-side", "64",
            "--loss", "gm", "--no-edge-term", "--no-gnn", "--noise", "none", "--margin", "1", "--graph-size", "4",
            "--k", "2"]  # fmt: skip
    assert lvmmed(argv) == 0
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["config"]["head_opts"] == {
        "quad_weight": 0.0, "use_gnn": False, "noise": "none", "margin": 1.0, "graph_size": 4, "k": 2
    }  # fmt: skip
    assert not any(k.startswith("gnn.") for k in saved["head"])


@pytest.mark.parametrize("quad_weight", [0.0, 0.5])
def test_noise_none_does_not_reward_a_collapsed_embedding(quad_weight):
    """Without noise or margin, exact ties must not be broken towards the identity: a collapsed embedding (every
    affinity equal) costs a chance-level loss, while distinct embeddings still reach zero; the backward runs."""
    collapsed = torch.ones(32, 8, requires_grad=True)
    loss = gm_loss(collapsed, collapsed * 2, noise="none", quad_weight=quad_weight)
    assert loss.item() >= 20  # a random permutation of 16 costs 30 on average; the identity would cost 0
    loss.backward()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 8, generator=g)
    distinct = (z + 0.01 * torch.randn(32, 8, generator=g)).requires_grad_()
    loss = gm_loss(distinct, z, noise="none", quad_weight=quad_weight)
    assert loss.item() == 0.0
    loss.backward()
