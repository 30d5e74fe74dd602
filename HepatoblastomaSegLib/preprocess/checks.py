"""Refusing bad input before any work is done: wrong modality for the model, implausible voxel spacing.

**Modality** (:func:`check_modality`): a CT in Hounsfield units always holds air (-1000 HU outside the body, in the
bowel and lung bases) or the scanner's padding value outside the reconstruction circle (-1024 .. -3024), so its
lowest 0.5 % of voxels lie far below -500. MRI intensities are magnitudes: zero or positive. So a volume whose
0.5th percentile is above :data:`AIR_THRESHOLD_HU` is refused by a CT model (it is most likely an MRI, or a CT
written without its rescale intercept), and one with more than :data:`MRI_MAX_AIR_FRACTION` of its voxels below it
is refused by an MRI model (it looks like a CT).

A CT stored as unsigned HU+1024 (its rescale intercept lost: air near 0, soft tissue in a narrow peak near 1024, and
little between the two) is neither: :func:`looks_like_offset_ct` spots it, :func:`guess_modality` calls it a CT and
:func:`check_modality` refuses it with that diagnosis, so it never reaches the MRI model.

**Not a scan at all** (:func:`check_plausible_scan`, part of :func:`check_modality`): an image smaller than
:data:`MIN_VOXELS_PER_AXIS` voxels or :data:`MIN_EXTENT_MM` along an axis, one with fewer than
:data:`MIN_DISTINCT_VALUES` distinct intensities (a 0/1 mask or label map given as the image, a blank image), and a
CT without a body (under :data:`CT_MIN_BODY_FRACTION` of its voxels above -500 HU: all air) or whose body is not
soft tissue (median above :data:`CT_MAX_BODY_MEDIAN_HU`) are refused: a network asked about them answers with
confident nonsense.

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
#: An image this small along any axis cannot hold a liver (a 3x3x3 image, a 1 cm field of view).
MIN_VOXELS_PER_AXIS = 4
MIN_EXTENT_MM = 15.0
#: A scan has noise and anatomy: hundreds of distinct intensities. A mask or label map has a handful.
MIN_DISTINCT_VALUES = 16
#: A CT with less than this fraction of its voxels above -500 HU shows no body.
CT_MIN_BODY_FRACTION = 0.01
#: The median of a body on CT is soft tissue (-100 .. 100 HU); even a body full of contrast or bone is below this.
CT_MAX_BODY_MEDIAN_HU = 1000.0
#: HU+1024 storage: air at 0..~50, a narrow soft-tissue peak around 1024.
_OFFSET_CT_AIR_MAX = 100.0
_OFFSET_CT_BODY_MEDIAN = (874.0, 1224.0)
_OFFSET_CT_BODY_IQR_MAX = 250.0
#: HU+1024 storage: the voxels between air and body (-924 .. -500 HU: lung, gas, partial volume at their edges) are
#: fewer than the body's: few in an abdominal CT, and fewer than the body even in a chest CT with both lungs. A
#: T2-weighted MRI whose brightest tissues happen to peak near 1024 has more there than in that peak: its dimmer
#: tissues (measured: README, *Reliability*).
_OFFSET_CT_MAX_BETWEEN_PER_BODY = 1.0


def _sample(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array).ravel()
    step = max(1, flat.size // _MAX_SAMPLES)
    return flat[::step]


def looks_like_offset_ct(volume: Volume) -> bool:
    """True for a CT stored as unsigned HU+1024 without its rescale intercept.

    Evidence: no negative value (an unsigned type, or an integer image whose minimum is 0 or more), air near 0
    (at least 0.5 % of the voxels at or below 100, i.e. -924 HU), what is above -500 HU + 1024 forming the
    narrow soft-tissue peak of a body around 1024 (median 874..1224, interquartile range under 250), and fewer voxels
    between air and body than in the body. A T2-weighted MRI has a dark background too; its tissues mostly spread far
    wider relative to their level, and where its brightest ones do form such a peak, its dimmer ones fill the range
    between air and that peak.
    """
    array = volume.array
    if not np.issubdtype(array.dtype, np.integer):
        return False
    values = _sample(array)
    if values.size == 0 or values.min() < 0:
        return False
    values = values.astype(np.float32)
    if np.mean(values <= _OFFSET_CT_AIR_MAX) < CT_MIN_AIR_FRACTION:
        return False
    body = values[values >= 1024.0 + AIR_THRESHOLD_HU]
    if body.size < CT_MIN_BODY_FRACTION * values.size:
        return False
    between = np.count_nonzero((values > _OFFSET_CT_AIR_MAX) & (values < 1024.0 + AIR_THRESHOLD_HU))
    if between >= _OFFSET_CT_MAX_BETWEEN_PER_BODY * body.size:
        return False
    q1, median, q3 = np.percentile(body, [25, 50, 75])
    return bool(_OFFSET_CT_BODY_MEDIAN[0] <= median <= _OFFSET_CT_BODY_MEDIAN[1] and q3 - q1 < _OFFSET_CT_BODY_IQR_MAX)


def guess_modality(volume: Volume) -> str:
    """"ct" when the image holds air in Hounsfield units (below -500) or is a CT stored as HU+1024, else "mri"."""
    sample = _sample(volume.array)
    if float(np.mean(sample < AIR_THRESHOLD_HU)) >= CT_MIN_AIR_FRACTION or looks_like_offset_ct(volume):
        return "ct"
    return "mri"


def check_plausible_scan(volume: Volume, modality: str) -> None:
    """Raise :class:`InputError` for an image that cannot be a scan of ``modality`` (see the module docstring)."""
    size, spacing = volume.geometry.size, volume.spacing_mm
    extent_mm = [n * s for n, s in zip(size, spacing)]
    if min(size) < MIN_VOXELS_PER_AXIS or min(extent_mm) < MIN_EXTENT_MM:
        raise InputError(f"image is only {'x'.join(map(str, size))} voxels ({' x '.join(f'{e:.1f}' for e in extent_mm)}"
                         f" mm); a scan of the abdomen needs at least {MIN_VOXELS_PER_AXIS} voxels and "
                         f"{MIN_EXTENT_MM:g} mm along every axis", volume.path)
    values = _sample(volume.array)
    distinct = np.unique(values[: 200_000]) if values.size > 200_000 else np.unique(values)
    if distinct.size < MIN_DISTINCT_VALUES:
        distinct = np.unique(values)
    if distinct.size < MIN_DISTINCT_VALUES:
        shown = ", ".join(f"{v:g}" for v in distinct[:8].tolist()) + (", ..." if distinct.size > 8 else "")
        raise InputError(f"image holds only {distinct.size} distinct value(s) ({shown}); a scan has hundreds. Is it a "
                         "mask or label map given as the image, or a blank image?", volume.path)
    if modality != "ct":
        return
    values = values.astype(np.float32)
    body = values[values >= AIR_THRESHOLD_HU]
    if body.size < CT_MIN_BODY_FRACTION * values.size:
        raise InputError(f"this CT shows no body: only {100 * body.size / values.size:.2f} % of its voxels are above "
                         f"{AIR_THRESHOLD_HU:.0f} HU (a blank, all-air image?)", volume.path)
    median = float(np.median(body))
    if median > CT_MAX_BODY_MEDIAN_HU:
        raise InputError(f"this is not a CT in Hounsfield units: the median of its body is {median:.0f} HU, where "
                         f"soft tissue lies near 0..100 HU (over {CT_MAX_BODY_MEDIAN_HU:.0f} HU for most of a body "
                         "is not anatomy; a wrong rescale slope or intercept?)", volume.path)


def check_modality(volume: Volume, expected: str) -> None:
    """Raise :class:`InputError` naming the file when ``volume`` does not look like ``expected`` ("ct" or "mri"),
    or cannot be a scan at all (:func:`check_plausible_scan`)."""
    if expected not in ("ct", "mri"):
        raise ValueError(f"expected modality must be 'ct' or 'mri', got {expected!r}")
    if looks_like_offset_ct(volume):
        raise InputError(
            "this looks like a CT stored as HU+1024 (unsigned, air near 0 and soft tissue near 1024) whose rescale "
            "intercept of -1024 was lost; it is neither a CT in Hounsfield units nor an MRI. Re-export it with the "
            "intercept applied (values in HU)", volume.path)
    check_plausible_scan(volume, expected)
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
