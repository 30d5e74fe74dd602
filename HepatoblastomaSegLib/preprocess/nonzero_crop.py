"""nnU-Net's crop to the non-zero region, used by the planner to see the image extent nnU-Net would plan on.

nnU-Net (v1 and v2) crops every training image to the bounding box of its non-zero voxels, holes filled (so a body
with zero-valued organs inside keeps them), before it measures the dataset's shapes. A CT windowed to 0-350 HU has
air **and fat** at 0, so the box shrinks to the soft tissue of the trunk: on full-size phantoms 512x512 slices
become about 250x300. That is the extent nnU-Net's patch and batch size are fitted to, so our planner measures the
same box (:class:`CropBox`). An abdominal MRI with a noisy air background is non-zero everywhere and is not cropped.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class CropBox:
    """The bounding box of the non-zero region, ``start_zyx`` inclusive, ``stop_zyx`` exclusive (array order)."""

    start_zyx: tuple[int, int, int]
    stop_zyx: tuple[int, int, int]

    @property
    def size_zyx(self) -> tuple[int, int, int]:
        return tuple(int(b - a) for a, b in zip(self.start_zyx, self.stop_zyx))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start_zyx, self.stop_zyx))


def nonzero_box(array_zyx: np.ndarray) -> CropBox:
    """Bounding box of ``array != 0`` after filling holes in 3D (the whole array when it is all zero)."""
    array = np.asarray(array_zyx)
    mask = ndimage.binary_fill_holes(array != 0)
    if not mask.any():
        return CropBox((0, 0, 0), tuple(int(s) for s in array.shape))
    start, stop = [], []
    for axis in range(array.ndim):
        others = tuple(a for a in range(array.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        start.append(int(hit[0]))
        stop.append(int(hit[-1]) + 1)
    return CropBox(tuple(start), tuple(stop))
