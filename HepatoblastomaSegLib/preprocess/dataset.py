"""A training dataset on disk: its manifest, and the per-case facts the planner needs (its fingerprint).

A dataset is a folder with a ``manifest.csv`` whose header names at least ``case,image,tumor`` and optionally
``liver`` (other columns, e.g. annotators ``R1,R2,R3``, are ignored). Paths are relative to the folder (absolute
paths are allowed). This is what ``hbseg phantom`` writes. Every problem names the manifest line or the file.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import Volume, read_mask, read_volume
from .checks import check_modality, check_spacing
from .intensity import foreground_sample
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
    tissues: Path | None = None


def read_manifest(dataset_dir: str | Path) -> list[CaseEntry]:
    """Parse and check ``DATASET_DIR/manifest.csv`` (header, required columns, unique names, existing files)."""
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise InputError("dataset folder not found", folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise InputError(f"no {MANIFEST} in the dataset folder (it must list case,image,tumor[,liver] with paths "
                         "relative to the folder)", folder)
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
        entries.append(CaseEntry(case, paths["image"], paths["tumor"], paths["liver"], paths["tissues"]))
    return entries


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
    tumor = read_mask(entry.tumor, reference=image, what=f"tumour mask of case {entry.case}")
    liver = read_mask(entry.liver, reference=image, what=f"liver mask of case {entry.case}") if entry.liver else None
    return CaseData(entry, image, tumor, liver)


@dataclasses.dataclass
class CaseFingerprint:
    """What planning needs from one case.

    ``spacing_mm_xyz``/``size_xyz`` in SimpleITK order; ``foreground`` (CT) the windowed intensities of the label
    voxels; ``landmarks`` (MRI) its Nyul landmarks after N4 inside ``mask_source`` ("liver" or "body").
    """

    case: str
    spacing_mm_xyz: tuple[float, float, float]
    size_xyz: tuple[int, int, int]
    label_voxels: int
    foreground: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    mask_source: str | None = None


def fingerprint_case(entry: CaseEntry, modality: str, *, label_source: str = "tumor",
                     window_hu: tuple[float, float] = (0.0, 350.0), n4: N4Settings | None = None,
                     nyul: bool = True) -> CaseFingerprint:
    """Read one case and extract its :class:`CaseFingerprint`."""
    data = read_case(entry, modality)
    label = data.label(label_source)
    fp = CaseFingerprint(entry.case, data.image.spacing_mm, data.image.geometry.size, int(np.count_nonzero(label)))
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
