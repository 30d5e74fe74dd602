"""Nyul-Udupa histogram standardisation (MRI), fitted on training livers.

**Landmarks.** Percentiles 1, 10, 20, ..., 90, 99 of the intensities inside a mask (the liver region, liver plus
tumour, as the paper says), mapped onto the standard scale [0, 100]: p1 -> 0 and p99 -> 100 for each training image,
and the standard landmarks are the mean of the mapped landmarks over the training images. This is the scheme of
torchio's ``HistogramStandardization`` (whose application uses the same 11 landmarks), which
``Testing/test_preprocess_intensity.py`` checks ours against; intensity-normalization's ``NyulNormalizer`` maps onto
[1, 100] instead, a difference of an affine map that the later z-score removes anyway.

**Application.** Piecewise linear between the image's own landmarks (computed inside its liver mask) and the
standard ones, applied to **every voxel** of the volume; below the first and above the last landmark the end
segments are extended (linear extrapolation), as Nyul's method and both libraries do. A segment whose two image
landmarks coincide (a flat histogram stretch) maps to its standard start value instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .plans import NyulLandmarks

#: Landmark percentiles: the 1st/99th cut-offs plus the deciles.
PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
STANDARD_RANGE = (0.0, 100.0)
_EPS = 1e-5


def image_landmarks(image: np.ndarray, mask: np.ndarray | None, percentiles: Sequence[float] = PERCENTILES
                    ) -> np.ndarray:
    """The image's intensity percentiles inside ``mask`` (all voxels when None), float64."""
    values = np.asarray(image, dtype=np.float32)
    if mask is not None:
        values = values[np.asarray(mask) > 0]
    else:
        values = values.ravel()
    if values.size == 0:
        raise ValueError("the Nyul mask is empty: no voxels to take intensity landmarks from")
    return np.percentile(values, percentiles)


def fit_landmarks(per_image_landmarks: Iterable[Sequence[float]], *, percentiles: Sequence[float] = PERCENTILES,
                  standard_range: Sequence[float] = STANDARD_RANGE, mask_source: str = "liver") -> NyulLandmarks:
    """Average standard landmarks from each training image's landmarks (:func:`image_landmarks`)."""
    table = np.asarray([np.asarray(v, dtype=np.float64) for v in per_image_landmarks])
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] != len(percentiles):
        raise ValueError(f"need one row of {len(percentiles)} landmarks per training image, got shape {table.shape}")
    s1, s2 = float(standard_range[0]), float(standard_range[1])
    width = table[:, -1] - table[:, 0]
    usable = width > _EPS
    if not usable.any():
        raise ValueError("every training image has a flat histogram inside its mask (p1 == p99)")
    table, width = table[usable], width[usable]
    mapped = s1 + (table - table[:, :1]) * ((s2 - s1) / width)[:, None]
    standard = mapped.mean(axis=0)
    return NyulLandmarks(percentiles=tuple(float(p) for p in percentiles),
                         standard_landmarks=tuple(float(v) for v in standard),
                         standard_range=(s1, s2), mask_source=mask_source)


def apply_landmarks(image: np.ndarray, mask: np.ndarray | None, nyul: NyulLandmarks) -> np.ndarray:
    """Map ``image`` (any shape) onto the standard scale; float32 out. Landmarks come from voxels in ``mask``."""
    source = image_landmarks(image, mask, nyul.percentiles)
    standard = np.asarray(nyul.standard_landmarks, dtype=np.float64)
    widths = np.diff(source)
    flat = widths < _EPS
    slopes = np.where(flat, 0.0, np.diff(standard) / np.where(flat, 1.0, widths))
    intercepts = standard[:-1] - slopes * source[:-1]
    data = np.asarray(image, dtype=np.float32)
    # Segment k covers [source[k], source[k+1]); the first and last segments extend to -inf / +inf.
    segment = np.digitize(data, source[1:-1], right=False)
    out = slopes[segment] * data + intercepts[segment]
    return out.astype(np.float32)
