"""`lvmmed ablate`: configuration parsing, bad input, a tiny end-to-end ablation (2 configurations x 2 steps)
whose Markdown table is byte-identical when rerun with the same seed, and reused when its folder is given again,
and the paired comparisons (bootstrap on hand-made per-image correctness; rendering the saved study JSON)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from train_utils import make_image_folder

from lvmmed_ext.cli import main as lvmmed
from lvmmed_ext.errors import UsageError
from lvmmed_ext.train.ablate import (
    VARIANTS,
    aggregate,
    decode_ints,
    encode_ints,
    folder_name,
    logged_train_seconds,
    markdown_table,
    mean_std,
    paired_bootstrap,
    paired_differences,
    parse_configs,
    parse_seeds,
    pick_reference,
    verdict,
)

STUDY = Path(__file__).resolve().parents[1] / "docs" / "study"

TINY = ["--arch", "resnet18", "--width", "4", "--image-size", "32", "--batch-size", "8", "--steps", "2",
        "--workers", "0", "--max-side", "64", "--graph-size", "4", "--k", "2", "--eval-l2", "0.1", "--eval-k", "3",
        "--configs", "gm,vicreg:hidden_dim=16:out_dim=16"]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    data = make_image_folder(root / "data", n=8)
    for i, c in enumerate(("blobs", "stripes")):
        make_image_folder(root / "labelled" / c, n=6, seed=10 + i)
    return root, data, root / "labelled"


@pytest.fixture(scope="module")
def first_run(folders):
    root, data, labelled = folders
    out = root / "out1"
    assert lvmmed(["ablate", "--data", str(data), "--eval-data", str(labelled), "--out", str(out), *TINY]) == 0
    return out


def test_outputs_and_table(first_run, capsys):
    out = first_run
    assert {"ablation.md", "ablation.png", "ablation.json", "timings.json", "runs", "eval"} <= set(os.listdir(out))
    table = (out / "ablation.md").read_text()
    lines = [line for line in table.split("**Paired")[0].splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| configuration | loss | head options |") and "s/step" not in table
    assert "| labelled: linear probe | labelled: kNN |" in lines[0] and "match acc." in lines[0]
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| random init",
        "| gm",
        "| vicreg:hidden_dim=16:out_dim=16",
    ]
    assert "graph_size=4, k=2" in lines[2] and "hidden_dim=16, out_dim=16" in lines[3]
    assert "graph_size" not in lines[3]  # the gm flags only reach the gm configurations
    assert "±" not in table  # one seed: plain values
    assert "2 steps" in table and "2 classes: blobs, stripes" in table and "seed 0;" in table
    results = json.loads((out / "ablation.json").read_text())
    assert [r["configuration"] for r in results["rows"]] == ["random init", "gm", "vicreg:hidden_dim=16:out_dim=16"]
    for r in results["rows"]:
        assert list(r["per_seed"]) == ["0"] and all(v == 0 for v in r["std"].values())
        for key in ("labelled/knn_acc", "labelled/linear_probe_acc", "labelled/linear_probe_bal_acc"):
            assert 0 <= r["mean"][key] <= 1
    gm = results["rows"][1]["mean"]
    assert 0 <= gm["match_acc"] <= 1 and 0 <= gm["backbone_match_acc"] <= 1 and gm["final_loss"] >= 0
    timings = json.loads((out / "timings.json").read_text())
    assert timings["gm"]["seed0"]["pretrain"] == "trained" and timings["gm"]["seed0"]["steps"] == 2
    assert 0 < timings["gm"]["seed0"]["pretrain_s"] <= timings["gm"]["seed0"]["wall_s"]
    assert timings["total_s"] > 0
    # per-image predictions for the paired comparisons: the same test images for every row
    assert set(results["test_labels"]) == {"0"} and set(results["test_labels"]["0"]) == {"labelled"}
    labels = decode_ints(results["test_labels"]["0"]["labelled"])
    for r in results["rows"]:
        for key in ("labelled/linear_probe_bal_acc", "labelled/knn_bal_acc"):
            pred = decode_ints(r["per_image"]["0"][key])
            assert len(pred) == len(labels) and r["per_seed"]["0"][key] == pytest.approx(
                np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)])
            )
    paired = results["paired"]
    assert paired["reference"] == "gm" and [r["configuration"] for r in paired["rows"]] == [
        "random init",
        "vicreg:hidden_dim=16:out_dim=16",
    ]
    cell = paired["rows"][1]["differences"]["labelled/linear_probe_bal_acc"]
    assert cell["interval"][0] <= cell["mean"] <= cell["interval"][1] and paired["no_interval"] == []
    assert "**Paired differences against `gm`**" in table and "needs per-image data" not in table
    for name in ("gm", "vicreg_hidden_dim_16_out_dim_16"):
        assert (out / "runs" / name / "seed0" / "backbone.pth").exists()
        assert (out / "eval" / "labelled" / "seed0" / f"results_{name}.json").exists()


def test_same_seed_gives_a_byte_identical_table(folders, first_run, capsys):
    root, data, labelled = folders
    out = root / "out2"
    assert lvmmed(["ablate", "--data", str(data), "--eval-data", str(labelled), "--out", str(out), *TINY]) == 0
    assert (out / "ablation.md").read_bytes() == (first_run / "ablation.md").read_bytes()
    assert (out / "ablation.json").read_bytes() == (first_run / "ablation.json").read_bytes()


def test_rerun_in_the_same_folder_reuses_finished_runs(folders, first_run, capsys):
    root, data, labelled = folders
    before = (first_run / "ablation.md").read_bytes()
    first = json.loads((first_run / "timings.json").read_text())["gm"]["seed0"]
    assert first["pretrain"] == "trained"
    assert lvmmed(["ablate", "--data", str(data), "--eval-data", str(labelled), "--out", str(first_run), *TINY]) == 0
    timings = json.loads((first_run / "timings.json").read_text())
    # a reused run records the training time of the command that trained it (from its log.csv), not the reuse
    reused = timings["gm"]["seed0"]
    assert reused["pretrain"] == "reused" and reused["pretrain_s"] == first["pretrain_s"] > 0
    assert reused["loop_s_per_step"] == first["loop_s_per_step"] and reused["wall_s"] < first["wall_s"]
    assert (first_run / "ablation.md").read_bytes() == before
    capsys.readouterr()
    changed = [*TINY, "--lr", "0.01"]
    rc = lvmmed(["ablate", "--data", str(data), "--eval-data", str(labelled), "--out", str(first_run), *changed])
    err = capsys.readouterr().err
    assert rc == 2 and "was made with lr = 0.002" in err and "pass another --out" in err


def test_parse_configs():
    assert [v.name for v in parse_configs(",".join(VARIANTS))] == list(VARIANTS)
    v = parse_configs("gm-no-noise:margin=0.5")[0]
    assert (v.loss, v.options, v.about) == ("gm", {"noise": "none", "margin": 0.5}, "gm-no-noise with margin=0.5")
    a, b = parse_configs(" my=gm:alpha=0.5:graph_size=8 , infonce:temperature=0.1")
    assert (a.name, a.loss, a.options) == ("my", "gm", {"alpha": 0.5, "graph_size": 8})
    assert (b.name, b.options) == ("infonce:temperature=0.1", {"temperature": 0.1})
    assert folder_name(b.name) == "infonce_temperature_0.1"
    assert VARIANTS["gm-no-edge"].options == {"quad_weight": 0.0} and VARIANTS["gm-no-local"].options == {"alpha": 1.0}
    assert VARIANTS["gm-no-gnn"].options == {"use_gnn": False} and VARIANTS["gm-no-noise"].options["noise"] == "none"
    for text, match in [
        ("gm,nope", "unknown configuration 'nope'"),
        ("gm,gm", "names must be unique, gm repeats"),
        ("gm:alpha", "expected KEY=VALUE after ':'"),
        (" , ", "lists no configuration"),
    ]:
        with pytest.raises(UsageError, match=match):
            parse_configs(text)


def test_seeds_give_the_numbers_of_single_seed_runs(folders, first_run, capsys):
    """--seeds 0,1 trains each configuration per seed; seed 0's numbers equal the single-seed run's, seed 1's those
    of a run with --seed 1; the table shows mean ± std over both."""
    root, data, labelled = folders
    common = ["--data", str(data), "--eval-data", str(labelled), *TINY]
    assert lvmmed(["ablate", *common, "--seeds", "0,1", "--out", str(root / "seeds")]) == 0
    assert lvmmed(["ablate", *common, "--seed", "1", "--out", str(root / "seed1")]) == 0
    both = json.loads((root / "seeds" / "ablation.json").read_text())
    one = {0: json.loads((first_run / "ablation.json").read_text()),
           1: json.loads((root / "seed1" / "ablation.json").read_text())}  # fmt: skip
    assert both["settings"]["seeds"] == [0, 1]
    for i, row in enumerate(both["rows"]):
        assert list(row["per_seed"]) == ["0", "1"]
        for seed in (0, 1):
            single = one[seed]["rows"][i]["per_seed"][str(seed)]
            assert row["per_seed"][str(seed)] == single, (row["configuration"], seed)
        for key, values in ((k, [row["per_seed"][s][k] for s in ("0", "1")]) for k in row["mean"]):
            assert row["mean"][key] == pytest.approx(sum(values) / 2)
            assert row["std"][key] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    table = (root / "seeds" / "ablation.md").read_text()
    assert "seeds 0, 1 (mean ± std)" in table
    assert all(" ± " in line for line in table.splitlines() if line.startswith("| gm |"))


def test_mean_std_and_seed_parsing():
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)  # sample standard deviation
    mean, std = aggregate({0: {"a": 1.0, "b": 2.0}, 1: {"a": 3.0}})
    assert mean == {"a": 2.0, "b": 2.0} and std["a"] == pytest.approx(2**0.5) and std["b"] == 0.0
    assert parse_seeds(None, 7) == [7] and parse_seeds("0, 1,2", 0) == [0, 1, 2]
    for text, match in (("0,x", "comma-separated integers"), ("1,1", "must not repeat"), (",", "lists no seed")):
        with pytest.raises(UsageError, match=match):
            parse_seeds(text, 0)


def test_markdown_table_format():
    mean = {"final_loss": 12.5, "match_acc": 0.5, "t/linear_probe_bal_acc": 0.81234, "t/knn_bal_acc": 0.7}
    std = {"final_loss": 1.0, "match_acc": 0.1, "t/linear_probe_bal_acc": 0.01, "t/knn_bal_acc": 0.02}
    row = dict(configuration="gm", loss="gm", options="-", about="full", per_seed={"0": {}, "1": {}}, mean=mean,
               std=std)  # fmt: skip
    settings = dict(data="demo", arch="resnet18", width=None, image_size=96, crop_scale=[0.08, 1.0], batch_size=32,
                    accum=1, steps=60, lr=2e-3, halvings=4, seeds=[0, 1], budget="short", eval_l2="auto", eval_k=20,
                    tasks=[dict(name="t", about="a task", classes=["a", "b"], n_train=10, n_test=5)])  # fmt: skip
    text = markdown_table([row], settings)
    assert "| gm | gm | - | full | 12.5000 ± 1.0000 | 0.500 ± 0.100 | - | 0.812 ± 0.010 | 0.700 ± 0.020 |" in text
    assert "- `t`: a task (2 classes: a, b; 10 train / 5 test images)" in text and "(budget short)" in text
    assert text.endswith("1 / graph size.\n")


def _fails(capsys, argv, match, root):
    before = sorted(p for p in root.rglob("*"))
    rc = lvmmed(["ablate", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and match in err, err
    assert sorted(p for p in root.rglob("*")) == before, "a refused command wrote files"


def test_bad_input_is_refused_before_anything_is_written(folders, tmp_path, capsys):
    root, data, labelled = folders
    d, e, o = ["--data", str(data)], ["--eval-data", str(labelled)], ["--out", str(tmp_path / "o")]
    _fails(capsys, [*d, "--steps", "2", *o], "missing --eval-data", tmp_path)
    _fails(capsys, [*d, *e, *o], "missing --steps", tmp_path)
    _fails(capsys, ["--demo", *d], "--demo uses the offline demo images", tmp_path)
    _fails(capsys, ["--demo", *e], "drop --eval-data", tmp_path)
    _fails(
        capsys,
        [*d, *e, *o, *TINY, "--configs", "gm:lamb=3"],
        "configuration 'gm:lamb=3': bad option for --loss gm",
        tmp_path,
    )
    _fails(capsys, [*d, *e, *o, *TINY, "--configs", "gm:graph_size=16"], "graph_size 16 exceeds --batch-size 8",
           tmp_path)  # fmt: skip
    _fails(capsys, [*d, *e, *o, *TINY, "--eval-l2", "x"], "--eval-l2 must be a number", tmp_path)
    _fails(capsys, [*d, *o, *TINY, "--eval-data", str(tmp_path / "nope")], "does not exist", tmp_path)
    _fails(capsys, [*d, *e, *o, *TINY, "--no-local-term", "--alpha", "0.5"], "--no-local-term sets alpha", tmp_path)
    _fails(capsys, [*d, *e, *o, *TINY, "--budget", "medium"], "--budget presets the demo's", tmp_path)
    _fails(capsys, [*d, *e, *o, *TINY, "--seeds", "0,0"], "--seeds must not repeat", tmp_path)
    _fails(capsys, [*d, *e, *o, *TINY, "--configs", "gm:gnn='x'"], "gnn must be one of", tmp_path)


def test_help_lists_configurations_and_switches(capsys):
    with pytest.raises(SystemExit) as e:
        lvmmed(["ablate", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    squeezed = "".join(text.split())  # argparse wraps long help at hyphens
    assert all(name in squeezed for name in VARIANTS) and "--no-edge-term" in text and "--eval-data" in text
    assert "\n  --loss " not in text and "\n  --resume " not in text  # the loss comes from each configuration


@pytest.mark.slow
def test_demo_path_on_one_step(tmp_path, capsys):
    """The --demo wiring (demo images, half-width ResNet-18, the MNI152 region and tissue tasks), cut to 1 step."""
    from lvmmed_ext.data.demo import mni152_paths

    if mni152_paths() is None:
        pytest.skip("nilearn is not installed")
    out = tmp_path / "demo"
    argv = ["ablate", "--demo", "--steps", "1", "--batch-size", "16", "--configs", "gm-no-local", "--eval-l2", "0.1",
            "--out", str(out)]  # fmt: skip
    assert lvmmed(argv) == 0
    table = (out / "ablation.md").read_text()
    assert "demo, resnet18 (width 32), 96 px views" in table and "3 classes: csf, grey_matter, white_matter" in table
    assert "4 classes: anterior, mid_anterior, mid_posterior, posterior" in table
    assert "| gm-no-local | gm | alpha=1.0 |" in table  # the variant's options (gm runs the demo with its defaults)
    assert "| seg Dice |" in table and "- `segment`: U-Net fine-tuning" in table  # the demo segmentation column


def _correct(labels, right):
    """Correctness per image: ``right[c]`` images of class c right (the first ones), the rest wrong."""
    out = np.zeros(len(labels), bool)
    for c, n in enumerate(right):
        out[np.flatnonzero(labels == c)[:n]] = True
    return out


def test_paired_bootstrap_known_positive_and_null():
    labels = np.repeat([0, 1], 100)
    a = _correct(labels, (50, 50))  # 0.5 balanced accuracy
    b = _correct(labels, (80, 80))  # 0.8, right on every image a gets right
    lo, hi = paired_bootstrap([(labels, a, b)] * 3)
    assert 0.2 < lo < 0.3 < hi < 0.4 and verdict([0.3] * 3, (lo, hi)) == "ahead"
    assert paired_bootstrap([(labels, a, b)] * 3) == (lo, hi)  # a fixed generator: reruns give the same table
    lo, hi = paired_bootstrap([(labels, b, a)] * 3)
    assert hi < 0 and verdict([-0.3] * 3, (lo, hi)) == "behind"
    # null: the same accuracy on other images (right on the first or the last half of each class)
    c = np.zeros(len(labels), bool)
    for k in (0, 1):
        c[np.flatnonzero(labels == k)[50:]] = True
    lo, hi = paired_bootstrap([(labels, a, c)] * 3)
    assert -0.2 < lo < 0 < hi < 0.2 and verdict([0.0] * 3, (lo, hi)) == "not separated"
    assert paired_bootstrap([(labels, a, a)] * 2) == (0.0, 0.0)
    # the seeds are resampled too: +0.3 on two seeds and -0.3 on the third do not give an interval above 0
    lo, hi = paired_bootstrap([(labels, a, b), (labels, a, b), (labels, b, a)])
    assert lo < 0 < hi
    # class-balanced: 10 extra right images in a class of 20 count like 50 in a class of 100
    small = np.repeat([0, 1], (100, 20))
    lo, hi = paired_bootstrap([(small, _correct(small, (50, 5)), _correct(small, (50, 15)))], samples=4000)
    assert 0.1 < lo < 0.25 < hi < 0.4
    with pytest.raises(ValueError, match="one non-zero length"):
        paired_bootstrap([(labels, a[:-1], b)])


def test_verdict_needs_an_interval_or_every_seed():
    assert verdict([0.01, 0.02, 0.03], None) == "ahead on every seed"
    assert verdict([0.01, 0.02, 0.03], (-0.01, 0.05)) == "ahead on every seed"
    assert verdict([-0.01, -0.02], None) == "behind on every seed"
    assert verdict([0.05], None) == "not separated"  # one seed is not "every seed"
    assert verdict([0.05, 0.0], None) == "not separated"  # a tie on one seed
    assert verdict([0.05, -0.01], (0.001, 0.06)) == "ahead"
    assert verdict([0.05, -0.01], None) == "not separated"


def _rows(per_image: bool):
    """Three hand-made rows on 2 seeds of a 2-class task with 100 test images per class."""
    labels = np.repeat([0, 1], 100)
    right = {"ref": (60, 60), "better": (90, 90), "same": (60, 60)}
    rows, test_labels = [], {}
    for name, (r0, r1) in right.items():
        per_seed, images = {}, {}
        for s in ("0", "1"):
            pred = np.where(_correct(labels, (r0, r1)), labels, 1 - labels)
            per_seed[s] = {"t/linear_probe_bal_acc": (r0 + r1) / 200, "t/knn_bal_acc": (r0 + r1) / 200}
            images[s] = {"t/linear_probe_bal_acc": encode_ints(pred), "t/knn_bal_acc": encode_ints(pred)}
            test_labels[s] = {"t": encode_ints(labels)}
        row = dict(configuration=name, loss="-", options="-", about=name, per_seed=per_seed,
                   mean=aggregate(per_seed)[0], std=aggregate(per_seed)[1])  # fmt: skip
        if per_image:
            row["per_image"] = images
        rows.append(row)
    settings = dict(data="demo", arch="resnet18", width=None, image_size=96, crop_scale=[0.25, 1.0], batch_size=32,
                    accum=1, steps=60, lr=2e-3, halvings=4, seeds=[0, 1], budget="short", eval_l2="auto", eval_k=20,
                    tasks=[dict(name="t", about="a task", classes=["a", "b"], n_train=10, n_test=200)])  # fmt: skip
    return rows, settings, test_labels


def test_paired_differences_and_table():
    rows, settings, test_labels = _rows(per_image=True)
    paired = paired_differences(rows, settings, test_labels, "ref")
    assert [r["configuration"] for r in paired["rows"]] == ["better", "same"] and paired["no_interval"] == []
    better = paired["rows"][0]["differences"]["t/linear_probe_bal_acc"]
    assert better["per_seed"] == {"0": pytest.approx(0.3), "1": pytest.approx(0.3)} and better["verdict"] == "ahead"
    assert 0.2 < better["interval"][0] < better["mean"] < better["interval"][1] < 0.4
    same = paired["rows"][1]["differences"]["t/knn_bal_acc"]
    assert same["interval"] == [0.0, 0.0] and same["verdict"] == "not separated"
    text = markdown_table(rows, settings, paired)
    assert "**Paired differences against `ref`**" in text and "| configuration | t: linear probe | t: kNN |" in text
    lo, hi = better["interval"]
    assert f"| better | +0.300 [+{lo:.3f}, +{hi:.3f}] ahead; per seed +0.300 / +0.300 |" in text
    assert "needs per-image data" not in text
    # JSON written before the per-image predictions were kept: per-seed differences, no interval, and a note
    rows, settings, _ = _rows(per_image=False)
    paired = paired_differences(rows, settings, None, "ref")
    assert paired["no_interval"] == ["t/linear_probe_bal_acc", "t/knn_bal_acc"]
    cell = paired["rows"][0]["differences"]["t/knn_bal_acc"]
    assert cell["interval"] is None and cell["verdict"] == "ahead on every seed"
    text = markdown_table(rows, settings, paired)
    assert "| better | +0.300 ahead on every seed; per seed +0.300 / +0.300 |" in text
    assert "the interval needs per-image data" in text


def test_reference_and_logged_train_seconds(tmp_path):
    assert pick_reference(None, ["random init", "gm"], "gm") == "gm"
    assert pick_reference("random init", ["random init", "gm"], "gm") == "random init"
    with pytest.raises(UsageError, match="--reference: no configuration 'x'; use one of 'random init', 'gm'"):
        pick_reference("x", ["random init", "gm"], "gm")
    (tmp_path / "log.csv").write_text("step,elapsed_s\n1,1.0\n2,2.5\n3,0.5\n4,1.5\n")  # resumed after step 2
    assert logged_train_seconds(str(tmp_path)) == 4.0
    assert logged_train_seconds(str(tmp_path / "nothing")) is None


def test_render_the_saved_study(tmp_path, capsys):
    """The study's ablation.json predates the per-image predictions: it renders with per-seed differences and says
    that the interval needs per-image data."""
    out = tmp_path / "r"
    assert lvmmed(["ablate", "--render", str(STUDY / "medium" / "ablation.json"), "--out", str(out)]) == 0
    text = (out / "ablation.md").read_text()
    assert "**Paired differences against `gm`**" in text and "the interval needs per-image data" in text
    assert "| random init | -0.087 behind on every seed; per seed -0.060 / -0.058 / -0.143 |" in text
    assert (out / "ablation.png").exists()
    assert lvmmed(["ablate", "--render", str(STUDY / "tune_gm" / "ablation.json"), "--out", str(out),
                   "--reference", "random init"]) == 0  # fmt: skip
    assert "| g4-gc | +0.074 ahead on every seed; per seed +0.068 / +0.080 |" in (out / "ablation.md").read_text()
    capsys.readouterr()
    for argv, match in (
        (["--reference", "nope"], "--reference: no configuration 'nope'"),
        (["--demo"], "--render re-renders a saved ablation.json without training; drop --demo"),
    ):
        rc = lvmmed(["ablate", "--render", str(STUDY / "medium" / "ablation.json"), "--out", str(out), *argv])
        assert rc == 2 and match in capsys.readouterr().err
    assert lvmmed(["ablate", "--render", str(tmp_path / "none.json")]) == 2
    assert "--render: cannot read" in capsys.readouterr().err
