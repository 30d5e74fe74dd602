"""What an image file's header declares, read by us before ITK reads a voxel.

ITK repairs broken headers without a word: a NIfTI ``pixdim`` of 0, NaN or Inf becomes 1 mm, NaN/Inf voxels of a
NIfTI become 0, a MetaImage's negative spacing is flipped, a cut-off uncompressed file is read zero-filled, and a
header that declares 32767^3 voxels makes it allocate them first and fail after. So the header of every NIfTI-1,
NRRD and MetaImage file is parsed here (a few hundred bytes, plain ``struct``), and :func:`check_declared_image`
refuses, naming the file:

- more voxels than the limit (:func:`max_voxels`: :data:`DEFAULT_MAX_VOXELS`, overridable with the environment
  variable :data:`MAX_VOXELS_ENV`), before any memory is allocated;
- fewer bytes of voxel data in an uncompressed file than the header declares (truncated);
- a spacing that is zero, negative, NaN or Inf; a MetaImage direction (``TransformMatrix``) that is not finite or
  is singular;
- NIfTI-2 (ITK here reads NIfTI-1 only) and gzip data in a file named ``.nii``, with what to do about it.

For NIfTI it also keeps the qform and sform, so that the reader can say when they disagree.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import full_suffix

#: Voxels an image may have unless :data:`MAX_VOXELS_ENV` says otherwise: 2^29 = 536 870 912, a 512x512 CT of
#: 2048 slices (1 GiB as int16). Larger is not a clinical abdominal scan; it would need tens of GB to process.
DEFAULT_MAX_VOXELS = 2**29
MAX_VOXELS_ENV = "HBSEG_MAX_VOXELS"

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 128: "u1", 256: "i1", 512: "u2",
                 768: "u4", 1024: "i8", 1280: "u8", 1536: "f16", 1792: "c16", 2048: "c32", 2304: "u1"}
_NRRD_DTYPES = {"signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1,
                "uint8_t": 1, "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2,
                "int16_t": 2, "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2,
                "uint16_t": 2, "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4,
                "uint32": 4, "uint32_t": 4, "longlong": 8, "long long": 8, "long long int": 8,
                "signed long long": 8, "signed long long int": 8, "int64": 8, "int64_t": 8, "ulonglong": 8,
                "unsigned long long": 8, "unsigned long long int": 8, "uint64": 8, "uint64_t": 8, "float": 4,
                "double": 8, "block": 1}
_MET_DTYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


def max_voxels() -> int:
    """The voxel limit: ``$HBSEG_MAX_VOXELS`` when set (a positive integer), else :data:`DEFAULT_MAX_VOXELS`."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{MAX_VOXELS_ENV}={text!r} must be a positive number of voxels")
    return value


@dataclasses.dataclass
class DeclaredImage:
    """The facts a header states, before any voxel is read."""

    size: tuple[int, ...]
    bytes_per_voxel: int
    spacing_mm: tuple[float, ...]
    data_file: Path | None = None  # where the voxels are; None when they are compressed (size unknown)
    data_offset: int = 0
    numpy_dtype: str | None = None  # NIfTI only: to look at float voxels before ITK replaces NaN/Inf
    direction: tuple[float, ...] | None = None
    qform: np.ndarray | None = None  # NIfTI: 3x4 RAS affine of the qform (None when qform_code is 0)
    sform: np.ndarray | None = None
    gzipped: bool = False

    @property
    def n_voxels(self) -> int:
        return int(np.prod([max(int(s), 1) for s in self.size], dtype=object))

    @property
    def data_bytes(self) -> int:
        return self.n_voxels * self.bytes_per_voxel


def read_declared_image(path: Path) -> DeclaredImage | None:
    """Parse the header of a NIfTI-1, NRRD or MetaImage file; None for other files."""
    suffix = full_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return _nifti(path, suffix)
    if suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
        return _nrrd(path)
    if suffix in (".mha", ".mhd"):
        return _metaimage(path)
    return None


def check_header(path: str | Path) -> None:
    """:func:`check_declared_image` of a file's header, if it is a NIfTI, NRRD or MetaImage file; nothing else.

    Cheap (a few hundred bytes), so a command can refuse a header bomb before it imports torch.
    """
    path = Path(path)
    if path.is_file():
        declared = read_declared_image(path)
        if declared is not None:
            check_declared_image(path, declared)


