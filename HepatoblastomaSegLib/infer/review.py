"""The review flag: does this result need a person's second look, and why, in plain words.

A model trained on phantoms can fail silently on a real scan: on real adult CTs the demo model called paraspinal and
gluteal muscle "tumour" with no warning in the summary. Each case's ``summary.json`` therefore carries::

    "review": {"needed": true|false, "reasons": [{"code": "...", "message": "one sentence for a radiologist"}]}

(a missing key means an older summary). The reasons, each computed from what the case itself shows:

``outside_liver``
    tumour mask outside the liver mask (CT: ``ct-liver-demo`` or a given liver mask; MRI: the liver mask its Nyul
    step used), more than :attr:`ReviewSettings.max_outside_liver_ml` and more than
    :attr:`ReviewSettings.max_outside_liver_fraction` of the tumour (the demo liver models miss a rim of a large
    tumour: 30 mL of a 316 mL phantom tumour segmented at Dice 0.96), or more than
    :attr:`ReviewSettings.max_outside_liver_ml_any_share` whatever the share (a large mask hides a large error in a
    small share). Hepatoblastoma arises in the liver; a tumour
    that bulges out of it is still mostly inside the liver model's mask (it was trained on liver *including* tumour).
``anchor_removed``
    the liver anchor removed more than :attr:`ReviewSettings.max_outside_liver_ml` of the tumour model's mask because
    it did not lie in the liver mask (less than the anchor's fraction of it inside). That is its job when the liver
    mask is right; but a phantom-trained liver model can miss the part of a real liver that holds the tumour
    (``benchmarks/lesion_insertion.py`` made such cases), and then the anchor removes the tumour itself, so a large
    removal is shown, never silent.
``high_uncertainty``
    mean softmax entropy inside the mask above the model's calibrated threshold
    (:attr:`ReviewSettings.max_mean_entropy_nats`, measured on held-out phantoms by
    ``benchmarks/calibrate_review.py`` and stored in the bundle; no threshold in the bundle, no check).
``out_of_domain``
    the image is unlike the images the model is meant for (its reference phantoms: normally its training images;
    for a model also trained on wider data, the contrast-enhanced children's CT it is vouched for): slice thickness,
    body width, a scan much shorter from head to foot than theirs (a longer one is never flagged), and for CT the
    liver's and the fat's attenuation (a liver far below the contrast-enhanced reference livers means no contrast),
    for MRI the fat/liver signal ratio (fat bright = no fat suppression). The reference ranges are stored in the
    bundle; the message names every measurement that falls outside them.
``implausible``
    a tumour larger than the liver that holds it, larger than fits in a child's abdomen
    (:attr:`ReviewSettings.max_tumor_ml`), or scattered in many separate pieces.
``at_scan_edge``
    the tumour mask reaches the edge of the scanned volume (its first or last slice, or a side of the field of view)
    over more than :attr:`ReviewSettings.max_tumor_edge_area_mm2`: the tumour may go on beyond the scan, so its
    volume and diameter are lower bounds. A partial scan (a slab, a scan stopped at the liver dome) does this; no
    phantom tumour touches its scan's edge.

The settings live under the ``"review"`` key of the bundle's ``bundle.json`` (readers of bundles ignore keys they do
not know); :func:`review_settings` reads them, :func:`write_review_settings` adds them to an existing bundle.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..io import Geometry, Volume, write_text_atomic

#: The key in ``summary.json`` and in ``bundle.json``.
REVIEW_KEY = "review"
#: Tumour outside the liver mask (mL) that is flagged by default: the phantoms' boundary disagreement between the two
#: models stays well under it, a tumour found in the muscles or bowel is far over it.
DEFAULT_MAX_OUTSIDE_LIVER_ML = 25.0
#: ... and more than this share of the tumour mask (the failures it is for put 40-90 % of the mask outside).
DEFAULT_MAX_OUTSIDE_LIVER_FRACTION = 0.25
#: Tumour outside the liver mask (mL) flagged whatever its share of the mask: this much tumour outside the liver is an
#: error to look at even next to a large tumour, and it is the limit the real-scan acceptance criteria set.
DEFAULT_MAX_OUTSIDE_LIVER_ML_ANY_SHARE = 50.0
#: No hepatoblastoma fits a child's abdomen beyond this (mL): a 16 cm ball is 2.1 L, and the largest reported are
#: about that size.
DEFAULT_MAX_TUMOR_ML = 2000.0
#: Separate pieces of at least :data:`PIECE_MIN_ML` beyond which a mask is flagged as scattered (hepatoblastoma is
#: one mass, sometimes with a few satellites).
DEFAULT_MAX_PIECES = 5
PIECE_MIN_ML = 1.0
#: Fat on CT: voxels of the body between these HU (wide enough for any fat, narrow enough to leave out water and air).
FAT_WINDOW_HU = (-250.0, -30.0)
#: MRI: the outer shell of the body (mm) where subcutaneous fat lies.
MRI_FAT_SHELL_MM = 6.0

#: Tumour mask on one face of the scanned volume (mm2) beyond which the tumour may continue outside the scan: 1 cm2,
#: more than the few voxels a stray false positive puts there.
DEFAULT_MAX_TUMOR_EDGE_AREA_MM2 = 100.0
#: Measurements checked against the low end of their reference range only (a longer scan than the reference
#: phantoms' is no reason to doubt a result).
LOWER_BOUND_ONLY = ("scan_length_mm",)

#: Every reason code the flag can give, in the order the reasons are listed.
REVIEW_CODES = ("outside_liver", "anchor_removed", "high_uncertainty", "out_of_domain", "implausible", "at_scan_edge")


@dataclasses.dataclass(frozen=True)
class ReviewReason:
    """One reason to review a result: a code from :data:`REVIEW_CODES` and one sentence in plain words."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclasses.dataclass
