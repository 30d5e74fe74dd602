"""Per-case numbers a radiologist reads first: tumour volume, largest diameter, and where the model was unsure."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from ..evaluate.regions import entropy_core_boundary
from ..io import Volume

if TYPE_CHECKING:  # torch only where a GPU is used: the Slicer glue imports this module in Slicer's own process
    import torch


def tumor_volume_ml(mask: Volume) -> float:
    """Mask volume in millilitres: voxel count x voxel volume."""
    return float(np.count_nonzero(mask.array)) * mask.voxel_volume_ml


def largest_diameter_mm(mask: Volume) -> float:
    """Largest 3D distance (mm) between the centres of two mask voxels, in physical space.

    The two end points are vertices of the mask's convex hull, and every hull vertex is the first or the last mask
    voxel of its image row (a voxel between two others of its row lies on the segment joining them; the index-to-mm
    map is affine, so that holds in millimetres too). So the hull is taken over at most 2 voxels per (z, y) row:
    a few thousand points even for a mask filling the body, where all surface voxels were millions. 0 for an empty or
    single-voxel mask. A mask filling a 512x512x101 CT takes about 0.05 s.
    """
    array = mask.array.astype(bool, copy=False)
    if np.count_nonzero(array) < 2:
        return 0.0
    rows_z, rows_y = np.nonzero(array.any(axis=2))
    first_x = array.argmax(axis=2)[rows_z, rows_y]
    last_x = array.shape[2] - 1 - array[:, :, ::-1].argmax(axis=2)[rows_z, rows_y]
    two = last_x != first_x  # each voxel once, without np.unique's sort (0.2 s for 100 000 rows)
    indices_zyx = np.concatenate([np.stack([rows_z, rows_y, first_x], axis=1),
                                  np.stack([rows_z[two], rows_y[two], last_x[two]], axis=1)])
    ijk = indices_zyx[:, ::-1].astype(float)
    matrix = mask.geometry.index_to_physical_matrix()
    points_mm = ijk @ matrix[:3, :3].T + matrix[:3, 3]
    if len(points_mm) > 4:
        try:
            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except QhullError:  # all points on a plane or a line: the full set is small enough then
            pass
    return float(pdist(points_mm).max())


def case_summary(mask: Volume, entropy: Volume, *, core_radius_px: int = 10,
                 device: torch.device | None = None) -> dict:
    """Volume, diameter and entropy figures of one case (keys as in :class:`~.result.Prediction`).

    On a CUDA ``device`` the core erosion and the region means run there (:mod:`.regions_torch`; scipy takes over a
    second for a mask that fills the image); the figures equal the CPU's up to float summation order. Elsewhere scipy computes them, bit for bit reproducibly.
    """
    if device is not None and device.type == "cuda":
        import torch

        from .regions_torch import entropy_core_boundary_torch

        regions = entropy_core_boundary_torch(torch.from_numpy(entropy.array).to(device),
                                              torch.from_numpy(mask.array).to(device), core_radius_px)
    else:
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
