"""Tumour core and boundary regions, and the mean entropy in each (the paper's uncertainty analysis).

Shared with the inference module (which reports the same numbers for one case), so it depends on numpy and scipy
only.

Definition (paper: "eroded with a two-dimensional disc of radius 10 pixels"):

- core = the mask eroded slice by slice in the axial plane (each z slice of the [z, y, x] array) with a disc
  footprint of radius ``radius_px`` pixels: the pixels (dy, dx) with dy^2 + dx^2 <= r^2 (a 21 x 21 footprint of
  317 pixels for r = 10). Outside the image counts as background (as ``scipy.ndimage.binary_erosion`` with
  ``border_value=0``). Pixels count regardless of the physical spacing, as the paper states them in pixels.
- boundary = mask minus core.
- The per-case value of a region is the mean entropy over its voxels; an empty core (a tumour narrower than
  2r + 1 pixels in every slice) gives NaN and ``core_empty = True``.

Implementation: a pixel is in the core when its 2D Euclidean distance (in pixels) to the nearest background pixel
exceeds r, which equals the disc erosion and is much faster than a 317-pixel footprint; it runs on the mask's
bounding box only.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

DEFAULT_RADIUS_PX = 10


def disc_footprint(radius_px: int = DEFAULT_RADIUS_PX) -> np.ndarray:
    """Boolean (2r+1, 2r+1) disc: True where dy^2 + dx^2 <= r^2."""
    r = int(radius_px)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    return dy * dy + dx * dx <= r * r


def core_and_boundary(mask_zyx: np.ndarray, radius_px: int = DEFAULT_RADIUS_PX) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3D [z, y, x] mask into ``(core, boundary)`` boolean arrays of the same shape (see module docstring).

    ``radius_px = 0`` gives core = mask.
    """
    if mask_zyx.ndim != 3:
        raise ValueError(f"core_and_boundary needs a 3D [z, y, x] mask, got shape {mask_zyx.shape}")
    if radius_px < 0:
        raise ValueError(f"radius_px must be >= 0, got {radius_px}")
    mask = mask_zyx.astype(bool, copy=False)
    core = np.zeros(mask.shape, dtype=bool)
    z_any = np.flatnonzero(mask.any(axis=(1, 2)))
    if z_any.size:
        rows = np.flatnonzero(mask.any(axis=(0, 2)))
        cols = np.flatnonzero(mask.any(axis=(0, 1)))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        # One background pixel around the box: the nearest background pixel of any in-box pixel lies within it
        # (everything outside the box, the image's outside included, is background).
        padded = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=bool)
        for z in range(z_any[0], z_any[-1] + 1):
            padded[1:-1, 1:-1] = mask[z, y0:y1, x0:x1]
            if not padded.any():
                continue
            distance_px = ndimage.distance_transform_edt(padded)
            # distance^2 is an integer, so distance > r is exact for an integer r.
            core[z, y0:y1, x0:x1] = distance_px[1:-1, 1:-1] > radius_px
    return core, mask & ~core


def entropy_core_boundary(entropy: np.ndarray, mask: np.ndarray, radius_px: int = DEFAULT_RADIUS_PX) -> dict:
    """Mean entropy of one case overall and in the mask, its core and its boundary.

    ``entropy`` and ``mask`` are [z, y, x] arrays of the same shape (entropy in whatever unit the map holds, nats
    in this project). Returns a dict:

    - ``mean``: over the whole image; ``mask_mean``: over the mask (NaN when empty);
    - ``core_mean``, ``boundary_mean``: over the core and the boundary (NaN when that region is empty);
    - ``core_empty`` (bool), ``mask_empty`` (bool), ``n_mask``, ``n_core``, ``n_boundary`` (voxel counts);
    - ``radius_px``.
    """
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy map {entropy.shape} and mask {mask.shape} differ in shape")
    image_mean = float(np.mean(entropy, dtype=np.float64)) if entropy.size else math.nan
    box = _box(mask)
    # Regions are computed on the mask's box: on a full CT grid that avoids several full-size temporaries.
    mask_b = mask[box].astype(bool, copy=False)
    entropy = entropy[box]
    core, boundary = core_and_boundary(mask_b, radius_px)
    n_mask, n_core, n_boundary = (int(np.count_nonzero(m)) for m in (mask_b, core, boundary))
    return {
        "mean": image_mean,
        "mask_mean": _region_mean(entropy, mask_b, n_mask),
        "core_mean": _region_mean(entropy, core, n_core),
        "boundary_mean": _region_mean(entropy, boundary, n_boundary),
        "core_empty": n_core == 0,
        "mask_empty": n_mask == 0,
        "n_mask": n_mask,
        "n_core": n_core,
        "n_boundary": n_boundary,
        "radius_px": int(radius_px),
    }


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a 3D mask's foreground (an empty box when there is none)."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if z.size == 0:
        return (slice(0, 0),) * 3
    plane = np.logical_or.reduce(mask[z[0]:z[-1] + 1].astype(bool, copy=False), axis=0)
    y = np.flatnonzero(plane.any(axis=1))
    x = np.flatnonzero(plane.any(axis=0))
    return slice(z[0], z[-1] + 1), slice(y[0], y[-1] + 1), slice(x[0], x[-1] + 1)


def _region_mean(values: np.ndarray, region: np.ndarray, count: int) -> float:
    if count == 0:
        return math.nan
    return float(np.sum(values[region], dtype=np.float64) / count)
