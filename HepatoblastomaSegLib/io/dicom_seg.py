"""DICOM outputs that go back into the source study: the tumour mask as a DICOM Segmentation, the entropy map as a
DICOM Parametric Map.

Both objects are built by highdicom from the headers of the series that was segmented (read here with pydicom,
pixel data left on disk): they reference every source SOP instance, share its frame of reference, patient and
study (same StudyInstanceUID) and form a new series. The segment carries the same coded terminology as the
``.seg.nrrd`` writer (:mod:`HepatoblastomaSegLib.terminology`) and identifies the model that made it, with algorithm
type AUTOMATIC.

Frames are matched to source instances by position, not by file order: each source slice's ImagePositionPatient is
mapped into the volume's voxel grid, which must put it exactly on one slice of the mask with the same rows, columns
and orientation. A series read in any file order (or named in shuffled files) therefore gets every frame right.

An empty mask is written as a valid Segmentation with all frames empty (highdicom keeps every frame when none has a
pixel set), so that a PACS shows "no tumour found" for the study rather than a missing result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..terminology import HEPATOBLASTOMA, Code, SegmentSpec
from .atomic import atomic_path
from .dicom_headers import sop_class_of
from .volume import Volume

#: Geometry tolerance (in voxels) for placing a source slice on the mask's grid.
_INDEX_TOL_VOXELS = 0.01
#: Series numbers of the derived series (shown in PACS series lists after the source's).
SEG_SERIES_NUMBER = 901
PM_SERIES_NUMBER = 902
MANUFACTURER = "HepatoblastomaSeg"


@dataclasses.dataclass(frozen=True)
class AlgorithmInfo:
    """Which model made the result: written into the segment's algorithm identification and the equipment module."""

    model_name: str
    model_version: str
    software_version: str


def source_of_case(summary: dict) -> tuple[Path, str, AlgorithmInfo]:
    """The source series (folder, SeriesInstanceUID) and the model of a prediction, from its summary."""
    from .. import __version__

    series = summary.get("dicom_series") or {}
    if not series.get("series_uid"):
        raise InputError("a DICOM output needs a DICOM series as input (it references the source instances); "
                         "this input is not one", summary.get("input"))
    algorithm = AlgorithmInfo(str(summary.get("model_name", "unknown")), str(summary.get("model_version", "unknown")),
                              __version__)
    return Path(summary["input"]), series["series_uid"], algorithm


def write_dicom_seg_of_case(mask: Volume, path: str | Path, summary: dict) -> Path:
    """:func:`write_dicom_seg` for a prediction whose ``summary`` names its DICOM input and model."""
    folder, series_uid, algorithm = source_of_case(summary)
    return write_dicom_seg(mask, path, folder, series_uid, algorithm)


def write_entropy_map_of_case(entropy: Volume, path: str | Path, summary: dict) -> Path:
    """:func:`write_entropy_parametric_map` for a prediction whose ``summary`` names its DICOM input and model."""
    folder, series_uid, algorithm = source_of_case(summary)
    return write_entropy_parametric_map(entropy, path, folder, series_uid, algorithm)


def require_dicom_input(image: str | Path, fmt: str, entropy_fmt: str | None = None, *,
                        case: str | None = None) -> None:
    """Refuse a DICOM output (``fmt`` "dicom-seg", ``entropy_fmt`` "dicom-pm") for an input that is not a DICOM
    series folder, before any work is done: such an object must reference the source series' instances."""
    options = [f"--format {fmt}"] if fmt == "dicom-seg" else []
    options += [f"--entropy-format {entropy_fmt}"] if entropy_fmt == "dicom-pm" else []
    path = Path(image)
    if options and not path.is_dir():
        where = f"case {case}: " if case else ""
        raise ConfigError(f"{where}{' and '.join(options)} needs a DICOM series folder as input, because a DICOM "
                          f"output references the source series' instances; {path} is not a folder (use "
                          f"--format nifti or nrrd for image files)")


def read_source_headers(source: str | Path | Sequence[str | Path], series_uid: str | None = None) -> list:
    """The pydicom headers (no pixel data) of every instance of ``series_uid`` in ``source``: a folder (the files
    directly inside it) or a list of files (e.g. from Slicer's DICOM database). Without ``series_uid`` the files
    must hold exactly one series with image positions."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, (str, Path)):
        where = Path(source)
        files = sorted(p for p in where.iterdir() if p.is_file())
    else:
        files = [Path(p) for p in source]
        where = files[0].parent if files else Path(".")
    found: dict[str, object] = {}
    series_seen = set()
    for path in files:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue  # not DICOM (or not readable as such): the series reader skipped it too
        if "ImagePositionPatient" not in dataset or "SeriesInstanceUID" not in dataset:
            continue
        sop_class_of(dataset)  # an anonymised file may keep its SOP class in the file meta only
        series_seen.add(str(dataset.SeriesInstanceUID))
        if series_uid is None or dataset.SeriesInstanceUID == series_uid:
            found.setdefault(str(dataset.SOPInstanceUID), dataset)
    if series_uid is None and len(series_seen) > 1:
        raise InputError(f"the source files hold {len(series_seen)} image series; name the one segmented", where)
    if not found:
        raise InputError(f"no DICOM image instances{f' of series {series_uid}' if series_uid else ''} found", where)
    return list(found.values())


def slice_indices(geometry, datasets: Sequence, folder: str | Path) -> np.ndarray:
    """For each source header, the index of the mask slice it coincides with; refuses any mismatch.

    The volume read from the series and its headers must agree exactly: rows, columns, in-plane orientation, and
    every ImagePositionPatient on a slice origin of the grid (the in-plane indices 0, the slice index an integer),
    one instance per slice.
    """
    nx, ny, nz = geometry.size
    to_index = np.linalg.inv(geometry.index_to_physical_matrix())
    direction = geometry.direction_matrix
    indices = np.empty(len(datasets), dtype=np.int64)
    for i, ds in enumerate(datasets):
        where = f"instance {ds.SOPInstanceUID}"
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx):
            raise InputError(f"{where} is {ds.Rows}x{ds.Columns} pixels, the segmented volume {ny}x{nx}", folder)
        cosines = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not (np.allclose(cosines[:3], direction[:, 0], atol=1e-4)
                and np.allclose(cosines[3:], direction[:, 1], atol=1e-4)):
            raise InputError(f"{where} has another orientation than the segmented volume", folder)
        index = to_index @ np.array([*map(float, ds.ImagePositionPatient), 1.0])
        k = int(round(index[2]))
        if np.max(np.abs(index[:2])) > _INDEX_TOL_VOXELS or abs(index[2] - k) > _INDEX_TOL_VOXELS or not 0 <= k < nz:
            raise InputError(f"{where} does not lie on a slice of the segmented volume (voxel index "
                             f"{np.round(index[:3], 3).tolist()})", folder)
        indices[i] = k
    if len(set(indices.tolist())) != len(indices) or len(indices) != nz:
        raise InputError(f"series has {len(datasets)} instance(s) on {len(set(indices.tolist()))} distinct slice(s); "
                         f"the segmented volume has {nz} slices", folder)
    return indices


@contextlib.contextmanager
def _source_name_warnings_quiet() -> Iterator[None]:
    """highdicom warns about the *source's* one-component PatientName (common: "ANON"); it is copied, not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*unlikely to represent the intended person name",
                                category=UserWarning)
        yield


