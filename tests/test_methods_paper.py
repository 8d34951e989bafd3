"""The published recipes (``--recipe``) of PEAC, Ark and Models Genesis, checked against float64 oracles written from
the papers' and the authors' descriptions (tests/formulas.py), never against the heads' own modules; the
transformations' rates over many draws; the recipe machinery from the command line."""

from __future__ import annotations

import itertools
import json
import math
from unittest import mock

import numpy as np
import pytest
import torch
from formulas import bce_with_logits, cosine_ramp, cross_entropy, linear, ln_mlp, mean_squared, sigmoid, unit
from train_utils import make_image_folder

from lvmmed_ext.data.datasets import CyclingBatchSampler
from lvmmed_ext.data.labelsets import load_label_set
from lvmmed_ext.data.presets import PREP_KEYS, Preprocessing
from lvmmed_ext.data.views import GRID_SHIFTS, grid_views
from lvmmed_ext.errors import UsageError
from lvmmed_ext.heads import ArkHead, PEACHead, Progress, TeacherFeatures, build_head, head_names, head_recipes
from lvmmed_ext.heads import genesis_transforms as gt
from lvmmed_ext.heads.ark import ramp_weight
from lvmmed_ext.heads.base import LabelBatch
from lvmmed_ext.heads.genesis import GenesisHead
from lvmmed_ext.heads.peac import PatchDistortion, grid_matches
from lvmmed_ext.models import resnet18
from lvmmed_ext.train.cli import main as pretrain_main
from lvmmed_ext.train.cli import parser
from lvmmed_ext.train.config import SETTINGS, TrainConfig, build_config
from lvmmed_ext.train.trainer import SSLModel, encoder_stages

DRAWS = 4000

# --- the recipes ---------------------------------------------------------------------------------------------------


def test_every_recipe_names_real_settings_and_head_options():
    settings = {o.key for o in SETTINGS} | set(PREP_KEYS)
    found = 0
    for loss in head_names():
        for name, recipe in head_recipes(loss).items():
            found += 1
            assert recipe.about and set(recipe.settings) <= settings, (loss, name)
            cfg = TrainConfig.from_recipe(loss, name, data="x")  # every setting fits its annotation and check
            cfg.validate()
            assert cfg.recipe == name and cfg.head_opts == dict(recipe.head_opts)
    assert found >= 4  # peac, ark, genesis "paper" and gm "authors-views"


def test_recipe_layers_under_explicit_options():
    args = parser().parse_args(["--data", "d", "--loss", "ark", "--recipe", "paper", "--lr", "0.01",
                                "--head-opt", "dim=8"])  # fmt: skip
    cfg = build_config(args, None)
    assert cfg.recipe == "paper" and cfg.lr == 0.01 and cfg.optimizer == "nesterov" and cfg.task_cycle == "epoch"
    assert cfg.head_opts["dim"] == 8 and cfg.head_opts["weighting"] == "ramp"
    plain = build_config(parser().parse_args(["--data", "d", "--loss", "ark"]), None)
    assert plain.recipe == "" and plain.optimizer == "adam" and plain.head_opts == {}
    with pytest.raises(UsageError, match="not a recipe of --loss vicreg .*its recipes: none"):
        build_config(parser().parse_args(["--data", "d", "--loss", "vicreg", "--recipe", "paper"]), None)
    with pytest.raises(UsageError, match="its recipes: paper"):
        TrainConfig(loss="genesis", recipe="paperr").validate()


