"""Several datasets in one stream: --data NAME=DIR[:WEIGHT] parsing, group probabilities and --balance, observed
proportions against the weights, the stream as a pure function of (seed, position), duplicate crops, and a mixed
pretraining run that records the mixture and resumes exactly."""

import json
import os

import numpy as np
import pytest
import torch
from train_utils import make_image_folder, tiny_config

from lvmmed_ext.data import ImageSet, MultiViewConfig, Preprocessing, ViewConfig, scan
from lvmmed_ext.data.mixture import (
    BLOCK,
    DataSpec,
    MixtureStream,
    apportion,
    check_specs,
    duplicate_crop,
    group_probabilities,
    parse_data_spec,
    split_groups,
)
from lvmmed_ext.errors import UsageError
from lvmmed_ext.train import pretrain
from lvmmed_ext.train.cli import parser
from lvmmed_ext.train.config import build_config, load_config_file
from lvmmed_ext.train.pipeline import build_pipeline

VIEWS = MultiViewConfig(ViewConfig(size=16, grid=(1, 1)))


def test_parse_data_spec():
    assert parse_data_spec("ct=/d/ct:2.5") == DataSpec("ct", "/d/ct", 2.5)
    assert parse_data_spec("ct=/d/ct") == DataSpec("ct", "/d/ct", None)
    assert parse_data_spec("/d/scans/") == DataSpec("scans", "/d/scans/", None)
    assert parse_data_spec("x=/d/a:b") == DataSpec("x", "/d/a:b", None)  # a colon inside the path
    assert parse_data_spec("/d/a=b") == DataSpec("a=b", "/d/a=b", None)  # '=' after a '/' is part of a path
    with pytest.raises(UsageError, match="WEIGHT must be a number > 0, got '0'"):
        parse_data_spec("ct=/d:0")


@pytest.mark.parametrize(
    "specs, balance, match",
    [
        (["a=/x", "a=/y"], "none", "names must be unique, got 'a' 2 times"),
        (["a=/x:1", "b=/y"], "none", "weights must be given for every dataset or none; missing for b"),
        (["a=/x:1", "b=/y:2"], "dataset", "--balance dataset sets equal dataset proportions"),
        (["a=/x"], "sizes", "--balance must be one of none, dataset, modality, got 'sizes'"),
    ],
)
def test_bad_mixtures(specs, balance, match):
    with pytest.raises(UsageError, match=match):
        check_specs([parse_data_spec(s) for s in specs], balance)


def test_group_probabilities():
    sizes, ds, mods = [600, 200, 200], [0, 0, 1], ["CT", "MR", "CT"]
    np.testing.assert_allclose(group_probabilities(sizes, ds, mods, None, "none"), [0.6, 0.2, 0.2])
    np.testing.assert_allclose(group_probabilities(sizes, ds, mods, None, "dataset"), [0.375, 0.125, 0.5])
    np.testing.assert_allclose(group_probabilities(sizes, ds, mods, [1, 3], "none"), [0.1875, 0.0625, 0.75])
    np.testing.assert_allclose(group_probabilities(sizes, ds, mods, None, "modality"), [0.375, 0.5, 0.125])
    np.testing.assert_allclose(group_probabilities(sizes, ds, mods, [1, 1], "modality"), [0.25, 0.25, 0.5])


def test_apportion_sums_and_keeps_tiny_groups():
    counts = apportion(np.array([0.7, 0.2999, 0.0001]), 100)
    assert counts.sum() == 100 and counts[2] == 1 and counts[0] == 70


def _fake_sets(sizes, modalities=None):
    from lvmmed_ext.data.io import Source

    sets = []
    for k, n in enumerate(sizes):
        mods = (modalities or [["CT"]] * len(sizes))[k]
        srcs = [Source(f"/none/{k}/{i}.dcm", "dicom", 1, mods[i % len(mods)]) for i in range(n)]
        sets.append(ImageSet(srcs, Preprocessing()))
    return sets


def test_weighted_proportions_over_10k_samples_are_within_2_percent():
    weights = [1.0, 2.0, 7.0]
    sets = _fake_sets([50, 3000, 400])
    groups = split_groups(["a", "b", "c"], sets, "none")
    probs = group_probabilities([len(s) for s in sets], [0, 1, 2], [""] * 3, weights, "none")
    stream = MixtureStream(groups, probs, VIEWS, seed=3)
    n = 10_000
    observed = np.bincount([stream.locate(p)[0] for p in range(n)], minlength=3) / n
    np.testing.assert_allclose(observed, np.array(weights) / sum(weights), atol=0.02)
    assert stream.seen(n).tolist() == (observed * n).round().astype(int).tolist()


def test_stream_is_a_pure_function_of_seed_and_position():
    sets = _fake_sets([30, 70])
    groups = split_groups(["a", "b"], sets, "none")
    make = lambda seed: MixtureStream(groups, [0.4, 0.6], VIEWS, seed=seed)  # noqa: E731
    a, b = make(5), make(5)
    positions = list(range(2 * BLOCK + 17))
    fwd = [a.locate(p) for p in positions]
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(positions)
    assert [b.locate(int(p)) for p in shuffled] == [fwd[int(p)] for p in shuffled]  # any order, any process
    assert fwd != [make(6).locate(p) for p in positions]
    for g in (0, 1):  # each group's own positions: 0, 1, 2, ... without gaps or repeats
        qs = [q for gg, q in fwd if gg == g]
        assert qs == list(range(len(qs)))


