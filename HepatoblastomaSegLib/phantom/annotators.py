"""Three simulated annotators (R1, R2 experts; R3 novice) drawn from the ground-truth tumour, slice by slice.

An annotator marks a voxel when the tumour's signed distance there is below their *margin* ``delta`` (mm): where
``delta > 0`` they drew outside the true boundary, where ``delta < 0`` inside it. Per annotator::

    delta(x, y, z) = bias + sigma * (0.6 * smooth3d(x, y, z) + 0.8 * per_slice2d(x, y | slice))

Both random fields have unit variance; the per-slice one is independent from slice to slice, because people draw
on axial slices one at a time. R1 (expert) draws slightly inside the others (slight under-segmentation), R2 (expert)
slightly outside (over-segmentation), R3 (novice) in between with 12 % more and finer-grained noise (median volume
ratios to the majority vote about 0.98, 1.03 and 1.02; the paper's CT: 0.99, 1.02, 1.01); in 35 % of cases
R3 also includes a vessel touching the tumour on a few slices, and misses a small (< 3 cm) satellite lesion in 60 %.

Calibration. Two annotators whose boundaries differ by ``d`` (mm, along the normal) disagree on
``S * E|d|`` of volume (S: tumour surface), so their Dice is ``1 - S * E|d| / (2 V)``. Each case draws a target
R1-R2 Dice (mean 0.89, SD 0.02, within 0.82-0.94) and sets ``sigma`` from the tumour's surface-to-volume ratio so
that the expected Dice is the target, whatever the tumour's size. With three annotators of independent noise the
majority vote's boundary is their median, which reproduces the paper's pattern: annotator pairs 0.88-0.89,
each annotator against the majority vote 0.94-0.95 (Table 2: 0.89, 0.88, 0.88; 0.94, 0.95, 0.94).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.special import erf

from .fields import F32, SmoothNoise
from .tissues import VESSEL_TISSUES

RATERS = ("R1", "R2", "R3")
#: Bias of each annotator in units of sigma (negative: under-segmentation).
_BIAS = {"R1": -0.06, "R2": 0.14, "R3": 0.04}
_NOISE_SCALE = {"R1": 1.0, "R2": 1.0, "R3": 1.12}
#: Correlation lengths (mm) of the 3D and per-slice components.
_SPACING_3D_MM = {"R1": 22.0, "R2": 22.0, "R3": 16.0}
_SPACING_2D_MM = {"R1": 14.0, "R2": 14.0, "R3": 9.0}


def _mean_abs_difference(gamma: float) -> float:
    """E|d1 - d2| / sigma for d1 ~ N(b - gamma sigma, sigma^2), d2 ~ N(b + gamma sigma, sigma^2)."""
    s, mu = np.sqrt(2.0), 2.0 * gamma
    return float(s * np.sqrt(2 / np.pi) * np.exp(-mu * mu / (2 * s * s)) + mu * erf(mu / (s * np.sqrt(2))))


@dataclasses.dataclass
class Annotators:
    """The three annotators of one case; :meth:`draw` turns a slab of ground truth into their masks."""

    sigma_mm: float
    target_dice: float
    fields: dict          # rater -> (SmoothNoise 3D, SmoothNoise per slice)
    include_vessel_slices: tuple[int, int] | None
    r3_skips: tuple[int, ...]  # lesion indices R3 misses

    @classmethod
    def sample(cls, rng: np.random.Generator, surface_to_volume_per_mm: float, lo_mm: Sequence[float],
               hi_mm: Sequence[float], slice_z_mm: np.ndarray, lesion_diameters_mm: Sequence[float],
               tumour_slices: tuple[int, int]) -> Annotators:
        target = float(np.clip(rng.normal(0.89, 0.02), 0.82, 0.94))
        mean_abs = 2.0 * (1.0 - target) / max(surface_to_volume_per_mm, 1e-6)
        sigma = mean_abs / _mean_abs_difference((_BIAS["R2"] - _BIAS["R1"]) / 2)
        fields = {}
        for rater in RATERS:
            fields[rater] = (SmoothNoise(rng, lo_mm, hi_mm, _SPACING_3D_MM[rater]),
                             SmoothNoise(rng, lo_mm, hi_mm, _SPACING_2D_MM[rater], per_slice_z=slice_z_mm))
        vessel = None
        if rng.random() < 0.35 and tumour_slices[1] > tumour_slices[0]:
            k0 = int(rng.integers(tumour_slices[0], tumour_slices[1]))
            vessel = (k0, k0 + int(rng.integers(2, 6)))
        skips = tuple(i for i, d in enumerate(lesion_diameters_mm) if i > 0 and d < 30.0 and rng.random() < 0.6)
        return cls(sigma, target, fields, vessel, skips)

    def margin(self, rater: str, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The margin ``delta`` (mm) of ``rater`` on the grid of 1D axes (x, y, z)."""
        smooth, per_slice = self.fields[rater]
        noise = F32(0.6) * smooth(x, y, z) + F32(0.8) * per_slice(x, y, z)
        sigma = self.sigma_mm * _NOISE_SCALE[rater]
        return F32(_BIAS[rater] * self.sigma_mm) + F32(sigma) * noise

    def draw(self, rater: str, lesion_fields: Sequence[np.ndarray], axes: tuple[np.ndarray, ...],
             labels: np.ndarray | None, slice_index: np.ndarray) -> np.ndarray:
        """Mask (bool) of ``rater`` on a box: ``lesion_fields`` are the lesions' signed distances (mm) on the grid
        of ``axes`` (x, y, z), ``labels`` the tissue labels there, ``slice_index`` the image slice of each z."""
        fields = [f for i, f in enumerate(lesion_fields) if not (rater == "R3" and i in self.r3_skips)]
        if not fields:
            return np.zeros(lesion_fields[0].shape, dtype=bool)
        field = fields[0] if len(fields) == 1 else np.minimum.reduce(fields)
        mask = field < self.margin(rater, *axes)
        if rater == "R3" and self.include_vessel_slices is not None and labels is not None:
            k0, k1 = self.include_vessel_slices
            rows = (slice_index >= k0) & (slice_index < k1)
            if rows.any():
                near = (field[rows] < F32(5.0)) & np.isin(labels[rows], np.asarray(VESSEL_TISSUES, dtype=np.uint8))
                mask[rows] |= near
        return mask
