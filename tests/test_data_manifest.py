"""The scan manifest: reuse of unchanged headers, re-reading of changed/new files, vanished files, the racy window,
parallel header reads equal serial ones, and ``lvmmed scan``."""

import os

import cv2
import numpy as np
import pytest

from lvmmed_ext.data import manifest
from lvmmed_ext.data.io import walk
from lvmmed_ext.data.manifest import scan
from lvmmed_ext.errors import UsageError

OLD = 1_600_000_000  # a modification time far outside the racy window


def _png(path, side=8, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.full((side, side), value, np.uint8))
    os.utime(path, (OLD, OLD))


def _tree(root, n=6):
    for i in range(n):
        _png(os.path.join(root, f"d{i % 2}", f"im{i}.png"), side=8 + i)
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not an image")
    os.utime(os.path.join(root, "notes.txt"), (OLD, OLD))


def test_second_scan_reuses_every_header(tmp_path):
    _tree(tmp_path)
    first = scan(tmp_path, manifest=True)
    assert (first.read, first.reused, first.ignored) == (7, 0, 1)
    assert first.manifest == os.path.join(tmp_path, manifest.MANIFEST_NAME)
    second = scan(tmp_path, manifest=True)
    assert (second.read, second.reused, second.ignored) == (0, 7, 1)
    assert second.sources == first.sources
    assert second.sources == scan(tmp_path).sources  # same files, same order as a scan without manifest


def test_changed_new_and_vanished_files_are_seen(tmp_path):
    _tree(tmp_path)
    scan(tmp_path, manifest=True)
    changed = os.path.join(tmp_path, "d0", "im0.png")
    with open(changed, "wb") as f:  # now unreadable: must not be served from the manifest as a good image
        f.write(b"garbage")
    os.utime(changed, (OLD + 5, OLD + 5))
    _png(os.path.join(tmp_path, "d1", "new.png"))
    os.remove(os.path.join(tmp_path, "d1", "im1.png"))
    r = scan(tmp_path, manifest=True)
    assert r.read == 2 and r.reused == 5
    assert [p for p, _ in r.skipped] == [changed]
    paths = [s.path for s in r.sources]
    assert os.path.join(tmp_path, "d1", "new.png") in paths and os.path.join(tmp_path, "d1", "im1.png") not in paths
    assert scan(tmp_path, manifest=True).read == 0


def test_files_modified_just_before_the_scan_are_read_again(tmp_path):
    _tree(tmp_path)
    cv2.imwrite(str(tmp_path / "fresh.png"), np.zeros((4, 4), np.uint8))  # mtime = now: racy
    scan(tmp_path, manifest=True)
    assert scan(tmp_path, manifest=True).read == 1


def test_parallel_header_reads_equal_serial(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "CHUNK", 2)
    _tree(tmp_path, n=9)
    serial = manifest.read_headers(sorted(str(p) for p in tmp_path.rglob("*.png")), axis=2)
    parallel = manifest.read_headers(sorted(str(p) for p in tmp_path.rglob("*.png")), axis=2, workers=2)
    assert serial == parallel and len(serial) == 9


def test_read_only_folder_keeps_its_manifest_in_the_cache(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _tree(data)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(manifest.os, "access", lambda path, mode: False)
    r = scan(data, manifest=True)
    assert r.manifest.startswith(str(tmp_path / "cache")) and not (data / manifest.MANIFEST_NAME).exists()
    assert scan(data, manifest=True).read == 0


def test_errors_name_the_folder_and_write_nothing(tmp_path):
    with pytest.raises(UsageError, match="--data .*nope does not exist"):
        manifest.scan_folder(str(tmp_path / "nope"))
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(UsageError, match="no readable images in --data"):
        manifest.scan_folder(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["only.txt"]


def test_scan_command(tmp_path, capsys):
    _tree(tmp_path)
    assert manifest.main([str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 images in 6 files" in out and "7 headers read, 0 reused" in out
    assert manifest.main([str(tmp_path / "nope")]) == 2
    assert "lvmmed scan: error: scan " in capsys.readouterr().err


def test_a_symlink_loop_is_walked_once(tmp_path):
    # a link back to an ancestor folder used to be followed ~40 levels deep, multiplying every image
    _tree(tmp_path / "data", n=4)
    os.symlink(str(tmp_path / "data"), str(tmp_path / "data" / "d0" / "loop"))
    os.symlink(str(tmp_path / "data" / "d1"), str(tmp_path / "data" / "d1-again"))  # a second name for a folder
    assert scan(tmp_path / "data", manifest=True).count == 4
    assert scan(tmp_path / "data").count == 4
    assert len(walk(str(tmp_path / "data"))) == 5  # the 4 images and notes.txt
