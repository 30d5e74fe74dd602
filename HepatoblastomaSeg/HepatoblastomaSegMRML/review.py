"""Review helpers without Qt: where the model is least sure on the tumour boundary ("Next uncertain region"),
moving the slice views there, and a debouncer for re-scoring after edits.

Uncertain regions (:func:`find_uncertain_regions`): the boundary band is every voxel within ``band_mm`` of the
mask's surface, inside or outside (physical distance, so anisotropic voxels count in mm); voxels of the band whose
entropy is at least ``threshold_nats`` are grouped into connected regions (26-neighbourhood), and the regions are
ranked by their summed entropy (an uncertain region that is large and very uncertain comes first). Each region's
centre is the voxel of the region nearest to its entropy-weighted centroid, so the views always land on an
uncertain voxel, even for a region curved around the tumour. Arrays are ``[z, y, x]`` (= ``[k, j, i]``); the
``ijk_to_ras`` matrix (4x4, the volume node's) maps voxel indices to RAS millimetres.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

#: Default half-width of the boundary band (mm) and entropy threshold (nats; half of the 2-class maximum ln 2).
DEFAULT_BAND_MM = 3.0
DEFAULT_THRESHOLD_NATS = 0.5 * math.log(2.0)


@dataclasses.dataclass(frozen=True)
class UncertainRegion:
    """One connected uncertain region. ``centre_ijk``: (i, j, k) voxel index; ``centre_ras``: its RAS position
    (mm); ``summed_entropy_nats``: the sum over its voxels; ``voxels``: its size; ``max_entropy_nats``: its peak."""

    centre_ijk: tuple[int, int, int]
    centre_ras: tuple[float, float, float]
    summed_entropy_nats: float
    voxels: int
    max_entropy_nats: float

    def describe(self, rank: int, count: int) -> str:
        r, a, s = self.centre_ras
        return (f"Uncertain region {rank}/{count}: {self.voxels} voxels, summed entropy "
                f"{self.summed_entropy_nats:.1f} nats (peak {self.max_entropy_nats:.2f}) at R {r:.1f}, A {a:.1f}, "
                f"S {s:.1f} mm")


def spacing_zyx_of(ijk_to_ras: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along k, j, i from an IJK -> RAS matrix (its column lengths)."""
    columns = np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)
    return float(columns[2]), float(columns[1]), float(columns[0])


def boundary_band(mask_zyx: np.ndarray, spacing_zyx_mm: Sequence[float], band_mm: float = DEFAULT_BAND_MM
                  ) -> np.ndarray:
    """Voxels within ``band_mm`` of the mask's surface (both sides), as a bool ``[z, y, x]`` array; empty when the
    mask is empty. The distance is from voxel centre to the nearest voxel centre across the surface."""
    mask = np.asarray(mask_zyx) != 0
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    spacing = [float(s) for s in spacing_zyx_mm]
    if mask.all():
        inside = np.full(mask.shape, np.inf)
    else:
        inside = ndimage.distance_transform_edt(mask, sampling=spacing)  # to the nearest outside voxel
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)  # to the nearest inside voxel
    return np.where(mask, inside <= band_mm, outside <= band_mm)


def find_uncertain_regions(entropy_zyx: np.ndarray, mask_zyx: np.ndarray, ijk_to_ras: np.ndarray, *,
                           band_mm: float = DEFAULT_BAND_MM, threshold_nats: float = DEFAULT_THRESHOLD_NATS,
                           min_voxels: int = 1, max_regions: int | None = 50) -> list[UncertainRegion]:
    """The uncertain regions on the tumour boundary, most uncertain first (see the module docstring).

    ``entropy_zyx`` (nats) and ``mask_zyx`` (nonzero = tumour) share one grid; regions smaller than
    ``min_voxels`` are dropped; at most ``max_regions`` are returned.
    """
    entropy = np.asarray(entropy_zyx, dtype=np.float64)
    mask = np.asarray(mask_zyx)
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy map {entropy.shape} and mask {mask.shape} are not on one grid ([z, y, x])")
    matrix = np.asarray(ijk_to_ras, dtype=float)
    band = boundary_band(mask, spacing_zyx_of(matrix), band_mm)
    candidates = band & (entropy >= threshold_nats)
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    sums = np.asarray(ndimage.sum_labels(entropy, labels, index), dtype=float)
    sizes = np.asarray(ndimage.sum_labels(np.ones_like(entropy), labels, index), dtype=float).astype(int)
    peaks = np.asarray(ndimage.maximum(entropy, labels, index), dtype=float)
    order = np.argsort(-sums, kind="stable")
    regions = []
    for position in order:
        if sizes[position] < min_voxels:
            continue
        label = position + 1
        kji = np.argwhere(labels == label)
        weights = entropy[tuple(kji.T)]
        centroid = (kji * weights[:, None]).sum(axis=0) / weights.sum()
        nearest = kji[np.argmin(((kji - centroid) ** 2).sum(axis=1))]
        k, j, i = (int(v) for v in nearest)
        ras = matrix @ np.array([i, j, k, 1.0])
        regions.append(UncertainRegion((i, j, k), (float(ras[0]), float(ras[1]), float(ras[2])),
                                       float(sums[position]), int(sizes[position]), float(peaks[position])))
        if max_regions is not None and len(regions) >= max_regions:
            break
    return regions


