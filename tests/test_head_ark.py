"""Ark head and the labelled datasets: the loss against a float64 loop implementation (value and gradient), each
dataset's classifier trained only by its own rows, label CSV parsing and its errors, the cycling task stream, the
EMA teacher's schedule, and a few CLI steps on two label CSVs."""

import csv
import os

import numpy as np
import pytest
import torch
from formulas import bn_mlp
from train_utils import make_image_folder

from lvmmed_ext.data import Preprocessing
from lvmmed_ext.data.datasets import CyclingBatchSampler, TaskStream, collate_task_views
from lvmmed_ext.data.labelsets import load_label_set, load_label_sets, parse_label_spec
from lvmmed_ext.data.views import MultiViewConfig, ViewConfig
from lvmmed_ext.errors import UsageError
from lvmmed_ext.heads import ArkHead, LabelBatch, TeacherFeatures, build_head
from lvmmed_ext.heads.ema import check_momentum, cosine_momentum, ema_update_, make_teacher

TASKS = [
    {"name": "tissue", "kind": "single", "classes": ["csf", "gm", "wm"]},
    {"name": "findings", "kind": "multi", "classes": ["a", "b", "c", "d"]},
]


def _head(**kw):
    torch.manual_seed(0)
    return ArkHead(12, tasks=TASKS, dim=6, hidden_dim=10, **kw).double()


def ark_loop_reference(head, h_s, h_t, th_s, th_t, task, target, weight):
    """Ark's loss (our variant) written element by element in float64, its MLPs evaluated from their parameters
    (eval-mode BatchNorm; tests/formulas.py), not from the head's modules."""
    st = head.state_dict()
    rows = lambda x, name: torch.stack([bn_mlp(x[i], st, name) for i in range(x.shape[0])])  # noqa: E731
    z_s, z_t = rows(h_s, "projector"), rows(h_t, "projector")
    q_s, q_t = rows(th_s, "teacher_projector"), rows(th_t, "teacher_projector")
    n = z_s.numel()
    mse = lambda a, b: sum((a.flatten()[k] - b.flatten()[k]) ** 2 for k in range(n)) / n  # noqa: E731
    loss = weight * (mse(z_s, q_t) + mse(z_t, q_s)) / 2
    if task < 0:
        return loss
    weight, bias = st[f"classifiers.{task}.weight"], st[f"classifiers.{task}.bias"]
    kind = head.tasks[task]["kind"]
    per_view = []
    for z in (z_s, z_t):
        total = 0.0
        for i in range(z.shape[0]):
            logits = weight @ z[i] + bias
            if kind == "multi":
                for k in range(logits.shape[0]):
                    p = 1 / (1 + torch.exp(-logits[k]))
                    y = float(target[i, k])
                    total = total - (y * torch.log(p) + (1 - y) * torch.log(1 - p)) / logits.shape[0]
            else:
                total = total - (logits[int(target[i])] - torch.log(torch.exp(logits).sum()))
        per_view.append(total / z.shape[0])
    return loss + (per_view[0] + per_view[1]) / 2


@pytest.mark.parametrize("task", [0, 1, -1])
def test_ark_loss_matches_the_float64_loop_value_and_gradient(task):
    head = _head(consistency_weight=0.6)
    head.eval()
    g = torch.Generator().manual_seed(task + 5)
    h_s, h_t, th_s, th_t = (torch.randn(5, 12, generator=g, dtype=torch.float64) for _ in range(4))
    h_s.requires_grad_(True)
    target = (
        torch.tensor([0, 2, 1, 1, 0]) if task == 0 else (torch.rand(5, 4, generator=g) > 0.5).double()
    )  # fmt: skip
    labels = LabelBatch(task, None if task < 0 else target)
    ours = head(h_s, h_t, teacher=TeacherFeatures(th_s, th_t), labels=labels)
    ref = ark_loop_reference(head, h_s, h_t, th_s, th_t, task, target, 0.6)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours, h_s)[0], torch.autograd.grad(ref, h_s)[0], rtol=1e-8, atol=1e-10
    )


@pytest.mark.parametrize("task", [0, 1])
def test_each_dataset_trains_only_its_own_classifier(task):
    head = _head()
    h = torch.randn(4, 12, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0]) if task == 0 else (torch.rand(4, 4) > 0.5).double()
    head(h, h + 0.1, teacher=TeacherFeatures(h, h), labels=LabelBatch(task, target)).backward()
    for k, lin in enumerate(head.classifiers):
        got = lin.weight.grad is not None and bool(lin.weight.grad.abs().sum() > 0)
        assert got == (k == task)
    assert all(p.grad is None for p in head.teacher_projector.parameters())


def test_ark_options_are_checked():
    with pytest.raises(UsageError, match="pass --labels NAME=CSV"):
        build_head("ark", 8)
    with pytest.raises(UsageError, match="ema_momentum must be in \\[0, 1\\), got -0.1"):
        build_head("ark", 8, tasks=TASKS, ema_momentum=-0.1)
    with pytest.raises(UsageError, match="consistency_weight must be >= 0"):
        build_head("ark", 8, tasks=TASKS, consistency_weight=-1)


