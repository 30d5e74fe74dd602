"""Our topology planner against the real nnU-Net 1.7.1 functions (``pip install nnunet==1.7.1``, a test extra)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_nnunet_v1 import nnunet_env, random_spacings_and_shapes, v21_planner_self

from HepatoblastomaSegLib.preprocess.topology import plan_topology, pool_and_kernel_sizes


@pytest.fixture(scope="module")
def nnunet_v1():
    nnunet_env()  # nnunet.paths reads its folders once, at import
    from nnunet.experiment_planning import common_utils
    from nnunet.experiment_planning.experiment_planner_baseline_3DUNet_v21 import ExperimentPlanner3D_v21

    return common_utils, ExperimentPlanner3D_v21


def test_odd_edges_pool_like_nnunet(nnunet_v1):
    """An edge of 15 voxels pools to 8 (ceil), which still pools once more; 15 / 2 = 7.5 would not."""
    common_utils, _ = nnunet_v1
    _, pools, kernels, padded, _ = common_utils.get_pool_and_conv_props([1.0, 1.0, 1.0], [15, 64, 64], 4, 999)
    ours = pool_and_kernel_sizes([1.0, 1.0, 1.0], [15, 64, 64])
    assert [p[0] for p in ours[0]] == [2, 2, 1]
    assert (pools, kernels, [int(v) for v in padded]) == ours


def test_pooling_and_kernels_equal_nnunet_on_random_inputs(nnunet_v1):
    common_utils, _ = nnunet_v1
    disagree = []
    for spacing, shape in random_spacings_and_shapes(seed=18, count=305):
        _, pools, kernels, padded, _ = common_utils.get_pool_and_conv_props(spacing, shape, 4, 999)
        ours = pool_and_kernel_sizes(spacing, shape)
        if (pools, kernels, [int(v) for v in padded]) != ours:
            disagree.append((spacing, shape))
    assert not disagree, f"{len(disagree)} of 305 differ, e.g. {disagree[:3]}"


def test_stage_plan_equals_v21_planner_on_random_datasets(nnunet_v1):
    """Patch, strides, kernels, batch size and dummy-2D flag of ``ExperimentPlanner3D_v21.get_properties_for_stage``."""
    _, planner = nnunet_v1
    rng = np.random.default_rng(2018)
    for _ in range(60):
        xy = float(rng.uniform(0.3, 2.0))
        spacing = np.array([max(float(rng.uniform(0.5, 6.0)), xy), xy, xy])  # coarsest first (transpose_forward)
        median = np.array([rng.uniform(10, 300), rng.uniform(40, 512), rng.uniform(40, 512)])
        cases = int(rng.integers(2, 60))
        ref = planner.get_properties_for_stage(v21_planner_self(), spacing, spacing, median, cases, 1, 2)
        ours = plan_topology(spacing, median, num_cases=cases, num_classes=2)
        assert ours.patch_size_zyx == tuple(int(v) for v in ref["patch_size"]), (spacing, median)
        assert [list(s) for s in ours.strides_zyx[1:]] == ref["pool_op_kernel_sizes"]
        assert [list(k) for k in ours.kernel_sizes_zyx] == ref["conv_kernel_sizes"]
        assert ours.batch_size == ref["batch_size"]
        assert ours.dummy_2d_augmentation == bool(ref["do_dummy_2D_data_aug"])


@pytest.mark.slow
def test_whole_plan_equals_v21_plan_experiment_on_random_datasets(nnunet_v1):
    """Target spacing (10th-percentile rule), axis order, 3d_fullres stage and whether a 3d_lowres stage exists,
    on random datasets of mixed thick/thin slices and in-plane-coarse volumes (which nnU-Net transposes)."""
    from helpers_nnunet_v1 import v21_plan_experiment

    from HepatoblastomaSegLib.preprocess.nnunet_v1_planning import plan_topology_transposed, plans_num_stages
    from HepatoblastomaSegLib.preprocess.planning import target_grid

    rng = np.random.default_rng(1871)
    lowres_seen = transposed_seen = 0
    for trial in range(40):
        n = int(rng.integers(3, 12))
        xy = rng.uniform(0.4, 1.6, n)
        z = rng.choice([rng.uniform(0.6, 1.5, n), rng.uniform(2.0, 6.0, n)])
        spacings = np.stack([z, xy, xy], axis=1)
        sizes = np.stack([rng.integers(30, 260, n), rng.integers(150, 512, n), rng.integers(150, 512, n)], axis=1)
        if trial % 5 == 0:  # a volume whose in-plane axis is the coarsest: nnU-Net moves it first
            spacings = spacings[:, [1, 0, 2]] * [1.0, 3.0, 1.0]
        theirs = v21_plan_experiment(spacings, sizes)
        _spacing, target_zyx, median = target_grid(spacings[:, ::-1], sizes[:, ::-1], "percentile10")
        np.testing.assert_allclose(target_zyx, theirs["plans_per_stage"][theirs["num_stages"] - 1]
                                   ["current_spacing"][np.argsort(theirs["transpose_forward"])], rtol=1e-5)
        ours = plan_topology_transposed(target_zyx, median, num_cases=n)
        order = list(theirs["transpose_forward"])
        fullres = theirs["plans_per_stage"][theirs["num_stages"] - 1]
        back = np.argsort(order)
        assert list(ours.patch_size_zyx) == [int(fullres["patch_size"][i]) for i in back], trial
        pools = fullres["pool_op_kernel_sizes"]
        assert [list(s) for s in ours.strides_zyx[1:]] == [[p[i] for i in back] for p in pools]
        assert [list(k) for k in ours.kernel_sizes_zyx] == [[k[i] for i in back] for k in fullres["conv_kernel_sizes"]]
        assert ours.batch_size == fullres["batch_size"]
        assert plans_num_stages(target_zyx, median, ours, num_cases=n) == theirs["num_stages"], trial
        lowres_seen += theirs["num_stages"] == 2
        transposed_seen += order != [0, 1, 2]
    assert lowres_seen >= 3 and transposed_seen >= 3  # both branches were exercised