def check_declared_image(path: Path, declared: DeclaredImage) -> None:
    """Refuse what the header alone shows to be unusable (see the module docstring)."""
    spacing = np.asarray(declared.spacing_mm, dtype=float)
    if spacing.size and (not np.all(np.isfinite(spacing)) or np.any(spacing <= 0)):
        raise InputError(f"voxel spacing in the header is zero or negative or not finite "
                         f"({', '.join(f'{v:g}' for v in spacing)} mm)", path)
    if declared.direction is not None:
        matrix = np.asarray(declared.direction, dtype=float)
        if not np.all(np.isfinite(matrix)):
            raise InputError("direction matrix in the header is not finite (NaN or Inf)", path)
        n = int(round(len(matrix) ** 0.5))
        if n * n == len(matrix) and abs(np.linalg.det(matrix.reshape(n, n))) < 1e-6:
            raise InputError("direction matrix in the header is singular (its axes do not span 3D space)", path)
    limit = max_voxels()
    if declared.n_voxels > limit:
        shape = "x".join(str(s) for s in declared.size)
        raise InputError(f"image declares {declared.n_voxels} voxels ({shape}), more than the limit of {limit}; "
                         f"no clinical scan is that large (set {MAX_VOXELS_ENV} to raise the limit)", path)
    if declared.data_file is not None:
        try:
            available = declared.data_file.stat().st_size - declared.data_offset
        except OSError as exc:
            raise InputError(f"voxel data file {declared.data_file.name} is missing ({exc.strerror})", path) from exc
        if available < declared.data_bytes:
            raise InputError(f"unreadable or truncated image file: {max(available, 0)} bytes of voxel data, the "
                             f"header declares {declared.data_bytes}", path)


def nifti_non_finite_count(path: Path, declared: DeclaredImage) -> tuple[int, int]:
    """(NaN, Inf) voxel counts of a floating-point NIfTI, from the raw bytes (ITK turns both into 0)."""
    if declared.numpy_dtype is None or np.dtype(declared.numpy_dtype).kind not in "fc":
        return 0, 0
    dtype = np.dtype(declared.numpy_dtype)
    n_nan = n_inf = 0
    opener = gzip.open if declared.gzipped else open
    with opener(path, "rb") as handle:
        handle.read(declared.data_offset)
        remaining = declared.data_bytes
        chunk_bytes = (1 << 24) // dtype.itemsize * dtype.itemsize
        while remaining > 0:
            data = handle.read(min(chunk_bytes, remaining))
            if not data:
                break
            data = data[: len(data) // dtype.itemsize * dtype.itemsize]
            values = np.frombuffer(data, dtype=dtype)
            n_nan += int(np.count_nonzero(np.isnan(values)))
            n_inf += int(np.count_nonzero(np.isinf(values)))
            remaining -= len(data)
    return n_nan, n_inf


# ------------------------------------------------------------------------------------------------ NIfTI-1
def _nifti(path: Path, suffix: str) -> DeclaredImage:
    with open(path, "rb") as handle:
        magic = handle.read(2)
    gzipped = magic == b"\x1f\x8b"
    if gzipped and suffix == ".nii":
        raise InputError("the file holds gzip-compressed data but is named .nii; rename it to .nii.gz", path)
    try:
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError) as exc:
        raise InputError(f"unreadable or truncated gzip file ({exc})", path) from exc
    if len(header) < 4:
        raise InputError("unreadable or truncated image file: shorter than a NIfTI header", path)
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 540:
            raise InputError("this is a NIfTI-2 file, which this reader cannot read; save it as NIfTI-1 "
                             "(e.g. nibabel's Nifti1Image, or 3D Slicer's Save as .nii.gz)", path)
        if sizeof_hdr == 348:
            break
    else:
        raise InputError("unreadable or truncated image file: not a NIfTI-1 header (sizeof_hdr is not 348)", path)
    if len(header) < 348:
        raise InputError("unreadable or truncated image file: shorter than a NIfTI header", path)
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
    pixdim = struct.unpack(endian + "8f", header[76:108])
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    n_dims = min(max(dims[0], 0), 7)
    if any(d < 0 for d in dims[1:n_dims + 1]):
        raise InputError(f"unreadable image file: the header declares negative sizes {dims[1:n_dims + 1]}", path)
    size = tuple(int(d) for d in dims[1:n_dims + 1])
    dtype = _NIFTI_DTYPES.get(datatype)
    numpy_dtype = None if dtype is None else endian + dtype
    offset = int(vox_offset) if np.isfinite(vox_offset) and vox_offset >= 0 else 352
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    return DeclaredImage(
        size=size, bytes_per_voxel=max(bitpix, 8) // 8,
        spacing_mm=tuple(float(p) for p in pixdim[1:min(n_dims, 3) + 1]),
        data_file=None if gzipped else path, data_offset=offset, numpy_dtype=numpy_dtype, gzipped=gzipped,
        qform=_nifti_qform(header, endian, pixdim) if qform_code > 0 else None,
        sform=np.array(struct.unpack(endian + "12f", header[280:328]), dtype=float).reshape(3, 4)
        if sform_code > 0 else None)