@pytest.mark.parametrize(
    "loss, extra",
    [
        ("peac", ["--image-size", "64", "--head-opt", "dim=16", "--head-opt", "hidden_dim=16",
                  "--head-opt", "local_dim=8", "--head-opt", "local_hidden=8"]),
        ("genesis", ["--image-size", "32"]),
        ("ark", ["--image-size", "32", "--head-opt", "dim=16"]),
        ("gm", ["--image-size", "64", "--local-size", "32", "--head-opt", "dim=16", "--head-opt", "graph_size=4",
                "--k", "2"]),
    ],
)  # fmt: skip
def test_published_recipes_run_from_the_cli(tmp_path, loss, extra):
    data = make_image_folder(tmp_path / "imgs", n=8)
    if loss == "ark":
        names = sorted(p.name for p in data.iterdir() if p.suffix == ".png")
        (data / "a.csv").write_text("path,label\n" + "".join(f"{p},{'xy'[i % 2]}\n" for i, p in enumerate(names)))
        (data / "b.csv").write_text("path,u,v\n" + "".join(f"{p},{i % 2},-1\n" for i, p in enumerate(names)))
        source = ["--labels", f"a={data / 'a.csv'}", "--labels", f"b={data / 'b.csv'}"]
    else:
        source = ["--data", str(data)]
    recipe = "authors-views" if loss == "gm" else "paper"
    out = tmp_path / "run"
    argv = [*source, "--loss", loss, "--recipe", recipe, "--arch", "resnet18", "--width", "4", "--batch-size", "4",
            "--steps", "2", "--workers", "0", "--max-side", "64", "--out", str(out), *extra]  # fmt: skip
    assert pretrain_main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe"] == recipe
    for key, value in head_recipes(loss)[recipe].settings.items():
        if key not in ("image_size", "batch_size", "local_size") and key not in PREP_KEYS:
            assert saved[key] == (list(value) if isinstance(value, tuple) else value), key


# --- Models Genesis: the authors' process ----------------------------------------------------------------------


def _orientation(out: np.ndarray, x: np.ndarray) -> tuple[bool, bool]:
    for fh, fw in itertools.product((False, True), repeat=2):
        y = x[::-1] if fh else x
        y = y[:, ::-1] if fw else y
        if np.array_equal(out, y):
            return fh, fw
    raise AssertionError("not a flip of the input")


def test_paper_flips_follow_the_published_distribution():
    # written from the description: up to 3 tries, each going ahead with p 0.4 (the first failure ends them), each
    # picking nothing / rows / columns uniformly; the result's orientation is the parity of each axis' flips
    expected: dict = {}
    for k, p_k in enumerate([0.6, 0.4 * 0.6, 0.4**2 * 0.6, 0.4**3]):
        for picks in itertools.product(range(3), repeat=k):
            key = (picks.count(1) % 2 == 1, picks.count(2) % 2 == 1)
            expected[key] = expected.get(key, 0.0) + p_k / 3**k
    x = np.arange(30.0).reshape(5, 6)
    rng = np.random.default_rng(0)
    counts: dict = {}
    for _ in range(DRAWS):
        key = _orientation(gt.paper_flips(x, rng), x)
        counts[key] = counts.get(key, 0) + 1
    for key, p in expected.items():
        sigma = math.sqrt(p * (1 - p) / DRAWS)
        assert abs(counts.get(key, 0) / DRAWS - p) < 4 * sigma, (key, counts, expected)
    vol = np.arange(24.0).reshape(2, 3, 4)
    for _ in range(200):  # the depth (first) axis of a sub-volume is never flipped
        out = gt.paper_flips(vol, rng)
        assert np.array_equal(np.sort(out[0].ravel()), np.sort(vol[0].ravel()))


