"""PEAC head: the stable-grid overlap matching on hand-made crops, the local and global consistency terms
against float64 loop implementations (value and gradient), no gradient to the teacher, a few CLI steps."""

import math

import numpy as np
import pytest
import torch
from formulas import bn_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from train_utils import make_image_folder

from lvmmed_ext.data.views import cell_centres
from lvmmed_ext.heads import PEACHead, TeacherFeatures, build_head
from lvmmed_ext.heads.peac import consistency, local_consistency, stable_cells


def _pos(box, grid=2, flipped=False):
    return torch.from_numpy(cell_centres(box, (grid, grid), flipped))[None].double()


def _pairs(pos_s, pos_t):
    ids_s, ids_t, _ = stable_cells(pos_s, pos_t)
    return {(i, j) for i in range(ids_s.shape[1]) for j in range(ids_t.shape[1]) if ids_s[0, i] == ids_t[0, j]}


def test_overlap_of_two_shifted_crops_is_the_one_shared_corner_cell():
    # s covers [0, 8)^2, t covers [4, 12)^2, 2x2 cells of 4 px: only s's bottom-right cell and t's top-left cell
    # cover the same anatomy ([4, 8)^2).
    assert _pairs(_pos((0, 0, 8, 8)), _pos((4, 4, 8, 8))) == {(3, 0)}


def test_overlap_of_a_flipped_copy_pairs_mirrored_cells():
    # the same crop, flipped: view cell c of t shows original column 1 - c
    assert _pairs(_pos((0, 0, 8, 8)), _pos((0, 0, 8, 8), flipped=True)) == {(0, 1), (1, 0), (2, 3), (3, 2)}


def test_disjoint_crops_share_nothing_and_the_local_term_is_zero_with_a_gradient():
    pos_s, pos_t = _pos((0, 0, 8, 8)), _pos((20, 20, 8, 8))
    assert _pairs(pos_s, pos_t) == set()
    e = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    out = local_consistency(e, torch.randn(1, 4, 3, dtype=torch.float64), pos_s, pos_t)
    assert out.item() == 0.0
    out.backward()
    assert e.grad is not None


