"""N4 bias-field correction (MRI) with SimpleITK: fitted on a shrunk image, applied at full resolution.

The B-spline bias field is smooth (4 control points per axis at the coarsest level), so fitting it on an image
shrunk 4x in-plane loses nothing measurable and is 3-14x faster than full resolution with the same
residual (measured on T2-like volumes; `benchmarks/`). The shrink along z is chosen so the shrunk voxels do not
become much coarser along z than in-plane:
``shrink_z = clamp(round(shrink_inplane * spacing_xy / spacing_z), 1, max_shrink_z)``
(1 for 5-6 mm T2 slices). The fitted log bias field is then evaluated on the full-resolution grid
(``GetLogBiasFieldAsImage``) and divided out: ``corrected = image / exp(log_bias)``.

Mask: Otsu's threshold of the image (ITK's own default), which keeps the body and drops the air. Voxels at or below 0
are excluded from the fit (N4 works on log intensities) but still corrected.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from ..io import Volume
from .plans import N4Settings


@dataclasses.dataclass
class N4Result:
    """The corrected volume (float32, same grid) and the bias field that was divided out (float32, mean 1 in mask)."""

    corrected: Volume
    bias_field: np.ndarray
    shrink_xyz: tuple[int, int, int]


def shrink_factors(spacing_mm_xyz: tuple[float, float, float], settings: N4Settings) -> tuple[int, int, int]:
    inplane = float(min(spacing_mm_xyz[0], spacing_mm_xyz[1]))
    z = int(round(settings.shrink_inplane * inplane / float(spacing_mm_xyz[2])))
    return (settings.shrink_inplane, settings.shrink_inplane, int(min(max(z, 1), settings.max_shrink_z)))


def otsu_body_mask(image: sitk.Image) -> sitk.Image:
    """Otsu foreground (uint8 0/1): the bright body against the dark air."""
    return sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1, 200)


def n4_correct(volume: Volume, settings: N4Settings = N4Settings(), *, mask: np.ndarray | None = None) -> N4Result:
    """Correct ``volume`` for a smooth multiplicative bias field.

    Args:
        volume: the MRI volume (any numeric dtype).
        settings: shrink factors, iterations per level (one entry per fitting level), convergence threshold and
            number of control points.
        mask: optional uint8/bool [z, y, x] region to fit in (default: Otsu body mask).
    """
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    fit_mask = otsu_body_mask(image) if mask is None else volume.geometry.apply_to(
        sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8)))
    positive = volume.geometry.apply_to(sitk.GetImageFromArray((array > 0).astype(np.uint8)))
    fit_mask = sitk.And(sitk.Cast(fit_mask, sitk.sitkUInt8), positive)
    if int(sitk.GetArrayViewFromImage(fit_mask).sum()) < 16:
        # Nothing to fit on (blank or tiny image): leave it alone rather than fail.
        return N4Result(volume.with_array(np.asarray(volume.array, dtype=np.float32)),
                        np.ones(volume.array.shape, dtype=np.float32), (1, 1, 1))
    # Non-positive voxels have no logarithm; give the fit a tiny positive value there (they are outside its mask).
    fit_image = sitk.Maximum(image, 1e-3)
    shrink = tuple(min(f, max(1, s // 4)) for f, s in zip(shrink_factors(volume.spacing_mm, settings), image.GetSize()))
    small = sitk.Shrink(fit_image, list(shrink))
    small_mask = sitk.Shrink(fit_mask, list(shrink))
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in settings.iterations])
    corrector.SetConvergenceThreshold(float(settings.convergence_threshold))
    corrector.SetNumberOfControlPoints([int(settings.control_points)] * 3)
    corrector.Execute(small, small_mask)
    log_bias = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image)).astype(np.float32)
    bias = np.exp(log_bias)
    corrected = np.asarray(array, dtype=np.float32) / bias
    return N4Result(volume.with_array(corrected.astype(np.float32)), bias.astype(np.float32), shrink)
