"""Test helpers for DICOM outputs: phantom series on disk (axial, oblique, shuffled files) and two independent
decoders of a DICOM Segmentation (plain pydicom, and highdicom), both placing frames by SimpleITK's reading of the
source series rather than by anything the writer computed."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from HepatoblastomaSegLib.io import Geometry, Volume, write_dicom_series
from HepatoblastomaSegLib.phantom.case import generate_case

from conftest import oblique_direction


@functools.lru_cache(maxsize=4)
def _phantom_image(seed: int) -> Volume:
    return generate_case("ct", seed, 0, "small").image


def phantom_series(folder: Path, *, oblique: bool = False, shuffle_seed: int | None = 0, seed: int = 7) -> Path:
    """A small phantom CT written as a DICOM series in ``folder``; with ``oblique`` on a rotated grid (same voxels);
    with ``shuffle_seed`` the files get random names, so directory order says nothing about slice order."""
    image = _phantom_image(seed)
    if oblique:
        g = image.geometry
        image = Volume(image.array, Geometry(g.size, g.spacing_mm, g.origin_mm, oblique_direction()))
    write_dicom_series(image, folder, modality="CT", patient_id="PHANTOM^ONE", uid_seed=f"{seed}/{oblique}")
    if shuffle_seed is not None:
        files = sorted(folder.iterdir())
        names = np.random.default_rng(shuffle_seed).permutation(len(files))
        for path, k in zip(files, names):
            path.rename(folder / f"x{int(k) * 7919 % 10007:05d}")
    return folder


def series_order(folder: Path) -> tuple[sitk.Image, list[str]]:
    """SimpleITK's volume of the series in ``folder`` and the SOPInstanceUID of each of its slices, in z order."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    return image, uids


def decode_seg_pydicom(seg_path: Path, source_folder: Path) -> np.ndarray:
    """The SEG's segment 1 as a [z, y, x] uint8 array on the source series' grid, with pydicom alone."""
    image, uids = series_order(source_folder)
    slice_of = {uid: k for k, uid in enumerate(uids)}
    seg = pydicom.dcmread(seg_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        identification = item if "SegmentIdentificationSequence" in item else shared  # shared when one segment
        assert int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == 1
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        k = slice_of[str(source.ReferencedSOPInstanceUID)]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert image.TransformPhysicalPointToIndex(position) == (0, 0, k)
        out[k] = frame
    return out


def decode_seg_highdicom(seg_path: Path, source_folder: Path) -> np.ndarray:
    """The SEG's segment 1 as a [z, y, x] uint8 array on the source series' grid, with highdicom."""
    import highdicom as hd

    _, uids = series_order(source_folder)
    seg = hd.seg.segread(seg_path)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1],
                                               assert_missing_frames_are_empty=True)
    return np.asarray(pixels[..., 0], dtype=np.uint8)


def decode_pm_pydicom(pm_path: Path, source_folder: Path) -> np.ndarray:
    """A Parametric Map's real-world values as a [z, y, x] float array on the source grid, with pydicom alone."""
    image, uids = series_order(source_folder)
    slice_of = {uid: k for k, uid in enumerate(uids)}
    pm = pydicom.dcmread(pm_path)
    frames = pm.pixel_array.reshape(int(pm.NumberOfFrames), int(pm.Rows), int(pm.Columns))
    out = np.full(sitk.GetArrayViewFromImage(image).shape, np.nan, np.float32)
    for frame, item in zip(frames, pm.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        groups = item if "RealWorldValueMappingSequence" in item else pm.SharedFunctionalGroupsSequence[0]
        mapping = groups.RealWorldValueMappingSequence[0]
        out[slice_of[str(source.ReferencedSOPInstanceUID)]] = (frame * float(mapping.RealWorldValueSlope)
                                                               + float(mapping.RealWorldValueIntercept))
    return out


def first_source_header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.is_file()), stop_before_pixels=True)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of David Clunie's DICOM validator (dicom3tools' dciodvfy) for ``path``."""
    import subprocess

    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
