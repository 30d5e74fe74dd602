"""Crop a CT to the patient's trunk before the network (inference), and put the results back on the whole grid.

A CT's field of view holds the child and a lot of air around it. Windows of air cost the network as much as windows
of liver, and a child's trunk fills only part of a 512x512 slice, so the cropped image needs several times fewer
windows (measured speed-ups in the README and ``benchmarks/results/``).

The crop changes the window grid, and a model's answer depends on its window grid: its mask on the cropped CT is close
to, not identical with, its mask on the whole CT, about as different as after cutting a few rows and columns of air off
the image's edge (``benchmarks/tiling_sensitivity.py`` measures both, per case and on a cohort).
``hbseg segment --no-crop-to-body`` runs on the whole image.

The box (:func:`body_box`): voxels above -500 HU (:data:`~.checks.AIR_THRESHOLD_HU`: skin, fat, organs, bone; also
the table and the arms), found on a grid 4x coarser in-plane; what is thinner than 10 mm in-plane is dropped (a
table top, blankets, cables: in voxels they can outweigh a newborn's trunk); the 26-connected pieces of the rest of
at least 5 % of the largest one's voxels are the trunk (a hepatoblastoma lies in the liver, in the trunk; a piece of
the trunk cut off where it is thin stays in, and so may an arm); their bounding box is grown by ``margin_mm`` on
every side, then widened to at least one patch of the network (so the sliding window pads nothing: after the CT
window and z-score, padding with zeros would look like soft tissue, not air), and clipped to the image. Outside the
box the tumour probability is taken as 0: mask 0 and entropy 0 (certain background), which is what the network says
of air.

nnU-Net does the same for every image with its nonzero region (``crop_to_nonzero``); for CT that region is usually the
whole image (air is -1000 HU, not 0), so a threshold on HU is what makes the crop work on CT. MRI is not cropped:
its intensities have no absolute scale, and N4 and the Nyul landmarks are fitted on the whole image.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from ..io import Geometry, Volume
from .checks import AIR_THRESHOLD_HU

#: Margin around the trunk's bounding box (mm on each side): the network sees the skin with air around it.
BODY_MARGIN_MM = 10.0
#: Structures thinner than this (mm, in-plane) are not taken for the trunk (table tops, blankets, cables).
THIN_MM = 10.0
#: Pieces left after removing thin things that are kept in the box, as a fraction of the largest piece's voxels.
MIN_PIECE_FRACTION = 0.05
#: In-plane step of the coarse grid the trunk is found on (voxels): 16x fewer voxels to label.
_COARSE_STEP = 4


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A box of voxels ``[start, stop)`` per axis, in numpy ``(z, y, x)`` order."""

    start_zyx: tuple[int, int, int]
    stop_zyx: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start_zyx, self.stop_zyx))

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start_zyx, self.stop_zyx))

    def fraction_of(self, shape_zyx: tuple[int, ...]) -> float:
        """The box's share of the voxels of an image of ``shape_zyx``."""
        return math.prod(self.shape_zyx) / math.prod(shape_zyx)

    def to_dict(self, shape_zyx: tuple[int, ...]) -> dict:
        return {"start_zyx": list(self.start_zyx), "stop_zyx": list(self.stop_zyx),
                "fraction_of_voxels": round(self.fraction_of(shape_zyx), 4)}


def body_box(volume: Volume, *, min_extent_mm_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0),
             margin_mm: float = BODY_MARGIN_MM, threshold_hu: float = AIR_THRESHOLD_HU) -> CropBox | None:
    """The trunk's box in ``volume`` (a CT in HU), or None when it is the whole image or no voxel is above
    ``threshold_hu``.

    Args:
        min_extent_mm_zyx: the box is widened (about its centre, within the image) to at least this extent per axis:
            the network's patch in mm (patch voxels x target spacing).
        margin_mm: added on every side of the trunk's bounding box.
    """
    shape = volume.array.shape
    step = (1, _COARSE_STEP, _COARSE_STEP)
    coarse = volume.array[:, ::step[1], ::step[2]] > threshold_hu
    # Thin things first: a table top's shells, blankets or cables can outweigh a newborn's trunk in voxels, never in
    # thickness. An in-plane opening removes what is thinner than about THIN_MM (the trunk loses nothing that the
    # margin does not give back).
    radius_yx = [max(1, round(THIN_MM / 2 / (s * mm))) for s, mm in zip(step[1:], volume.spacing_mm[1::-1])]
    opened = ndimage.binary_opening(coarse, structure=np.ones((1, *(2 * r + 1 for r in radius_yx)), dtype=bool))
    labels, count = ndimage.label(opened if opened.any() else coarse, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return None
    # The opening may also cut the trunk where it is thin all round (a wall over gas): every piece of at least
    # MIN_PIECE_FRACTION of the largest stays in the box (an arm too: a wider box is safe, a part of the trunk lost
    # is not).
    sizes = np.bincount(labels.ravel())[1:]
    pieces = [box for box, size in zip(ndimage.find_objects(labels), sizes) if size >= MIN_PIECE_FRACTION * sizes.max()]
    trunk = [slice(min(b[axis].start for b in pieces), max(b[axis].stop for b in pieces)) for axis in range(3)]
    spacing_zyx = volume.spacing_mm[::-1]
    start, stop = [], []
    for axis, (sl, n, s) in enumerate(zip(trunk, shape, step)):
        # Coarse index i is fine voxel i*s; the trunk may reach up to the samples outside it (not included).
        margin = math.ceil(margin_mm / spacing_zyx[axis])
        lo = max(0, sl.start * s - (s - 1) - margin)
        hi = min(n, sl.stop * s + margin)
        lo, hi = _widen(lo, hi, math.ceil(min_extent_mm_zyx[axis] / spacing_zyx[axis] - 1e-6), n)
        start.append(lo)
        stop.append(hi)
    box = CropBox(tuple(start), tuple(stop))
    return None if box.shape_zyx == tuple(shape) else box


def _widen(lo: int, hi: int, size: int, n: int) -> tuple[int, int]:
    """``[lo, hi)`` grown about its centre to at least ``size`` voxels, shifted to stay within ``[0, n)``."""
    if hi - lo >= size:
        return lo, hi
    if size >= n:
        return 0, n
    lo = max(0, (lo + hi - size) // 2)
    hi = lo + size
    if hi > n:
        lo, hi = n - size, n
    return lo, hi


def crop_volume(volume: Volume, box: CropBox) -> Volume:
    """The voxels of ``box`` as a Volume in the same place in space (origin moved to the box's first voxel)."""
    geometry = volume.geometry
    first_voxel_xyz = np.asarray(box.start_zyx[::-1], dtype=float)
    origin = geometry.index_to_physical_matrix() @ np.append(first_voxel_xyz, 1.0)
    cropped = Geometry(box.shape_zyx[::-1], geometry.spacing_mm, tuple(origin[:3]), geometry.direction)
    return Volume(np.ascontiguousarray(volume.array[box.slices]), cropped, volume.path, dict(volume.metadata))


def paste(array: np.ndarray, box: CropBox, shape_zyx: tuple[int, ...], *, fill: float = 0) -> np.ndarray:
    """``array`` (on the box's grid) placed in an array of ``shape_zyx`` filled with ``fill`` elsewhere."""
    if tuple(array.shape) != box.shape_zyx:
        raise ValueError(f"array shape {array.shape} is not the box's shape {box.shape_zyx}")
    whole = np.full(shape_zyx, fill, dtype=array.dtype)
    whole[box.slices] = array
    return whole
