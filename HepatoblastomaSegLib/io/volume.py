"""Volumes on disk and in memory, with their geometry kept exactly.

A :class:`Volume` is a numpy array in SimpleITK's ``[z, y, x]`` index order plus a :class:`Geometry` (spacing,
origin and direction in LPS, as SimpleITK and every medical file format store them). Every stage of the pipeline
passes a Volume on, so the geometry of an output is always the geometry of its input, never re-derived.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and a DICOM
series folder (see :mod:`.dicom`). Writes are atomic (:mod:`.atomic`).
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import GeometryError, InputError
from .atomic import atomic_path, full_suffix
from .headers import (DeclaredImage, check_declared_image, nifti_non_finite_count, qform_sform_disagreement,
                      read_declared_image)
from .parallel_gzip import gzip_file

log = logging.getLogger(__name__)

READABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")

#: Default absolute tolerances for :meth:`Geometry.mismatches`. Spacing and origin are in mm; files round-trip
#: 2.5 as 2.4999999999999996, and DICOM stores positions as decimal strings of at most 16 characters.
SPACING_TOL_MM = 1e-4
ORIGIN_TOL_MM = 1e-3
DIRECTION_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the voxels of a 3D image lie in patient space (LPS, millimetres), in SimpleITK's conventions.

    ``size`` and ``spacing_mm`` are in (x, y, z) order, i.e. the reverse of the numpy array's shape.
    ``direction`` is the 3x3 direction cosine matrix, row-major, its columns the world directions of the i, j, k axes.
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "spacing_mm", tuple(float(v) for v in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(v) for v in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.size) != 3 or len(self.spacing_mm) != 3 or len(self.origin_mm) != 3 or len(self.direction) != 9:
            raise ValueError("Geometry needs 3 sizes, 3 spacings, 3 origin values and 9 direction cosines")

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """The numpy array shape of a volume with this geometry."""
        return self.size[::-1]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing_mm)
        matrix[:3, 3] = self.origin_mm
        return matrix

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry on ``image`` (whose size must match) and return it."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(self.direction)
        return image

    def mismatches(self, other: Geometry, *, spacing_tol_mm: float = SPACING_TOL_MM,
                   origin_tol_mm: float = ORIGIN_TOL_MM, direction_tol: float = DIRECTION_TOL) -> list[str]:
        """Human-readable differences to ``other``; empty when the two grids agree within the tolerances."""
        problems = []
        if self.size != other.size:
            problems.append(f"size {self.size} vs {other.size}")
        if not np.allclose(self.spacing_mm, other.spacing_mm, rtol=0, atol=spacing_tol_mm):
            problems.append(f"spacing {_fmt(self.spacing_mm)} vs {_fmt(other.spacing_mm)} mm")
        if not np.allclose(self.origin_mm, other.origin_mm, rtol=0, atol=origin_tol_mm):
            problems.append(f"origin {_fmt(self.origin_mm)} vs {_fmt(other.origin_mm)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_tol):
            problems.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return problems

    def matches(self, other: Geometry, **tolerances: float) -> bool:
        return not self.mismatches(other, **tolerances)

    def to_dict(self) -> dict[str, list]:
        return {"size": list(self.size), "spacing_mm": list(self.spacing_mm), "origin_mm": list(self.origin_mm),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence]) -> Geometry:
        return cls(data["size"], data["spacing_mm"], data["origin_mm"], data["direction"])


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


@dataclasses.dataclass
class Volume:
    """A 3D scalar image: ``array`` indexed ``[z, y, x]`` plus the :class:`Geometry` that places it in space.

    ``path`` is where it was read from (for messages); ``metadata`` holds notes such as the DICOM series chosen.
    """

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.array.ndim != 3:
            raise ValueError(f"a Volume array must be 3D [z, y, x], got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape_zyx:
            raise ValueError(f"array shape {self.array.shape} does not match geometry size {self.geometry.size} "
                             f"(array is [z, y, x], size is (x, y, z))")

    # Convenience views of the geometry, with units in the names.
    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return self.geometry.spacing_mm

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        return self.geometry.origin_mm

    @property
    def direction(self) -> tuple[float, ...]:
        return self.geometry.direction

    @property
    def voxel_volume_ml(self) -> float:
        return self.geometry.voxel_volume_ml

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<in memory>"

    def with_array(self, array: np.ndarray, **metadata: Any) -> Volume:
        """A new Volume on the same grid holding ``array`` (e.g. a mask or an entropy map of this image)."""
        return Volume(array, self.geometry, self.path, {**self.metadata, **metadata})

    def to_sitk(self) -> sitk.Image:
        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        return self.geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False))

    @classmethod
    def from_sitk(cls, image: sitk.Image, path: str | Path | None = None, **metadata: Any) -> Volume:
        return cls(sitk.GetArrayFromImage(image), Geometry.of(image), None if path is None else Path(path),
                   dict(metadata))


def _check_suffix(path: Path, allowed: Sequence[str], action: str) -> str:
    suffix = full_suffix(path)
    if suffix == ".seg.nrrd":
        suffix = ".nrrd"
    if suffix not in allowed:
        raise InputError(f"cannot {action} '{suffix or 'no extension'}' files; use one of {', '.join(allowed)}"
                         + (" or a DICOM series folder" if action == "read" else ""), path)
    return suffix


def read_volume(path: str | Path, *, series_uid: str | None = None, allow_non_finite: bool = False) -> Volume:
    """Read a 3D scalar image file or a DICOM series folder into a :class:`Volume`.

    Raises :class:`InputError` naming ``path`` when the file is missing, unreadable or truncated, not a 3D scalar
    image (2D, 4D, multi-component), has zero or negative spacing, or (unless ``allow_non_finite``) NaN/Inf voxels.
    For a folder, ``series_uid`` picks the DICOM series; otherwise the one with the most slices is read and
    ``volume.metadata["dicom"]`` says which it was.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file or folder not found", path)
    if path.is_dir():
        from .dicom import read_dicom_series

        volume = read_dicom_series(path, series_uid=series_uid)
    else:
        _check_suffix(path, READABLE_SUFFIXES, "read")
        if path.stat().st_size == 0:
            raise InputError("file is empty (0 bytes)", path)
        declared = read_declared_image(path)
        if declared is not None:
            check_declared_image(path, declared)
        if full_suffix(path) == ".nii.gz":
            _check_gzip_complete(path)
        if declared is not None and not allow_non_finite:
            _check_nifti_finite(path, declared)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            if "spacing" in str(exc).lower():
                raise InputError(f"voxel spacing is zero or negative ({_itk_reason(exc)})", path) from exc
            raise InputError(f"unreadable or truncated image file ({_itk_reason(exc)})", path) from exc
        image = _as_3d_scalar(image, path)
        volume = Volume.from_sitk(image, path)
        if declared is not None and (distance := qform_sform_disagreement(declared)):
            _warn(volume, f"{path}: the NIfTI qform and sform disagree (the image's corners lie up to {distance} "
                          "apart); ITK's choice was used, as 3D Slicer does. Check the orientation of the result")
    _validate_volume(volume, path, allow_non_finite=allow_non_finite)
    return volume


