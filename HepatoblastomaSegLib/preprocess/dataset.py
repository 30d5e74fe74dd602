"""A training dataset on disk: its manifest, and the per-case facts the planner needs (its fingerprint).

A dataset is a folder with a ``manifest.csv`` whose header names at least ``case,image,tumor`` and optionally
``liver`` (other columns, e.g. annotators ``R1,R2,R3``, are ignored). Paths are relative to the folder (absolute
paths are allowed). This is what ``hbseg phantom`` writes. Every problem names the manifest line or the file.

A ``tumor`` file may also be a multi-label map: the optional columns ``tumor_values`` and ``liver_values`` (e.g.
``2`` and ``1``; several values joined by ``+``) say which of its values are the tumour and the liver. Without a
manifest, an nnU-Net (v1 ``TaskXXX_``, v2 ``DatasetXXX_``) or Medical Segmentation Decathlon folder
(``dataset.json``, ``imagesTr/``, ``labelsTr/``) is read as such entries (:mod:`.nnunet_dataset`).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import Volume, read_mask, read_volume
from .checks import check_modality, check_spacing
from .intensity import foreground_sample, window_ct
from .plans import N4Settings

MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("case", "image", "tumor")


@dataclasses.dataclass(frozen=True)
class CaseEntry:
    """One manifest row with absolute paths; ``liver`` is None when the column is absent or the cell empty.
    ``tissues``: the phantom's tissue label map (optional column; domain randomisation in training needs it)."""

    case: str
    image: Path
    tumor: Path
    liver: Path | None = None
    #: When set, ``tumor`` is a label map and these of its values are the tumour (``liver_values`` the liver).
    tumor_values: tuple[int, ...] | None = None
    liver_values: tuple[int, ...] = ()
    tissues: Path | None = None


def read_manifest(dataset_dir: str | Path, *, label_map=None) -> list[CaseEntry]:
    """Parse and check ``DATASET_DIR/manifest.csv`` (header, required columns, unique names, existing files), or
    read an nnU-Net/MSD folder; ``label_map`` (a :class:`~.nnunet_dataset.LabelChoice`) says which label values are
    the tumour and the liver in multi-label masks."""
    from .nnunet_dataset import is_nnunet_folder, read_nnunet_dataset

    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise InputError("dataset folder not found", folder)
    manifest = folder / MANIFEST
    if not manifest.is_file() and is_nnunet_folder(folder):
        return read_nnunet_dataset(folder, label_map)
    if not manifest.is_file():
        raise InputError(f"no {MANIFEST} in the dataset folder (it must list case,image,tumor[,liver] with paths "
                         "relative to the folder), and it is not an nnU-Net/MSD folder (dataset.json, imagesTr/, "
                         "labelsTr/)", folder)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"unreadable CSV ({exc})", manifest) from exc
    if not rows:
        raise InputError("manifest has no cases (a header line and one line per case are needed)", manifest)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"manifest header lacks the column(s) {', '.join(missing)} (it has {', '.join(columns)}; "
                         "required: case,image,tumor; optional: liver)", manifest)
    entries: list[CaseEntry] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v if isinstance(v, str) else "").strip() for k, v in row.items()}
        case = row["case"]
        if not case:
            raise InputError(f"line {line}: empty case name", manifest)
        if "/" in case or "\\" in case or case in (".", "..") or case.startswith("."):
            raise InputError(f"line {line}: case name '{case}' cannot be used as a file name", manifest)
        if case in seen:
            raise InputError(f"line {line}: case '{case}' is listed twice", manifest)
        seen.add(case)
        paths = {}
        for column in ("image", "tumor", "liver", "tissues"):
            value = row.get(column, "")
            if not value:
                if column not in ("liver", "tissues"):
                    raise InputError(f"line {line} (case {case}): empty '{column}' path", manifest)
                paths[column] = None
                continue
            path = Path(value) if Path(value).is_absolute() else folder / value
            if not path.exists():
                raise InputError(f"line {line} (case {case}): {column} file not found: {path}", manifest)
            paths[column] = path
        tumor_values = _values(row.get("tumor_values", ""), line, "tumor_values", manifest)
        liver_values = _values(row.get("liver_values", ""), line, "liver_values", manifest)
        if label_map is not None and label_map.tumor is not None:
            tumor_values = label_map.tumor
            liver_values = label_map.liver if label_map.liver is not None else liver_values
        entries.append(CaseEntry(case, paths["image"], paths["tumor"], paths["liver"], tumor_values or None,
                                 liver_values or (), tissues=paths["tissues"]))
    return entries


def _values(text: str, line: int, column: str, manifest: Path) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.replace(" ", "+").split("+") if v)
    except ValueError:
        raise InputError(f"line {line}: {column} must be label values joined by '+', e.g. 2 or 1+3 (got {text!r})",
                         manifest) from None


