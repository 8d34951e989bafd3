"""Shards: lvmmed prepare's layout and bad input, 8/16-bit round trips, disjoint lanes, resume continuing the same
stream (with and without loader workers), corrupt members and truncated shards skipped with a count, DDP ranks
(2 gloo processes) reading disjoint shards, and a pretraining run on shards."""

import json
import os
import socket
import tarfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader
from train_utils import make_image_folder, tiny_config

from lvmmed_ext.data import MultiViewConfig, Preprocessing, ViewConfig
from lvmmed_ext.data.shards import ShardStream, decode_png, encode_frame, load_index, main, prepare, read_shard
from lvmmed_ext.errors import UsageError

VIEWS = MultiViewConfig(ViewConfig(size=16, grid=(1, 1)))
PREP = Preprocessing(max_side=48)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    a, b = make_image_folder(root / "a", n=10), make_image_folder(root / "b", n=14, seed=1)
    prepare([f"a={a}", str(b)], str(root / "sh"), PREP, shard_size=3, log=lambda *_: None)
    return str(root / "sh")


def _stream(folder, **kw):
    args = dict(seed=0, rank=0, world=1, workers=0, batch_size=3, start=0)
    args.update(kw)
    return ShardStream(folder, load_index(folder), VIEWS, PREP, **args)


def _take(iterable, n):
    it = iter(iterable)
    return [next(it) for _ in range(n)]


def test_prepare_layout(shards):
    index = load_index(shards)
    assert index["images"] == 24 and sum(s["count"] for s in index["shards"]) == 24 and len(index["shards"]) == 8
    assert [d["name"] for d in index["datasets"]] == ["a", "b"] and index["preprocessing"]["max_side"] == 48
    with tarfile.open(os.path.join(shards, index["shards"][0]["name"])) as tar:
        names = tar.getnames()
    assert names[:2] == ["s000000_000000.png", "s000000_000000.json"]
    members, bad = read_shard(os.path.join(shards, index["shards"][0]["name"]))
    assert not bad and len(members) == 3 and members[0][2]["dataset"] in ("a", "b") and members[0][2]["frame"] == 0


@pytest.mark.parametrize("bits, tol", [(8, 0.5 / 255), (16, 0.5 / 65535)])
def test_png_round_trip(bits, tol):
    x = np.random.default_rng(0).random((5, 7), dtype=np.float32)
    np.testing.assert_allclose(decode_png(encode_frame(x, bits)), x, atol=tol * 1.01)
    rgb = np.random.default_rng(1).random((4, 3, 3), dtype=np.float32)
    np.testing.assert_allclose(decode_png(encode_frame(rgb, bits)), rgb, atol=tol * 1.01)


def test_prepare_bad_input_writes_nothing(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n=2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UsageError, match="--out .*full exists and is not an empty folder"):
        prepare([str(data)], str(tmp_path / "full"), PREP)
    with pytest.raises(UsageError, match="weights are not stored in shards"):
        prepare([f"d={data}:2"], str(tmp_path / "o1"), PREP)
    assert main(["--data", str(data), "--out", str(tmp_path / "o2"), "--bits", "12"]) == 2
    assert "--bits must be 8 or 16, got 12" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_unreadable_input_files_are_counted(tmp_path):
    data = make_image_folder(tmp_path / "d", n=3)
    with open(data / "img00.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing decodable
    index = prepare([str(data)], str(tmp_path / "o"), PREP, log=lambda *_: None)
    assert index["images"] == 2 and index["unreadable"] == 1


def test_lanes_read_disjoint_shards(shards):
    s = _stream(shards, world=2, workers=2)
    for epoch in range(3):
        lanes = [s.lane_shards(lane, epoch) for lane in range(4)]
        assert sorted(sum(lanes, [])) == list(range(8))
    with pytest.raises(UsageError, match="has 8 shard\\(s\\), fewer than the 9 readers"):
        _stream(shards, world=3, workers=3)


def _members(batches):
    return [[s["member"] for s in b] for b in batches]


def test_resume_continues_the_same_stream(shards):
    full = _take(_stream(shards), 12)  # 36 samples: more than one epoch (24 images)
    resumed = _take(_stream(shards, start=7), 5)
    assert _members(resumed) == _members(full[7:])
    assert all(torch.equal(a["views"][0], b["views"][0]) for x, y in zip(full[7:], resumed) for a, b in zip(x, y))
    seen = [m for b in full[:8] for m in _members([b])[0]]
    assert len(set(seen)) == 24  # the first epoch visits every image once


def test_resume_with_loader_workers(shards):
    def loader(start):
        return DataLoader(_stream(shards, workers=2, start=start), batch_size=None, num_workers=2,
                          collate_fn=lambda b: [s["member"] for s in b])  # fmt: skip

    full = _take(loader(0), 7)
    assert _take(loader(3), 4) == full[3:]


def _corrupt_member(path, key):
    with tarfile.open(path) as tar:
        parts = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for m, data in parts:
            if m.name == f"{key}.png":
                data = b"\x89PNG broken" + data[40:]
                m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))


