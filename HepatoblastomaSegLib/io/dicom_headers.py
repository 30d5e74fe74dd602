"""DICOM headers of a folder: which files are CT/MR image slices, which are not, and whether a series is one stack.

Headers are read with pydicom (no pixel data), so a folder of a few hundred slices is sorted in well under a
second and every problem can name its file: a file that is not DICOM, a truncated file, a series with a gantry
tilt, non-parallel slices, a pixel spacing or matrix that changes between slices, a missing slice or uneven steps.
SimpleITK (ITK/GDCM) builds a volume from the first slice's orientation and spacing and the distance between the
outer slices; every check here refuses a stack that such a volume would misplace.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ..errors import InputError

#: Relative deviation of a slice step from the median step above which a series is refused.
SLICE_STEP_RTOL = 0.05
#: Largest in-plane drift of a slice from the line through the first slice along the slice normal, as a fraction of
#: the smaller pixel spacing. A volume places every slice on that line; beyond a tenth of a pixel the stack is sheared
#: (a gantry tilt) and reading it as a volume would move the anatomy.
IN_PLANE_DRIFT_PIXELS = 0.1
#: ... but never less than this, so that positions written with one decimal (0.05 mm rounding) still read.
IN_PLANE_DRIFT_MIN_MM = 0.1
#: Largest difference between two slices' direction cosines (ImageOrientationPatient), about 0.06 degrees.
ORIENTATION_TOL = 1e-3
#: Largest relative difference between two slices' pixel spacings.
PIXEL_SPACING_RTOL = 1e-3

#: Single-frame image storage classes read as a 3D stack: CT Image Storage, MR Image Storage.
IMAGE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2": "CT", "1.2.840.10008.5.1.4.1.1.4": "MR"}

_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_TRAILING_PADDING_TAG = b"\xfc\xff\xfc\xff"


@dataclass(frozen=True)
class SliceHeader:
    """What the volume needs from one image file's header, in DICOM's patient (LPS) frame, millimetres."""

    path: Path
    series_uid: str
    modality: str
    transfer_syntax: UID
    rows: int
    columns: int
    position_mm: np.ndarray      # ImagePositionPatient: centre of the first transmitted pixel
    orientation: np.ndarray      # ImageOrientationPatient: row direction, then column direction
    pixel_spacing_mm: np.ndarray  # PixelSpacing: between rows, between columns
    gantry_tilt_deg: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class FolderScan:
    """The folder's CT/MR image slices by SeriesInstanceUID, and one note per kind of thing that is not one."""

    series: dict[str, list[SliceHeader]]
    skipped: list[str]


def scan_folder(folder: Path) -> FolderScan:
    """Read the header of every file directly in ``folder`` (any name, hidden files excepted)."""
    series: dict[str, list[SliceHeader]] = defaultdict(list)
    other: dict[str, int] = defaultdict(int)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        dataset = _read_header(path)
        if dataset is None:
            other["file(s) that are not DICOM"] += 1
            continue
        sop_class = sop_class_of(dataset)
        uid = str(dataset.get("SeriesInstanceUID", ""))
        if sop_class not in IMAGE_SOP_CLASSES:
            name = UID(sop_class).name if sop_class else "DICOM object without SOP class"
            kind = "multi-frame image(s), not read" if "Enhanced" in name or "Multi-frame" in name else "object(s)"
            other[f"{name} {kind}" + (f" (series {uid})" if uid else "")] += 1
            continue
        if not uid:
            raise InputError("DICOM image without SeriesInstanceUID (removed by an anonymiser?): its series cannot "
                             "be told apart; restore the UIDs, or convert the series to NIfTI and segment that",
                             path)
        series[uid].append(_slice_header(dataset, path))
    skipped = [f"{n} {what}" for what, n in other.items()]
    return FolderScan(dict(series), skipped)


