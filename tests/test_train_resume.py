"""Resume: a run stopped (or SIGKILLed) after a checkpoint and resumed ends with exactly the weights, optimizer
state and log of an uninterrupted run."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_utils import make_image_folder, tiny_config

from lvmmed_ext.train import pretrain


def _load(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=False)


def _assert_same_state(a, b):
    assert a["step"] == b["step"]
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name]), f"optimizer state {k}.{name} differs"
    assert a["scheduler"] == b["scheduler"]


def _log(out):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return [(int(r["step"]), r["loss"], r["lr"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("resume") / "data")


@pytest.mark.parametrize(
    "extra", [{}, {"accum": 2, "local_crops": 2, "local_size": 16}], ids=["plain", "accum+multicrop"]
)
def test_stop_and_resume_equals_uninterrupted(data, tmp_path, extra):
    full = pretrain(tiny_config(data, tmp_path / "full", **extra))
    assert full.step == 6 and os.path.isfile(full.weights) and os.path.isfile(full.plot)

    part = pretrain(tiny_config(data, tmp_path / "part", **extra), stop_after=4)  # checkpoint at 3, dies after 4
    assert part.step == 4 and part.weights is None and _load(tmp_path / "part")["step"] == 3
    assert [s for s, _, _ in _log(tmp_path / "part")] == [1, 2, 3, 4]

    resumed = pretrain(tiny_config(data, tmp_path / "part", **extra), resume=str(tmp_path / "part"))
    assert resumed.step == 6
    _assert_same_state(_load(tmp_path / "full"), _load(tmp_path / "part"))
    assert _log(tmp_path / "part") == _log(tmp_path / "full")  # the lost step 4 is logged once, identically
    assert torch.load(resumed.weights).keys() == torch.load(full.weights).keys()


def test_sigkill_then_resume_from_the_command_line(data, tmp_path):
    """A real kill: a subprocess is SIGKILLed right after its first checkpoint, then resumed by `--resume`."""
    out = tmp_path / "killed"
    args = [
        "--data", str(data), "--arch", "resnet18", "--width", "4", "--loss", "infonce", "--head-opt",
        "hidden_dim=16", "--head-opt", "out_dim=8", "--image-size", "32", "--batch-size", "4", "--steps", "24",
        "--ckpt-every", "4", "--workers", "0", "--seed", "1", "--max-side", "64",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lvmmed_ext.train", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _load(out)["step"]
    assert 4 <= killed_at < 24

    from lvmmed_ext.train.cli import main

    assert main(["--resume", str(out)]) == 0
    full = pretrain(tiny_config(data, tmp_path / "full", steps=24, ckpt_every=4))
    _assert_same_state(_load(full.out), _load(out))
    assert [s for s, _, _ in _log(out)] == list(range(1, 25))


def test_teacher_heads_resume_exactly(data, tmp_path):
    """PEAC and Ark keep an EMA teacher (backbone + projectors): it is checkpointed and restored, so a resumed run
    ends with the same teacher as an uninterrupted one; Ark's task cycle resumes at the right dataset."""
    import csv as csv_mod

    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv_mod.writer(f).writerows([[str(p), "ab"[i % 2]] for i, p in enumerate(sorted(data.iterdir()))])
    runs = {
        "peac": dict(loss="peac", head_opts={"dim": 8, "hidden_dim": 16}, image_size=64),
        "ark": dict(loss="ark", head_opts={"dim": 8, "hidden_dim": 16}, labels=[f"ab={labels}"]),
    }
    for name, extra in runs.items():
        pretrain(tiny_config(data, tmp_path / name / "full", **extra))
        pretrain(tiny_config(data, tmp_path / name / "part", **extra), stop_after=4)
        pretrain(tiny_config(data, tmp_path / name / "part", **extra), resume=str(tmp_path / name / "part"))
        a, b = _load(tmp_path / name / "full"), _load(tmp_path / name / "part")
        _assert_same_state(a, b)
        assert a["teacher"].keys() == b["teacher"].keys()
        for k in a["teacher"]:
            assert torch.equal(a["teacher"][k], b["teacher"][k]), f"{name} teacher.{k} differs"
        assert _log(tmp_path / name / "part") == _log(tmp_path / name / "full")
