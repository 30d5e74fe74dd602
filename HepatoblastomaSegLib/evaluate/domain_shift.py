"""Images made deliberately unlike the training phantoms, to check that the review flag fires on them.

Each function returns a new :class:`~..io.Volume`; the input is not changed. Used by ``benchmarks/calibrate_review.py``
and the tests of :mod:`~..infer.review`. They imitate one difference each, not a real scanner:

- :func:`without_contrast`: a portal-venous CT made to look unenhanced (soft tissue pulled towards 40 HU);
- :func:`thick_slices`: resampled to thick slices (e.g. 7 mm);
- :func:`adult_sized`: the same voxels with a larger in-plane spacing, so the body is that much wider;
- :func:`without_fat_suppression`: a fat-suppressed T2 with its subcutaneous fat made bright.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io import Geometry, Volume


def without_contrast(image: Volume, *, keep: float = 0.3, towards_hu: float = 40.0) -> Volume:
    """Soft tissue (0-400 HU) pulled towards ``towards_hu`` to ``keep`` of its distance: livers of 100-130 HU become
    58-67 HU, as on a CT without intravenous contrast."""
    hu = image.array.astype(np.float32)
    soft = (hu > 0) & (hu < 400)
    hu[soft] = towards_hu + (hu[soft] - towards_hu) * keep
    return image.with_array(np.rint(hu).astype(image.array.dtype))


def thick_slices(image: Volume, thickness_mm: float = 7.0, *, labels: bool = False) -> Volume:
    """``image`` resampled to slices ``thickness_mm`` apart over the same extent (linear; nearest for ``labels``)."""
    source = image.to_sitk()
    size = list(source.GetSize())
    size[2] = max(2, int(round(size[2] * image.spacing_mm[2] / thickness_mm)))
    spacing = (image.spacing_mm[0], image.spacing_mm[1], thickness_mm)
    fill = -1024.0 if not labels and float(image.array.min()) < -500 else 0.0
    out = sitk.Resample(source, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                        source.GetOrigin(), spacing, source.GetDirection(), fill, source.GetPixelID())
    return Volume.from_sitk(out)


def adult_sized(image: Volume, factor: float = 1.8) -> Volume:
    """The same voxels with ``factor`` x the in-plane spacing: the body (and every organ) ``factor`` x wider."""
    g = image.geometry
    spacing = (g.spacing_mm[0] * factor, g.spacing_mm[1] * factor, g.spacing_mm[2])
    return Volume(image.array, Geometry(g.size, spacing, g.origin_mm, g.direction))


def without_fat_suppression(image: Volume, *, gain: float = 6.0, shell_mm: float = 8.0) -> Volume:
    """A fat-suppressed T2 whose outer ``shell_mm`` of body (subcutaneous fat) is ``gain`` x brighter, as fat is
    on a T2 without fat suppression."""
    low, high = np.percentile(image.array, [10, 99])
    labels, count = ndimage.label(image.array > max(4.0 * float(low), 0.02 * float(high)))
    if count == 0:
        return image.with_array(image.array.copy())
    body = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    radius = [max(1, round(shell_mm / mm)) for mm in image.spacing_mm[1::-1]]
    inner = ndimage.binary_erosion(body, structure=np.ones((1, 2 * radius[0] + 1, 2 * radius[1] + 1), bool))
    shell = body & ~inner
    out = image.array.astype(np.float32)
    out[shell] *= gain
    info = np.iinfo(image.array.dtype) if np.issubdtype(image.array.dtype, np.integer) else None
    if info is not None:
        out = np.clip(out, info.min, info.max)
    return image.with_array(out.astype(image.array.dtype))
