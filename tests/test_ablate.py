"""`lvmmed ablate`: configuration parsing, bad input, and a tiny end-to-end ablation (2 configurations x 2 steps)
whose Markdown table is byte-identical when rerun with the same seed, and reused when its folder is given again."""

import json
import os

import pytest
from train_utils import make_image_folder

from lvmmed_ext.cli import main as lvmmed
from lvmmed_ext.errors import UsageError
from lvmmed_ext.train.ablate import VARIANTS, folder_name, markdown_table, parse_configs

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
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| configuration | loss | head options |") and "s/step" not in table
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| random init",
        "| gm",
        "| vicreg:hidden_dim=16:out_dim=16",
    ]
    assert "graph_size=4, k=2" in lines[2] and "hidden_dim=16, out_dim=16" in lines[3]
    assert "graph_size" not in lines[3]  # the gm flags only reach the gm configurations
    assert "2 steps" in table and "2 classes: blobs, stripes" in table
    results = json.loads((out / "ablation.json").read_text())
    assert [r["configuration"] for r in results["rows"]] == ["random init", "gm", "vicreg:hidden_dim=16:out_dim=16"]
    assert all(0 <= r["knn_acc"] <= 1 and 0 <= r["linear_probe_acc"] <= 1 for r in results["rows"])
    timings = json.loads((out / "timings.json").read_text())
    assert timings["gm"]["pretrain"] == "trained" and timings["gm"]["steps"] == 2 and timings["total_s"] > 0
    for name in ("gm", "vicreg_hidden_dim_16_out_dim_16"):
        assert (out / "runs" / name / "backbone.pth").exists()
        assert (out / "eval" / f"results_{name}.json").exists()


def test_same_seed_gives_a_byte_identical_table(folders, first_run, capsys):
    root, data, labelled = folders
    out = root / "out2"
    assert lvmmed(["ablate", "--data", str(data), "--eval-data", str(labelled), "--out", str(out), *TINY]) == 0
    assert (out / "ablation.md").read_bytes() == (first_run / "ablation.md").read_bytes()
    assert (out / "ablation.json").read_bytes() == (first_run / "ablation.json").read_bytes()


def test_rerun_in_the_same_folder_reuses_finished_runs(folders, first_run, capsys):
    root, data, labelled = folders
    before = (first_run / "ablation.md").read_bytes()
    assert lvmmed(["ablate", "--data", str(data), "--eval-data", str(labelled), "--out", str(first_run), *TINY]) == 0
    timings = json.loads((first_run / "timings.json").read_text())
    assert timings["gm"]["pretrain"] == "reused" and timings["gm"]["loop_s_per_step"] is None
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


def test_markdown_table_format():
    row = dict(configuration="gm", loss="gm", options="-", about="full", final_loss=12.5, linear_probe_acc=0.81234,
               linear_probe_bal_acc=0.8, knn_acc=0.7, knn_bal_acc=0.69)  # fmt: skip
    settings = dict(data="demo", arch="resnet18", width=None, image_size=96, batch_size=32, accum=1, steps=60,
                    lr=2e-3, halvings=4, seed=0, eval="task", classes=["a", "b"], eval_train=10, eval_test=5,
                    eval_l2="auto", eval_k=20)  # fmt: skip
    text = markdown_table([row], settings)
    assert "| gm | gm | - | full | 12.5000 | 0.812 | 0.800 | 0.700 | 0.690 |" in text and text.endswith("losses.\n")


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
    """The --demo wiring (demo images, half-width ResNet-18, the MNI152 tissue task), cut to 1 step (~15 s)."""
    from lvmmed_ext.data.demo import mni152_paths

    if mni152_paths() is None:
        pytest.skip("nilearn is not installed")
    out = tmp_path / "demo"
    argv = ["ablate", "--demo", "--steps", "1", "--batch-size", "16", "--configs", "gm-no-local", "--eval-l2", "0.1",
            "--out", str(out)]  # fmt: skip
    assert lvmmed(argv) == 0
    table = (out / "ablation.md").read_text()
    assert "demo, resnet18 (width 32), 96 px views" in table and "3 classes: csf, grey_matter, white_matter" in table
    assert "| gm-no-local | gm | alpha=1.0, noise_scale=0.1 |" in table  # the demo's gm options + the variant's
