"""The patch/topology planner against nnU-Net v1.7.1's 3d_fullres plans and its own invariants."""

from __future__ import annotations

import numpy as np
import pytest

from HepatoblastomaSegLib.preprocess.topology import plan_topology, pool_and_kernel_sizes, vram_estimate


def _codes(triples):
    return ["".join(map(str, t)) for t in triples]


# target (z, y, x) mm, median shape (z, y, x), v1.7.1 patch, strides after stage 0, kernels (from the notes' sim).
NNUNET_V1_PLANS = [
    ((2.5, 0.7, 0.7), (110, 400, 400), (48, 192, 192), "122 222 222 222 122", "133 333 333 333 333 333"),
    ((2.5, 0.7, 0.7), (80, 400, 400), (40, 224, 224), "122 222 222 222 122", "133 333 333 333 333 333"),
    ((2.0, 0.7, 0.7), (140, 400, 400), (64, 192, 160), "122 222 222 222 222", "133 333 333 333 333 333"),
    ((3.0, 0.7, 0.7), (92, 400, 400), (48, 192, 192), "122 122 222 222 222", "133 133 333 333 333 333"),
    ((5.0, 0.7, 0.7), (55, 400, 400), (32, 256, 224), "122 122 222 222 222 121", "133 133 333 333 333 333 333"),
    ((1.25, 0.7, 0.7), (220, 400, 400), (96, 160, 160), "222 222 222 222 122", "333 333 333 333 333 333"),
]


@pytest.mark.parametrize("spacing, median, patch, strides, kernels", NNUNET_V1_PLANS)
def test_matches_nnunet_v1_plans(spacing, median, patch, strides, kernels):
    topo = plan_topology(spacing, median, num_cases=100, num_classes=2)
    assert topo.patch_size_zyx == patch
    assert topo.strides_zyx[0] == (1, 1, 1)
    assert " ".join(_codes(topo.strides_zyx[1:])) == strides
    assert " ".join(_codes(topo.kernel_sizes_zyx)) == kernels
    assert topo.filters == tuple(min(32 * 2 ** i, 320) for i in range(topo.num_stages))
    assert topo.batch_size == 2
    assert topo.vram_estimate <= topo.vram_reference


def test_paper_plan_details():
    topo = plan_topology((2.5, 0.7, 0.7), (110, 400, 400), num_cases=56)
    assert topo.filters == (32, 64, 128, 256, 320, 320)
    assert topo.deep_supervision_outputs == 3  # full resolution + 1/2, 1/4, 1/8, as nnU-Net weights them
    assert topo.dummy_2d_augmentation  # 192 / 48 > 3: nnU-Net rotates in-plane only
    for axis, divisor in enumerate(topo.divisor_zyx):
        assert topo.patch_size_zyx[axis] % divisor == 0
    # The bottleneck keeps at least 4 voxels along every axis.
    assert all(p // d >= 4 for p, d in zip(topo.patch_size_zyx, topo.divisor_zyx))


def test_isotropic_data_gets_3x3x3_everywhere_and_pools_all_axes():
    topo = plan_topology((1.0, 1.0, 1.0), (160, 160, 160), num_cases=20)
    assert set(_codes(topo.kernel_sizes_zyx)) == {"333"}
    assert set(_codes(topo.strides_zyx[1:])) == {"222"}
    assert not topo.dummy_2d_augmentation


def test_larger_gpu_budget_never_gives_a_smaller_patch():
    volumes = [np.prod(plan_topology((2.5, 0.7, 0.7), (110, 512, 512), num_cases=50, gpu_memory_gb=g).patch_size_zyx)
               for g in (4, 8, 16, 32)]
    assert volumes == sorted(volumes) and volumes[0] < volumes[-1]


def test_small_dataset_caps_nothing_below_two_and_median_clips_the_patch():
    topo = plan_topology((4.0, 1.5, 1.5), (10, 40, 44), num_cases=3)
    assert topo.batch_size == 2
    assert topo.patch_size_zyx[0] <= 16 and topo.patch_size_zyx[1] <= 48


def test_pooling_rule_skips_the_coarse_axis_until_spacings_meet():
    pools, kernels, padded = pool_and_kernel_sizes((3.0, 0.7, 0.7), (48, 192, 192))
    assert _codes(pools[:2]) == ["122", "122"]  # 0.7 -> 1.4 -> 2.8: z (3.0) joins once within 2x
    assert _codes(kernels[:3]) == ["133", "133", "333"]
    assert padded == [48, 192, 192]


def test_vram_estimate_grows_with_patch():
    pools = [[1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert vram_estimate((32, 128, 128), pools, num_classes=2) < vram_estimate((64, 128, 128), pools, num_classes=2)
