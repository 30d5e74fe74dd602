"""DICOM series: choose one series in a folder, check its slices, read it; write a volume as a valid series.

Reading picks the series with the most slices (or the one named by its SeriesInstanceUID) and refuses a series whose
slice positions have a gap (a missing file) or uneven steps, because resampling such a stack silently distorts the
anatomy. Writing (used by the phantom generator) produces one file per slice with a consistent frame of reference,
patient position/orientation, pixel spacing, slice thickness, and for CT an unsigned pixel store with
RescaleIntercept -1024 / RescaleSlope 1, as scanners do.
"""

from __future__ import annotations

import contextlib
import hashlib
import locale
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import Volume

#: Relative deviation of a slice step from the median step above which a series is refused.
SLICE_STEP_RTOL = 0.05

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


def _series_ids(folder: Path) -> list[str]:
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from ``folder`` (files directly inside it) into a Volume in LPS.

    ``volume.metadata["dicom"]`` records the chosen SeriesInstanceUID, the number of slices, the other series present
    and why this one was chosen.
    """
    folder = Path(folder)
    if not any(p.is_file() for p in folder.iterdir()):
        raise InputError("folder is empty; expected a DICOM series (one file per slice)", folder)
    uids = _series_ids(folder)
    if not uids:
        raise InputError("no DICOM series found in this folder (are the files DICOM, directly in the folder?)",
                         folder)
    files_by_uid = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
    if series_uid is not None:
        if series_uid not in files_by_uid:
            raise InputError(f"SeriesInstanceUID {series_uid} is not in this folder; it holds "
                             + ", ".join(f"{u} ({len(f)} files)" for u, f in files_by_uid.items()), folder)
        chosen, reason = series_uid, "named by the caller"
    else:
        chosen = max(uids, key=lambda u: (len(files_by_uid[u]), u))
        reason = "the only series" if len(uids) == 1 else f"the most slices of {len(uids)} series"
    files = files_by_uid[chosen]
    if len(files) < 2:
        raise InputError(f"series {chosen} has a single slice; a 3D volume needs at least 2", folder)
    _check_slice_positions(files, folder, chosen)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _locale_kept():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"DICOM series {chosen} could not be read ({str(exc).splitlines()[-1][:200]})",
                         folder) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"series {chosen} is not greyscale ({image.GetNumberOfComponentsPerPixel()} components)",
                         folder)
    if image.GetPixelID() in (sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkUInt16):
        # Rescaled CT comes back as 32 bit; HU fit in 16 bits and halve the memory of every later stage.
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if -32768 <= stats.GetMinimum() and stats.GetMaximum() <= 32767:
            image = sitk.Cast(image, sitk.sitkInt16)
    others = {u: len(f) for u, f in files_by_uid.items() if u != chosen}
    return Volume.from_sitk(image, folder, dicom={"series_uid": chosen, "n_slices": len(files), "reason": reason,
                                                  "other_series": others})


def _check_slice_positions(files: list[str], folder: Path, uid: str) -> None:
    """Refuse a series with missing or unevenly spaced slices (positions projected on the slice normal)."""
    positions = []
    normal = None
    reader = sitk.ImageFileReader()
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"unreadable or truncated DICOM file in series {uid}", name) from exc
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            raise InputError("DICOM file lacks ImagePositionPatient/ImageOrientationPatient", name)
        if normal is None:
            cosines = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
            normal = np.cross(cosines[:3], cosines[3:])
        positions.append(float(np.dot(normal, [float(v) for v in reader.GetMetaData("0020|0032").split("\\")])))
    positions = np.sort(np.asarray(positions))
    steps = np.diff(positions)
    if np.any(steps < 1e-6):
        raise InputError(f"series {uid} has two slices at the same position ({len(files)} files)", folder)
    median = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median) > SLICE_STEP_RTOL * median)
    if bad.size:
        i = int(bad[0])
        gap = steps[i]
        kind = (f"about {round(gap / median) - 1} missing slice(s)" if gap > 1.5 * median
                else "unevenly spaced slices")
        raise InputError(f"series {uid} has {kind}: step {gap:.3g} mm between slice positions {positions[i]:.4g} "
                         f"and {positions[i + 1]:.4g} mm, the usual step is {median:.3g} mm ({bad.size} irregular "
                         f"step(s) in {len(files)} slices)", folder)


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
