"""Fingerprints of short fixed-seed pretraining runs, one per loss and data mode, to show that a refactoring of the
training layer changes no result: the SHA-256 of every tensor of each run's checkpoint (backbone, head, EMA teacher,
optimizer state) and its logged losses.

    python3 scripts/train_fingerprint.py OUT.json [--only NAME ...]
    python3 scripts/train_fingerprint.py NEW.json --compare OLD.json     # exit 1 on any difference

Runs on the CPU with one thread (about 2 minutes); each run writes to a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_utils import make_image_folder  # noqa: E402  (the tests' image folder, one home)


def _images(folder: Path, n: int, seed: int, size: int = 48) -> str:
    return str(make_image_folder(folder, n=n, size=size, seed=seed))


def _volumes(folder: Path) -> str:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(2):
        vol = rng.normal(0, 1, (24, 20, 12)).cumsum(0).astype(np.float32) * 100
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"v{i}.nii.gz"))
    return str(folder)


def _labels(root: Path, images: str) -> list[str]:
    paths = sorted(str(p) for p in Path(images).glob("*.png"))
    single = root / "single.csv"
    single.write_text("".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(paths)))
    multi = root / "multi.csv"
    multi.write_text("path,u,v\n" + "".join(f"{p},{i % 2},{1 - i % 2}\n" for i, p in enumerate(paths)))
    return ["--labels", f"side={single}", "--labels", f"find={multi}"]


BASE = (
    "--steps 3 --batch-size 8 --workers 0 --max-side 64 --arch resnet18 --width 4 --image-size 32 --seed 3 "
    "--ckpt-every 2 --no-eval"
).split()
GM = "--loss gm --head-opt dim=16 --head-opt graph_size=4 --k 2".split()
INFONCE = "--loss infonce --head-opt hidden_dim=16 --head-opt out_dim=8".split()


def cases(root: Path) -> dict[str, list[str]]:
    a = _images(root / "a", 16, 0)
    b = _images(root / "b", 10, 1)
    return {
        "gm": ["--data", a, *GM],
        "gm-local-crops": ["--data", a, *GM, *"--local-crops 2 --local-size 32".split()],
        "infonce": ["--data", a, *INFONCE],
        "infonce-workers": ["--data", a, *INFONCE, "--workers", "2"],
        "vicreg": ["--data", a, *"--loss vicreg --head-opt hidden_dim=16 --head-opt out_dim=16".split()],
        "peac": ["--data", a, *"--loss peac --image-size 64 --head-opt dim=8 --head-opt hidden_dim=16".split()],
        "ark": [*_labels(root, a), *"--loss ark --head-opt dim=8 --head-opt hidden_dim=16".split()],
        "genesis": ["--data", a, *"--loss genesis --batch-size 2".split()],
        "genesis-3d": [
            "--data",
            _volumes(root / "vols"),
            *"--loss genesis --arch unet3d --crop3d 8 16 16 --batch-size 2".split(),
        ],
        "mixture": ["--data", f"x={a}:2", "--data", f"y={b}:1", *INFONCE],
        "mixture-balanced": ["--data", f"x={a}", "--data", f"y={b}", "--balance", "dataset", *GM],
        "shards": ["--data", "SHARDS", *INFONCE],
    }


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def fingerprint(run: Path) -> dict:
    state = torch.load(run / "checkpoint.pt", weights_only=False, map_location="cpu")
    out = {}
    for part in ("backbone", "head", "teacher"):
        for k, v in sorted((state.get(part) or {}).items()):
            out[f"{part}.{k}"] = digest(v)
    opt = state["optimizer"]["state"]
    for pid in sorted(opt):
        for k, v in sorted(opt[pid].items()):
            if torch.is_tensor(v):
                out[f"optimizer.{pid}.{k}"] = digest(v)
    lines = (run / "log.csv").read_text().splitlines()
    head = lines[0].split(",")
    out["losses"] = [row.split(",")[head.index("loss")] for row in lines[1:]]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="JSON file to write")
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--compare", default=None, metavar="OLD.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    from lvmmed_ext.data.shards import main as prepare_main
    from lvmmed_ext.train.cli import main as pretrain_main

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, argv in cases(root).items():
            if args.only and name not in args.only:
                continue
            if "SHARDS" in argv:
                shards = root / "shards"
                assert prepare_main(["--data", str(root / "a"), "--out", str(shards), "--max-side", "64",
                                     "--shard-size", "5", "--workers", "1"]) == 0  # fmt: skip
                argv = [str(shards) if a == "SHARDS" else a for a in argv]
            run = root / f"run-{name}"
            rc = pretrain_main([*BASE, *argv, "--out", str(run)])  # a case's options override BASE's
            results[name] = fingerprint(run) if rc == 0 else {"exit": rc}
            print(f"{name}: exit {rc}, {len(results[name])} entries", file=sys.stderr)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        bad = [n for n in results if results[n] != old.get(n)]
        for n in bad:
            diff = [k for k in set(results[n]) | set(old.get(n, {})) if results[n].get(k) != old.get(n, {}).get(k)]
            print(f"DIFFERENT {n}: {sorted(diff)[:8]}")
        print("identical" if not bad else f"{len(bad)} of {len(results)} runs differ")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