def test_corrupt_member_and_truncated_shard_are_skipped_with_a_count(shards, tmp_path):
    import shutil

    copy = str(tmp_path / "sh")
    shutil.copytree(shards, copy)
    index = load_index(copy)
    first = os.path.join(copy, index["shards"][0]["name"])
    key = read_shard(first)[0][1][0]
    _corrupt_member(first, key)
    second = os.path.join(copy, index["shards"][1]["name"])
    with open(second, "r+b") as f:
        f.truncate(os.path.getsize(second) // 3)
    batches = _take(_stream(copy), 8)  # one epoch
    bad = [b for batch in batches for s in batch for b in s["bad"]]
    assert all(len(batch) == 3 for batch in batches)
    assert any(key in where for where, _ in bad) and len(bad) >= 2
    clean = _take(_stream(shards), 8)
    same = sum(a == b for a, b in zip(sum(_members(batches), []), sum(_members(clean), [])))
    assert same >= 24 - 4  # positions do not shift: only the replaced members differ


def _ddp_reader(rank, port, folder, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    s = ShardStream(folder, load_index(folder), VIEWS, PREP, 0, dist.get_rank(), dist.get_world_size(), 0, 3)
    members = [m for b in _take(s, 4) for m in _members([b])[0]]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(members, f)
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_ranks_read_disjoint_shards(shards, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_reader, args=(port, shards, str(tmp_path)), nprocs=2)
    got = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    shard_sets = [{m.split(":")[0] for m in g} for g in got]
    assert len(got[0]) == len(got[1]) == 12 and not shard_sets[0] & shard_sets[1]
    assert len(set(got[0]) | set(got[1])) == 24  # together one pass over the images


def test_pretrain_on_shards_resumes_exactly(shards, tmp_path):
    kw = dict(steps=4, ckpt_every=2, preprocessing=PREP)
    full = pretrain_run(shards, tmp_path / "full", **kw)
    pretrain_run(shards, tmp_path / "part", stop_after=3, **kw)
    pretrain_run(shards, tmp_path / "part", resume=str(tmp_path / "part"), **kw)
    sa = torch.load(full.checkpoint, weights_only=False)["backbone"]
    sb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["backbone"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretrain_counts_a_corrupt_member_and_goes_on(shards, tmp_path):
    import shutil

    copy = str(tmp_path / "sh")
    shutil.copytree(shards, copy)
    for s in load_index(copy)["shards"]:
        path = os.path.join(copy, s["name"])
        _corrupt_member(path, read_shard(path)[0][0][0])
    result = pretrain_run(copy, tmp_path / "run", steps=3, preprocessing=PREP)
    assert result.step == 3 and result.skipped_files >= 1


def pretrain_run(data, out, stop_after=None, resume=None, **kw):
    from lvmmed_ext.train import pretrain

    return pretrain(tiny_config(data, out, **kw), stop_after=stop_after, resume=resume)


def test_no_readable_member_stops_with_one_line_instead_of_hanging(shards, tmp_path, capsys):
    # every shard truncated to 0 bytes: the stream used to skip unreadable members forever, printing nothing
    import shutil

    from lvmmed_ext.train.cli import main as pretrain_main

    copy = str(tmp_path / "sh")
    shutil.copytree(shards, copy)
    for s in load_index(copy)["shards"]:
        open(os.path.join(copy, s["name"]), "wb").close()
    with pytest.raises(UsageError, match="no shard member is readable"):
        _take(_stream(copy), 1)
    args = ["--data", copy, "--loss", "infonce", "--steps", "2", "--batch-size", "4", "--workers", "1",
            "--arch", "resnet18", "--width", "4", "--image-size", "32", "--out", str(tmp_path / "run")]  # fmt: skip
    assert pretrain_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: --data" in err[0] and "no shard member is readable" in err[0]
