"""Per-case numbers a radiologist reads first: tumour volume, largest diameter, and where the model was unsure."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from ..evaluate.regions import entropy_core_boundary
from ..io import Volume


def tumor_volume_ml(mask: Volume) -> float:
    """Mask volume in millilitres: voxel count x voxel volume."""
    return float(np.count_nonzero(mask.array)) * mask.voxel_volume_ml


def largest_diameter_mm(mask: Volume) -> float:
    """Largest 3D distance (mm) between the centres of two mask voxels, in physical space.

    Only the mask's surface voxels can be the end points, and only the vertices of their convex hull, so the
    search is over a few hundred points even for a 10 cm tumour. 0 for an empty or single-voxel mask.
    """
    array = mask.array.astype(bool)
    if array.sum() < 2:
        return 0.0
    # Work on the bounding box (padded by one voxel so the erosion sees the background around the mask).
    box = ndimage.find_objects(array.astype(np.uint8))[0]
    lower = [max(s.start - 1, 0) for s in box]
    crop = array[tuple(slice(lo, s.stop + 1) for lo, s in zip(lower, box))]
    surface = crop & ~ndimage.binary_erosion(crop)
    indices_zyx = np.argwhere(surface) + np.asarray(lower)
    ijk = indices_zyx[:, ::-1].astype(float)
    matrix = mask.geometry.index_to_physical_matrix()
    points_mm = ijk @ matrix[:3, :3].T + matrix[:3, 3]
    if len(points_mm) > 4:
        try:
            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except QhullError:  # all points on a plane or a line: the full set is small enough then
            pass
    return float(pdist(points_mm).max())


def case_summary(mask: Volume, entropy: Volume, *, core_radius_px: int = 10) -> dict:
    """Volume, diameter and entropy figures of one case (keys as in :class:`~.result.Prediction`)."""
    regions = entropy_core_boundary(entropy.array, mask.array, radius_px=core_radius_px)
    return {
        "tumor_volume_ml": tumor_volume_ml(mask),
        "largest_diameter_mm": largest_diameter_mm(mask),
        "mean_entropy_nats": _nan_to_none(regions["mask_mean"]),
        "image_mean_entropy_nats": _nan_to_none(regions["mean"]),
        "core_entropy_nats": _nan_to_none(regions["core_mean"]),
        "boundary_entropy_nats": _nan_to_none(regions["boundary_mean"]),
        "core_empty": bool(regions["core_empty"]),
    }


def _nan_to_none(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is written as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
