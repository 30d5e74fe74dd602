"""``hbseg plan --like nnunet-v1``: the parts of nnU-Net 1.7.1's ``ExperimentPlanner3D_v21`` beyond our planner.

Our own implementation of its rules, checked against the real package in ``Testing/test_nnunet_v1_planning.py``:

- **Axis order.** nnU-Net moves the axis of the coarsest target spacing first (``transpose_forward``) and plans the
  network in that order; for axial CT and MRI that is already z. :func:`plan_topology_transposed` plans in nnU-Net's
  order and writes the result back in our (z, y, x) order, so the network is the same one, seen untransposed.
- **Cascade.** nnU-Net adds a ``3d_lowres`` stage when the median image holds at least 4 full-resolution patches:
  it coarsens the spacing by 1 % steps (first the axes finer than half the coarsest) until 4 patches cover the
  image, and keeps the stage if that halves the voxels. :func:`plans_num_stages` reports 1 or 2 (we train only
  ``3d_fullres``, the paper's configuration).
- **Intensity properties.** Every 10th foreground voxel of each cropped image, pooled over cases: median, mean, SD,
  min, max, 0.5th and 99.5th percentiles (CT: of the windowed image). nnU-Net's CT scheme clips to the percentiles
  and z-scores with mean and SD; its non-CT scheme z-scores each image, inside the non-zero mask when cropping
  halved the median image (``use_mask_for_norm``: median cropped/original voxel fraction below 3/4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .plans import CTIntensity, NnunetV1Record
from .topology import Topology, plan_topology

#: nnU-Net v1 plans a 3d_lowres stage when the median image holds at least this many full-resolution patches.
LOWRES_PATCHES_PER_IMAGE = 4
LOWRES_SPACING_STEP = 1.01
USE_MASK_FOR_NORM_BELOW = 3 / 4


def axis_order(target_spacing_zyx: Sequence[float]) -> list[int]:
    """nnU-Net's ``transpose_forward``: the coarsest axis first, the others in their order."""
    coarse = int(np.argmax(np.asarray(target_spacing_zyx, dtype=float)))
    return [coarse] + [a for a in range(3) if a != coarse]


def plan_topology_transposed(target_spacing_zyx: Sequence[float], median_shape_zyx: Sequence[float], *,
                             num_cases: int, num_classes: int = 2) -> Topology:
    """:func:`~.topology.plan_topology` in nnU-Net's axis order (8 GB budget), returned in (z, y, x) order."""
    order = axis_order(target_spacing_zyx)
    spacing = np.asarray(target_spacing_zyx, dtype=float)[order]
    median = np.asarray(median_shape_zyx, dtype=float)[order]
    topo = plan_topology(spacing, median, num_cases=num_cases, num_classes=num_classes)

    def back(values):
        out = [0, 0, 0]
        for i, axis in enumerate(order):
            out[axis] = int(values[i])
        return tuple(out)

    return dataclasses.replace(topo, patch_size_zyx=back(topo.patch_size_zyx),
                               kernel_sizes_zyx=tuple(back(k) for k in topo.kernel_sizes_zyx),
                               strides_zyx=tuple(back(s) for s in topo.strides_zyx),
                               median_shape_zyx=back(topo.median_shape_zyx))


def plans_num_stages(target_spacing_zyx: Sequence[float], median_shape_zyx: Sequence[float], fullres: Topology, *,
                     num_cases: int, num_classes: int = 2) -> int:
    """2 when nnU-Net 1.7.1 would add a ``3d_lowres`` stage to the ``3d_fullres`` one, else 1."""
    target = np.asarray(target_spacing_zyx, dtype=float)
    median = np.asarray(median_shape_zyx, dtype=float)
    patch_voxels = int(np.prod(fullres.patch_size_zyx, dtype=np.int64))
    if np.prod(median) / patch_voxels < LOWRES_PATCHES_PER_IMAGE:
        return 1
    lowres = target.copy()
    num_voxels = float(np.prod(median, dtype=np.float64))
    lowres_median = None
    while num_voxels > LOWRES_PATCHES_PER_IMAGE * patch_voxels:
        coarse = lowres.max()
        finer = coarse / lowres > 2
        if finer.any():
            lowres[finer] *= LOWRES_SPACING_STEP
        else:
            lowres *= LOWRES_SPACING_STEP
        num_voxels = float(np.prod(target / lowres * median, dtype=np.float64))
        stage = plan_topology_transposed(lowres, target / lowres * median, num_cases=num_cases,
                                         num_classes=num_classes)
        patch_voxels = int(np.prod(stage.patch_size_zyx, dtype=np.int64))
        lowres_median = stage.median_shape_zyx
    if lowres_median is None:
        return 1
    halves = 2 * np.prod(lowres_median, dtype=np.int64) < np.prod(fullres.median_shape_zyx, dtype=np.int64)
    return 2 if halves else 1


def intensity_properties(samples: Sequence[np.ndarray]) -> dict[str, float]:
    """nnU-Net v1's pooled statistics of the sampled foreground voxels (float32, as it loads images)."""
    pooled = np.concatenate([np.asarray(s, dtype=np.float32).ravel() for s in samples] or
                            [np.zeros(0, np.float32)])
    if pooled.size == 0:
        return {}
    return {"median": float(np.median(pooled)), "mean": float(np.mean(pooled)), "sd": float(np.std(pooled)),
            "mn": float(np.min(pooled)), "mx": float(np.max(pooled)),
            "percentile_99_5": float(np.percentile(pooled, 99.5)),
            "percentile_00_5": float(np.percentile(pooled, 0.5))}


def nnunet_v1_record(prints, modality: str, target_spacing_zyx: Sequence[float], median_shape_zyx: Sequence[float],
                     fullres: Topology, *, num_classes: int = 2) -> NnunetV1Record:
    """The :class:`~.plans.NnunetV1Record` for the fingerprints ``prints`` (with ``nnunet_sample=True``)."""
    kept = [float(np.prod(fp.cropped_size_xyz)) / float(np.prod(fp.size_xyz)) for fp in prints]
    use_mask = modality != "ct" and bool(np.median(kept) < USE_MASK_FOR_NORM_BELOW)
    stages = plans_num_stages(target_spacing_zyx, median_shape_zyx, fullres, num_cases=len(prints),
                              num_classes=num_classes)
    return NnunetV1Record(transpose_forward=tuple(axis_order(target_spacing_zyx)), plans_num_stages=stages,
                          normalization_scheme="CT" if modality == "ct" else "nonCT", use_mask_for_norm=use_mask,
                          intensity_properties=intensity_properties([fp.nnunet_foreground for fp in prints]))


def ct_intensity_from(record: NnunetV1Record, *, window_hu: Sequence[float], foreground: str,
                      voxels: int) -> CTIntensity:
    """Our CT normalisation with nnU-Net's numbers: clip to its 0.5/99.5 percentiles, z-score with its mean/SD."""
    p = record.intensity_properties
    sd = p["sd"] if p["sd"] > 0 else 1.0
    return CTIntensity(window_hu=(float(window_hu[0]), float(window_hu[1])), clip_percentiles=(0.5, 99.5),
                       clip_hu=(p["percentile_00_5"], p["percentile_99_5"]), mean_hu=p["mean"], std_hu=sd,
                       foreground=foreground, foreground_voxels=int(voxels))