# --- the EMA teacher ----------------------------------------------------------------------------------------------


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    values = [cosine_momentum(0.9, s, 20) for s in range(21)]
    assert values == sorted(values)
    for bad in (1.0, 1.5, -0.01):
        with pytest.raises(UsageError, match=f"got {bad}"):
            check_momentum(bad)


def test_ema_update_formula_and_frozen_teacher():
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    old = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0).add_(1.0)
        student[1].running_mean.fill_(0.5)
    ema_update_(teacher, student, 0.75)
    for o, t, s in zip(old, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, 0.75 * o + 0.25 * s)
    torch.testing.assert_close(teacher[1].running_mean, torch.full((4,), 0.5))


# --- label CSVs ---------------------------------------------------------------------------------------------------


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


@pytest.fixture
def images(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", n=8)
    return sorted(str(p) for p in folder.iterdir())


def test_single_label_csv_drops_test_rows(tmp_path, images):
    rows = [["path", "label", "split"]] + [
        [p, "ab"[i % 2], "test" if i == 0 else "train"] for i, p in enumerate(images)
    ]
    ls = load_label_set(f"kind={_write_csv(tmp_path / 'a.csv', rows)}", Preprocessing(max_side=64))
    assert (ls.name, ls.kind, ls.classes, len(ls.images)) == ("kind", "single", ["a", "b"], 7)
    paths = [ls.images.sources[it.source].path for it in ls.images.items]
    assert os.path.abspath(images[0]) not in map(os.path.abspath, paths)
    for path, t in zip(paths, ls.targets):
        assert t == "ab".index("ab"[images.index(path) % 2])


def test_headerless_single_and_multi_label_csvs(tmp_path, images):
    plain = _write_csv(tmp_path / "p.csv", [[os.path.basename(p), "xyz"[i % 3]] for i, p in enumerate(images)])
    os.replace(plain, tmp_path / "imgs" / "p.csv")  # relative paths are relative to the CSV's folder
    ls = load_label_set(f"p={tmp_path / 'imgs' / 'p.csv'}", Preprocessing(max_side=64))
    assert ls.classes == ["x", "y", "z"] and ls.targets.dtype == np.int64
    rows = [["path", "a", "b", "c"]] + [[p, i % 2, (i // 2) % 2, 1] for i, p in enumerate(images)]
    ml = load_label_set(f"m={_write_csv(tmp_path / 'm.csv', rows)}", Preprocessing(max_side=64))
    assert ml.kind == "multi" and ml.classes == ["a", "b", "c"] and ml.targets.shape == (8, 3)
    assert ml.spec() == {"name": "m", "kind": "multi", "classes": ["a", "b", "c"]}


@pytest.mark.parametrize(
    "rows,message",
    [
        ([["path", "a", "b"], ["IMG0", 1, 0], ["IMG1", 1]], "line 3: expected 3 columns \\(path,a,b\\), got 2"),
        ([["path", "a", "b"], ["IMG0", 1, 2]], "line 2: multi-label values must be 0 or 1, got '2'"),
        ([["IMG0", "x"], ["nowhere.png", "y"]], "lists 1 missing file\\(s\\), e.g. .*nowhere.png"),
        ([["IMG0", "x", "later"]], "line 1: split must be train or test, got 'later'"),
        ([["IMG0", "x", "y", "z"]], "line 1: expected path,label\\[,split\\] .* got 4 columns"),
        ([["IMG0", "x"], ["IMG1", "x"]], "has 1 class\\(es\\)"),
    ],
)
def test_label_csv_errors_name_the_argument_and_line(tmp_path, images, rows, message):
    rows = [[images[int(c[3:])] if isinstance(c, str) and c.startswith("IMG") else c for c in r] for r in rows]
    path = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(UsageError, match=f"--labels t={path}.*{message}"):
        load_label_set(f"t={path}", Preprocessing(max_side=64))


def test_label_spec_errors():
    for bad in ("tissue", "=x.csv", "a b=x.csv"):
        with pytest.raises(UsageError, match="--labels"):
            parse_label_spec(bad)
    with pytest.raises(UsageError, match="used more than once"):
        load_label_sets(["a=x.csv", "a=y.csv"], Preprocessing())


# --- the cycling task stream --------------------------------------------------------------------------------------


def test_cycling_sampler_takes_groups_in_turn_and_resumes_exactly():
    full = list(CyclingBatchSampler(2, 2, 1, 0, 6, groups=3))
    assert [b[0][0] for b in full] == [0, 1, 2, 0, 1, 2]
    assert full[0] == [(0, 2), (0, 3)] and full[3] == [(0, 6), (0, 7)]
    assert list(CyclingBatchSampler(2, 2, 1, 4, 6, groups=3)) == full[4:]
    other = list(CyclingBatchSampler(2, 2, 0, 0, 6, groups=3))
    assert all(not set(a) & set(b) for a, b in zip(full, other))  # ranks read disjoint positions


def test_task_stream_targets_follow_the_image_used(tmp_path, images):
    rows = [[p, "ab"[i % 2]] for i, p in enumerate(images)]
    ls = load_label_set(f"t={_write_csv(tmp_path / 't.csv', rows)}", Preprocessing(max_side=64))
    views = MultiViewConfig(ViewConfig(size=32, grid=(1, 1)), 2)
    stream = TaskStream([ls.images, ls.images], [ls.targets, None], [0, -1], views, seed=3)
    batch = collate_task_views([stream[(0, p)] for p in range(4)])
    assert batch["task"] == 0 and batch["target"].shape == (4,)
    for p, t in zip(range(4), batch["target"]):
        index = stream.streams[0].index_at(p)
        assert int(t) == int(ls.targets[index])
    unlabelled = collate_task_views([stream[(1, p)] for p in range(2)])
    assert unlabelled["task"] == -1 and unlabelled["target"] is None


# --- the CLI ------------------------------------------------------------------------------------------------------


def _cli_args(tmp_path, images, out, *extra):
    single = _write_csv(tmp_path / "s.csv", [[p, "ab"[i % 2]] for i, p in enumerate(images)])
    multi = _write_csv(tmp_path / "m.csv", [["path", "u", "v"]] + [[p, i % 2, 1 - i % 2] for i, p in enumerate(images)])
    return ["--labels", f"side={single}", "--labels", f"find={multi}", "--loss", "ark", "--steps", "3",
            "--batch-size", "4", "--workers", "0", "--head-opt", "dim=8", "--head-opt", "hidden_dim=16",
            "--max-side", "64", "--no-eval", "--arch", "resnet18", "--width", "4", "--image-size", "32",
            "--out", str(out), *extra]  # fmt: skip


def test_ark_runs_from_the_cli_on_two_label_csvs(tmp_path, images, capsys):
    from lvmmed_ext.train.cli import main

    out = tmp_path / "r"
    assert main(_cli_args(tmp_path, images, out)) == 0
    text = capsys.readouterr().out
    assert "labels: side (single-label, 2 classes) 8 images" in text
    assert "labels: find (multi-label, 2 classes) 8 images" in text
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert "teacher" in state and state["config"]["labels"][0].startswith("side=")
    assert (out / "backbone.pth").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--head-opt", "ema_momentum=1.0"], "ema_momentum must be in \\[0, 1\\), got 1.0"),
        (["--labels", "x=/no/such.csv"], "--labels x=/no/such.csv: no such file"),
    ],
)
def test_ark_bad_input_exits_2_and_writes_nothing(tmp_path, images, capsys, extra, message):
    from lvmmed_ext.train.cli import main

    out = tmp_path / "r"
    assert main(_cli_args(tmp_path, images, out, *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and __import__("re").search(message, err)
    assert not out.exists()


def test_labels_need_a_supervised_loss_and_ark_needs_labels(tmp_path, images, capsys):
    from lvmmed_ext.train.cli import main

    data = make_image_folder(tmp_path / "d", n=4)
    base = ["--steps", "1", "--batch-size", "2", "--workers", "0", "--no-eval", "--arch", "resnet18", "--width", "4",
            "--image-size", "32", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(["--data", str(data), "--loss", "ark", *base]) == 2
    assert "--loss ark is supervised pretraining: pass --labels NAME=CSV" in capsys.readouterr().err
    csv_path = _write_csv(tmp_path / "s.csv", [[p, "ab"[i % 2]] for i, p in enumerate(images)])
    assert main(["--data", str(data), "--loss", "infonce", "--labels", f"s={csv_path}", *base]) == 2
    assert "--labels applies to supervised losses (ark), not --loss infonce" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_ablate_accepts_peac_and_ark_and_ark_needs_labels(tmp_path, images, capsys):
    from lvmmed_ext.train import ablate

    assert [(v.name, v.loss) for v in ablate.parse_configs("peac,ark,a2=ark:consistency_weight=0.5")] == [
        ("peac", "peac"),
        ("ark", "ark"),
        ("a2", "ark"),
    ]
    assert "ark" not in ablate.DEFAULT_CONFIGS  # supervised: only when asked for
    data = make_image_folder(tmp_path / "d", n=4)
    eval_csv = _write_csv(tmp_path / "e.csv", [[p, "ab"[i % 2]] for i, p in enumerate(images)])
    base = ["--data", str(data), "--eval-data", eval_csv, "--steps", "1", "--out", str(tmp_path / "abl")]
    assert ablate.main([*base, "--configs", "infonce,ark"]) == 2
    assert "configuration 'ark' is supervised: pass --labels NAME=CSV" in capsys.readouterr().err
    assert ablate.main([*base, "--configs", "infonce", "--labels", f"e={eval_csv}"]) == 2
    assert "--labels is read only by supervised configurations (ark)" in capsys.readouterr().err
    assert not (tmp_path / "abl").exists()
