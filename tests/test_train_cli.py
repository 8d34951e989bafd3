"""The pretrain/export commands: bad input gives one clear line, a non-zero exit and writes nothing."""

import csv
import json
import os

import pytest
import torch
from train_utils import make_image_folder, tiny_config

from lvmmed_ext.cli import main as lvmmed
from lvmmed_ext.data.demo import DEMO
from lvmmed_ext.models import build_backbone, load_pretrained
from lvmmed_ext.train import pretrain
from lvmmed_ext.train.cli import parser
from lvmmed_ext.train.config import build_config

TINY = ["--arch", "resnet18", "--width", "4", "--loss", "infonce", "--image-size", "32", "--batch-size", "4",
        "--steps", "2", "--workers", "0", "--head-opt", "hidden_dim=8", "--head-opt", "out_dim=4"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run (checkpoint, log, plot, exported backbone)."""
    root = tmp_path_factory.mktemp("cli")
    data = make_image_folder(root / "data", n=8)
    result = pretrain(tiny_config(data, root / "run", steps=3))
    return root, data, result


def _snapshot(root):
    return {
        os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
        for d, _, files in os.walk(root)
        for f in files
    }


def _fails_cleanly(capsys, argv, match, root):
    before = _snapshot(root)
    rc = lvmmed(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    assert _snapshot(root) == before, "a failed command changed files"
    return err


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    _fails_cleanly(
        capsys, ["pretrain", "--data", str(tmp_path / "empty"), "--out", str(out), *TINY], "is empty", tmp_path
    )
    assert not out.exists()


def test_folder_without_images(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    (tmp_path / "docs" / "scan.dcm").write_bytes(b"not dicom")
    err = _fails_cleanly(
        capsys, ["pretrain", "--data", str(tmp_path / "docs"), *TINY], "no readable images in --data", tmp_path
    )
    assert "1 of other types, 1 unreadable" in err


def test_missing_folder_and_no_data(tmp_path, capsys):
    _fails_cleanly(capsys, ["pretrain", "--data", str(tmp_path / "nope"), *TINY], "does not exist", tmp_path)
    _fails_cleanly(capsys, ["pretrain", *TINY], "no data: pass --data DIR", tmp_path)
    _fails_cleanly(capsys, ["pretrain", "--demo", "--data", str(tmp_path)], "--demo uses the offline demo", tmp_path)


def test_unreadable_init_weights(run, tmp_path, capsys):
    root, data, _ = run
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    _fails_cleanly(
        capsys,
        ["pretrain", "--data", str(data), "--out", str(out), "--init", str(bad), *TINY],
        "cannot read weights",
        tmp_path,
    )
    assert not out.exists()


def test_wrong_checkpoints(run, tmp_path, capsys):
    root, data, result = run
    _fails_cleanly(capsys, ["pretrain", "--resume", result.weights], "is not an lvmmed pretrain checkpoint", root)
    bad = tmp_path / "ckpt.pt"
    bad.write_text("nope")
    _fails_cleanly(capsys, ["pretrain", "--resume", str(bad)], "cannot read checkpoint", root)
    _fails_cleanly(capsys, ["pretrain", "--resume", str(tmp_path / "none")], "does not exist", root)
    # a finished run cannot be resumed, and a changed setting is refused before anything is touched
    _fails_cleanly(capsys, ["pretrain", "--resume", result.out], "is already at step 3 of 3", root)
    _fails_cleanly(capsys, ["pretrain", "--resume", result.out, "--lr", "0.1"], "was made with lr = 0.002", root)


def test_existing_run_is_not_overwritten(run, capsys):
    root, data, result = run
    _fails_cleanly(capsys, ["pretrain", "--data", str(data), "--out", result.out, *TINY], "already holds a run", root)


def test_pretrain_with_the_gm_loss(tmp_path):
    data = make_image_folder(tmp_path / "data", n=8)
    argv = ["pretrain", "--data", str(data), "--out", str(tmp_path / "gm"), *TINY]
    argv[argv.index("infonce")] = "gm"
    argv = argv[: argv.index("--head-opt")] + ["--head-opt", "graph_size=4", "--head-opt", "k=2",
                                                 "--head-opt", "dim=8"]  # fmt: skip
    assert lvmmed(argv) == 0
    log = (tmp_path / "gm" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 2 and all("nan" not in line for line in log)
    with open(tmp_path / "gm" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for key in ("match_acc", "margin", "grad_nodes", "backbone_match_acc"):  # the gm diagnostics, every step
        assert all(r[key] != "" for r in rows), key
    assert all(0 <= float(r["match_acc"]) <= 1 and 0 <= float(r["grad_nodes"]) <= 1 for r in rows)


def test_export_command(run, tmp_path, capsys):
    root, _, result = run
    assert lvmmed(["export", result.checkpoint, str(tmp_path / "w.pth")]) == 0
    info = json.loads((tmp_path / "w.json").read_text())
    assert info["arch"] == "resnet18" and info["in_chans"] == 1 and info["image_size"] == 32
    assert info["preprocessing"]["preset"] == "auto" and info["preprocessing"]["mean"] == 0.5
    state = torch.load(tmp_path / "w.pth")
    assert not any(k.startswith("fc.") for k in state) and "layer4.1.bn2.running_var" in state
    net = build_backbone("resnet18", in_chans=1, width=4, num_classes=7)
    report = load_pretrained(net, tmp_path / "w.pth", verbose=False)
    assert report.missing == ["fc.weight", "fc.bias"] and not report.unexpected
    capsys.readouterr()
    _fails_cleanly(capsys, ["export", str(tmp_path / "w.pth"), str(tmp_path / "x.pth")], "is not an lvmmed", tmp_path)


def test_run_outputs(run):
    _, _, result = run
    names = set(os.listdir(result.out))
    assert {"checkpoint.pt", "log.csv", "loss.png", "config.json", "backbone.pth", "backbone.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    with open(result.log_csv) as f:
        header = f.readline().strip().split(",")
    assert header[:6] == ["step", "epoch", "loss", "lr", "lr_backbone", "images_per_s"]
    assert header[-4:] == ["match_acc", "margin", "grad_nodes", "backbone_match_acc"]
    with open(result.log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["match_acc"] != "" and r["grad_nodes"] == "" for r in rows)  # infonce: no gradient-node count


def test_config_merge_order():
    args = parser().parse_args(["--demo", "--steps", "7", "--head-opt", "temperature=0.1", "--preset", "mr"])
    cfg = build_config(args, None)
    assert cfg.data == "demo" and cfg.steps == 7 and cfg.arch == DEMO["arch"] and cfg.image_size == DEMO["image_size"]
    assert cfg.head_opts == {"temperature": 0.1}  # the demo's per-loss head options are added once the loss is known
    assert cfg.preprocessing.preset == "mr" and cfg.preprocessing.max_side == DEMO["max_side"]
    plain = build_config(parser().parse_args(["--data", "x"]), None)
    assert (plain.arch, plain.loss, plain.lr, plain.halvings, plain.image_size) == ("resnet50", "gm", 2e-3, 4, 224)


def test_module_entry_points(capsys):
    with pytest.raises(SystemExit) as e:
        lvmmed(["pretrain", "--help"])
    assert e.value.code == 0 and "--backbone-lr-mult" in capsys.readouterr().out
    assert lvmmed([]) == 2 and "pretrain" in capsys.readouterr().out


def test_config_file_settings_sit_between_the_demo_and_the_command_line(tmp_path):
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"data": "scans", "arch": "resnet18", "steps": 9, "lr": 1e-3, "out": "elsewhere",
                                    "head_opts": {"noise_scale": 0.2}, "preprocessing": {"preset": "ct", "axis": 1},
                                    "max_side": 128}))  # fmt: skip
    from lvmmed_ext.train.config import load_config_file

    settings = load_config_file(str(cfg_file))
    args = parser().parse_args(["--config", str(cfg_file), "--steps", "4", "--head-opt", "k=3", "--axis", "0"])
    cfg = build_config(args, None, settings)
    assert (cfg.arch, cfg.steps, cfg.lr) == ("resnet18", 4, 1e-3)  # the command line wins over the file
    assert cfg.data == os.path.abspath("scans") and cfg.out == ""  # the file's out is ignored
    assert cfg.head_opts == {"noise_scale": 0.2, "k": 3}
    assert (cfg.preprocessing.preset, cfg.preprocessing.axis, cfg.preprocessing.max_side) == ("ct", 0, 128)


def test_a_runs_config_json_repeats_it(run):
    root, _, result = run
    from lvmmed_ext.train.config import TrainConfig, load_config_file

    saved = os.path.join(result.out, "config.json")
    cfg = build_config(parser().parse_args(["--config", saved, "--out", str(root / "again")]), None,
                       load_config_file(saved))  # fmt: skip
    with open(saved) as f:
        original = TrainConfig.from_json(json.load(f))
    assert cfg.out == str(root / "again")
    cfg.out, cfg.global_batch = original.out, original.global_batch  # the folder, and a value derived at run time
    assert cfg == original


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object of settings, got list"),
        ('{"stepz": 3}', "unknown setting 'stepz'"),
        ('{"steps": "many"}', "steps = 'many' has the wrong type"),
        ('{"lr": true}', "lr = True has the wrong type"),
        ('{"crop_scale": [0.5]}', "crop_scale = [0.5] has the wrong type"),
        ('{"preprocessing": {"gamma": 2}}', "unknown preprocessing key 'gamma'"),
        ('{"head_opts": 3}', "head_opts = 3 has the wrong type"),
        ('{"width": 2.5}', "width = 2.5 has the wrong type"),
        ('{"preprocessing": {"window": [40, "x"]}}', "window = [40, 'x'] has the wrong type"),
    ],
)
def test_bad_config_files_fail_cleanly(tmp_path, capsys, content, match):
    path = tmp_path / "cfg" / "c.json"
    path.parent.mkdir()
    if content is not None:
        path.write_text(content)
    _fails_cleanly(capsys, ["pretrain", "--config", str(path), "--data", str(tmp_path), *TINY], match, tmp_path)


def test_config_file_data_is_enough(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": str(tmp_path / "empty")}))
    _fails_cleanly(capsys, ["pretrain", "--config", str(path), *TINY], "is empty", tmp_path)  # past the no-data check


def test_an_image_given_as_checkpoint_is_named_as_such(run, tmp_path, capsys):
    root, data, _ = run
    png = next(p for p in sorted(os.listdir(data)) if p.endswith(".png"))
    for argv in (["export", str(data / png), str(tmp_path / "x.pth")],
                 ["pretrain", "--data", str(data), "--resume", str(data / png), *TINY]):  # fmt: skip
        _fails_cleanly(capsys, argv, "is not an lvmmed pretrain checkpoint (it looks like a PNG image)", root)