def _coded(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def segment_description(spec: SegmentSpec, algorithm: AlgorithmInfo, algorithm_type: str = "AUTOMATIC"):
    """The highdicom description of the tumour segment: terminology, colour, algorithm type and identification
    (``algorithm_type`` "AUTOMATIC" for the model's mask, "SEMIAUTOMATIC" for a reviewer's edit of it)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.model_name, version=algorithm.model_version,
        family=codes.cid7162.ArtificialIntelligence, source=MANUFACTURER)
    return hd.seg.SegmentDescription(
        segment_number=1, segment_label=spec.name,
        segmented_property_category=_coded(spec.category), segmented_property_type=_coded(spec.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues(algorithm_type), algorithm_identification=identification,
        anatomic_regions=[_coded(spec.anatomic_region)] if spec.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in spec.color_rgb)))


def _sorted_sources(volume: Volume, source, series_uid: str | None) -> tuple[list, np.ndarray]:
    datasets = read_source_headers(source, series_uid)
    folder = source if isinstance(source, (str, Path)) else Path(datasets[0].filename).parent
    indices = slice_indices(volume.geometry, datasets, folder)
    order = np.argsort(indices)
    return [datasets[i] for i in order], indices[order]


def write_dicom_seg(mask: Volume, path: str | Path, source: str | Path | Sequence[str | Path], series_uid: str | None,
                    algorithm: AlgorithmInfo, *, spec: SegmentSpec = HEPATOBLASTOMA,
                    algorithm_type: str = "AUTOMATIC") -> Path:
    """Write ``mask`` (0/1 on the grid of the series ``series_uid`` in ``source``, a folder or a list of files) as a
    BINARY DICOM SEG."""
    import highdicom as hd

    path = Path(path)
    sources, indices = _sorted_sources(mask, source, series_uid)
    frames = (np.asarray(mask.array)[indices] > 0).astype(np.uint8)
    with _source_name_warnings_quiet():
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment_description(spec, algorithm, algorithm_type)],
            series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=algorithm.model_name,
            software_versions=algorithm.software_version, device_serial_number="none",
            series_description=f"{spec.name} AI segmentation ({algorithm.model_name} {algorithm.model_version})"[:64],
            content_label="TUMOR", content_description="Automatic tumour segmentation, research use only")
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def write_entropy_parametric_map(entropy: Volume, path: str | Path, source_folder: str | Path, series_uid: str,
                                 algorithm: AlgorithmInfo) -> Path:
    """Write the softmax entropy map (nats, float32) as a DICOM Parametric Map of the source series."""
    import highdicom as hd

    path = Path(path)
    sources, indices = _sorted_sources(entropy, Path(source_folder), series_uid)
    frames = np.asarray(entropy.array, dtype=np.float32)[indices]
    nats = hd.sr.CodedConcept(value="{nat}", scheme_designator="UCUM", meaning="nat")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ENTROPY", lut_explanation="softmax entropy of the tumour model, nats (ln 2 = a coin toss)",
        unit=nats, value_range=(0.0, float(np.log(2.0))), slope=1.0, intercept=0.0)
    with _source_name_warnings_quiet():
        pm = hd.pm.ParametricMap(
            source_images=sources, pixel_array=frames,
            series_instance_uid=hd.UID(), series_number=PM_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=algorithm.model_name,
            software_versions=algorithm.software_version, device_serial_number="none",
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            # A window narrower than 1 is only valid with LINEAR_EXACT (PS3.3 C.11.2.1.3); it maps 0..ln 2 exactly.
            voi_lut_transformations=[hd.VOILUTTransformation(
                window_center=float(np.log(2.0)) / 2, window_width=float(np.log(2.0)),
                window_explanation="entropy 0 to ln 2 nats", voi_lut_function="LINEAR_EXACT")],
            series_description=f"Tumour model entropy ({algorithm.model_name} {algorithm.model_version})"[:64],
            content_label="ENTROPY", content_description="Voxelwise softmax entropy in nats, research use only")
    with atomic_path(path) as tmp:
        pm.save_as(tmp)
    return path
