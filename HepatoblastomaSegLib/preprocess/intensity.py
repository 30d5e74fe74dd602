"""Intensity normalisation: the CT window plus nnU-Net's CT scheme, and the per-image z-score used after Nyul (MRI).

**CT, decision.** The paper clips to a 0-350 HU soft-tissue window and does not say how it normalises; its software
(nnU-Net 1.7.1) would then apply its CT scheme to the windowed images: clip to the [0.5, 99.5] percentiles of the
**foreground voxels pooled over the training set** and z-score with their mean and SD. We do exactly that composition:
the foreground statistics (:func:`ct_foreground_statistics`) are computed on the *windowed* training foreground, so
the percentile clip lies inside the window (the effective window is the intersection of the two). Foreground = the
training label voxels (tumour for the tumour model, as nnU-Net would with tumour-only labels; liver for a liver
model). nnU-Net v1 keeps every 10th foreground voxel of every case; we keep every voxel up
to :data:`MAX_FOREGROUND_SAMPLES_PER_CASE` per case (an even stride beyond that), which gives the same statistics.

The window is applied on the original grid (the paper's preprocessing), the percentile clip and z-score after
resampling to the target grid (nnU-Net's order), which also removes the B-spline's overshoot at sharp edges.

**MRI.** After N4 and Nyul (see :mod:`.n4`, :mod:`.nyul`), nnU-Net's non-CT scheme: z-score per image over all
voxels (nnU-Net uses the nonzero mask only when cropping to it shrank the images, which it does not for abdominal MRI
with a noisy air background).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .plans import CTIntensity

#: The paper's soft-tissue window, HU.
CT_WINDOW_HU = (0.0, 350.0)
#: nnU-Net's percentile clip of the foreground intensities.
CLIP_PERCENTILES = (0.5, 99.5)
MAX_FOREGROUND_SAMPLES_PER_CASE = 2_000_000


def window_ct(array: np.ndarray | torch.Tensor, window_hu: Sequence[float] = CT_WINDOW_HU
              ) -> np.ndarray | torch.Tensor:
    """Clip HU values to the window; float32 out (numpy or torch, as given)."""
    lo, hi = float(window_hu[0]), float(window_hu[1])
    if isinstance(array, torch.Tensor):
        return array.to(torch.float32).clamp(lo, hi)
    return np.clip(np.asarray(array, dtype=np.float32), lo, hi)


def foreground_sample(image: np.ndarray, mask: np.ndarray, window_hu: Sequence[float] = CT_WINDOW_HU,
                      max_samples: int = MAX_FOREGROUND_SAMPLES_PER_CASE) -> np.ndarray:
    """Windowed intensities of the voxels where ``mask`` is set (float32, 1D), thinned evenly beyond ``max_samples``."""
    values = np.asarray(image)[np.asarray(mask) > 0]
    if values.size > max_samples:
        values = values[:: int(np.ceil(values.size / max_samples))]
    return np.clip(values.astype(np.float32), float(window_hu[0]), float(window_hu[1]))


def ct_foreground_statistics(samples: Iterable[np.ndarray], *, window_hu: Sequence[float] = CT_WINDOW_HU,
                             clip_percentiles: Sequence[float] = CLIP_PERCENTILES, foreground: str = "tumor"
                             ) -> CTIntensity:
    """Pool per-case foreground samples (from :func:`foreground_sample`) into the CT normalisation of the plans."""
    pooled = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples] or [np.zeros(0)])
    if pooled.size < 2:
        raise ValueError(f"no {foreground} voxels in the training masks: cannot compute CT intensity statistics")
    lo, hi = np.percentile(pooled, clip_percentiles)
    std = float(pooled.std())
    if std <= 0:
        std = 1.0  # a constant foreground (synthetic data): normalise by 1 rather than divide by zero
    return CTIntensity(window_hu=(float(window_hu[0]), float(window_hu[1])),
                       clip_percentiles=(float(clip_percentiles[0]), float(clip_percentiles[1])),
                       clip_hu=(float(lo), float(hi)), mean_hu=float(pooled.mean()), std_hu=std,
                       foreground=foreground, foreground_voxels=int(pooled.size))


def normalize_ct(array: np.ndarray | torch.Tensor, ct: CTIntensity) -> np.ndarray | torch.Tensor:
    """Window, clip to the foreground percentiles, z-score: float32, numpy or torch as given."""
    lo = max(ct.window_hu[0], ct.clip_hu[0])
    hi = min(ct.window_hu[1], ct.clip_hu[1])
    if isinstance(array, torch.Tensor):
        return (array.to(torch.float32).clamp(lo, hi) - ct.mean_hu) / ct.std_hu
    out = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    out -= np.float32(ct.mean_hu)
    out /= np.float32(ct.std_hu)
    return out


def zscore_per_image(array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(x - mean) / SD over all voxels (SD 0 -> 1), float32, numpy or torch as given."""
    if isinstance(array, torch.Tensor):
        x = array.to(torch.float32)
        mean = x.double().mean()
        std = x.double().std(unbiased=False)
        std = std if float(std) > 0 else torch.ones_like(std)
        return ((x - mean.float()) / std.float()).to(torch.float32)
    x = np.asarray(array, dtype=np.float32)
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64)) or 1.0
    return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)