def _check_gzip_complete(path: Path) -> None:
    """Refuse a truncated ``.nii.gz``: ITK fills the missing part of a cut-off gzip stream with zeros, silently.

    Fast path: the gzip trailer stores the uncompressed size (mod 2^32), which must equal the NIfTI header's
    ``vox_offset`` plus the voxel bytes. Only when it does not (a truncated or a multi-member file) is the whole
    stream decompressed to tell the two apart.
    """
    try:
        with gzip.open(path, "rb") as handle:
            header = handle.read(348)
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            stored_size = int.from_bytes(handle.read(4), "little")
    except (OSError, EOFError) as exc:
        raise InputError(f"unreadable or truncated gzip file ({exc})", path) from exc
    if len(header) < 348:
        raise InputError("truncated file: shorter than a NIfTI header", path)
    endian = "<" if int.from_bytes(header[:4], "little") == 348 else ">"
    dims = struct.unpack(endian + "8h", header[40:56])
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    n_dims = min(max(dims[0], 0), 7)
    expected = int(vox_offset) + int(np.prod([max(d, 1) for d in dims[1:n_dims + 1]], dtype=np.int64)) * bitpix // 8
    if stored_size == expected % 2**32:
        return
    try:
        with gzip.open(path, "rb") as handle:
            total = 0
            while chunk := handle.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"unreadable or truncated image file (gzip stream: {exc})", path) from exc
    if total < expected:
        raise InputError(f"truncated image file: {total} bytes of data, the header needs {expected}", path)


def _check_nifti_finite(path: Path, declared: DeclaredImage) -> None:
    """Refuse NaN/Inf voxels of a NIfTI, counted in the raw bytes: ITK's NIfTI reader turns them into 0."""
    n_nan, n_inf = nifti_non_finite_count(path, declared)
    if n_nan or n_inf:
        raise InputError(f"{n_nan + n_inf} voxels are not finite ({n_nan} NaN, {n_inf} Inf)", path)