def test_coarser_view_sets_the_stable_pitch():
    # s: 4x4 cells of 2 px over [0, 8)^2; t: 2x2 cells of 4 px over the same area -> pitch 4, each t cell holds
    # the four s cells of its quadrant
    pairs = _pairs(_pos((0, 0, 8, 8), grid=4), _pos((0, 0, 8, 8), grid=2))
    expected = {(r * 4 + c, (r // 2) * 2 + c // 2) for r in range(4) for c in range(4)}
    assert pairs == expected


def local_loop_reference(e_s, e_t, pos_s, pos_t):
    """PEAC's local term image by image, cell by cell in float64, with the stable grid written out."""
    terms = []
    for b in range(e_s.shape[0]):

        def pitch(pos):
            side = int(round(math.sqrt(pos.shape[0])))
            g = pos.reshape(side, side, 2)
            return abs(float(g[1, 0, 0] - g[0, 0, 0])), abs(float(g[0, 1, 1] - g[0, 0, 1]))

        (sy, sx), (ty, tx) = pitch(pos_s[b]), pitch(pos_t[b])
        gy, gx = max(sy, ty, 1e-6), max(sx, tx, 1e-6)
        cells_s, cells_t = {}, {}
        for pos, emb, cells in ((pos_s[b], e_s[b], cells_s), (pos_t[b], e_t[b], cells_t)):
            for i in range(pos.shape[0]):
                key = (math.floor(float(pos[i, 0]) / gy), math.floor(float(pos[i, 1]) / gx))
                cells.setdefault(key, []).append(emb[i])
        for key in cells_s:
            if key in cells_t:
                a = torch.stack(cells_s[key]).mean(0)
                c = torch.stack(cells_t[key]).mean(0)
                terms.append(2 - 2 * (a @ c) / (a.norm() * c.norm()))
    return torch.stack(terms).mean()


def _random_views(rng, batch, grid, size=64):
    pos = []
    for _ in range(batch):
        h, w = rng.integers(16, size + 1, 2)
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        pos.append(cell_centres((int(top), int(left), int(h), int(w)), (grid, grid), bool(rng.random() < 0.5)))
    return torch.from_numpy(np.stack(pos)).double()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), grid_s=st.sampled_from([2, 3, 4]),
       grid_t=st.sampled_from([2, 3]))  # fmt: skip
def test_local_consistency_matches_the_float64_loop_value_and_gradient(seed, batch, grid_s, grid_t):
    rng = np.random.default_rng(seed)
    pos_s, pos_t = _random_views(rng, batch, grid_s), _random_views(rng, batch, grid_t)
    ids_s, ids_t, _ = stable_cells(pos_s, pos_t)
    if not bool((ids_s[:, :, None] == ids_t[:, None, :]).any()):
        return  # no shared cell: covered by the disjoint-crops test
    g = torch.Generator().manual_seed(seed)
    e_s = torch.randn(batch, grid_s**2, 5, dtype=torch.float64, generator=g, requires_grad=True)
    e_t = torch.randn(batch, grid_t**2, 5, dtype=torch.float64, generator=g, requires_grad=True)
    ours = local_consistency(e_s, e_t, pos_s, pos_t)
    ref = local_loop_reference(e_s, e_t, pos_s, pos_t)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(torch.autograd.grad(ours, (e_s, e_t)), torch.autograd.grad(ref, (e_s, e_t))):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_consistency_is_the_squared_distance_of_unit_vectors():
    p, q = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    unit = lambda v: v / v.norm(dim=1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(consistency(p, q), ((unit(p) - unit(q)) ** 2).sum(1))


def _inputs(b=4, d=16, grid=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    h = [torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(4)]
    y = [torch.randn(b, grid * grid, d, generator=g, dtype=torch.float64) for _ in range(4)]
    return h, y, _random_views(rng, b, grid), _random_views(rng, b, grid)


def test_peac_head_is_its_formula_value_and_gradient():
    torch.manual_seed(0)
    head = PEACHead(16, dim=8, hidden_dim=12, global_weight=0.7, local_weight=1.3).double()
    head.eval()  # BatchNorm with running statistics: each MLP is then a fixed function of its input row
    (h_s, h_t, th_s, th_t), (y_s, y_t, ty_s, ty_t), pos_s, pos_t = _inputs()
    h_s.requires_grad_(True)
    y_s.requires_grad_(True)
    loss = head(h_s, h_t, y_s, y_t, pos_s, pos_t, teacher=TeacherFeatures(th_s, th_t, ty_s, ty_t))

    st = head.state_dict()  # the MLPs evaluated from their parameters (tests/formulas.py), not the head's modules

    def rows(name, x):
        return torch.stack([bn_mlp(x[i], st, name) for i in range(x.shape[0])])

    def cells(name, y):
        return torch.stack([rows(name, y[b]) for b in range(y.shape[0])])

    p_s, p_t = rows("predictor", rows("projector", h_s)), rows("predictor", rows("projector", h_t))
    q_s, q_t = rows("teacher_projector", th_s), rows("teacher_projector", th_t)
    glob = sum(2 - 2 * (p_s[i] @ q_t[i]) / (p_s[i].norm() * q_t[i].norm()) for i in range(4)) / 4
    glob = (glob + sum(2 - 2 * (p_t[i] @ q_s[i]) / (p_t[i].norm() * q_s[i].norm()) for i in range(4)) / 4) / 2
    l_s = cells("local_predictor", cells("local_projector", y_s))
    l_t = cells("local_predictor", cells("local_projector", y_t))
    k_s, k_t = cells("teacher_local_projector", ty_s), cells("teacher_local_projector", ty_t)
    loc = (local_loop_reference(l_s, k_t, pos_s, pos_t) + local_loop_reference(l_t, k_s, pos_t, pos_s)) / 2
    ref = 0.7 * glob + 1.3 * loc
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(torch.autograd.grad(loss, (h_s, y_s)), torch.autograd.grad(ref, (h_s, y_s))):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)


def test_no_gradient_reaches_the_teacher_and_ema_moves_it():
    head = PEACHead(16, dim=8, hidden_dim=12)
    (h_s, h_t, th_s, th_t), (y_s, y_t, ty_s, ty_t), pos_s, pos_t = _inputs()
    args = [t.float() for t in (h_s, h_t, y_s, y_t)] + [pos_s.float(), pos_t.float()]
    teacher = TeacherFeatures(*(t.float().requires_grad_(True) for t in (th_s, th_t, ty_s, ty_t)))
    head(*args, teacher=teacher).backward()
    assert all(p.grad is None and not p.requires_grad for p in head.teacher_projector.parameters())
    assert all(p.grad is None for p in head.teacher_local_projector.parameters())
    assert all(t.grad is None for t in teacher)  # the teacher's features are detached inside the head
    before = [p.clone() for p in head.teacher_projector.parameters()]
    with torch.no_grad():
        for p in head.projector.parameters():
            p.add_(1.0)
    head.ema_update(0.9)
    for b, t, s in zip(before, head.teacher_projector.parameters(), head.projector.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_peac_options_are_checked():
    from lvmmed_ext.errors import UsageError

    with pytest.raises(UsageError, match="ema_momentum must be in \\[0, 1\\), got 1.0"):
        build_head("peac", 16, ema_momentum=1.0)
    with pytest.raises(UsageError, match="not both 0"):
        build_head("peac", 16, global_weight=0, local_weight=0)
    with pytest.raises(ValueError, match="square feature grid of at least 2x2"):
        head = PEACHead(8, dim=4, hidden_dim=4)
        h, y, pos = torch.randn(2, 8), torch.randn(2, 1, 8), torch.zeros(2, 1, 2)
        head(h, h, y, y, pos, pos, teacher=TeacherFeatures(h, h, y, y))


def test_peac_on_vit_patch_tokens_trains_the_student_only():
    from lvmmed_ext.models import VisionTransformer
    from lvmmed_ext.train import SSLModel

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    model = SSLModel(vit, PEACHead(16, dim=8, hidden_dim=12), 2, None)
    box = cell_centres((0, 0, 32, 32), (2, 2), False)
    pos = [torch.from_numpy(np.stack([box] * 3)), torch.from_numpy(np.stack([box + 4] * 3))]
    loss = model([torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)], pos)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    before = [p.clone() for p in model.teacher.parameters()]
    m = model.update_teacher(1, 10)
    assert 0.996 < m < 1
    for b, t in zip(before, model.teacher.parameters()):  # no optimizer step: the EMA of equal weights stays put
        torch.testing.assert_close(t, b)


def test_peac_runs_from_the_cli(tmp_path):
    from lvmmed_ext.train.cli import main

    data = make_image_folder(tmp_path / "imgs", n=8)
    out = tmp_path / "r"
    args = ["--data", str(data), "--loss", "peac", "--steps", "2", "--batch-size", "4", "--workers", "0",
            "--head-opt", "dim=8", "--head-opt", "hidden_dim=16", "--max-side", "64", "--no-eval",
            "--arch", "resnet18", "--width", "4", "--image-size", "64", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert set(state["teacher"]) == set(state["backbone"])
    assert (out / "backbone.pth").exists()


def test_a_grid_too_small_for_peac_stops_before_training(tmp_path, capsys):
    from lvmmed_ext.train.cli import main

    data = make_image_folder(tmp_path / "imgs", n=4)
    out = tmp_path / "r"
    args = ["--data", str(data), "--loss", "peac", "--steps", "1", "--batch-size", "2", "--workers", "0",
            "--no-eval", "--arch", "resnet18", "--width", "4", "--image-size", "32", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--loss peac needs a feature grid of at least 2x2 cells; --image-size 32 gives 1x1 with resnet18" in err
    assert not out.exists()
