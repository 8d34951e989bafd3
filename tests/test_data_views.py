"""Views: crop geometry and cell centres (incl. flips), determinism, the data stream and its sampler."""

import cv2
import numpy as np
import pytest
import torch

from lvmmed_ext.data import (
    ImageSet,
    MultiViewConfig,
    Preprocessing,
    PretrainDataset,
    StreamBatchSampler,
    ViewConfig,
    cell_centres,
    collate_views,
    make_view,
    scan,
)
from lvmmed_ext.data.views import sample_box

PLAIN = dict(jitter_p=0.0, blur_p=0.0)


def test_cell_centres_layout_and_flip():
    pos = cell_centres((10, 20, 30, 60), (3, 2), flipped=False)
    assert pos.shape == (6, 2) and pos.dtype == np.float32
    np.testing.assert_allclose(pos[:2], [[15, 35], [15, 65]])  # row 0: y = 10 + 5, x = 20 + 15 / 20 + 45
    np.testing.assert_allclose(pos[-1], [35, 65])
    flipped = cell_centres((10, 20, 30, 60), (3, 2), flipped=True)
    np.testing.assert_allclose(flipped[:, 0], pos[:, 0])
    np.testing.assert_allclose(flipped[:, 1], pos.reshape(3, 2, 2)[:, ::-1, 1].ravel())
    np.testing.assert_allclose(cell_centres((0, 0, 4, 4), (2, 2), False, scale_yx=(2.0, 3.0))[3], [6, 9])


@pytest.mark.parametrize("seed", range(6))
def test_view_cells_show_the_pixels_at_their_positions(seed):
    """A coordinate-coded image: each view cell's mean value must equal the value at its reported centre."""
    h, w = 90, 120
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([(yy + 0.5) / h, (xx + 0.5) / w, np.zeros_like(yy)], axis=-1)  # colour: y, x, 0
    cfg = ViewConfig(size=60, scale=(0.2, 1.0), grid=(3, 4), flip_p=0.5, **PLAIN)
    view, pos = make_view(img, np.random.default_rng(seed), cfg)
    cells = view.reshape(3, 20, 4, 15, 3).mean(axis=(1, 3)).reshape(12, 3)
    np.testing.assert_allclose(cells[:, 0] * h, pos[:, 0], atol=0.6)
    np.testing.assert_allclose(cells[:, 1] * w, pos[:, 1], atol=0.6)


def test_sample_box_inside_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = sample_box(rng, 50, 80, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80 and h >= 1 and w >= 1
    assert sample_box(rng, 10, 1000, (0.9, 1.0), (3 / 4, 4 / 3)) == (
        0,
        493,
        10,
        13,
    )  # fallback: widest allowed ratio, centred


def test_views_are_deterministic_and_augmented():
    img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    cfg = ViewConfig(size=32, jitter_p=1.0, blur_p=1.0)
    a = make_view(img, np.random.default_rng(5), cfg)
    b = make_view(img, np.random.default_rng(5), cfg)
    c = make_view(img, np.random.default_rng(6), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (32, 32) and 0 <= a[0].min() and a[0].max() <= 1


def test_view_config_errors():
    with pytest.raises(ValueError, match="crop scale"):
        ViewConfig(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="n_global must be >= 2"):
        MultiViewConfig(ViewConfig(), n_global=1)


def test_stream_sampler_partitions_global_batches():
    b, w, steps = 3, 2, 4
    per_rank = [list(StreamBatchSampler(b, w, r, 0, steps)) for r in range(w)]
    for m in range(steps):
        both = per_rank[0][m] + per_rank[1][m]
        assert both == list(range(m * b * w, (m + 1) * b * w))
    assert list(StreamBatchSampler(b, w, 1, 2, steps)) == per_rank[1][2:]  # resuming at micro-step 2


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), rng.integers(0, 255, (40 + i, 50), dtype=np.uint8))
    return tmp_path


def _dataset(folder, n_local=0, in_chans=1):
    prep = Preprocessing(in_chans=in_chans)
    images = ImageSet(scan(folder).sources, prep)
    views = MultiViewConfig(
        ViewConfig(size=32, grid=(1, 1)), 2, ViewConfig(size=16, scale=(0.1, 0.4), grid=(1, 1)), n_local
    )
    return PretrainDataset(images, views, seed=3)


def test_stream_visits_every_image_once_per_epoch(folder):
    ds = _dataset(folder)
    for epoch in range(3):
        assert sorted(ds.index_at(epoch * 5 + k) for k in range(5)) == list(range(5))
    assert [ds.index_at(k) for k in range(5)] != [ds.index_at(5 + k) for k in range(5)]


def test_dataset_sample_and_collate(folder):
    ds = _dataset(folder, n_local=2, in_chans=3)
    batch = collate_views([ds[p] for p in range(4)])
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert [tuple(p.shape) for p in batch["pos"]] == [(4, 1, 2)] * 4
    assert batch["bad"] == []
    again = ds[2]
    torch.testing.assert_close(again["views"][0], batch["views"][0][2], rtol=0, atol=0)


def test_dataset_same_with_and_without_workers(folder):
    ds = _dataset(folder)
    direct = collate_views([ds[p] for p in range(6, 9)])
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=StreamBatchSampler(3, 1, 0, 2, 3), num_workers=1, collate_fn=collate_views
    )
    (via_worker,) = list(loader)
    for a, b in zip(direct["views"], via_worker["views"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_corrupt_file_mid_epoch_is_replaced_and_reported(folder):
    ok = cv2.imencode(".png", np.full((64, 64), 99, np.uint8))[1].tobytes()
    (folder / "zz_cut.png").write_bytes(ok[:60])  # header readable, pixel data truncated
    ds = _dataset(folder)
    assert len(ds) == 6
    bad = [b for p in range(12) for b in ds[p]["bad"]]
    assert [path.endswith("zz_cut.png") for path, _ in bad] == [True]  # reported once per process
    for p in range(12):
        assert ds[p]["views"][0].abs().sum() > 0
