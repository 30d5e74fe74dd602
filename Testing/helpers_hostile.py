"""Hostile input files for the hardening tests: broken headers, bombs, truncations, written byte by byte."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from HepatoblastomaSegLib.io import Volume, write_volume


def patch_nifti(path: Path, offset: int, fmt: str, *values) -> Path:
    """Overwrite header bytes of an uncompressed NIfTI-1 file (little endian, as ITK writes it)."""
    data = bytearray(path.read_bytes())
    packed = struct.pack("<" + fmt, *values)
    data[offset:offset + len(packed)] = packed
    path.write_bytes(bytes(data))
    return path


def nifti_with(volume: Volume, path: Path, offset: int, fmt: str, *values) -> Path:
    """``volume`` written as ``path`` (.nii or .nii.gz) with some header bytes replaced."""
    raw = write_volume(volume, path.with_name(path.name.removesuffix(".gz")))
    patch_nifti(raw, offset, fmt, *values)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw.read_bytes(), 1))
        raw.unlink()
    return path


def nifti_header_bomb(path: Path, size_xyz: tuple[int, int, int], *, datatype: int = 2, bitpix: int = 8,
                      data: bytes = b"\0" * 4096) -> Path:
    """A NIfTI-1 header declaring ``size_xyz`` voxels, followed by only ``data`` (gzip when path ends in .gz)."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *size_xyz, 1, 1, 1, 1)
    struct.pack_into("<2h", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 0, 0, 0, 0)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)
    header[344:348] = b"n+1\0"
    content = bytes(header) + data
    path.write_bytes(gzip.compress(content, 1) if path.name.endswith(".gz") else content)
    return path


def metaimage(path: Path, **fields: str) -> Path:
    """A 7x6x5 MET_SHORT .mha of zeros whose header has ``fields`` replaced (e.g. ElementSpacing="-1 1 1")."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 7), np.int16)), str(path), False)
    data = path.read_bytes()
    head, sep, body = data.partition(b"ElementDataFile = LOCAL\n")
    lines = head.decode().splitlines()
    for key, value in fields.items():
        lines = [f"{key} = {value}" if line.startswith(key + " ") else line for line in lines]
    path.write_bytes(("\n".join(lines) + "\n").encode() + sep + body)
    return path


def fake_predict(calls: list[str] | None = None):
    """A ``predict(case, progress)`` for :func:`run_cohort` without a network: reads the image, a mask of its
    positive voxels, entropy 0. Appends each case id to ``calls``."""
    from HepatoblastomaSegLib.infer.result import Prediction
    from HepatoblastomaSegLib.io import read_volume

    def predict(case, progress):
        volume = read_volume(case.image)
        if calls is not None:
            calls.append(case.case)
        mask = volume.with_array((volume.array > 0).astype(np.uint8))
        summary = {"input": str(case.image), "tumor_volume_ml": float(mask.array.sum()) * volume.voxel_volume_ml}
        return Prediction(mask, volume.with_array(np.zeros(volume.array.shape, np.float32)), summary)

    return predict