def _reference_boxes(n_rows, n_cols, rng, kind):
    """Painted (in) or kept (out) mask of one draw, written from the description with Python's own arithmetic."""
    mask = np.zeros((n_rows, n_cols), bool)
    count = 0
    if kind == "in":
        while count < 5 and rng.random() < 0.95:
            count += 1
            sides = [int(rng.integers(n // 6, n // 3 + 1)) for n in (n_rows, n_cols)]
            start = [int(rng.integers(3, n - s - 3 + 1)) for n, s in zip((n_rows, n_cols), sides)]
            mask[start[0] : start[0] + sides[0], start[1] : start[1] + sides[1]] = True
        return mask
    while count < 5:
        if count and rng.random() >= 0.95:
            break
        count += 1
        sides = [n - int(rng.integers(3 * n // 7, 4 * n // 7 + 1)) for n in (n_rows, n_cols)]
        start = [int(rng.integers(3, n - s - 3 + 1)) for n, s in zip((n_rows, n_cols), sides)]
        mask[start[0] : start[0] + sides[0], start[1] : start[1] + sides[1]] = True
    return mask


@pytest.mark.parametrize("kind", ["in", "out"])
def test_painting_rates_and_margins(kind):
    shape = (42, 36)
    x = np.full(shape, 2.0)  # outside the noise range: painted pixels are those that differ
    rng, ref_rng = np.random.default_rng(1), np.random.default_rng(2)
    fractions, untouched = [], 0
    for _ in range(DRAWS // 2):
        out = gt.paper_inpaint(x, rng) if kind == "in" else gt.paper_outpaint(x, rng)
        changed = out != 2.0
        mask = changed if kind == "in" else ~changed
        border = np.ones(shape, bool)
        border[3:-3, 3:-3] = False
        assert not mask[border].any()  # 3 pixels from the border
        assert kind == "in" or mask.any()  # out-painting keeps at least one window
        untouched += not changed.any()
        fractions.append(mask.mean())
    reference = [_reference_boxes(*shape, ref_rng, kind).mean() for _ in range(DRAWS // 2)]
    sigma = math.sqrt(np.var(reference) * 2 / len(reference))
    assert abs(np.mean(fractions) - np.mean(reference)) < 4 * sigma
    if kind == "in":  # no box at all when the first coin fails: 5% of the draws
        assert abs(untouched / len(fractions) - 0.05) < 4 * math.sqrt(0.05 * 0.95 / len(fractions))


def test_the_process_applies_each_transformation_at_its_rate_and_in_order():
    calls: list[list[str]] = []

    def recorder(name, fn):
        def wrapped(*args, **kwargs):
            calls[-1].append(name)
            return fn(*args, **kwargs)

        return wrapped

    names = ("local_pixel_shuffle", "paper_nonlinear", "paper_inpaint", "paper_outpaint")
    patches = [mock.patch.object(gt, n, recorder(n, getattr(gt, n))) for n in names]
    for p in patches:
        p.start()
    try:
        rng, x = np.random.default_rng(3), np.random.default_rng(4).random((16, 16))
        cfg = gt.GenesisConfig(process="paper", bezier_samples=50)
        for _ in range(DRAWS):
            calls.append([])
            gt.genesis_pair_paper(x, rng, cfg)
    finally:
        for p in patches:
            p.stop()
    rates = {n: sum(n in c for c in calls) / len(calls) for n in names}
    expected = {"local_pixel_shuffle": 0.5, "paper_nonlinear": 0.9, "paper_inpaint": 0.9 * 0.2,
                "paper_outpaint": 0.9 * 0.8}  # fmt: skip
    for n, p in expected.items():
        assert abs(rates[n] - p) < 4 * math.sqrt(p * (1 - p) / len(calls)), (n, rates[n])
    order = {n: i for i, n in enumerate(names)}
    assert all([order[n] for n in c] == sorted(order[n] for n in c) for c in calls)  # shuffle, mapping, painting


def test_paper_intensity_mapping_is_increasing_or_inverting_half_the_time():
    rng, x = np.random.default_rng(5), np.linspace(0.0, 1.0, 101)
    rising = 0
    for _ in range(1000):
        y = gt.paper_nonlinear(x, rng, samples=400)
        assert y.min() >= -1e-9 and y.max() <= 1 + 1e-9
        if np.all(np.diff(y) >= -1e-12):
            rising += 1
            assert abs(y[0]) < 1e-6 and abs(y[-1] - 1) < 1e-6
        else:
            assert y[0] > y[-1]  # the inverting mapping starts from the curve's (1, 1) end
    assert abs(rising / 1000 - 0.5) < 4 * math.sqrt(0.25 / 1000)


def test_genesis_sigmoid_output_restores_intensities_in_0_1():
    torch.manual_seed(0)
    enc = resnet18(width=4).double()
    stages = {**encoder_stages(enc, 1), "norm": (0.4, 0.25)}
    head = GenesisHead(enc.out_dim, stages=stages, output="sigmoid", process="paper").double()
    x_in, target = torch.randn(2, 1, 32, 32, dtype=torch.float64), torch.randn(2, 1, 32, 32, dtype=torch.float64)
    raw = head.decoder.decode(enc.stages(x_in), x_in.shape[2:])  # the network, then the published output by hand
    ref = mean_squared(sigmoid(raw), target * 0.25 + 0.4)
    ours = head(enc, x_in, target)  # the loss is taken in float32, as in training
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-8)
    assert head.pair_config.process == "paper"


# --- Ark -----------------------------------------------------------------------------------------------------------

TASKS = [{"name": "one", "kind": "single", "classes": ["a", "b", "c"]},
         {"name": "many", "kind": "multi", "classes": ["u", "v", "w", "x"]}]  # fmt: skip


@pytest.mark.parametrize("task", [0, 1, -1])
def test_ark_paper_loss_is_the_published_formula(task):
    torch.manual_seed(0)
    opts = dict(head_recipes("ark")["paper"].head_opts, dim=5)
    head = ArkHead(6, tasks=TASKS, **opts).double()
    head.set_progress(Progress(step=9, total=20, epoch=2.7, epochs=6.0))
    g = torch.Generator().manual_seed(task + 7)
    h_s, h_t, th_s, th_t = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(4))
    h_s.requires_grad_(True)
    target = torch.tensor([0, 2, 1, 1]) if task == 0 else torch.tensor(
        [[1.0, 0.0, float("nan"), 0.7], [0.0, 0.0, 1.0, 1.0], [float("nan")] * 4, [1.0, 0.0, 0.0, 0.3]])  # fmt: skip
    ours = head(h_s, h_t, teacher=TeacherFeatures(th_s, th_t), labels=LabelBatch(task, None if task < 0 else target))
    st = head.state_dict()
    z_s, q_t = linear(h_s, st, "projector"), linear(th_t, st, "teacher_projector")  # linear projector, one way
    c = cosine_ramp(2, 6, 0.5)  # held for the whole third dataset pass
    ref = c * mean_squared(z_s, q_t)
    if task >= 0:
        terms = []
        for i in range(4):
            logits = linear(z_s[i], st, f"classifiers.{task}")  # the student view only
            ys = [float(k == target[i]) for k in range(3)] if task == 0 else target[i].tolist()
            terms += [bce_with_logits(logits[k], y) for k, y in enumerate(ys) if not math.isnan(y)]
        ref = ref + (1 - c) * sum(terms) / len(terms)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(ours, h_s)[0], torch.autograd.grad(ref, h_s)[0], rtol=1e-8,
                               atol=1e-10)  # fmt: skip


def test_ark_ramp_weight_is_the_half_cosine():
    for total in (1, 4, 7):
        for k in range(total + 1):
            assert ramp_weight(k + 0.5 * (k < total), total) == pytest.approx(cosine_ramp(k, total, 0.5), abs=1e-15)


def test_ark_teacher_moves_once_per_dataset_pass_with_the_cosine_momentum():
    torch.manual_seed(0)
    backbone = resnet18(width=4)
    head = ArkHead(backbone.out_dim, tasks=TASKS, dim=4, ema_every="epoch", ema_momentum=0.9)
    model = SSLModel(backbone, head, n_global=2, amp_dtype=None)
    moved = []
    for step in range(1, 13):  # 3 micro-steps per pass, 4 passes
        before, after = (step - 1) / 3, step / 3
        m = model.update_teacher(step, 12, before, after, 4.0)
        moved.append(m)
    cosine = lambda k: 1 - 0.1 * (math.cos(math.pi * k / 4) + 1) / 2  # noqa: E731  (0.9 at k = 0, to 1)
    assert [i + 1 for i, m in enumerate(moved) if m is not None] == [3, 6, 9, 12]  # after each pass
    assert [m for m in moved if m is not None] == pytest.approx([cosine(k) for k in range(4)])
    assert moved[2] == pytest.approx(0.9)


def test_epoch_cycle_reads_a_whole_pass_of_each_dataset_in_turn():
    sampler = CyclingBatchSampler(2, 1, 0, 0, 16, groups=2, turns=[3, 5])  # 5 and 9 images, batches of 2
    batches = list(sampler)
    assert [b[0][0] for b in batches] == [0] * 3 + [1] * 5 + [0] * 3 + [1] * 5
    assert [b[0][1] for b in batches[:8]] == [0, 2, 4, 0, 2, 4, 6, 8]  # each group's own stream positions
    assert [b[0][1] for b in batches[8:11]] == [6, 8, 10]  # the next pass continues the stream
    assert [round(sampler.locate(m)[2], 4) for m in (0, 3, 8, 11)] == [0.0, 1.0, 2.0, 3.0]
    resumed = list(CyclingBatchSampler(2, 1, 0, 5, 16, groups=2, turns=[3, 5]))
    assert resumed == batches[5:]


@pytest.mark.parametrize(
    "policy, expected",
    [("ignore", ["nan", "nan", 1.0]), ("ones", [1.0, 0.0, 1.0]), ("zeros", [0.0, 0.0, 1.0])],
)
def test_uncertain_label_policies(tmp_path, policy, expected):
    data = make_image_folder(tmp_path / "imgs", n=3)
    names = sorted(p.name for p in data.iterdir() if p.suffix == ".png")
    csv = data / "m.csv"
    csv.write_text(f"path,u,v\n{names[0]},1,-1\n{names[1]},0,\n{names[2]},1,1\n")
    got = load_label_set(f"m={csv}", Preprocessing(max_side=64), uncertain=policy).targets[:, 1].tolist()
    assert ["nan" if math.isnan(v) else v for v in got] == expected  # -1, blank, 1
    with pytest.raises(UsageError, match=r"line 2: multi-label values must be 0 or 1, got '-1' .*--uncertain"):
        load_label_set(f"m={csv}", Preprocessing(max_side=64))


def test_label_smoothing_policies_draw_once_per_cell(tmp_path):
    data = make_image_folder(tmp_path / "imgs", n=30)
    names = sorted(p.name for p in data.iterdir() if p.suffix == ".png")
    csv = data / "m.csv"
    csv.write_text("path,u,v\n" + "".join(f"{n},-1,-1\n" for n in names))
    ones = load_label_set(f"m={csv}", Preprocessing(max_side=64), uncertain="lsr-ones").targets
    zeros = load_label_set(f"m={csv}", Preprocessing(max_side=64), uncertain="lsr-zeros").targets
    assert ones.min() >= 0.55 and ones.max() <= 0.85 and len(np.unique(ones)) == ones.size
    assert zeros.min() >= 0.0 and zeros.max() <= 0.3
    again = load_label_set(f"m={csv}", Preprocessing(max_side=64), uncertain="lsr-ones").targets
    np.testing.assert_array_equal(ones, again)


# --- PEAC ----------------------------------------------------------------------------------------------------------


def test_grid_views_cells_with_equal_centres_show_the_same_pixels():
    img = np.arange(80 * 96, dtype=np.float64).reshape(80, 96) / (80 * 96)
    rng = np.random.default_rng(0)
    size, cell = 32, 8
    counts = set()
    for _ in range(50):
        (v1, p1), (v2, p2) = grid_views(img.astype(np.float32), rng, size, cell)
        n = size // cell
        same = 0
        for i, j in itertools.product(range(n * n), repeat=2):
            if np.allclose(p1[i], p2[j], atol=1e-3):
                a = v1[(i // n) * cell : (i // n + 1) * cell, (i % n) * cell : (i % n + 1) * cell]
                b = v2[(j // n) * cell : (j // n + 1) * cell, (j % n) * cell : (j % n + 1) * cell]
                np.testing.assert_array_equal(a, b)
                same += 1
        pitch = np.array([p1[n, 0] - p1[0, 0], p1[1, 1] - p1[0, 1]])  # per axis, in original pixels
        shift = np.abs((p1[0] - p2[0]) / pitch)  # in cells
        assert np.allclose(shift, np.round(shift), atol=1e-3) and shift.max() < GRID_SHIFTS
        assert same == int((n - round(shift[0])) * (n - round(shift[1]))) if shift.max() < n else same == 0
        counts.add(same)
    assert len(counts) > 3  # the views really move


def test_grid_matches_pair_hand_made_cells():
    def grid(top, left, n=3, pitch=10.0):
        ys, xs = np.meshgrid(top + (np.arange(n) + 0.5) * pitch, left + (np.arange(n) + 0.5) * pitch, indexing="ij")
        return torch.tensor(np.stack([ys.ravel(), xs.ravel()], 1), dtype=torch.float64)[None]

    m = grid_matches(grid(0, 0), grid(10, 20))[0]  # view t one cell down, two cells right
    pairs = {(int(i), int(j)) for i, j in m.nonzero()}
    assert pairs == {(3 * (r + 1) + c + 2, 3 * r + c) for r in range(2) for c in range(1)}
    assert not grid_matches(grid(0, 0), grid(40, 0)).any()


def test_patch_distortion_shuffles_half_the_views_and_reports_the_order():
    dist = PatchDistortion(0.5)
    rng = np.random.default_rng(0)
    view = np.random.default_rng(1).random((40, 40)).astype(np.float32)
    shuffled = changed = 0
    for _ in range(400):
        out, extra = dist.distort(view, rng, (4, 4))
        patch = lambda img, k: img[(k // 4) * 10 : (k // 4 + 1) * 10, (k % 4) * 10 : (k % 4 + 1) * 10]  # noqa: E731
        if extra["shuffled"]:
            shuffled += 1
            assert all(np.array_equal(patch(out, i), patch(view, int(extra["perm"][i]))) for i in range(16))
        else:  # the appearance distortion, the order kept
            assert extra["perm"].tolist() == list(range(16))
            changed += not np.array_equal(out, view)
    assert abs(shuffled / 400 - 0.5) < 4 * math.sqrt(0.25 / 400)
    assert changed >= 0.95 * (400 - shuffled)


def _peac_paper_reference(head, h, y, pos, extra, weights):
    """PEAC's published loss (code-level description in docs/METHODS.md) in float64 loops from the parameters."""
    st = head.state_dict()
    (h_s, h_t, th_s, th_t), (y_s, y_t, ty_s, ty_t), (pos_s, pos_t) = h, y, pos
    b, p, _ = y_s.shape
    proj = lambda x, name: torch.stack([ln_mlp(x[i], st, name) for i in range(x.shape[0])])  # noqa: E731
    p_s, p_t = proj(h_s, "projector"), proj(h_t, "projector")
    q_s, q_t = proj(th_s, "teacher_projector"), proj(th_t, "teacher_projector")
    units = lambda z: torch.stack([unit(r) for r in z])  # noqa: E731
    glob = mean_squared(units(p_s), units(q_t)) + mean_squared(units(p_t), units(q_s))
    cells = lambda z, name: torch.stack([proj(z[i], name) for i in range(z.shape[0])])  # noqa: E731
    e_s, e_t = cells(y_s, "local_projector"), cells(y_t, "local_projector")
    k_s, k_t = cells(ty_s, "teacher_local_projector"), cells(ty_t, "teacher_local_projector")
    forward_terms, backward_terms = [], []
    for i in range(b):
        if extra["shuffled"][i]:
            continue
        for a, c in itertools.product(range(p), repeat=2):
            if torch.allclose(pos_s[i, a], pos_t[i, c]):
                forward_terms.append(((e_s[i, a] - k_t[i, c]) ** 2).mean())
                backward_terms.append(((e_t[i, c] - k_s[i, a]) ** 2).mean())
    local = (sum(forward_terms) / len(forward_terms) + sum(backward_terms) / len(backward_terms)) / 2
    order = sum(cross_entropy(linear(y_s[i, a], st, "order_head"), int(extra["perm"][i, a]))
                for i in range(b) for a in range(p)) / (b * p)  # fmt: skip
    w, bias, cell, side = st["restore_head.weight"][:, :, 0, 0], st["restore_head.bias"], head.cell, int(p**0.5)
    restored = torch.zeros_like(extra["clean"])
    for i, a in itertools.product(range(b), range(p)):
        vec = w @ y_s[i, a] + bias  # [C * cell * cell]: channel c, row dy, column dx of the cell's patch
        r, q = divmod(a, side)
        restored[i, :, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = vec.reshape(-1, cell, cell)
    restore = mean_squared(restored, extra["clean"])
    gw, lw, ow, rw = weights
    return ow * order + rw * restore + gw * glob + lw * local


def test_peac_paper_loss_is_the_published_formula():
    torch.manual_seed(0)
    geometry = {"grid": (2, 2), "size": 8, "in_chans": 1}
    head = PEACHead(6, dim=5, hidden_dim=7, local_dim=3, local_hidden=4, predictor=False, projector="ln",
                    global_loss="mse", local_loss="mse", global_weight=3.0, local_weight=1.5, views="grid",
                    popar=True, order_weight=0.7, restore_weight=1.1, geometry=geometry).double()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    h = [torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    y = [torch.randn(3, 4, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    base = torch.tensor([[2.0, 2.0], [2.0, 6.0], [6.0, 2.0], [6.0, 6.0]], dtype=torch.float64)
    pos_s = torch.stack([base, base, base])
    pos_t = torch.stack([base + torch.tensor([0.0, 4.0]), base, base + torch.tensor([4.0, 4.0])])
    extra = {"perm": torch.tensor([[0, 1, 2, 3], [2, 0, 3, 1], [0, 1, 2, 3]]),
             "shuffled": torch.tensor([False, True, False]),
             "clean": torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)}  # fmt: skip
    h[0].requires_grad_(True)
    y[0].requires_grad_(True)
    ours = head(h[0], h[1], y[0], y[1], pos_s, pos_t, teacher=TeacherFeatures(h[2], h[3], y[2], y[3]), extra=extra)
    ref = _peac_paper_reference(head, h, y, (pos_s, pos_t), extra, (3.0, 1.5, 0.7, 1.1))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(torch.autograd.grad(ours, (h[0], y[0])), torch.autograd.grad(ref, (h[0], y[0]))):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)


def test_peac_recipe_builds_the_published_head():
    opts = dict(head_recipes("peac")["paper"].head_opts)
    head = build_head("peac", 32, geometry={"grid": (14, 14), "size": 448, "in_chans": 1},
                      **{**opts, "dim": 16, "hidden_dim": 16})  # fmt: skip
    assert head.view_pairing == "grid" and head.needs_extra and head.cell == 32 and head.ema_momentum == 0.999
    assert isinstance(head.predictor, torch.nn.Identity) and head.order_head.out_features == 196
    with pytest.raises(UsageError, match="popar=True needs views='grid'"):
        PEACHead(8, popar=True)


# --- lvmmed ablate with the recipes --------------------------------------------------------------------------------


def test_ablate_runs_both_recipes_with_the_shared_budget(tmp_path):
    from lvmmed_ext.cli import main as lvmmed
    from lvmmed_ext.train.ablate import parse_configs, recipe_parts

    assert [(v.name, v.recipe) for v in parse_configs("peac,peac-paper,g=genesis:recipe=paper,ark-paper")] == [
        ("peac", ""), ("peac-paper", "paper"), ("g", "paper"), ("ark-paper", "paper")]  # fmt: skip
    with pytest.raises(UsageError, match="not a recipe of --loss vicreg"):
        parse_configs("vicreg:recipe=paper")
    opts, settings = recipe_parts("ark", "paper")
    assert opts["weighting"] == "ramp" and settings["task_cycle"] == "epoch" and "lr" not in settings
    data = make_image_folder(tmp_path / "data", n=8)
    for i, c in enumerate(("blobs", "stripes")):
        make_image_folder(tmp_path / "labelled" / c, n=6, seed=10 + i)
    out = tmp_path / "abl"
    argv = ["ablate", "--data", str(data), "--eval-data", str(tmp_path / "labelled"), "--out", str(out), "--arch",
            "resnet18", "--width", "4", "--image-size", "64", "--batch-size", "4", "--steps", "1", "--workers", "0",
            "--max-side", "64", "--eval-l2", "0.1", "--eval-k", "3", "--configs",
            "genesis,genesis-paper,p=peac-paper:dim=8:hidden_dim=8:local_dim=4:local_hidden=4"]  # fmt: skip
    assert lvmmed(argv) == 0
    for name, recipe in (("genesis", ""), ("genesis-paper", "paper"), ("p", "paper")):
        saved = json.loads((out / "runs" / name / "seed0" / "config.json").read_text())
        assert saved["recipe"] == recipe and saved["optimizer"] == "adam" and saved["batch_size"] == 4
    assert json.loads((out / "runs" / "p" / "seed0" / "config.json").read_text())["head_opts"]["popar"] is True