def test_balance_modality_groups_and_duplicate_crops():
    sets = _fake_sets([40, 10], modalities=[["CT", "CT", "CT", "MR"], ["CR"]])
    groups = split_groups(["a", "b"], sets, "modality")
    assert [g.name for g in groups] == ["a/CT", "a/MR", "b/CR"]
    probs = group_probabilities([len(g.images) for g in groups], [0, 0, 1], ["CT", "MR", "CR"], None, "modality")
    np.testing.assert_allclose(probs, [1 / 3] * 3)
    stream = MixtureStream(groups, probs, VIEWS, seed=0, duplicates=True)
    np.testing.assert_allclose(stream.dup_frac, [0.0, 1 - 10 / 50 * 3, 1 - 10 / 50 * 3])
    img = np.random.default_rng(0).random((40, 30), dtype=np.float32)
    out, scale = duplicate_crop(img, (2.0, 2.0), np.random.default_rng(1))
    assert out.shape == img.shape and 2 * 0.9 < scale[0] < 2 * 0.98 and 2 * 0.9 < scale[1] < 2 * 0.98


def test_samples_carry_their_dataset(tmp_path):
    a, b = make_image_folder(tmp_path / "a", n=4), make_image_folder(tmp_path / "b", n=6, seed=1)
    sets = [ImageSet(scan(d).sources, Preprocessing(max_side=64)) for d in (a, b)]
    groups = split_groups(["a", "b"], sets, "dataset")
    stream = MixtureStream(groups, [0.5, 0.5], VIEWS, seed=0, duplicates=True)
    samples = [stream[p] for p in range(40)]
    assert [s["dataset"] for s in samples] == [stream.locate(p)[0] for p in range(40)]
    assert any(s["duplicate"] for s in samples) and not any(s["duplicate"] for s in samples if s["dataset"] == 1)
    again = MixtureStream(groups, [0.5, 0.5], VIEWS, seed=0, duplicates=True)
    assert all(torch.equal(again[p]["views"][0], samples[p]["views"][0]) for p in (0, 7, 39))


def test_cli_data_forms(tmp_path):
    one = build_config(parser().parse_args(["--data", "scans"]), None)
    assert one.data == os.path.abspath("scans") and one.datasets == []
    two = build_config(parser().parse_args(["--data", "ct=ct:1", "--data", "mr=/m:3", "--balance", "modality"]), None)
    assert two.data == "" and two.datasets == [f"ct={os.path.abspath('ct')}:1", "mr=/m:3"]
    assert two.balance == "modality"


def test_bad_mixture_writes_nothing(tmp_path):
    a = make_image_folder(tmp_path / "a", n=4)
    cfg = tiny_config("", tmp_path / "run", datasets=[f"a={a}:1", f"b={a}"])
    with pytest.raises(UsageError, match="missing for b"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_mixed_run_records_the_mixture_and_resumes_exactly(tmp_path):
    a, b = make_image_folder(tmp_path / "a", n=5), make_image_folder(tmp_path / "b", n=9, seed=1)
    kw = dict(datasets=[f"a={a}:1", f"b={b}:3"], steps=4, ckpt_every=2)
    full = pretrain(tiny_config("", tmp_path / "full", **kw))
    record = json.load(open(tmp_path / "full" / "config.json"))["mixture"]
    assert [d["name"] for d in record["datasets"]] == ["a", "b"] and record["datasets"][1]["probability"] == 0.75
    assert sum(record["seen"].values()) == 16 and record["seen_at_step"] == 4
    pretrain(tiny_config("", tmp_path / "part", **kw), stop_after=3)
    pretrain(tiny_config("", tmp_path / "part", **kw), resume=str(tmp_path / "part"))
    sa = torch.load(full.checkpoint, weights_only=False)["backbone"]
    sb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["backbone"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.load(open(tmp_path / "part" / "config.json"))["mixture"]["seen"] == record["seen"]
    again = build_config(parser().parse_args([]), None, load_config_file(str(tmp_path / "full" / "config.json")))
    assert again.datasets == kw["datasets"] and again.data == "" and again.balance == "none"


def test_one_folder_under_two_names_and_a_bad_weight_are_refused(tmp_path):
    a = make_image_folder(tmp_path / "a", n=4)
    with pytest.raises(UsageError, match=r"--data x=.* and --data y=.* are the same folder"):
        pretrain(tiny_config("", tmp_path / "r1", datasets=[f"x={a}", f"y={a}"]))
    os.symlink(str(a), str(tmp_path / "alias"))
    with pytest.raises(UsageError, match="are the same folder"):
        pretrain(tiny_config("", tmp_path / "r2", datasets=[f"x={a}:1", f"y={tmp_path / 'alias'}:2"]))
    with pytest.raises(UsageError, match=r"WEIGHT must be a number > 0, got 'abc'"):
        parse_data_spec(f"x={a}:abc")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_balance_with_a_single_dataset_gives_a_notice(tmp_path):
    a = make_image_folder(tmp_path / "a", n=4)
    lines: list[str] = []
    build_pipeline(tiny_config("", tmp_path / "r1", datasets=[f"x={a}"], balance="dataset"), log=lines.append)
    assert any("--balance dataset has no effect with a single dataset" in line for line in lines)
    lines.clear()
    build_pipeline(tiny_config(str(a), tmp_path / "r2", balance="modality"), log=lines.append)
    assert any("--balance modality has no effect with a single --data folder" in line for line in lines)
    lines.clear()
    build_pipeline(tiny_config(str(a), tmp_path / "r3"), log=lines.append)
    assert not any("no effect" in line for line in lines)
