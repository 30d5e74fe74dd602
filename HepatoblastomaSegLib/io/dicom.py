"""DICOM series: choose one series in a folder, check its slices, read it; write a volume as a valid series.

Reading picks the CT/MR series with the most slices (or the one named by its SeriesInstanceUID), says what else the
folder held, and refuses a series that is not one regular stack (:mod:`.dicom_headers`: a gap, uneven steps, a gantry
tilt, non-parallel slices, a pixel spacing that changes, a truncated file), because reading such a stack as a volume
silently distorts the anatomy. Pixel data, compressed or not, is decoded by GDCM inside SimpleITK.

Writing (used by the phantom generator) produces one file per slice with a consistent frame of reference, patient
position/orientation, pixel spacing, slice thickness, and for CT an unsigned pixel store with RescaleIntercept -1024 /
RescaleSlope 1, as scanners do.
"""

from __future__ import annotations

import contextlib
import hashlib
import locale
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .dicom_headers import FolderScan, SliceHeader, check_stack, scan_folder
from .headers import MAX_VOXELS_ENV, max_voxels
from .volume import Volume

_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_CT_INTERCEPT = -1024


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    """Undo GDCM's process-wide ``setlocale(LC_ALL, "C")``.

    GDCM's DICOM writer switches the C locale to "C" for its number formatting and leaves it there; Python's
    ``open()`` then defaults to ASCII and any later UTF-8 text file (a report with a degree sign) fails to read.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[list[str]]:
    """Collect what C/C++ code writes to file descriptor 2 (GDCM, OpenJPEG) instead of letting it reach the user.

    A decoder that fails prints one message per slice (OpenJPEG: "Expected a SOC marker", hundreds of lines);
    the lines are handed back so that the caller can turn them into one clear error.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no usable descriptor 2 (some GUI processes): nothing to keep off
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read one DICOM CT/MR series from ``folder`` (files directly inside it, any file names) into a Volume in LPS.

    Compressed pixel data (JPEG 2000 and HTJ2K, JPEG-LS, JPEG lossless, RLE, deflate) is decoded by GDCM inside
    SimpleITK. Objects that are not CT/MR image slices (SR, SEG, presentation states, non-DICOM files) are skipped
    and named. ``volume.metadata["dicom"]`` records the chosen SeriesInstanceUID, the number of slices, the other
    series present, what was skipped, and why this series was chosen.
    """
    folder = Path(folder)
    if not any(p.is_file() for p in folder.iterdir()):
        raise InputError("folder is empty; expected a DICOM series (one file per slice)", folder)
    scan = scan_folder(folder)
    if not scan.series:
        found = f" (found {'; '.join(scan.skipped)})" if scan.skipped else ""
        raise InputError("no DICOM series of CT or MR images found in this folder (are the files DICOM, directly "
                         f"in the folder?){found}", folder)
    chosen, reason = _choose_series(scan, series_uid, folder)
    slices = scan.series[chosen]
    if len(slices) < 2:
        raise InputError(f"series {chosen} has a single slice; a 3D volume needs at least 2", folder)
    slices = check_stack(slices, folder)
    _check_voxel_limit(slices, chosen, folder)
    image = _read_pixels(slices, chosen, folder)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"series {chosen} is not greyscale ({image.GetNumberOfComponentsPerPixel()} components)",
                         folder)
    if image.GetPixelID() in (sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkUInt16):
        # Rescaled CT comes back as 32 bit; HU fit in 16 bits and halve the memory of every later stage.
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if -32768 <= stats.GetMinimum() and stats.GetMaximum() <= 32767:
            image = sitk.Cast(image, sitk.sitkInt16)
    others = {u: len(s) for u, s in scan.series.items() if u != chosen}
    return Volume.from_sitk(image, folder, dicom={
        "series_uid": chosen, "n_slices": len(slices), "reason": reason, "other_series": others,
        "skipped": scan.skipped, "transfer_syntax": str(slices[0].transfer_syntax.name)})


def _check_voxel_limit(slices: list[SliceHeader], uid: str, folder: Path) -> None:
    """Refuse, before a pixel is decoded, a series larger than the voxel limit that every reader applies."""
    n_voxels = len(slices) * slices[0].rows * slices[0].columns
    limit = max_voxels()
    if n_voxels > limit:
        raise InputError(f"series {uid} has {n_voxels} voxels ({slices[0].columns}x{slices[0].rows}x{len(slices)}), "
                         f"more than the limit of {limit}; no clinical scan is that large (set {MAX_VOXELS_ENV} to "
                         "raise the limit)", folder)


def _choose_series(scan: FolderScan, series_uid: str | None, folder: Path) -> tuple[str, str]:
    """The series named by the caller, else the one with the most slices; the reason names what was left out."""
    counts = {uid: len(s) for uid, s in scan.series.items()}
    if series_uid is not None:
        if series_uid not in counts:
            skipped = f"; skipped {'; '.join(scan.skipped)}" if scan.skipped else ""
            raise InputError(f"SeriesInstanceUID {series_uid} is not in this folder as a CT/MR image series; it holds "
                             + ", ".join(f"{u} ({n} slices)" for u, n in counts.items()) + skipped, folder)
        chosen, reason = series_uid, "named by the caller"
    else:
        most = max(counts.values())
        tied = sorted(u for u, n in counts.items() if n == most)
        chosen = tied[0]
        if len(counts) == 1:
            reason = "the only CT/MR series"
        elif len(tied) == 1:
            reason = f"the most slices of {len(counts)} CT/MR series"
        else:
            reason = (f"{len(tied)} series have {most} slices; took the first by SeriesInstanceUID, "
                      "choose another with --series UID")
    left_out = [f"series {u} ({n} {scan.series[u][0].modality} slices)" for u, n in counts.items() if u != chosen]
    left_out += scan.skipped
    if left_out:
        reason += "; skipped " + "; ".join(left_out)
    return chosen, reason


def _read_pixels(slices: list[SliceHeader], uid: str, folder: Path) -> sitk.Image:
    """Decode the sorted slices into one image with SimpleITK (GDCM); one clear error when a slice cannot be."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(h.path) for h in slices])
    with _locale_kept(), _native_stderr_captured():
        try:
            return reader.Execute()
        except RuntimeError:
            pass
    for header in slices:  # find the first slice that fails, to name it
        with _locale_kept(), _native_stderr_captured() as noise:
            try:
                sitk.ReadImage(str(header.path))
                continue
            except RuntimeError as exc:
                itk_line = str(exc).strip().splitlines()[-1][:160]
        detail = (noise[0] if noise else itk_line).replace("sitk::ERROR: ", "")
        detail = detail.replace(f'"{header.path}"', "this file").replace(str(header.path), "this file")
        raise InputError(f"series {uid}: cannot decode the pixel data (transfer syntax {header.transfer_syntax.name}, "
                         f"{header.transfer_syntax}); GDCM in SimpleITK: {detail[:120]}", header.path)
    raise InputError(f"DICOM series {uid} could not be read as one volume", folder)


