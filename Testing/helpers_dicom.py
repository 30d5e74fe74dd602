"""DICOM test material made with real encoders from PyPI, independent of the reader under test (GDCM in SimpleITK).

- ``compress_series``: a copy of an uncompressed series in another transfer syntax, file names without ``.dcm``.
  JPEG 2000, JPEG-LS and RLE go through pydicom's ``Dataset.compress`` (encoders: pylibjpeg-openjpeg, pyjpegls,
  pydicom's own RLE); JPEG lossless (process 14, selection value 1) through libjpeg-turbo and HTJ2K through OpenJPH,
  both in imagecodecs, encapsulated by pydicom; deflate by pydicom's writer.
- ``edit_slices``: rewrite chosen header fields of chosen slices (a tilt, a rotated slice, another pixel spacing).
- ``write_non_image_objects``: an SR, a presentation state and a SEG, as pydicom builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    RLELossless,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    generate_uid,
)

#: Syntaxes whose decoded values must equal the original exactly.
LOSSLESS = [JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless, HTJ2KLossless,
            DeflatedExplicitVRLittleEndian]
#: JPEG-LS near-lossless: every value within this many units of the original.
NEAR_LOSSLESS_ERROR = 2
#: Lossy JPEG 2000: compression ratio asked of OpenJPEG.
JPEG2000_RATIO = 20

_EXTERNAL_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    JPEGLosslessSV1: lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=1),
    HTJ2KLossless: lambda a: imagecodecs.htj2k_encode(a, level=0),
}


def compress_series(source: Path, target: Path, syntax: UID) -> list[Path]:
    """Write every slice of ``source`` into ``target`` in transfer syntax ``syntax``, without a file extension."""
    target.mkdir(parents=True)
    paths = []
    for path in sorted(source.iterdir()):
        dataset = pydicom.dcmread(path)
        if syntax in _EXTERNAL_ENCODERS:
            stored = dataset.pixel_array
            assert stored.min() >= 0, "these encoders take unsigned samples"
            dataset.PixelRepresentation = 0  # same bits: the stored values are non-negative
            frame = _EXTERNAL_ENCODERS[syntax](stored.astype(np.uint16))
            dataset.PixelData = encapsulate([frame])
            dataset["PixelData"].VR = "OB"
            dataset.file_meta.TransferSyntaxUID = syntax
        elif syntax == JPEGLSNearLossless:
            dataset.compress(syntax, jls_error=NEAR_LOSSLESS_ERROR)
        elif syntax == JPEG2000:
            dataset.compress(syntax, j2k_cr=[JPEG2000_RATIO])
        elif syntax == DeflatedExplicitVRLittleEndian:
            dataset.file_meta.TransferSyntaxUID = syntax  # pydicom deflates the whole data set when it saves
        else:
            dataset.compress(syntax)
        out = target / path.stem
        dataset.save_as(out, enforce_file_format=True)
        paths.append(out)
    return paths


def stored_values(folder: Path) -> np.ndarray:
    """The stored pixel values of a series as pydicom decodes them (pylibjpeg, pyjpegls), in file-name order."""
    return np.stack([pydicom.dcmread(p).pixel_array.astype(np.int32) for p in sorted(folder.iterdir())])


def edit_slices(folder: Path, edit: Callable[[int, Dataset], None]) -> None:
    """Call ``edit(k, dataset)`` for slice k (in file-name order) and save it in place."""
    for k, path in enumerate(sorted(folder.iterdir())):
        dataset = pydicom.dcmread(path)
        edit(k, dataset)
        dataset.save_as(path)


def _file(sop_class: str, modality: str, study_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.StudyInstanceUID, dataset.SeriesInstanceUID = modality, study_uid, generate_uid()
    dataset.PatientID = "PHANTOM"
    return dataset


def write_non_image_objects(folder: Path, study_uid: str, n_frames: int) -> None:
    """A Basic Text SR, a grayscale presentation state, and a BINARY SEG of ``n_frames`` 8x8 frames in ``folder``.

    The SEG has more frames than the test's image series has slices, and three SR files make the largest "series"
    by file count, so that a reader counting files or frames would pick the wrong one.
    """
    for k in range(3):
        report = _file("1.2.840.10008.5.1.4.1.1.88.11", "SR", study_uid)
        report.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        report.save_as(folder / f"report{k}", enforce_file_format=True)
    _file("1.2.840.10008.5.1.4.1.1.11.1", "PR", study_uid).save_as(folder / "state.dcm", enforce_file_format=True)
    seg = _file("1.2.840.10008.5.1.4.1.1.66.4", "SEG", study_uid)
    seg.Rows, seg.Columns, seg.NumberOfFrames = 8, 8, n_frames
    seg.SamplesPerPixel, seg.BitsAllocated, seg.BitsStored, seg.HighBit, seg.PixelRepresentation = 1, 1, 1, 0, 0
    seg.PhotometricInterpretation = "MONOCHROME2"
    seg.PixelData = bytes(8 * 8 * n_frames // 8)
    seg["PixelData"].VR = "OB"
    seg.save_as(folder / "seg", enforce_file_format=True)
    (folder / "notes.txt").write_text("not DICOM")
