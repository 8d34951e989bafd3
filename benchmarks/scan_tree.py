"""First scan vs a second start on an unchanged tree: writes N copies of one small CT DICOM (1,000 per folder),
then times ``scan_folder`` without a manifest (every header read) and again with it (headers reused).

    python benchmarks/scan_tree.py /tmp/tree --files 100000 --workers 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np


def write_tree(root: str, n: int, side: int = 16) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.Rows, ds.Columns = "CT", "Synthetic^Test", side, side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope = 15, 1, -1024, 1
    ds.PixelData = np.zeros((side, side), np.int16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    old = time.time() - 3600  # outside the manifest's racy window
    for i in range(n):
        folder = os.path.join(root, f"s{i // 1000:04d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"im{i:07d}.dcm")
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (old, old))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=1, help="header-reading processes of the first scan")
    ap.add_argument("--json", help="write the timings here")
    args = ap.parse_args()
    from lvmmed_ext.data.manifest import default_path, scan_folder

    if not os.path.isdir(args.root):
        write_tree(args.root, args.files)
    if os.path.exists(default_path(args.root)):
        os.remove(default_path(args.root))
    t = time.perf_counter()
    first = scan_folder(args.root, workers=args.workers)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    second = scan_folder(args.root)
    t_second = time.perf_counter() - t
    out = {
        "files": len(first.sources) + len(first.skipped) + first.ignored,
        "workers": args.workers,
        "first_s": t_first,
        "first_files_per_s": first.read / t_first,
        "second_s": t_second,
        "second_read": second.read,
        "ratio": t_second / t_first,
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