def _nifti_qform(header: bytes, endian: str, pixdim: tuple[float, ...]) -> np.ndarray:
    """The qform as a 3x4 RAS affine (NIfTI-1 standard, method 2)."""
    b, c, d, qx, qy, qz = struct.unpack(endian + "6f", header[256:280])
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    affine = np.zeros((3, 4))
    affine[:, :3] = rotation @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
    affine[:, 3] = (qx, qy, qz)
    return affine


def qform_sform_disagreement(declared: DeclaredImage, *, tol_mm: float = 0.1) -> str | None:
    """How far the qform and the sform of a NIfTI place the image apart, or None when they agree (or one is absent).

    Measured where it matters: the largest distance (mm) between the two placements of the image's corners.
    """
    if declared.qform is None or declared.sform is None or len(declared.size) < 3:
        return None
    corners = np.array([[i, j, k, 1.0] for i in (0, declared.size[0] - 1) for j in (0, declared.size[1] - 1)
                        for k in (0, declared.size[2] - 1)])
    distance = float(np.max(np.linalg.norm(corners @ declared.qform.T - corners @ declared.sform.T, axis=1)))
    if not np.isfinite(distance) or distance > tol_mm:
        return f"{distance:.1f} mm" if np.isfinite(distance) else "a non-finite distance"
    return None


# ------------------------------------------------------------------------------------------------ NRRD
def _nrrd(path: Path) -> DeclaredImage:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if not head.startswith(b"NRRD"):
        raise InputError("unreadable image file: not a NRRD file (it does not start with 'NRRD')", path)
    end = head.find(b"\n\n")
    text = head[: end if end >= 0 else len(head)].decode("latin-1", errors="replace")
    fields: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#") or ":=" in line.split(":", 1)[0]:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    try:
        size = tuple(int(v) for v in fields.get("sizes", "").split())
    except ValueError as exc:
        raise InputError(f"unreadable image file: NRRD sizes {fields.get('sizes')!r} are not integers", path) from exc
    spacing: list[float] = []
    if "spacings" in fields:
        spacing += [float(v) for v in fields["spacings"].split() if v.lower() != "nan"]
    for vector in fields.get("space directions", "").replace(")", "").split("("):
        words = vector.replace(",", " ").split()
        if words and words[0].lower() != "none":
            spacing.append(float(np.linalg.norm([float(v) for v in words])))
    encoding = fields.get("encoding", "raw").lower()
    data_file: Path | None = None
    offset = 0
    if encoding == "raw" and int(fields.get("line skip", "0") or 0) == 0:
        skip = int(fields.get("byte skip", "0") or 0)
        detached = fields.get("data file") or fields.get("datafile")
        if detached and skip >= 0 and " " not in detached and "%" not in detached:
            data_file, offset = path.parent / detached, skip
        elif not detached and end >= 0 and skip >= 0:
            data_file, offset = path, end + 2 + skip
    return DeclaredImage(size=size, bytes_per_voxel=_NRRD_DTYPES.get(fields.get("type", "").lower(), 1),
                         spacing_mm=tuple(spacing), data_file=data_file, data_offset=offset)


# ------------------------------------------------------------------------------------------------ MetaImage
def _metaimage(path: Path) -> DeclaredImage:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    fields: dict[str, str] = {}
    header_end = 0
    for match in re.finditer(rb"([^\n]*)\n", head):
        key, _, value = match.group(1).decode("latin-1", errors="replace").partition("=")
        fields[key.strip().lower()] = value.strip()
        header_end = match.end()
        if key.strip().lower() == "elementdatafile":
            break
    if "dimsize" not in fields:
        raise InputError("unreadable image file: not a MetaImage header (no DimSize)", path)

    def numbers(key: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in fields.get(key, "").split())
        except ValueError as exc:
            raise InputError(f"unreadable image file: MetaImage {key} {fields[key]!r} is not a list of numbers",
                             path) from exc

    size = tuple(int(v) for v in numbers("dimsize"))
    spacing = numbers("elementspacing") or numbers("elementsize")
    direction = numbers("transformmatrix") or numbers("rotation") or numbers("orientation") or None
    channels = int(fields.get("elementnumberofchannels", "1") or 1)
    compressed = fields.get("compresseddata", "false").lower() == "true"
    data_name = fields.get("elementdatafile", "LOCAL")
    data_file: Path | None = None
    offset = 0
    header_size = int(float(fields.get("headersize", "0") or 0))
    if not compressed and header_size >= 0:
        if data_name.upper() == "LOCAL":
            data_file, offset = path, header_end + header_size
        elif " " not in data_name and "%" not in data_name and data_name.upper() != "LIST":
            data_file, offset = path.parent / data_name, header_size
    return DeclaredImage(size=size, bytes_per_voxel=_MET_DTYPES.get(fields.get("elementtype", ""), 1) * channels,
                         spacing_mm=spacing, data_file=data_file, data_offset=offset, direction=direction)
