"""DDP (2 gloo processes) over the data-at-scale paths: pretraining on shards stops and resumes to the same weights as
an uninterrupted run, and a weighted dataset mixture trains with both ranks agreeing on the recorded counts."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _worker(rank, port, root):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from train_utils import tiny_config

    from lvmmed_ext.data import Preprocessing
    from lvmmed_ext.train import pretrain

    prep = Preprocessing(max_side=48)
    shards, kw = os.path.join(root, "shards"), dict(batch_size=2, steps=4, ckpt_every=2, preprocessing=prep)
    pretrain(tiny_config(shards, os.path.join(root, "full"), **kw))
    part = os.path.join(root, "part")
    pretrain(tiny_config(shards, part, **kw), stop_after=3)
    pretrain(tiny_config(shards, part, **kw), resume=part)
    mix = [f"a={os.path.join(root, 'a')}:1", f"b={os.path.join(root, 'b')}:3"]
    pretrain(tiny_config("", os.path.join(root, "mix"), datasets=mix, **kw))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_shards_resume_and_mixture(tmp_path):
    from train_utils import make_image_folder

    from lvmmed_ext.data import Preprocessing
    from lvmmed_ext.data.shards import prepare

    a, b = make_image_folder(tmp_path / "a", n=8), make_image_folder(tmp_path / "b", n=8, seed=1)
    prepare([str(a), str(b)], str(tmp_path / "shards"), Preprocessing(max_side=48), shard_size=2, log=lambda *_: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert full["step"] == part["step"] == 4 and full["loader_workers"] == 0
    assert all(torch.equal(full["backbone"][k], part["backbone"][k]) for k in full["backbone"])
    seen = json.load(open(tmp_path / "mix" / "config.json"))["mixture"]["seen"]
    assert sum(seen.values()) == 4 * 2 * WORLD and seen["b"] > seen["a"]
