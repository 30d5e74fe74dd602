"""Benchmark reading a DICOM CT series, uncompressed and in each compressed transfer syntax: time and exactness.

A full-size phantom CT (512 x 512 in-plane) is written as a DICOM series once into ``--workdir``, then copied into
JPEG 2000 lossless, HTJ2K lossless, JPEG-LS lossless, JPEG lossless (process 14, SV1) and RLE lossless with the
test suite's encoders (``Testing/helpers_dicom.py``: pydicom with pylibjpeg-openjpeg and pyjpegls, imagecodecs).
Each is read with ``read_volume`` (headers by pydicom, pixels decoded by GDCM inside SimpleITK): best of
``--repeats`` wall times, the compression ratio, and whether the voxels equal the uncompressed read.

    .venv/bin/python benchmarks/bench_dicom_read.py --json dicom_read.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

from pydicom.uid import (  # noqa: E402
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from report import write_results  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)
from helpers_dicom import compress_series  # noqa: E402
from HepatoblastomaSegLib.io import read_volume, write_dicom_series  # noqa: E402
from HepatoblastomaSegLib.io.dicom_headers import scan_folder  # noqa: E402
from HepatoblastomaSegLib.phantom import generate_case  # noqa: E402

SYNTAXES = [JPEG2000Lossless, HTJ2KLossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless]


def _best_read_s(folder: Path, repeats: int):
    best, volume = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        volume = read_volume(folder)
        best = min(best, time.perf_counter() - t0)
    return best, volume


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hbseg_bench_dicom_read"))
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    plain = args.workdir / f"{args.size}_plain"
    if not plain.exists():
        write_dicom_series(generate_case("ct", 3, 0, args.size).image, plain, modality="CT", uid_seed="bench")
    t0 = time.perf_counter()
    scan_folder(plain)
    results = {"files": len(list(plain.iterdir())), "header_scan_s": round(time.perf_counter() - t0, 3)}
    plain_bytes = sum(p.stat().st_size for p in plain.iterdir())
    seconds, reference = _best_read_s(plain, args.repeats)
    results["shape_zyx"] = list(reference.array.shape)
    results["uncompressed"] = {"read_s": round(seconds, 2)}
    for syntax in SYNTAXES:
        folder = args.workdir / f"{args.size}_{syntax.keyword}"
        if not folder.exists():
            compress_series(plain, folder, syntax)
        seconds, volume = _best_read_s(folder, args.repeats)
        results[syntax.keyword] = {
            "read_s": round(seconds, 2),
            "compression_ratio": round(plain_bytes / sum(p.stat().st_size for p in folder.iterdir()), 2),
            "voxels_equal": bool(np.array_equal(volume.array, reference.array)),
        }
    return write_results(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