def sop_class_of(dataset: pydicom.Dataset) -> str:
    """The SOP Class UID of a file's data set, or, where an anonymiser removed it from the data set, of its file meta
    information (MediaStorageSOPClassUID, which names the same class); "" when neither says. The data set is given
    the file meta's value, so that writers referencing it (DICOM SEG) find it where they look."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    if not sop_class:
        meta = getattr(dataset, "file_meta", None)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
        if sop_class:
            dataset.SOPClassUID = sop_class
    return sop_class


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header without pixel data; None for a file that is not DICOM; InputError for a broken DICOM file."""
    try:
        with open(path, "rb") as fp:
            dataset = pydicom.dcmread(fp, stop_before_pixels=True)
            _check_pixel_data_complete(fp, dataset, path)
            return dataset
    except InvalidDicomError:
        pass
    except InputError:
        raise
    except Exception as exc:  # pydicom raises many types for a cut or damaged header
        raise InputError(f"unreadable or truncated DICOM file ({type(exc).__name__}: {str(exc)[:120]})",
                         path) from exc
    with open(path, "rb") as fp:
        start = fp.read(2)
    if start not in (b"\x02\x00", b"\x08\x00"):
        return None  # not even a data set starting with group 0002 or 0008
    try:  # DICOM without the 128-byte preamble and "DICM" (old files): accept only if it reads as an image header
        with warnings.catch_warnings():  # pydicom warns about what it guesses in a file that may not be DICOM
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return dataset if "SeriesInstanceUID" in dataset and sop_class_of(dataset) else None
    except Exception:
        return None


def _check_pixel_data_complete(fp, dataset: pydicom.Dataset, path: Path) -> None:
    """Refuse a file cut short inside its pixel data (GDCM then drops it from the series without a word).

    ``fp`` stands where pydicom stopped: at the PixelData element. Native pixel data must be as long as
    rows x columns x samples x bytes x frames and lie inside the file; encapsulated (compressed) pixel data must
    end with its sequence delimiter.
    """
    syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)))
    if "Rows" not in dataset or syntax.is_deflated:
        return  # not an image (SR, presentation state ...), or a deflated file (positions are in the inflated data)
    start = fp.tell()
    size = os.fstat(fp.fileno()).st_size
    element = fp.read(12)
    if len(element) < 8:
        raise InputError("truncated DICOM file: the header is complete but the pixel data is missing", path)
    endian = "<" if syntax.is_little_endian else ">"
    group, elem = struct.unpack(endian + "HH", element[:4])
    if group != 0x7FE0:
        return  # not stopped at the pixel data (another pydicom's behaviour): nothing to check against
    if syntax.is_implicit_VR:
        (length,), header = struct.unpack(endian + "I", element[4:8]), 8
    else:
        (length,), header = struct.unpack(endian + "I", element[8:12]), 12
    if length == 0xFFFFFFFF:  # encapsulated
        fp.seek(max(start, size - 65536))
        tail = fp.read()
        ends = tail.endswith(_SEQUENCE_DELIMITER) or (_SEQUENCE_DELIMITER + _TRAILING_PADDING_TAG) in tail
        if not ends:
            raise InputError(f"truncated DICOM file: its compressed pixel data ({syntax.name}) has no end", path)
        return
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    bits = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
            * int(dataset.get("BitsAllocated", 16)) * frames)
    expected = (bits + 7) // 8  # 1-bit data (SEG) is packed across frames
    present = size - start - header
    if length < expected or present < expected:
        raise InputError(f"truncated DICOM file: {max(min(present, length), 0)} of {expected} bytes of pixel data",
                         path)


def _slice_header(dataset: pydicom.Dataset, path: Path) -> SliceHeader:
    try:
        position = np.array([float(v) for v in dataset.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(v) for v in dataset.ImageOrientationPatient], dtype=np.float64)
        spacing = np.array([float(v) for v in dataset.PixelSpacing], dtype=np.float64)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError("DICOM image lacks a usable ImagePositionPatient, ImageOrientationPatient, PixelSpacing "
                         "or matrix size", path) from exc
    if position.shape != (3,) or orientation.shape != (6,) or spacing.shape != (2,) or not (
            np.all(np.isfinite(position)) and np.all(np.isfinite(orientation)) and np.all(spacing > 0)):
        raise InputError("DICOM image has a malformed ImagePositionPatient, ImageOrientationPatient or "
                         "PixelSpacing", path)
    syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)))
    tilt = dataset.get("GantryDetectorTilt", 0.0)
    return SliceHeader(path, str(dataset.SeriesInstanceUID), str(dataset.get("Modality", "")), syntax, rows, columns,
                       position, orientation, spacing, float(tilt) if tilt not in (None, "") else 0.0)


