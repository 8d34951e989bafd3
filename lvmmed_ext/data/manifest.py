"""The scan manifest: an index of a data folder (path, kind, frames, modality, size, mtime) that later scans reuse.

Reading every header of a large corpus takes minutes (pydicom/nibabel/PIL open each file); listing the folder and
comparing each file's size and modification time with the manifest takes a fraction of that. A file whose size or
mtime changed (or that is new) has its header read again; files that disappeared drop out. The manifest lives in the
folder as ``.lvmmed-manifest.tsv`` (hidden, so scans never list it) or, for a read-only folder, under
``$XDG_CACHE_HOME/lvmmed/manifests/``. ``lvmmed scan DIR`` builds it explicitly, reading headers in parallel
processes with a progress bar.

File layout: one JSON header line (format, version, axis, root), then one tab-separated line per file:
``relative path, kind ('' = not an image), frames, modality, size, mtime_ns, reason ('' = readable)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

from ..errors import UsageError, run_command
from ..options import add_arguments
from ..system import reader_processes
from .io import SUPPORTED, ReadError, ScanResult, Source, _kind_of, no_images_error, read_header, walk
from .presets import PREP_OPTIONS

MANIFEST_NAME = ".lvmmed-manifest.tsv"
FORMAT, VERSION = "lvmmed-manifest", 1
# Files modified this close (ns) to the moment the manifest is written are not trusted on the next scan: a change
# within the same mtime tick would leave size and mtime as they were (the "racy" case of git's index).
RACY_NS = 2_000_000_000
CHUNK = 256  # files per task of the parallel header reader


class Entry(NamedTuple):
    """What the manifest knows of one file: ``kind`` '' for a file of another type, ``reason`` why its header
    could not be read ('' when it could). (A named tuple: a million of them are built at every start.)"""

    kind: str
    count: int
    modality: str
    size: int
    mtime_ns: int
    reason: str = ""


def default_path(root: str) -> str:
    """Where the manifest of folder ``root`` is kept: inside it when it is writable, else in the user's cache."""
    root = os.path.abspath(root)
    if os.access(root, os.W_OK):
        return os.path.join(root, MANIFEST_NAME)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(root.encode()).hexdigest()[:16]
    return os.path.join(cache, "lvmmed", "manifests", f"{digest}.tsv")


def load(path: str, root: str) -> tuple[dict[str, Entry], int] | None:
    """``({relative path: Entry}, axis)`` from the manifest at ``path``, or None when there is none, it belongs
    to another folder, or it cannot be parsed (the scan then starts over)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
            if head.get("format") != FORMAT or head.get("version") != VERSION or head.get("root") != root:
                return None
            lines = f.read().splitlines()
        entries = {}
        for line in lines:
            rel, kind, count, modality, size, mtime, reason = line.split("\t")
            entries[rel] = Entry(kind, int(count), modality, int(size), int(mtime), reason)
        return entries, int(head["axis"])
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def stored(entries: dict[str, Entry], now_ns: int) -> dict[str, Entry]:
    """The entries as the manifest keeps them: a file modified within ``RACY_NS`` of ``now_ns`` gets size -1 (read
    again by the next scan); paths with a tab or newline are left out (read at every scan)."""
    return {
        rel: e if e.mtime_ns < now_ns - RACY_NS else e._replace(size=-1)
        for rel, e in entries.items()
        if "\t" not in rel and "\n" not in rel
    }


def save(path: str, root: str, axis: int, entries: dict[str, Entry]) -> bool:
    """Write ``entries`` (as :func:`stored` returns them) atomically; returns False (and writes nothing) when the
    location is not writable."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"format": FORMAT, "version": VERSION, "axis": axis, "root": root}) + "\n")
            for rel, e in entries.items():
                reason = " ".join(e.reason.split())
                f.write(f"{rel}\t{e.kind}\t{e.count}\t{e.modality}\t{e.size}\t{e.mtime_ns}\t{reason}\n")
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        return False


