"""Refusing bad input before any work is done: wrong modality for the model, implausible voxel spacing.

**Modality** (:func:`check_modality`): a CT in Hounsfield units always holds air (-1000 HU outside the body, in the
bowel and lung bases) or the scanner's padding value outside the reconstruction circle (-1024 .. -3024), so its
lowest 0.5 % of voxels lie far below -500. MRI intensities are magnitudes: zero or positive. So a volume whose
0.5th percentile is above :data:`AIR_THRESHOLD_HU` is refused by a CT model (it is most likely an MRI, or a CT
written without its rescale intercept), and one with more than :data:`MRI_MAX_AIR_FRACTION` of its voxels below it
is refused by an MRI model (it looks like a CT).

**Spacing** (:func:`check_spacing`): every axis must lie in [0.1, 10] mm; anything else is a broken header or not a
clinical abdominal scan, and resampling it to the plan's grid would produce nonsense (or run out of memory).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io import Geometry, Volume
from .plans import MAX_SPACING_MM, MIN_SPACING_MM

AIR_THRESHOLD_HU = -500.0
#: Fraction of the voxels a CT must have below AIR_THRESHOLD_HU (its 0.5th percentile must be below it).
CT_MIN_AIR_FRACTION = 0.005
#: An MRI with more voxels than this below AIR_THRESHOLD_HU is taken for a CT.
MRI_MAX_AIR_FRACTION = 0.01
_MAX_SAMPLES = 2_000_000


def _sample(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array).ravel()
    step = max(1, flat.size // _MAX_SAMPLES)
    return flat[::step]


def check_modality(volume: Volume, expected: str) -> None:
    """Raise :class:`InputError` naming the file when ``volume`` does not look like ``expected`` ("ct" or "mri")."""
    if expected not in ("ct", "mri"):
        raise ValueError(f"expected modality must be 'ct' or 'mri', got {expected!r}")
    values = _sample(volume.array).astype(np.float32)
    air_fraction = float(np.mean(values < AIR_THRESHOLD_HU))
    low = float(np.percentile(values, 0.5))
    if expected == "ct" and air_fraction < CT_MIN_AIR_FRACTION:
        raise InputError(
            f"this does not look like a CT in Hounsfield units: a CT has air near -1000 HU, but the lowest 0.5 % of "
            f"its voxels are at {low:.0f} or above (only {100 * air_fraction:.2f} % below {AIR_THRESHOLD_HU:.0f}). "
            "Is it an MRI given to a CT model? (A CT saved without its rescale intercept looks like this too.)",
            volume.path)
    if expected == "mri" and air_fraction > MRI_MAX_AIR_FRACTION:
        raise InputError(
            f"this looks like a CT, not an MRI: {100 * air_fraction:.1f} % of its voxels are below "
            f"{AIR_THRESHOLD_HU:.0f} (air in Hounsfield units), and MRI intensities are never negative. "
            "Is it a CT given to an MRI model?", volume.path)


def check_spacing(geometry: Geometry | Volume, what: str = "image", path=None) -> None:
    """Raise :class:`InputError` when a spacing is outside [0.1, 10] mm."""
    if isinstance(geometry, Volume):
        path = geometry.path if path is None else path
        geometry = geometry.geometry
    spacing = np.asarray(geometry.spacing_mm, dtype=float)
    bad = (spacing < MIN_SPACING_MM) | (spacing > MAX_SPACING_MM) | ~np.isfinite(spacing)
    if bad.any():
        axes = ", ".join(f"{name} {value:g} mm" for name, value, b in zip("xyz", spacing, bad) if b)
        raise InputError(f"implausible voxel spacing for a {what} ({axes}); every axis must be between "
                         f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm. Check the file header.", path)