def check_stack(slices: list[SliceHeader], folder: Path) -> list[SliceHeader]:
    """Return the slices sorted along their normal, or refuse a series that is not one regular, parallel stack."""
    uid = slices[0].series_uid
    first = slices[0]
    for header in slices[1:]:
        if (header.rows, header.columns) != (first.rows, first.columns):
            raise InputError(f"series {uid}: matrix size changes between slices ({header.rows}x{header.columns} "
                             f"here, {first.rows}x{first.columns} in {first.path.name})", header.path)
        if np.max(np.abs(header.orientation - first.orientation)) > ORIENTATION_TOL:
            angle = np.degrees(np.arccos(np.clip(np.dot(_unit(header.normal), _unit(first.normal)), -1.0, 1.0)))
            raise InputError(f"series {uid}: non-parallel slices (orientation differs from {first.path.name}, "
                             f"slice planes {angle:.2g} degrees apart); this is not one volume", header.path)
        spacing_change = np.abs(header.pixel_spacing_mm - first.pixel_spacing_mm) / first.pixel_spacing_mm
        if np.max(spacing_change) > PIXEL_SPACING_RTOL:
            raise InputError(f"series {uid}: pixel spacing changes between slices "
                             f"({_spacing_text(header.pixel_spacing_mm)} mm here, "
                             f"{_spacing_text(first.pixel_spacing_mm)} mm in {first.path.name})", header.path)
    normal = _unit(first.normal)
    ordered = sorted(slices, key=lambda h: float(np.dot(normal, h.position_mm)))
    _check_in_plane_drift(ordered, normal, uid)
    _check_steps(ordered, normal, uid, folder)
    return ordered


def _check_in_plane_drift(ordered: list[SliceHeader], normal: np.ndarray, uid: str) -> None:
    """Refuse a sheared stack (gantry tilt): slices must follow each other along the slice normal."""
    offsets = np.array([h.position_mm - ordered[0].position_mm for h in ordered])
    along = offsets @ normal
    drift = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    limit = max(IN_PLANE_DRIFT_PIXELS * float(np.min(ordered[0].pixel_spacing_mm)), IN_PLANE_DRIFT_MIN_MM)
    if drift.max() > limit:
        k = int(np.argmax(drift))
        angle = np.degrees(np.arctan2(drift[-1], abs(along[-1]))) if along[-1] else 90.0
        tag = f", GantryDetectorTilt {ordered[0].gantry_tilt_deg:g} degrees" if ordered[0].gantry_tilt_deg else ""
        raise InputError(f"series {uid}: gantry tilt or sheared stack: slice positions leave the slice normal by "
                         f"{angle:.2f} degrees{tag} ({drift[k]:.3g} mm in-plane at this slice); a volume would "
                         "misplace them. Resample it first (e.g. 3D Slicer's DICOM acquisition geometry "
                         "regularization) or export the series without tilt", ordered[k].path)


def _check_steps(ordered: list[SliceHeader], normal: np.ndarray, uid: str, folder: Path) -> None:
    """Refuse missing or unevenly spaced slices (positions projected on the slice normal)."""
    positions = np.array([float(np.dot(normal, h.position_mm)) for h in ordered])
    steps = np.diff(positions)
    n = len(ordered)
    duplicate = np.flatnonzero(steps < 1e-6)
    if duplicate.size:
        i = int(duplicate[0])
        raise InputError(f"series {uid}: two slices at the same position ({ordered[i].path.name} and "
                         f"{ordered[i + 1].path.name}, {n} files)", folder)
    median = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median) > SLICE_STEP_RTOL * median)
    if bad.size:
        i = int(bad[0])
        gap = steps[i]
        kind = (f"about {round(gap / median) - 1} missing slice(s)" if gap > 1.5 * median
                else "unevenly spaced slices")
        raise InputError(f"series {uid} has {kind}: step {gap:.3g} mm between {ordered[i].path.name} and "
                         f"{ordered[i + 1].path.name} (slice positions {positions[i]:.4g} and {positions[i + 1]:.4g} "
                         f"mm), the usual step is {median:.3g} mm ({bad.size} irregular step(s) in {n} slices)",
                         folder)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _spacing_text(spacing: np.ndarray) -> str:
    return "x".join(f"{v:.4g}" for v in spacing)