def regions_of_result(segmentation_node, segment_id: str | None = None, **options: Any) -> list[UncertainRegion]:
    """:func:`find_uncertain_regions` for a result in the scene: the reviewer's current segment (edits included)
    and the entropy map linked to it. Centres are in world RAS (the volume's parent transform applied)."""
    import slicer

    from HepatoblastomaSegLib.errors import InputError

    from . import nodes
    from .terminology import TUMOR_SEGMENT
    from .volumes import find_segment, ijk_to_ras, node_grid, node_name, segment_mask

    volume_node = nodes.linked(segmentation_node, "volume")
    entropy_node = nodes.linked(segmentation_node, "entropy")
    if volume_node is None or entropy_node is None:
        raise InputError(f"segmentation {node_name(segmentation_node)} has no linked input volume and entropy map; "
                         "choose a result of 'Segment tumor'")
    segment_id = find_segment(segmentation_node, segment_id, preferred_name=TUMOR_SEGMENT.name)
    mask = segment_mask(segmentation_node, segment_id, node_grid(volume_node))
    entropy = slicer.util.arrayFromVolume(entropy_node)
    regions = find_uncertain_regions(entropy, mask, ijk_to_ras(entropy_node), **options)
    transform = entropy_node.GetParentTransformNode()
    if transform is None:
        return regions
    import vtk

    to_world = vtk.vtkGeneralTransform()
    transform.GetTransformToWorld(to_world)
    return [dataclasses.replace(r, centre_ras=tuple(float(v) for v in to_world.TransformPoint(r.centre_ras)))
            for r in regions]


def jump_slices_to(scene, ras: Sequence[float], *, centred: bool = True) -> int:
    """Move every slice view of ``scene`` so that it shows the RAS point ``ras`` (mm), centred in the view or by
    offsetting the slice only; returns the number of slice views moved."""
    count = 0
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        slice_node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        if centred:
            slice_node.JumpSliceByCentering(float(ras[0]), float(ras[1]), float(ras[2]))
        else:
            slice_node.JumpSliceByOffsetting(float(ras[0]), float(ras[1]), float(ras[2]))
        count += 1
    return count


class RegionCursor:
    """Steps through a ranked region list: ``next()`` gives the most uncertain region first, then the following
    ones, and starts over after the last. ``reset(regions)`` after the mask changed."""

    def __init__(self, regions: Sequence[UncertainRegion] = ()):
        self.regions = list(regions)
        self.position = -1

    def reset(self, regions: Sequence[UncertainRegion]) -> None:
        self.regions = list(regions)
        self.position = -1

    def next(self) -> UncertainRegion | None:
        if not self.regions:
            return None
        self.position = (self.position + 1) % len(self.regions)
        return self.regions[self.position]

    @property
    def rank(self) -> int:
        """1-based rank of the region last returned (0 before the first)."""
        return self.position + 1


class Debouncer:
    """Fires once a burst of events has been quiet for ``delay_s``: ``poke()`` on every event (e.g. each Segment
    Editor stroke), ``ready()`` from a timer; ``ready()`` is True once per burst. ``clock``: seconds, monotonic."""

    def __init__(self, delay_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.delay_s = float(delay_s)
        self.clock = clock
        self._last: float | None = None

    def poke(self) -> None:
        self._last = self.clock()

    @property
    def pending(self) -> bool:
        return self._last is not None

    def cancel(self) -> None:
        self._last = None

    def ready(self) -> bool:
        if self._last is None or self.clock() - self._last < self.delay_s:
            return False
        self._last = None
        return True


# --- the result's review flag ------------------------------------------------------------------------------------

#: Plain words for the review reasons the library reports (``summary["review"]["reasons"][i]["code"]``), used when a
#: reason comes without its own message.
REVIEW_REASON_WORDS = {
    "outside_liver": "Part of the tumour mask lies outside the liver.",
    "anchor_removed": "Tumour found outside the liver mask was removed; the liver mask may have missed part of the "
                      "liver.",
    "high_uncertainty": "The model is unsure about a large part of the tumour.",
    "out_of_domain": "The image is unlike the images the model is meant for.",
    "implausible": "The tumour's size or shape is implausible for hepatoblastoma.",
    "at_scan_edge": "The tumour reaches the edge of the scan; its volume may be underestimated.",
}


def review_flag_text(summary: Mapping[str, Any] | None) -> str:
    """What the module shows next to a result whose summary asks for a review, in plain words; ``""`` when it does
    not (or the summary predates the review flag, which has no ``review`` key).

    The summary's ``review`` is ``{"needed": bool, "reasons": [{"code": ..., "message": ...}]}``: each reason's own
    message is shown, else the words for its code, else the code itself."""
    review = (summary or {}).get("review")
    if not isinstance(review, Mapping):
        return ""
    reasons = review.get("reasons") or []
    lines = []
    for reason in reasons if isinstance(reasons, list) else []:
        if not isinstance(reason, Mapping):
            continue
        code = str(reason.get("code") or "")
        text = str(reason.get("message") or "").strip() or REVIEW_REASON_WORDS.get(code) or code.replace("_", " ")
        if text and text not in lines:
            lines.append(text)
    if not lines and not review.get("needed"):
        return ""
    heading = "Please review this result carefully:" if lines else "Please review this result carefully."
    return "\n".join([heading, *(f"\u2022 {line}" for line in lines)])
