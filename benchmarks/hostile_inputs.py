"""Hostile inputs against ``hbseg segment``: seconds, peak memory and the one-line refusal of each (issue 21).

Run by hand (not a test)::

    .venv/bin/python benchmarks/hostile_inputs.py [--work /tmp/hostile] [--json out.json]

Writes each file into ``--work`` and runs ``hbseg segment FILE -o OUT`` in a fresh process under ``/usr/bin/time``
(wall seconds and peak resident memory of the whole command, Python and torch imports included). The bombs: a valid
gzip NIfTI of 1024^3 voxels (about 30 MB on disk, 1 GiB unpacked), a gzip NIfTI header claiming 2 GiB over 4 kB of
data, and NIfTI, MetaImage and NRRD headers of 32767^3 voxels. Then broken headers (NIfTI slice spacing 0 and NaN,
MetaImage negative spacing, a truncated uncompressed NIfTI) and images that cannot be a scan (blank CT, a 0/1 mask).
Every one must exit 2 with one line naming the file, within 10 s and 2 GB, and leave no output folder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from HepatoblastomaSegLib.io import Geometry, Volume, write_volume  # noqa: E402


def nifti_header(size_xyz, datatype=2, bitpix=8, spacing=(1.0, 1.0, 1.0)) -> bytes:
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *size_xyz, 1, 1, 1, 1)
    struct.pack_into("<2h", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, *spacing, 0, 0, 0, 0)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)
    header[344:348] = b"n+1\0"
    return bytes(header)


def write_inputs(work: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    path = work / "bomb_1024cubed.nii.gz"
    if not path.exists():
        with gzip.open(path, "wb", compresslevel=1) as handle:
            handle.write(nifti_header((1024, 1024, 1024)))
            for _ in range(1024):
                slab = np.zeros(1 << 20, np.uint8)
                slab[::97] = rng.integers(0, 255, slab[::97].size, dtype=np.uint8)
                handle.write(slab.tobytes())
    files.append(path)
    (work / "claims_2gib.nii.gz").write_bytes(gzip.compress(nifti_header((1024, 1024, 1024), 4, 16) + bytes(4096)))
    (work / "huge_32767.nii").write_bytes(nifti_header((32767,) * 3) + bytes(4096))
    (work / "huge_32767.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 32767 32767 32767\n"
                                          b"ElementSpacing = 1 1 1\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
                                          + bytes(4096))
    (work / "huge_32767.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 32767 32767 32767\n"
                                           b"spacings: 1 1 1\nencoding: gzip\nendian: little\n\n"
                                           + gzip.compress(bytes(4096)))
    files += [work / name for name in ("claims_2gib.nii.gz", "huge_32767.nii", "huge_32767.mha", "huge_32767.nrrd")]

    geometry = Geometry((96, 80, 24), (1.2, 1.2, 3.0), (0.0, 0.0, 0.0))
    z, y, x = np.indices(geometry.shape_zyx)
    body = ((y - 40) / 34.0) ** 2 + ((x - 48) / 40.0) ** 2 < 1
    ct = np.where(body, 40, -1000) + rng.normal(0, 12, body.shape)
    ct_volume = Volume(ct.astype(np.int16), geometry)
    for value, name in ((0.0, "slice_spacing_0.nii"), (float("nan"), "slice_spacing_nan.nii")):
        path = write_volume(ct_volume, work / name)
        data = bytearray(path.read_bytes())
        data[88:92] = struct.pack("<f", value)
        path.write_bytes(bytes(data))
        files.append(path)
    path = write_volume(ct_volume, work / "truncated.nii")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    files.append(path)
    path = write_volume(ct_volume, work / "negative_spacing.mha")
    import SimpleITK as sitk

    sitk.WriteImage(ct_volume.to_sitk(), str(path), False)
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 1.2 1.2 3", b"ElementSpacing = 1.2 1.2 -3"))
    files.append(path)
    files.append(write_volume(ct_volume.with_array((-1000 + rng.normal(0, 12, body.shape)).astype(np.int16)),
                              work / "blank_ct.nii.gz"))
    files.append(write_volume(ct_volume.with_array(body.astype(np.uint8)), work / "mask_as_image.nii.gz"))
    return files


def run_one(path: Path, work: Path) -> dict:
    out = work / f"out_{path.name}"
    shutil.rmtree(out, ignore_errors=True)
    command = ["/usr/bin/time", "-f", "TIME %e %M", sys.executable, "-m", "HepatoblastomaSegLib.cli", "segment",
               str(path), "-o", str(out), "--no-tta", "--progress", "none"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    match = re.search(r"TIME ([\d.]+) (\d+)", done.stderr)
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("TIME", "Command exited"))]
    return {"file": path.name, "bytes": path.stat().st_size, "exit": done.returncode, "seconds": float(match[1]),
            "peak_rss_mb": int(match[2]) / 1024, "output_left": out.exists(), "message": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hbseg_hostile"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [run_one(path, args.work) for path in write_inputs(args.work)]
    for r in results:
        print(f"{r['file']:<24} exit {r['exit']}  {r['seconds']:5.2f} s  {r['peak_rss_mb']:6.0f} MB  "
              f"{'OUTPUT LEFT ' if r['output_left'] else ''}{' | '.join(r['message'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = all(r["exit"] == 2 and len(r["message"]) == 1 and r["seconds"] < 10 and r["peak_rss_mb"] < 2048
             and not r["output_left"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
