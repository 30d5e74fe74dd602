"""The numbers in this module's tables, each computed by the library (one function per number, so the MRML glue
never has its own metric code): volume and Dice from :mod:`HepatoblastomaSegLib.evaluate.metrics`, the majority
vote from :mod:`HepatoblastomaSegLib.evaluate.consensus`, the largest diameter from
:mod:`HepatoblastomaSegLib.infer.summary` and the core/boundary entropy from
:mod:`HepatoblastomaSegLib.evaluate.regions`.

All masks are uint8 0/1 ``[z, y, x]`` arrays on one grid described by a :class:`Geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from HepatoblastomaSegLib.evaluate import consensus as _consensus
from HepatoblastomaSegLib.evaluate import metrics as _metrics
from HepatoblastomaSegLib.evaluate import regions as _regions
from HepatoblastomaSegLib.infer import summary as _summary
from HepatoblastomaSegLib.io import Geometry, Volume

#: Radius (pixels, axial plane) of the disc that erodes the tumour into core and boundary (the paper's 10).
CORE_RADIUS_PX = _regions.DEFAULT_RADIUS_PX


def volume_ml(mask: np.ndarray, geometry: Geometry) -> float:
    """Mask volume in mL (voxel count x voxel volume)."""
    return _metrics.volume_ml(mask, geometry.voxel_volume_ml)


def dice(mask: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient; NaN when both masks are empty."""
    return _metrics.dice(mask, reference)[0]


def volume_error_pct(volume_ml_: float, reference_volume_ml: float) -> float:
    """The paper's volume percentage error |PV - TV| / TV x 100; NaN for an empty reference."""
    return _metrics.volume_percentage_error(volume_ml_, reference_volume_ml)


def largest_diameter_mm(mask: np.ndarray, geometry: Geometry) -> float:
    """Largest 3D extent of the mask in mm, in physical space (0 for fewer than two voxels)."""
    return _summary.largest_diameter_mm(Volume(mask, geometry))


def entropy_in_regions(entropy: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean entropy (nats) inside the mask, in its core and on its boundary (NaN for an empty region)."""
    regions = _regions.entropy_core_boundary(entropy, mask, radius_px=CORE_RADIUS_PX)
    return {"mean_entropy_nats": regions["mask_mean"], "core_entropy_nats": regions["core_mean"],
            "boundary_entropy_nats": regions["boundary_mean"]}


def majority_vote(masks: Sequence[np.ndarray], min_votes: int | None = None) -> np.ndarray:
    """Voxelwise vote: 1 where at least ``min_votes`` masks (default: more than half) are 1."""
    return _consensus.majority_vote(masks, min_votes)


def mask_measurements(mask: np.ndarray, geometry: Geometry, entropy: np.ndarray | None) -> dict[str, float]:
    """Volume, largest diameter and (with an entropy map) the region entropies of one mask."""
    row = {"volume_ml": volume_ml(mask, geometry), "largest_diameter_mm": largest_diameter_mm(mask, geometry)}
    if entropy is not None:
        row.update(entropy_in_regions(entropy, mask))
    else:
        row.update(mean_entropy_nats=math.nan, core_entropy_nats=math.nan, boundary_entropy_nats=math.nan)
    return row


def comparison(mask: np.ndarray, reference: np.ndarray, geometry: Geometry) -> dict[str, float]:
    """Agreement of ``mask`` with ``reference``: Dice, reference volume, signed and percentage volume error."""
    pv, tv = volume_ml(mask, geometry), volume_ml(reference, geometry)
    return {"dice": dice(mask, reference), "reference_volume_ml": tv, "volume_difference_ml": pv - tv,
            "volume_error_pct": volume_error_pct(pv, tv)}