class ReviewSettings:
    """A model's review thresholds and the reference ranges of the images it is meant for (``bundle.json``
    ``"review"``).

    ``reference`` maps a measurement of :class:`ImageFacts` (``slice_thickness_mm``, ``body_width_mm``,
    ``scan_length_mm``, ``liver_hu``, ``fat_hu``, ``fat_to_liver_ratio``) to the ``[low, high]`` range the reference
    images span (with a margin); a measurement missing from it is not checked.
    """

    max_mean_entropy_nats: float | None = None
    max_outside_liver_ml: float = DEFAULT_MAX_OUTSIDE_LIVER_ML
    max_outside_liver_fraction: float = DEFAULT_MAX_OUTSIDE_LIVER_FRACTION
    max_outside_liver_ml_any_share: float = DEFAULT_MAX_OUTSIDE_LIVER_ML_ANY_SHARE
    max_tumor_ml: float = DEFAULT_MAX_TUMOR_ML
    max_pieces: int = DEFAULT_MAX_PIECES
    max_tumor_edge_area_mm2: float = DEFAULT_MAX_TUMOR_EDGE_AREA_MM2
    reference: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict | None) -> ReviewSettings:
        """Settings from a bundle's ``"review"`` object; unknown keys are ignored, missing ones take defaults."""
        if not isinstance(data, dict):
            return cls()
        reference = {}
        for key, value in (data.get("reference") or {}).items():
            if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
                reference[str(key)] = (float(value[0]), float(value[1]))
        threshold = data.get("max_mean_entropy_nats")
        return cls(max_mean_entropy_nats=float(threshold) if _is_number(threshold) else None,
                   max_outside_liver_ml=float(data.get("max_outside_liver_ml", DEFAULT_MAX_OUTSIDE_LIVER_ML)),
                   max_outside_liver_fraction=float(data.get("max_outside_liver_fraction",
                                                             DEFAULT_MAX_OUTSIDE_LIVER_FRACTION)),
                   max_outside_liver_ml_any_share=float(data.get("max_outside_liver_ml_any_share",
                                                                 DEFAULT_MAX_OUTSIDE_LIVER_ML_ANY_SHARE)),
                   max_tumor_ml=float(data.get("max_tumor_ml", DEFAULT_MAX_TUMOR_ML)),
                   max_pieces=int(data.get("max_pieces", DEFAULT_MAX_PIECES)),
                   max_tumor_edge_area_mm2=float(data.get("max_tumor_edge_area_mm2",
                                                          DEFAULT_MAX_TUMOR_EDGE_AREA_MM2)),
                   reference=reference, calibration=dict(data.get("calibration") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"max_mean_entropy_nats": self.max_mean_entropy_nats,
                "max_outside_liver_ml": self.max_outside_liver_ml,
                "max_outside_liver_fraction": self.max_outside_liver_fraction,
                "max_outside_liver_ml_any_share": self.max_outside_liver_ml_any_share,
                "max_tumor_ml": self.max_tumor_ml,
                "max_pieces": self.max_pieces, "max_tumor_edge_area_mm2": self.max_tumor_edge_area_mm2,
                "reference": {k: [round(v[0], 3), round(v[1], 3)] for k, v in self.reference.items()},
                "calibration": self.calibration}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def review_settings(bundle_dir: str | Path) -> ReviewSettings:
    """The ``"review"`` settings of the bundle in ``bundle_dir`` (defaults when it has none)."""
    path = Path(bundle_dir) / "bundle.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ReviewSettings()
    return ReviewSettings.from_dict(meta.get(REVIEW_KEY) if isinstance(meta, dict) else None)


def write_review_settings(bundle_dir: str | Path, settings: ReviewSettings) -> Path:
    """Add (or replace) the ``"review"`` key of an existing bundle's ``bundle.json``, atomically; nothing else
    changes (the weights' checksum stays valid)."""
    path = Path(bundle_dir) / "bundle.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta[REVIEW_KEY] = settings.to_dict()
    return write_text_atomic(path, json.dumps(meta, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ measurements
@dataclasses.dataclass
class ImageFacts:
    """What one case shows, measured on the input grid (None: not measurable here, e.g. no liver mask)."""

    slice_thickness_mm: float
    body_width_mm: float | None = None
    #: head-to-foot extent of the scanned volume
    scan_length_mm: float | None = None
    liver_hu: float | None = None
    fat_hu: float | None = None
    fat_to_liver_ratio: float | None = None
    liver_volume_ml: float | None = None
    tumor_outside_liver_ml: float | None = None
    tumor_pieces: int = 0
    #: tumour mask removed by the liver anchor (None: no anchor applied)
    anchor_removed_ml: float | None = None
    #: the largest area of tumour mask on one face of the scanned volume, and where that face is (patient words)
    tumor_edge_area_mm2: float | None = None
    tumor_edge_side: str | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def body_mask(volume: Volume, modality: str) -> tuple[np.ndarray, int]:
    """The patient's body, bool [z, y, x] on a grid ``step`` times coarser in-plane (about 1 mm), and ``step``.

    CT: above -500 HU less what is thinner than 10 mm in-plane (the table top, as :mod:`~..preprocess.body_crop`
    does). MRI: above the air's noise (4x the image's 10th percentile, at least 2 % of its 99th: on a fat-suppressed
    T2 Otsu's threshold would leave the dark fat out), holes filled slice by slice. Then the largest piece.
    """
    step = max(1, round(1.0 / min(volume.spacing_mm[:2])))
    array = volume.array[:, ::step, ::step]
    if modality == "mri":
        low, high = np.percentile(array, [10, 99])
        body = array > max(4.0 * float(low), 0.02 * float(high))
    else:
        from ..preprocess.body_crop import THIN_MM
        from ..preprocess.checks import AIR_THRESHOLD_HU

        body = array > AIR_THRESHOLD_HU
        radius_yx = [max(1, round(THIN_MM / 2 / (mm * step))) for mm in volume.spacing_mm[1::-1]]
        opened = open_with_cross(body, radius_yx)  # opens what is thin along y or along x
        body = opened if opened.any() else body
    from ..preprocess.liver import largest_component

    body = largest_component(body).astype(bool)
    body = fill_holes_in_plane(body)
    return body, step


def open_with_cross(mask: np.ndarray, radius_yx: Sequence[int]) -> np.ndarray:
    """``mask`` [z, y, x] opened slice by slice with a cross of half-lengths ``radius_yx`` (what is thinner than the
    cross's lines along y or along x goes): scipy's ``binary_opening`` with that cross, computed as running minima
    and maxima along the lines (erosion by a union of lines is the intersection of the line erosions, dilation the
    union of the line dilations), whose cost does not grow with the radius."""
    lines = [(2 * int(r) + 1, axis) for r, axis in zip(radius_yx, (1, 2))]
    voxels = np.asarray(mask, dtype=bool).view(np.uint8)
    eroded = np.bitwise_and.reduce([ndimage.minimum_filter1d(voxels, n, axis=a, mode="constant", cval=0)
                                    for n, a in lines])
    return np.bitwise_or.reduce([ndimage.maximum_filter1d(eroded, n, axis=a, mode="constant", cval=0)
                                 for n, a in lines]).astype(bool)


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """``mask`` [z, y, x] with its holes filled slice by slice (background 4-connected in-plane that does not reach
    the slice's edge): scipy's ``binary_fill_holes`` with an in-plane cross, by labelling the background once."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    labels, count = ndimage.label(~np.asarray(mask, dtype=bool), structure=in_plane)
    edges = np.concatenate([labels[:, (0, -1), :].ravel(), labels[:, :, (0, -1)].ravel()])
    outside = np.zeros(count + 1, dtype=bool)
    outside[edges] = True
    outside[0] = False
    return ~outside[labels]


def body_width_mm(body: np.ndarray, spacing_x_mm: float) -> float | None:
    """Median over the slices holding body of the body's left-right extent (mm)."""
    columns = body.any(axis=1)  # [z, x]
    rows = np.flatnonzero(columns.any(axis=1))
    if rows.size == 0:
        return None
    first = columns[rows].argmax(axis=1)
    last = columns.shape[1] - 1 - columns[rows, ::-1].argmax(axis=1)
    return float(np.median(last - first + 1) * spacing_x_mm)


def measure_image(volume: Volume, modality: str, tumor: np.ndarray, liver: np.ndarray | None) -> ImageFacts:
    """The :class:`ImageFacts` of ``volume`` with its predicted ``tumor`` mask and (optional) ``liver`` mask."""
    voxel_ml = volume.voxel_volume_ml
    tumor = np.asarray(tumor, dtype=bool)
    body, step = body_mask(volume, modality)
    facts = ImageFacts(slice_thickness_mm=float(max(volume.spacing_mm)),
                       body_width_mm=body_width_mm(body, volume.spacing_mm[0] * step),
                       scan_length_mm=scan_length_mm(volume.geometry),
                       tumor_pieces=count_pieces(tumor, voxel_ml))
    facts.tumor_edge_area_mm2, facts.tumor_edge_side = tumor_on_scan_edge(tumor, volume.geometry)
    image = volume.array
    coarse = image[:, ::step, ::step]
    parenchyma = None
    if liver is not None and np.any(liver):
        liver = np.asarray(liver, dtype=bool)
        facts.liver_volume_ml = float(np.count_nonzero(liver)) * voxel_ml
        facts.tumor_outside_liver_ml = float(np.count_nonzero(tumor & ~liver)) * voxel_ml
        parenchyma = liver & ~tumor
        if np.count_nonzero(parenchyma) < 100:
            parenchyma = None
    if modality == "ct":
        if parenchyma is not None:
            facts.liver_hu = float(np.median(image[parenchyma]))
        fat = body & (coarse > FAT_WINDOW_HU[0]) & (coarse < FAT_WINDOW_HU[1])
        if np.count_nonzero(fat) >= 1000:
            facts.fat_hu = float(np.median(coarse[fat]))
    elif parenchyma is not None:
        shell_px = [max(1, round(MRI_FAT_SHELL_MM / (mm * step))) for mm in volume.spacing_mm[1::-1]]
        inner = ndimage.binary_erosion(body, structure=np.ones((1, 2 * shell_px[0] + 1, 2 * shell_px[1] + 1), bool))
        shell = body & ~inner
        liver_signal = float(np.median(image[parenchyma]))
        if np.count_nonzero(shell) >= 100 and liver_signal > 0:
            facts.fat_to_liver_ratio = float(np.median(coarse[shell])) / liver_signal
    return facts


def scan_length_mm(geometry: Geometry) -> float:
    """Head-to-foot extent (mm) of the scanned volume: the length of its box, edge to edge of the outer voxels,
    projected on the patient's superior axis (LPS z), so that an axial, coronal, sagittal or oblique scan is measured
    alike."""
    edges = geometry.direction_matrix * (np.asarray(geometry.size, dtype=float) * np.asarray(geometry.spacing_mm))
    return float(np.abs(edges[2]).sum())


#: Where a face of the scanned volume lies, by its outward world direction (LPS axis, sign).
_SIDE_WORDS = {(0, 1): "the field of view's left side", (0, -1): "the field of view's right side",
               (1, 1): "the field of view's posterior side", (1, -1): "the field of view's anterior side",
               (2, 1): "the scan's upper (head) end", (2, -1): "the scan's lower (foot) end"}


def tumor_on_scan_edge(tumor: np.ndarray, geometry: Geometry) -> tuple[float, str | None]:
    """The largest area (mm2) of ``tumor`` [z, y, x] lying on one of the six faces of the scanned volume (its
    outermost layer of voxels, each counted with the area of its face), and where that face lies in patient words;
    ``(0.0, None)`` when the mask touches no face."""
    mask = np.asarray(tumor, dtype=bool)
    sx, sy, sz = geometry.spacing_mm
    direction = geometry.direction_matrix
    best, side = 0.0, None
    for axis_ijk, (axis_zyx, face_mm2) in enumerate(((2, sy * sz), (1, sx * sz), (0, sx * sy))):
        outward = direction[:, axis_ijk]
        world = int(np.argmax(np.abs(outward)))
        for end, sign in ((0, -1), (-1, 1)):
            area = float(np.count_nonzero(np.take(mask, end, axis=axis_zyx))) * face_mm2
            if area > best:
                best, side = area, _SIDE_WORDS[(world, sign * (1 if outward[world] > 0 else -1))]
    return best, side


def count_pieces(mask: np.ndarray, voxel_ml: float, min_ml: float = PIECE_MIN_ML) -> int:
    """Separate 26-connected pieces of ``mask`` of at least ``min_ml`` mL (labelled inside the mask's box only)."""
    from ..preprocess.liver import bounding_box

    box = bounding_box(mask)
    if box is None:
        return 0
    labels, count = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return 0
    sizes_ml = np.bincount(labels.ravel())[1:] * voxel_ml
    return int(np.count_nonzero(sizes_ml >= min_ml))


# ------------------------------------------------------------------------------------------------ the flag
#: How each out-of-domain measurement is named to a reader, and its unit.
_FACT_WORDS = {"slice_thickness_mm": ("slices", "mm thick"), "body_width_mm": ("the body", "mm wide"),
               "scan_length_mm": ("the scan", "mm from head to foot"),
               "liver_hu": ("the liver", "HU"), "fat_hu": ("fat", "HU"),
               "fat_to_liver_ratio": ("fat/liver signal", "")}


def review(facts: ImageFacts, *, tumor_volume_ml: float, mean_entropy_nats: float | None, modality: str,
           settings: ReviewSettings, liver_source: str | None = None) -> dict[str, Any]:
    """The summary's ``"review"`` object: ``{"needed": bool, "reasons": [{"code", "message"}, ...]}``."""
    reasons: list[ReviewReason] = []
    outside = facts.tumor_outside_liver_ml
    share = outside / tumor_volume_ml if outside is not None and tumor_volume_ml > 0 else 0.0
    if outside is not None and outside > settings.max_outside_liver_ml and (
            share > settings.max_outside_liver_fraction or outside > settings.max_outside_liver_ml_any_share):
        where = f" ({liver_source})" if liver_source else ""
        reasons.append(ReviewReason("outside_liver", (
            f"{outside:.0f} mL of the {tumor_volume_ml:.0f} mL tumour mask ({share:.0%}) lies outside the liver "
            f"mask{where}; hepatoblastoma arises in the liver, so check those parts before using the volume.")))
    removed = facts.anchor_removed_ml
    if removed is not None and removed > settings.max_outside_liver_ml:
        where = f" ({liver_source})" if liver_source else ""
        reasons.append(ReviewReason("anchor_removed", (
            f"{removed:.0f} mL that the model called tumour was removed because it does not lie in the liver "
            f"mask{where}; if that mask missed part of the liver, a tumour may have been removed with it: look at "
            "what was removed (saved beside the result as anchor_removed) or run without the liver anchor.")))
    threshold = settings.max_mean_entropy_nats
    if threshold is not None and mean_entropy_nats is not None and mean_entropy_nats > threshold:
        reasons.append(ReviewReason("high_uncertainty", (
            f"The model was unsure of this mask: its mean uncertainty inside it is {mean_entropy_nats:.2f} nats, "
            f"above the {threshold:.2f} nats it stays under on its held-out test phantoms.")))
    unusual = _out_of_domain(facts, modality, settings.reference)
    if unusual:
        reasons.append(ReviewReason("out_of_domain", (
            "The image is unlike the images the model is meant for: " + "; ".join(unusual)
            + ", so its result may be unreliable.")))
    implausible = _implausible(facts, tumor_volume_ml, settings)
    if implausible:
        reasons.append(ReviewReason("implausible", "The result is implausible for a hepatoblastoma: "
                                    + "; ".join(implausible) + "."))
    edge = facts.tumor_edge_area_mm2
    if edge is not None and edge > settings.max_tumor_edge_area_mm2:
        where = facts.tumor_edge_side or "the edge of the scan"
        reasons.append(ReviewReason("at_scan_edge", (
            f"The tumour mask reaches {where} ({edge / 100:.1f} cm2 of it on the scan's outermost voxels): the tumour "
            "may go on beyond the scanned volume, so its volume and diameter are lower bounds.")))
    return {"needed": bool(reasons), "reasons": [r.to_dict() for r in reasons]}


def _out_of_domain(facts: ImageFacts, modality: str, reference: dict[str, tuple[float, float]]) -> list[str]:
    words = []
    for key, (what, unit) in _FACT_WORDS.items():
        value = getattr(facts, key)
        if value is None or key not in reference:
            continue
        lo, hi = reference[key]
        if lo <= value and (value <= hi or key in LOWER_BOUND_ONLY):
            continue
        shown = f"{value:.2f}" if key == "fat_to_liver_ratio" else f"{value:.0f}"
        expected = f"at least {_num(lo)}" if key in LOWER_BOUND_ONLY else f"{_num(lo)} to {_num(hi)}"
        text = f"{what} {shown} {unit}".rstrip() + f" (expected {expected})"
        if key == "liver_hu" and value < lo:
            text += ": a CT without intravenous contrast, or another phase?"
        elif key == "fat_to_liver_ratio" and value > hi:
            text += ": bright fat, as on a T2 without fat suppression or a T1-weighted image?"
        elif key == "body_width_mm" and value > hi:
            text += ": an adult-sized body?"
        elif key == "scan_length_mm":
            text += ": a partial scan, with too little of the liver and its surroundings in view?"
        words.append(text)
    return words


def _num(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def _implausible(facts: ImageFacts, tumor_volume_ml: float, settings: ReviewSettings) -> list[str]:
    words = []
    if facts.liver_volume_ml is not None and tumor_volume_ml > facts.liver_volume_ml:
        words.append(f"the tumour mask ({tumor_volume_ml:.0f} mL) is larger than the whole liver "
                     f"({facts.liver_volume_ml:.0f} mL)")
    if tumor_volume_ml > settings.max_tumor_ml:
        words.append(f"the tumour mask ({tumor_volume_ml:.0f} mL) is larger than fits in a child's abdomen "
                     f"(over {settings.max_tumor_ml:.0f} mL)")
    if facts.tumor_pieces > settings.max_pieces:
        words.append(f"the mask is scattered in {facts.tumor_pieces} separate pieces of at least {PIECE_MIN_ML:g} mL")
    return words


# ------------------------------------------------------------------------------------------------ reading it back
def review_beside(mask_path: str | Path) -> dict | None:
    """The ``"review"`` of the ``summary.json`` that ``hbseg segment`` wrote beside ``mask_path`` (None: no summary
    there, or one without the flag)."""
    summary = Path(mask_path).parent / "summary.json"
    try:
        flag = json.loads(summary.read_text(encoding="utf-8")).get(REVIEW_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return flag if isinstance(flag, dict) and "needed" in flag else None


def flagged_table(cases: list[tuple[str, str, str | Path | None]]) -> list[dict[str, str]]:
    """Rows ``model, case, review_needed, reasons, messages`` for ``(model, case, mask path)`` triples whose mask
    has a summary with the flag beside it."""
    rows = []
    for model, case, path in cases:
        flag = review_beside(path) if path is not None else None
        if flag is None:
            continue
        reasons = flag.get("reasons", [])
        rows.append({"model": model, "case": case, "review_needed": str(bool(flag.get("needed"))),
                     "reasons": ";".join(str(r.get("code", "")) for r in reasons),
                     "messages": " | ".join(str(r.get("message", "")) for r in reasons)})
    return rows