def _read_one(path: str, axis: int) -> tuple[str, int, str, str]:
    """(kind, frames, modality, reason) of one file, for the manifest."""
    kind = _kind_of(path)
    if kind is None:
        return "", 0, "", ""
    try:
        src = read_header(path, kind, axis)
    except ReadError as e:
        return kind, 0, "", str(e)
    return kind, src.count, src.modality or "", ""


def _read_chunk(args: tuple[list[str], int]) -> list[tuple[str, int, str, str]]:
    paths, axis = args
    return [_read_one(p, axis) for p in paths]


class CountBar:
    """``scan  42% |##########          | 4200/10000 files [00:02<00:03] 1903 files/s`` on stderr (redrawn in place
    on a terminal, a line per ~10% otherwise)."""

    def __init__(self, total: int, label: str = "scan", unit: str = "files", stream=None):
        self.total, self.label, self.unit = max(1, total), label, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0, self.shown = time.perf_counter(), -1

    def update(self, done: int) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = done / max(elapsed, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        frac = done / self.total
        line = (
            f"{self.label} {frac:4.0%} |{'#' * int(frac * 24):<24}| {done}/{self.total} {self.unit} "
            f"[{elapsed:.0f}s<{eta:.0f}s] {rate:.0f} {self.unit}/s"
        )
        if self.tty:
            self.stream.write("\r" + line)
        elif int(frac * 10) != self.shown or done == self.total:
            self.shown = int(frac * 10)
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def read_headers(paths: list[str], axis: int, workers: int = 0, progress: bool = False):
    """(kind, frames, modality, reason) of each of ``paths``, in order; ``workers`` > 1 reads in that many
    processes (chunks of ``CHUNK`` files); ``progress`` draws a ``CountBar``."""
    bar = CountBar(len(paths)) if progress and paths else None
    out: list[tuple[str, int, str, str]] = []
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_read_chunk, [(c, axis) for c in chunks]):
                out += part
                if bar:
                    bar.update(len(out))
    else:
        for c in chunks:
            out += _read_chunk((c, axis))
            if bar:
                bar.update(len(out))
    if bar:
        bar.close()
    return out