@dataclasses.dataclass
class CaseData:
    """One case read and checked: the image and its masks (uint8) on the image's grid."""

    entry: CaseEntry
    image: Volume
    tumor: Volume
    liver: Volume | None

    def label(self, label_source: str) -> np.ndarray:
        """The training label (0/1 uint8): tumour, or liver including tumour."""
        if label_source == "tumor":
            return self.tumor.array
        if self.liver is None:
            raise InputError(f"case {self.entry.case}: a liver model needs a 'liver' mask in the manifest",
                             self.entry.image)
        return np.maximum(self.liver.array, self.tumor.array)

    def nyul_mask(self) -> tuple[np.ndarray | None, str]:
        """Mask for Nyul landmarks: liver + tumour, or (None, "body") when the case has no liver mask."""
        if self.liver is None:
            return None, "body"
        return np.maximum(self.liver.array, self.tumor.array), "liver"


def read_case(entry: CaseEntry, modality: str) -> CaseData:
    """Read one case; refuse implausible spacing, the wrong modality, masks off the image grid or not binary."""
    image = read_volume(entry.image)
    check_spacing(image, what=f"training image of case {entry.case}")
    check_modality(image, modality)
    if entry.tumor_values:
        return _read_label_map_case(entry, image)
    tumor = read_mask(entry.tumor, reference=image, what=f"tumour mask of case {entry.case}")
    liver = read_mask(entry.liver, reference=image, what=f"liver mask of case {entry.case}") if entry.liver else None
    return CaseData(entry, image, tumor, liver)


def _read_label_map_case(entry: CaseEntry, image: Volume) -> CaseData:
    """Tumour and liver masks from one multi-label file (nnU-Net/MSD): other values become background."""
    from ..io import require_same_geometry

    labels = read_volume(entry.tumor)
    require_same_geometry(image, labels, what_b=f"label map of case {entry.case}")
    array = labels.array
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise InputError(f"label map of case {entry.case} holds non-integer values", entry.tumor)
    tumor = np.isin(array, entry.tumor_values).astype(np.uint8)
    liver = None
    if entry.liver_values:
        liver = labels.with_array((np.isin(array, entry.liver_values) | (tumor > 0)).astype(np.uint8))
    return CaseData(entry, image, labels.with_array(tumor), liver)


@dataclasses.dataclass
class CaseFingerprint:
    """What planning needs from one case.

    ``spacing_mm_xyz``/``size_xyz`` in SimpleITK order; ``cropped_size_xyz`` the size of nnU-Net's crop to the
    non-zero region (CT: after the window; :mod:`.nonzero_crop`); ``foreground`` (CT) the windowed intensities of
    the label voxels; ``landmarks`` (MRI) its Nyul landmarks after N4 inside ``mask_source`` ("liver" or "body");
    ``nnunet_foreground`` (only when asked for) every 10th label voxel of the cropped image as nnU-Net v1's dataset
    analysis samples them (CT windowed, MRI as on disk).
    """

    case: str
    spacing_mm_xyz: tuple[float, float, float]
    size_xyz: tuple[int, int, int]
    label_voxels: int
    cropped_size_xyz: tuple[int, int, int] | None = None
    foreground: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    mask_source: str | None = None
    nnunet_foreground: np.ndarray | None = None


def fingerprint_case(entry: CaseEntry, modality: str, *, label_source: str = "tumor",
                     window_hu: tuple[float, float] = (0.0, 350.0), n4: N4Settings | None = None,
                     nyul: bool = True, nnunet_sample: bool = False) -> CaseFingerprint:
    """Read one case and extract its :class:`CaseFingerprint`."""
    from .nonzero_crop import nonzero_box

    data = read_case(entry, modality)
    label = data.label(label_source)
    fp = CaseFingerprint(entry.case, data.image.spacing_mm, data.image.geometry.size, int(np.count_nonzero(label)))
    seen = window_ct(data.image.array, window_hu) if modality == "ct" else data.image.array
    box = nonzero_box(seen)
    fp.cropped_size_xyz = box.size_zyx[::-1]
    if nnunet_sample:
        cropped = np.asarray(seen[box.slices], dtype=np.float32)
        fp.nnunet_foreground = cropped[label[box.slices] > 0][::10]
    del seen
    if modality == "ct":
        fp.foreground = foreground_sample(data.image.array, label, window_hu)
    elif nyul:
        from .liver import body_mask
        from .n4 import n4_correct
        from .nyul import image_landmarks

        corrected = n4_correct(data.image, n4 or N4Settings()).corrected
        mask, source = data.nyul_mask()
        if mask is None or not mask.any():
            mask, source = body_mask(corrected), "body"
        fp.landmarks = image_landmarks(corrected.array, mask)
        fp.mask_source = source
    return fp
