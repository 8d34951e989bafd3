"""Shared by the training tests: a tiny image folder and a tiny, fast, deterministic pretraining config."""

from __future__ import annotations

import cv2
import numpy as np

from lvmmed_ext.data import Preprocessing
from lvmmed_ext.train import TrainConfig


def make_image_folder(path, n: int = 12, size: int = 40, seed: int = 0):
    """``n`` small 8-bit PNGs of blobs and stripes (enough structure for a contrastive loss to move)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(4, 12)]
        img = 120 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) + 60 * (np.sin(xx / rng.uniform(2, 6)) > 0)
        img = img + rng.normal(0, 10, img.shape)
        cv2.imwrite(str(path / f"img{i:02d}.png"), np.clip(img, 0, 255).astype(np.uint8))
    return path


def tiny_config(data, out, **overrides) -> TrainConfig:
    cfg = dict(
        data=str(data),
        out=str(out),
        arch="resnet18",
        width=4,
        loss="infonce",
        head_opts={"hidden_dim": 16, "out_dim": 8},
        image_size=32,
        batch_size=4,
        steps=6,
        ckpt_every=3,
        workers=0,
        seed=1,
        preprocessing=Preprocessing(max_side=64),
    )
    cfg.update(overrides)
    return TrainConfig(**cfg)
