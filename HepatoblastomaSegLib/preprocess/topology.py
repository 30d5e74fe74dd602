"""Patch size and U-Net topology from the target spacing, the median image shape and a GPU memory budget.

This is our own implementation of the rules nnU-Net v1.7.1 uses for its ``3d_fullres`` configuration
(``ExperimentPlanner3D_v21``), which is what the paper ran. Every list here is in the library's array order
**(z, y, x)**, i.e. the slice axis first, exactly like nnU-Net's lists after its ``transpose_forward`` (which moves the
coarsest axis first; for axial CT and MRI that is already the slice axis, so no transposition is needed).

Rules (nnU-Net v1.7.1's):

1. Starting patch: isotropic in millimetres with its shortest edge 512 voxels, clipped to the median image shape on
   the target grid.
2. Per stage (:func:`pool_and_kernel_sizes`): an axis is pooled (stride 2) only when its current spacing is less than
   twice the smallest current spacing and its feature map is still at least 8 voxels (so the bottleneck keeps at least
   4; a pooled edge of odd length rounds up, ``ceil(size / 2)``, as nnU-Net's does); the convolution kernel is 3
   along the largest group of axes whose spacings are within a factor 2 of each other, 1 along the others (e.g.
   1x3x3 at full resolution for 2.5x0.7x0.7 mm); the bottleneck kernel is always 3x3x3. The patch is padded up to a
   multiple of 2^(poolings along that axis).
3. The patch is shrunk, one axis at a time (the axis with the largest patch/median-shape ratio first), until nnU-Net's
   VRAM estimate (:func:`vram_estimate`) fits the reference. The reference is v1's
   ``use_this_for_batch_size_computation_3D`` (520e6) x 32/30 for the 32 base filters of v2.1 plans, which nnU-Net says
   fills about 7.5-8 GB in fp16; we scale it linearly with ``gpu_memory_gb`` (8 GB = nnU-Net's default plans, as its
   ``_11GB`` variant does with 11/8).
4. Batch size: 2, grown when the patch is far below the budget, capped so one batch covers at most 5 % of the voxels of
   the dataset (but never below 2).
5. Filters 32 doubling per stage, capped at 320; deep supervision on all decoder outputs but the two lowest.

Strides returned include stage 0 (``[1, 1, 1]``) so that ``len(strides_zyx) == len(kernel_sizes_zyx)`` == number of
stages, which is the form MONAI's DynUNet takes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

#: nnU-Net v1 Generic_UNet.use_this_for_batch_size_computation_3D, scaled by 32/30 as ExperimentPlanner3D_v21 does.
VRAM_REFERENCE_8GB = 520_000_000 * 32 / 30
#: The GPU memory the reference corresponds to (nnU-Net: "typical v21 configurations use 7.5GB").
VRAM_REFERENCE_GB = 8.0
BASE_FILTERS = 32
MAX_FILTERS = 320
MIN_FEATURE_MAP_EDGE = 4
CONVS_PER_STAGE = 2
DEFAULT_BATCH_SIZE = 2
MIN_BATCH_SIZE = 2
MAX_BATCH_FRACTION_OF_DATASET = 0.05
#: Starting patch edge in voxels along the finest axis (v1: an isotropic-in-mm patch of 512 voxels).
START_PATCH_EDGE = 512
#: nnU-Net's anisotropy threshold: dummy-2D augmentation when max(patch)/patch[0] exceeds it.
ANISOTROPY_THRESHOLD = 3.0


@dataclasses.dataclass(frozen=True)
class Topology:
    """A planned nnU-Net 3d_fullres network, all lists in (z, y, x) order.

    Attributes:
        patch_size_zyx: training patch (= sliding-window size) in voxels of the target grid.
        kernel_sizes_zyx: one convolution kernel per stage (the last is the bottleneck).
        strides_zyx: one stride per stage; stage 0 is ``[1, 1, 1]``, stage i>0 downsamples by it.
        filters: output channels per stage (32 doubling, capped at 320).
        batch_size: training batch size.
        deep_supervision_outputs: how many lower-resolution decoder outputs deep supervision adds (DynUNet's
            ``deep_supr_num``): nnU-Net v1 weights its outputs 1, 1/2, 1/4, ... and gives the lowest-resolution one
            weight 0, so with S stages it uses S - 2 outputs: full resolution + (S - 3) lower ones (3 for 6 stages).
            0 means the network is too shallow for deep supervision.
        median_shape_zyx: median image shape on the target grid the plan was made for (voxels).
        gpu_memory_gb: the training memory budget the patch was fitted to.
        vram_estimate: nnU-Net's unitless VRAM estimate of this patch; ``vram_reference`` is the budget in the same
            units.
        dummy_2d_augmentation: nnU-Net would augment in-plane only (rotation +-180 deg) for such an anisotropic patch.
    """

    patch_size_zyx: tuple[int, int, int]
    kernel_sizes_zyx: tuple[tuple[int, int, int], ...]
    strides_zyx: tuple[tuple[int, int, int], ...]
    filters: tuple[int, ...]
    batch_size: int
    deep_supervision_outputs: int
    median_shape_zyx: tuple[int, int, int]
    gpu_memory_gb: float
    vram_estimate: int
    vram_reference: int
    dummy_2d_augmentation: bool

    @property
    def num_stages(self) -> int:
        return len(self.strides_zyx)

    @property
    def divisor_zyx(self) -> tuple[int, int, int]:
        """The patch must be a multiple of this along each axis (product of the strides)."""
        return tuple(int(np.prod([s[a] for s in self.strides_zyx])) for a in range(3))


def pool_and_kernel_sizes(spacing_zyx: Sequence[float], patch_size_zyx: Sequence[int]
                          ) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """nnU-Net v1's per-stage pooling and kernel rules for one patch.

    Returns ``(pool_strides, kernel_sizes, padded_patch)``: ``pool_strides`` has one entry per downsampling (stage 0
    excluded), ``kernel_sizes`` one per stage including the bottleneck (``len(pool_strides) + 1``), and
    ``padded_patch`` is the patch rounded up to a multiple of 2^(number of poolings) along each axis.
    """
    spacing = [float(s) for s in spacing_zyx]
    size = [float(s) for s in patch_size_zyx]
    dims = len(spacing)
    pools: list[list[int]] = []
    kernels: list[list[int]] = []
    n_pool = [0] * dims
    while True:
        smallest = min(spacing)
        poolable = [a for a in range(dims) if spacing[a] / smallest < 2]
        # The kernel is 3 along the largest set of axes whose spacings lie within 2x of each other.
        group: list[int] = []
        for a in range(dims):
            partners = [b for b in range(dims) if spacing[b] / spacing[a] < 2 and spacing[a] / spacing[b] < 2]
            if len(partners) > len(group):
                group = partners
        kernel = [3 if a in group else 1 for a in range(dims)]
        poolable = [a for a in poolable if size[a] >= 2 * MIN_FEATURE_MAP_EDGE]
        if not poolable:
            break
        stride = [1] * dims
        for a in poolable:
            stride[a] = 2
            n_pool[a] += 1
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)  # an odd edge keeps its extra voxel (nnU-Net: np.ceil(size / 2))
        pools.append(stride)
        kernels.append(kernel)
    kernels.append([3] * dims)
    divisor = [2 ** n for n in n_pool]
    padded = [int(math.ceil(int(p) / d) * d) for p, d in zip(patch_size_zyx, divisor)]
    return pools, kernels, padded


def filters_per_stage(num_stages: int, base: int = BASE_FILTERS, cap: int = MAX_FILTERS) -> list[int]:
    return [min(base * 2 ** i, cap) for i in range(num_stages)]


def vram_estimate(patch_size_zyx: Sequence[int], pool_strides: Sequence[Sequence[int]], *, num_classes: int,
                  num_modalities: int = 1, base_filters: int = BASE_FILTERS, max_filters: int = MAX_FILTERS,
                  convs_per_stage: int = CONVS_PER_STAGE) -> int:
    """nnU-Net v1's unitless activation-memory estimate (``Generic_UNet.compute_approx_vram_consumption``).

    Proportional to the number of feature-map voxels a forward pass keeps: at each resolution, the encoder and decoder
    convolutions plus the transposed convolution, times the channels there.
    """
    map_size = np.array(patch_size_zyx, dtype=np.int64)
    voxels = int(np.prod(map_size))
    total = (convs_per_stage * 2 + 1) * voxels * base_filters + num_modalities * voxels + num_classes * voxels
    features = base_filters
    n_pool = len(pool_strides)
    for p, stride in enumerate(pool_strides):
        map_size = map_size // np.asarray(stride, dtype=np.int64)
        features = min(features * 2, max_filters)
        blocks = (convs_per_stage * 2 + 1) if p < n_pool - 1 else convs_per_stage
        total += blocks * int(np.prod(map_size)) * features
    return int(total)


def vram_reference(gpu_memory_gb: float) -> float:
    """The budget in :func:`vram_estimate` units for ``gpu_memory_gb`` of training memory (fp16)."""
    return VRAM_REFERENCE_8GB * float(gpu_memory_gb) / VRAM_REFERENCE_GB


def plan_topology(target_spacing_zyx: Sequence[float], median_shape_zyx: Sequence[float], *, num_cases: int,
                  num_classes: int = 2, num_modalities: int = 1, gpu_memory_gb: float = 8.0) -> Topology:
    """Plan patch size, kernels, strides, filters and batch size like nnU-Net v1.7.1 ``3d_fullres``.

    Args:
        target_spacing_zyx: target voxel spacing in mm, (z, y, x).
        median_shape_zyx: median image shape after resampling to the target spacing, voxels (z, y, x).
        num_cases: training cases (caps the batch size at 5 % of the dataset's voxels).
        num_classes: output channels including background (2 for background + tumour).
        gpu_memory_gb: training memory budget; 8 reproduces nnU-Net's default plans.

    >>> t = plan_topology((2.5, 0.7, 0.7), (110, 400, 400), num_cases=100)
    >>> t.patch_size_zyx, t.strides_zyx[-1]
    ((48, 192, 192), (1, 2, 2))
    """
    spacing = np.asarray(target_spacing_zyx, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"target spacing must be 3 positive numbers (z, y, x), got {target_spacing_zyx}")
    if gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")
    median = np.round(np.asarray(median_shape_zyx, dtype=float)).astype(np.int64)
    median = np.maximum(median, 1)

    per_mm = 1.0 / spacing
    per_mm /= per_mm.mean()
    start = np.round(per_mm / per_mm.min() * START_PATCH_EDGE).astype(np.int64)
    patch = np.minimum(start, median)

    pools, kernels, padded = pool_and_kernel_sizes(spacing, patch)
    patch = np.asarray(padded, dtype=np.int64)
    divisor = _divisor(pools)
    reference = vram_reference(gpu_memory_gb)

    def estimate(p, pl):
        return vram_estimate(p, pl, num_classes=num_classes, num_modalities=num_modalities)

    here = estimate(patch, pools)
    while here > reference:
        axis = int(np.argsort(patch / median, kind="stable")[-1])
        trial = patch.copy()
        trial[axis] -= divisor[axis]
        # Shrink by the divisor that the smaller patch will need (it may pool less often along that axis).
        trial_pools, _, _ = pool_and_kernel_sizes(spacing, trial)
        patch[axis] -= _divisor(trial_pools)[axis]
        if patch[axis] < 1:
            raise ValueError(f"no patch fits {gpu_memory_gb} GB for spacing {tuple(spacing)}; raise gpu_memory_gb")
        pools, kernels, padded = pool_and_kernel_sizes(spacing, patch)
        patch = np.asarray(padded, dtype=np.int64)
        divisor = _divisor(pools)
        here = estimate(patch, pools)

    batch = int(math.floor(max(reference / here, 1.0) * DEFAULT_BATCH_SIZE))
    dataset_voxels = float(np.prod(median)) * num_cases
    max_batch = int(np.round(MAX_BATCH_FRACTION_OF_DATASET * dataset_voxels / float(np.prod(patch))))
    batch = max(1, min(batch, max(max_batch, MIN_BATCH_SIZE)))

    strides = [[1, 1, 1]] + [list(p) for p in pools]
    n_stages = len(strides)
    return Topology(
        patch_size_zyx=tuple(int(v) for v in patch),
        kernel_sizes_zyx=tuple(tuple(int(v) for v in k) for k in kernels),
        strides_zyx=tuple(tuple(int(v) for v in s) for s in strides),
        filters=tuple(filters_per_stage(n_stages)),
        batch_size=batch,
        deep_supervision_outputs=max(0, n_stages - 3),
        median_shape_zyx=tuple(int(v) for v in median),
        gpu_memory_gb=float(gpu_memory_gb),
        vram_estimate=int(here),
        vram_reference=int(reference),
        dummy_2d_augmentation=bool(max(patch) / patch[0] > ANISOTROPY_THRESHOLD),
    )


def _divisor(pools: Sequence[Sequence[int]]) -> np.ndarray:
    divisor = np.ones(3, dtype=np.int64)
    for stride in pools:
        divisor *= np.asarray(stride, dtype=np.int64)
    return divisor