def _itk_reason(exc: RuntimeError) -> str:
    """The informative line of an ITK exception (they start with file/line noise)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("sitk::ERROR", "/", "itk::ERROR")) or ":" in line:
            text = line.split("): ")[-1] if "): " in line else line
            return text[:300]
    return "ITK could not read it"


def _warn(volume: Volume, message: str) -> None:
    """A problem that does not stop the reading: logged, and kept in ``metadata["warnings"]`` for the summary."""
    log.warning(message)
    volume.metadata.setdefault("warnings", []).append(message)


def _as_3d_scalar(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError("image has complex-valued voxels (e.g. raw MRI k-space or phase data); a real-valued "
                         "magnitude or CT image is required", path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); a single-channel scalar image is required", path)
    dimension = image.GetDimension()
    if dimension == 4 and image.GetSize()[3] == 1:
        # A 4D file with a single time point is a 3D volume written by tools that always write 4D.
        return sitk.Extract(image, image.GetSize()[:3] + (0,), [0, 0, 0, 0])
    if dimension != 3:
        extra = f" with {image.GetSize()[3]} time points or channels" if dimension == 4 else ""
        raise InputError(f"image is {dimension}D{extra} (size {image.GetSize()}); a 3D volume is required", path)
    if min(image.GetSize()) < 2 and image.GetSize()[2] < 2:
        raise InputError(f"image has a single slice (size {image.GetSize()}); a 3D volume is required", path)
    return image


def _validate_volume(volume: Volume, path: Path, *, allow_non_finite: bool) -> None:
    spacing = np.asarray(volume.spacing_mm)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"voxel spacing {_fmt(spacing)} mm is zero, negative or not finite", path)
    if not np.all(np.isfinite(volume.origin_mm)) or not np.all(np.isfinite(volume.direction)):
        raise InputError("origin or direction is not finite", path)
    det = float(np.linalg.det(volume.geometry.direction_matrix))
    if abs(abs(det) - 1.0) > 1e-3:
        raise InputError(f"direction matrix is not orthonormal (determinant {det:.4g})", path)
    if not allow_non_finite and np.issubdtype(volume.array.dtype, np.floating):
        bad = ~np.isfinite(volume.array)
        if bad.any():
            n_nan = int(np.isnan(volume.array).sum())
            raise InputError(f"{int(bad.sum())} voxels are not finite ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf)",
                             path)


def read_mask(path: str | Path, *, reference: Volume | Geometry | None = None, what: str = "mask") -> Volume:
    """Read a binary mask (values 0 and 1 only) as a uint8 :class:`Volume`.

    With ``reference``, the mask must share its voxel grid (:class:`GeometryError` otherwise).
    """
    volume = read_volume(path)
    require_binary(volume, what=what)
    volume = volume.with_array(volume.array.astype(np.uint8, copy=False))
    if reference is not None:
        require_same_geometry(reference, volume, what_b=what)
    return volume


def require_binary(volume: Volume, *, what: str = "mask") -> None:
    """Raise :class:`InputError` unless every voxel of ``volume`` is 0 or 1."""
    array = volume.array
    if array.dtype == np.bool_ or (array.size and array.min() >= 0 and array.max() <= 1
                                   and np.issubdtype(array.dtype, np.integer)):
        return  # the common case, without the cost of np.unique on a full-size mask
    extra = [v for v in np.unique(array).tolist() if v not in (0, 1)]
    if extra:
        shown = ", ".join(f"{v:g}" for v in extra[:8]) + (", ..." if len(extra) > 8 else "")
        raise InputError(f"{what} must be binary (0/1) but holds the values {shown}", volume.path)


def require_same_geometry(a: Volume | Geometry, b: Volume | Geometry, *, what_a: str = "image",
                          what_b: str = "mask", **tolerances: float) -> None:
    """Raise :class:`GeometryError` naming both sources when ``a`` and ``b`` are not on the same voxel grid."""
    geom_a = a.geometry if isinstance(a, Volume) else a
    geom_b = b.geometry if isinstance(b, Volume) else b
    problems = geom_a.mismatches(geom_b, **tolerances)
    if problems:
        name_a = a.name if isinstance(a, Volume) else what_a
        path_b = b.path if isinstance(b, Volume) else None
        raise GeometryError(f"{what_b} does not lie on the grid of the {what_a} {name_a}: " + "; ".join(problems),
                            path_b)


def write_volume(volume: Volume, path: str | Path, *, compression_level: int = 1) -> Path:
    """Write ``volume`` with its exact geometry to NIfTI, NRRD or MetaImage, atomically. Returns the path.

    ``.nii.gz`` and ``.nrrd`` are gzip-compressed; ``compression_level`` 1 is several times faster than the default 6
    for a few percent more bytes (writing a float32 entropy map dominated end-to-end time at level 6). ``.nii.gz`` is
    compressed on all cores by :mod:`.parallel_gzip`: ITK's NIfTI writer ignores the level (1.7 s for an 80 MB float32
    map on 2 cores, against 0.5 s). ITK's NRRD writer honours it and is faster still (0.26 s), so NRRD stays ITK's.
    """
    path = Path(path)
    suffix = _check_suffix(path, WRITABLE_SUFFIXES, "write")
    compress = suffix in (".nii.gz", ".nrrd", ".mha")
    image = volume.to_sitk()
    with atomic_path(path) as tmp:
        try:
            if suffix == ".nii.gz":
                # ITK writes the header and the raw voxels; the gzip runs on every core (see parallel_gzip).
                raw = tmp.with_name(tmp.name[: -len(".gz")])
                try:
                    sitk.WriteImage(image, str(raw), False)
                    gzip_file(raw, tmp, level=compression_level)
                finally:
                    raw.unlink(missing_ok=True)
            else:
                sitk.WriteImage(image, str(tmp), compress, compression_level)
        except RuntimeError as exc:
            raise InputError(f"could not write image ({_itk_reason(exc)})", path) from exc
        except OSError as exc:
            raise InputError(f"could not write image ({exc.strerror or exc})", path) from exc
    return path