def _uid(*parts: object) -> str:
    """A deterministic DICOM UID under the 2.25 (UUID-derived) root, from a hash of ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def write_dicom_series(volume: Volume, folder: str | Path, *, modality: str, patient_id: str = "PHANTOM",
                       series_description: str = "", uid_seed: str = "") -> list[Path]:
    """Write ``volume`` as a DICOM series, one file per slice (``IM0001.dcm`` ...) in ``folder``.

    ``modality`` is "CT" (volume in HU; stored as unsigned 16 bit with RescaleIntercept -1024, slope 1) or "MR"
    (stored as unsigned 16 bit, values clipped to 0..65535). UIDs derive from ``uid_seed`` so that the same input
    gives the same files. Each slice is written atomically; the folder must not hold another series.
    """
    from .atomic import atomic_path

    modality = modality.upper()
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be CT or MR, not {modality!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = np.rint(volume.array.astype(np.float64))
    geometry = volume.geometry
    if np.linalg.det(geometry.direction_matrix) < 0:
        # DICOM has no left-handed grids: the slice axis is always row x column. Write the slices in reverse order
        # on the equivalent right-handed grid, so that every voxel keeps its physical position.
        data = data[::-1]
        flipped = geometry.direction_matrix.copy()
        flipped[:, 2] *= -1
        last = geometry.index_to_physical_matrix() @ np.array([0.0, 0.0, geometry.size[2] - 1.0, 1.0])
        geometry = type(geometry)(geometry.size, geometry.spacing_mm, tuple(last[:3]), tuple(flipped.ravel()))
    # GDCM applies the inverse of RescaleSlope/Intercept when it stores the pixels, so the values handed to it are
    # the real ones (HU for CT); it stores HU + 1024 as unsigned 16 bit.
    if modality == "CT":
        stored = np.clip(data, _CT_INTERCEPT, 65535 + _CT_INTERCEPT).astype(np.int16 if data.max() < 32768 else np.int32)
    else:
        stored = np.clip(data, 0, 65535).astype(np.uint16)

    direction = geometry.direction_matrix
    study_uid = _uid(uid_seed, "study")
    series_uid = _uid(uid_seed, "series", modality)
    frame_uid = _uid(uid_seed, "frame")
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    common = {
        "0008|0016": _SOP_CLASS[modality],
        "0008|0020": "20260101", "0008|0030": "000000",
        "0008|0060": modality,
        "0008|0070": "HepatoblastomaSeg phantom",
        "0008|103e": series_description or f"Synthetic {modality} phantom",
        "0010|0010": patient_id, "0010|0020": patient_id,
        "0020|000d": study_uid, "0020|000e": series_uid, "0020|0052": frame_uid,
        "0020|0011": "1",
        "0020|0037": orientation,
        "0028|0030": f"{geometry.spacing_mm[1]:.10g}\\{geometry.spacing_mm[0]:.10g}",  # row spacing \ column spacing
        "0018|0050": f"{geometry.spacing_mm[2]:.10g}",
        # Written by us, not left to GDCM: once a process has read any DICOM, GDCM adds this tag on its own, so the
        # same volume would give other bytes in a fresh process than after a read.
        "0018|0088": f"{geometry.spacing_mm[2]:.10g}",
        "0028|1052": str(_CT_INTERCEPT if modality == "CT" else 0),
        "0028|1053": "1",
        "0028|1054": "HU" if modality == "CT" else "US",
    }
    if modality == "MR":
        common.update({"0018|0020": "SE", "0018|0023": "3D" if geometry.spacing_mm[2] < 2 else "2D"})

    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(stored.shape[0]):
        slice_image = sitk.GetImageFromArray(stored[k][None])
        position = geometry.index_to_physical_matrix() @ np.array([0.0, 0.0, float(k), 1.0])
        slice_image.SetSpacing(geometry.spacing_mm)
        slice_image.SetOrigin(tuple(position[:3]))
        slice_image.SetDirection(geometry.direction)
        for tag, value in common.items():
            slice_image.SetMetaData(tag, value)
        slice_image.SetMetaData("0008|0018", _uid(uid_seed, "instance", modality, k))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position[:3]))
        slice_image.SetMetaData("0020|1041", f"{float(np.dot(np.cross(direction[:, 0], direction[:, 1]), position[:3])):.10g}")
        path = folder / f"IM{k + 1:04d}.dcm"
        with atomic_path(path) as tmp, _locale_kept():
            writer.SetFileName(str(tmp))
            writer.Execute(slice_image)
        paths.append(path)
    return paths
