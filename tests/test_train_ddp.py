"""DDP on CPU with 2 gloo processes: the all-gathered InfoNCE and VICReg gradients equal the single-process ones,
and the trainer runs under torchrun-style environment variables, writes one checkpoint and resumes exactly."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)


def _gather_check(rank: int, out: str) -> None:
    from lvmmed_ext.train import info_nce, vicreg

    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(WORLD * 3, 5, generator=g, dtype=torch.float64)
    z_t = torch.randn(WORLD * 3, 5, generator=g, dtype=torch.float64)
    mine = slice(rank * 3, rank * 3 + 3)
    a, b = z_s[mine].clone().requires_grad_(), z_t[mine].clone().requires_grad_()
    loss = info_nce(a, b, 0.3)
    loss.backward()
    result = {"loss": loss.detach(), "ga": a.grad, "gb": b.grad}
    a, b = z_s[mine].clone().requires_grad_(), z_t[mine].clone().requires_grad_()
    loss = vicreg(a, b)
    loss.backward()
    result.update(vicreg_loss=loss.detach(), vicreg_ga=a.grad, vicreg_gb=b.grad)
    torch.save(result, os.path.join(out, f"gather{rank}.pt"))


def _worker(rank: int, port: int, data: str, root: str) -> None:
    _env(rank, port)
    from train_utils import tiny_config

    from lvmmed_ext.train import pretrain

    full = pretrain(tiny_config(data, os.path.join(root, "full"), batch_size=2))  # joins the group (gloo)
    part = os.path.join(root, "part")
    pretrain(tiny_config(data, part, batch_size=2), stop_after=4)
    resumed = pretrain(tiny_config(data, part, batch_size=2), resume=part)
    torch.save(
        {"steps": (full.step, resumed.step), "world": dist.get_world_size()}, os.path.join(root, f"rank{rank}.pt")
    )
    _gather_check(rank, root)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from train_utils import make_image_folder

    root = tmp_path_factory.mktemp("ddp")
    data = make_image_folder(root / "data")
    mp.spawn(_worker, args=(_free_port(), str(data), str(root)), nprocs=WORLD, join=True)
    return root


def test_all_gather_negatives_give_the_full_batch_gradient(ddp_run):
    tmp_path = ddp_run
    from lvmmed_ext.train import info_nce

    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(WORLD * 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(WORLD * 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    full = info_nce(z_s, z_t, 0.3, gather=False)
    full.backward()
    parts = [torch.load(tmp_path / f"gather{r}.pt") for r in range(WORLD)]
    # the global objective is the mean of the ranks' losses; DDP averages gradients over ranks, hence / WORLD
    torch.testing.assert_close(sum(p["loss"] for p in parts) / WORLD, full.detach(), rtol=1e-12, atol=1e-12)
    for r, p in enumerate(parts):
        torch.testing.assert_close(p["ga"] / WORLD, z_s.grad[r * 3 : r * 3 + 3], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p["gb"] / WORLD, z_t.grad[r * 3 : r * 3 + 3], rtol=1e-10, atol=1e-12)


def test_vicreg_statistics_over_the_global_batch(ddp_run):
    from lvmmed_ext.train import vicreg

    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(WORLD * 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(WORLD * 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    full = vicreg(z_s, z_t, gather=False)
    full.backward()
    parts = [torch.load(ddp_run / f"gather{r}.pt") for r in range(WORLD)]
    for r, p in enumerate(parts):  # every rank computes the global loss; DDP's mean over ranks gives its gradient
        torch.testing.assert_close(p["vicreg_loss"], full.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p["vicreg_ga"] / WORLD, z_s.grad[r * 3 : r * 3 + 3], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p["vicreg_gb"] / WORLD, z_t.grad[r * 3 : r * 3 + 3], rtol=1e-10, atol=1e-12)


def test_ddp_trainer_two_gloo_processes(ddp_run):
    tmp_path = ddp_run
    for r in range(WORLD):
        assert torch.load(tmp_path / f"rank{r}.pt") == {"steps": (6, 6), "world": WORLD}
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert full["step"] == part["step"] == 6 and len(full["rng"]) == WORLD
    assert full["config"]["global_batch"] == 4
    for k in full["backbone"]:
        assert torch.equal(full["backbone"][k], part["backbone"][k]), k
    for k in full["head"]:
        assert torch.equal(full["head"][k], part["head"][k]), k
    assert not [f for f in os.listdir(tmp_path / "full") if f.endswith(".tmp")]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_single_process_gather_is_identity():
    from lvmmed_ext.distributed import all_gather_with_grad

    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