def scan_folder(
    root: str,
    axis: int = 2,
    what: str = "--data",
    workers: int = 0,
    progress: bool = False,
    path: str | None = None,
) -> ScanResult:
    """``scan`` of a folder through its manifest: list the files, read the headers of new and changed files only
    (all of them the first time), drop vanished ones, write the manifest back (when its location is writable).

    Args:
        root: the data folder.
        axis: NIfTI slicing axis (a manifest made with another axis has its NIfTI entries read again).
        what: the argument name used in error messages.
        workers: header-reading processes (0 or 1: this process).
        progress: draw a progress bar on stderr while reading headers.
        path: the manifest file (default ``default_path(root)``).

    Returns:
        ``ScanResult`` with ``reused`` (entries taken from the manifest), ``read`` (headers read) and
        ``manifest`` (its path, None when it could not be written). Raises ``UsageError`` as ``scan`` does.

    Example:
        >>> scan_folder("scans/").reused  # doctest: +SKIP
        131072
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise UsageError(f"{what} {root} does not exist" if not os.path.exists(root) else f"{what} {root} is a file")
    path = path or default_path(root)
    listing = walk(root)
    if not listing:
        raise UsageError(f"{what} {root} is empty (expected {SUPPORTED} files)")
    known, known_axis = load(path, root) or ({}, axis)
    entries: dict[str, Entry] = {}
    stale: list[tuple[str, int, int]] = []
    for rel, size, mtime in listing:
        e = known.get(rel)
        if e is None or e.size != size or e.mtime_ns != mtime or (e.kind == "nifti" and known_axis != axis):
            stale.append((rel, size, mtime))
        else:
            entries[rel] = e
    fresh = read_headers([os.path.join(root, rel) for rel, _, _ in stale], axis, workers, progress)
    for (rel, size, mtime), (kind, count, modality, reason) in zip(stale, fresh):
        entries[rel] = Entry(kind, count, modality, size, mtime, " ".join(reason.split()))
    result = ScanResult([], reused=len(listing) - len(stale), read=len(stale))
    prefix = os.path.join(root, "")
    for rel, _, _ in listing:
        e = entries[rel]
        full = prefix + rel
        if not e.kind:
            result.ignored += 1
        elif e.reason:
            result.skipped.append((full, e.reason))
        else:
            result.sources.append(Source(full, e.kind, e.count, e.modality or None))
    if not result.sources:
        raise no_images_error(result, what, root, len(listing))
    if not stale and len(known) == len(entries) and known_axis == axis:  # unchanged: nothing to write
        result.manifest = path
    else:
        keep = stored(entries, time.time_ns())
        result.manifest = path if (keep == known and known_axis == axis) or save(path, root, axis, keep) else None
    return result


def scan(
    paths: str | os.PathLike | list, axis: int = 2, what: str = "--data", manifest: bool = False, workers: int = 0
) -> ScanResult:
    """Find the images under a folder (recursively; hidden files skipped), or check an explicit file list.

    Reads headers only. Files whose header cannot be read are returned in ``skipped`` with the reason;
    files of other types are counted in ``ignored``. Raises ``UsageError`` for a missing or empty folder and
    for a folder without any image, naming the folder and what was found. With ``manifest`` a folder is scanned
    through its manifest (headers of unchanged files reused, see :func:`scan_folder`),
    reading headers in ``workers`` processes.

    Example:
        >>> from lvmmed_ext.data.manifest import scan
        >>> scan("/does/not/exist")
        Traceback (most recent call last):
        ...
        lvmmed_ext.errors.UsageError: --data /does/not/exist does not exist
    """
    if isinstance(paths, (str, os.PathLike)):
        root = os.fspath(paths)
        if not os.path.exists(root):
            raise UsageError(f"{what} {root} does not exist")
        if os.path.isfile(root):
            files = [root]
        elif manifest:
            return scan_folder(root, axis, what, workers=workers)
        else:
            files = [os.path.join(root, rel) for rel, _, _ in walk(root)]
            if not files:
                raise UsageError(f"{what} {root} is empty (expected {SUPPORTED} files)")
    else:
        root, files = "the file list", [os.fspath(p) for p in paths]
    result = ScanResult([])
    for path in files:
        kind = _kind_of(path)
        if kind is None:
            result.ignored += 1
            continue
        try:
            result.sources.append(read_header(path, kind, axis))
        except ReadError as e:
            result.skipped.append((path, str(e)))
    if not result.sources:
        raise no_images_error(result, what, root, len(files))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lvmmed scan",
        description="Index a data folder: read every image header (in parallel processes) and write the manifest "
        f"({MANIFEST_NAME} in the folder, or the user cache for a read-only folder) that lvmmed pretrain and every "
        "DDP rank reuse; a later scan re-reads only new and changed files.",
    )
    p.add_argument("data", nargs="+", help="data folder(s)")
    add_arguments(p, [o for o in PREP_OPTIONS if o.key == "axis"], "prepare")
    p.add_argument("--workers", type=int, default=reader_processes(), help="header-reading processes (all cores)")
    args = p.parse_args(argv)

    def run() -> int:
        if args.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {args.workers}")
        for folder in args.data:
            t0 = time.perf_counter()
            r = scan_folder(folder, getattr(args, "axis", 2), what="scan", workers=args.workers, progress=True)
            kinds: dict[str, int] = {}
            for s in r.sources:
                kinds[s.kind] = kinds.get(s.kind, 0) + s.count
            print(
                f"{os.path.abspath(folder)}: {r.count} images in {len(r.sources)} files "
                f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); {len(r.skipped)} unreadable, "
                f"{r.ignored} of other types; {r.read} headers read, {r.reused} reused in "
                f"{time.perf_counter() - t0:.2f} s; manifest {r.manifest or 'not written (no writable location)'}"
            )
        return 0

    return run_command("lvmmed scan", run)


if __name__ == "__main__":
    raise SystemExit(main())
