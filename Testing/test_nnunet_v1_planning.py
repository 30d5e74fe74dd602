"""``hbseg plan --like nnunet-v1`` against the real nnU-Net 1.7.1 pipeline (crop, dataset analysis,
``ExperimentPlanner3D_v21``) on small CT and MRI phantom sets, and the non-zero crop our default plans now measure."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_nnunet_v1 import run_nnunet_v1_planner, write_nnunet_v1_task

from HepatoblastomaSegLib.phantom import write_dataset
from HepatoblastomaSegLib.preprocess import Plans
from HepatoblastomaSegLib.preprocess.nonzero_crop import nonzero_box
from HepatoblastomaSegLib.preprocess.planning import plan_dataset

N_CASES = 4


@pytest.fixture(scope="module", params=["ct", "mri"])
def both(request, tmp_path_factory):
    """(modality, our --like nnunet-v1 plans, nnU-Net 1.7.1's plans) on the same phantoms."""
    modality = request.param
    base = tmp_path_factory.mktemp(f"nnunet_v1_{modality}")
    phantoms = base / "phantoms"
    write_dataset(phantoms, modality, N_CASES, seed=18, size="small")
    task = "Task518_HB" + modality.upper()
    write_nnunet_v1_task(phantoms, base / "raw", task, modality)
    theirs = run_nnunet_v1_planner(base / "raw", task, base)
    ours = plan_dataset(phantoms, modality, like="nnunet-v1")
    return modality, Plans.from_dict(ours.to_dict()), theirs


def _fullres(theirs: dict) -> dict:
    return theirs["plans_per_stage"][str(theirs["num_stages"] - 1)]


def _to_zyx(values, order):
    out = [0, 0, 0]
    for i, axis in enumerate(order):
        out[axis] = values[i]
    return out


@pytest.mark.slow
def test_spacing_and_shapes_equal_nnunet(both):
    _, ours, theirs = both
    stage, order = _fullres(theirs), theirs["transpose_forward"]
    assert list(ours.nnunet_v1.transpose_forward) == order
    np.testing.assert_allclose(ours.target_spacing_mm_xyz[::-1], _to_zyx(stage["current_spacing"], order),
                               rtol=1e-5)
    assert list(ours.topology.median_shape_zyx) == _to_zyx(stage["median_patient_size_in_voxels"], order)
    their_sizes = sorted(tuple(s) for s in theirs["all_sizes"])
    crop = ours.dataset.crop
    assert list(crop.median_cropped_size_xyz[::-1]) == list(np.median(np.array(their_sizes, float), axis=0))


@pytest.mark.slow
def test_network_and_batch_equal_nnunet(both):
    _, ours, theirs = both
    stage, order = _fullres(theirs), theirs["transpose_forward"]
    topo = ours.topology
    assert list(topo.patch_size_zyx) == _to_zyx(stage["patch_size"], order)
    assert [list(s) for s in topo.strides_zyx[1:]] == [_to_zyx(p, order) for p in stage["pool_op_kernel_sizes"]]
    assert [list(k) for k in topo.kernel_sizes_zyx] == [_to_zyx(k, order) for k in stage["conv_kernel_sizes"]]
    assert topo.num_stages == len(stage["pool_op_kernel_sizes"]) + 1
    assert topo.batch_size == stage["batch_size"]
    assert topo.dummy_2d_augmentation == bool(stage["do_dummy_2D_data_aug"])
    assert ours.nnunet_v1.plans_num_stages == theirs["num_stages"]


@pytest.mark.slow
def test_intensity_properties_equal_nnunet(both):
    modality, ours, theirs = both
    v1 = ours.nnunet_v1
    assert v1.normalization_scheme == theirs["normalization_schemes"]["0"]
    assert v1.use_mask_for_norm == theirs["use_mask_for_norm"]["0"]
    props = theirs["intensityproperties"]["0"]
    assert set(v1.intensity_properties) == set(props)
    for key, value in props.items():
        assert v1.intensity_properties[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key
    if modality == "ct":
        assert ours.ct.clip_hu == pytest.approx((props["percentile_00_5"], props["percentile_99_5"]), rel=1e-5)
        assert (ours.ct.mean_hu, ours.ct.std_hu) == pytest.approx((props["mean"], props["sd"]), rel=1e-5)


def test_default_ct_plans_measure_the_windowed_nonzero_region(tmp_path):
    """The window zeroes air and fat: the default CT plans are made on the crop nnU-Net would make, and say so."""
    write_dataset(tmp_path, "ct", 2, seed=18, size="small")
    plans = plan_dataset(tmp_path, "ct")
    crop = plans.dataset.crop
    assert crop.rule == "nonzero_after_window" and crop.cases_cropped == 2
    assert crop.median_cropped_size_xyz[0] < crop.median_size_xyz[0]
    assert crop.median_fraction_kept < 0.9
    again = Plans.from_dict(plans.to_dict())
    assert again.dataset.crop == crop
    # The median shape on the target grid follows the cropped extent, not the 128x128 slices.
    assert plans.topology.median_shape_zyx[2] < 128 * 0.95


def test_nonzero_box_fills_holes_and_spans_the_nonzero_voxels():
    array = np.zeros((6, 10, 12), np.float32)
    array[1:5, 2:8, 3:9] = 1.0
    array[2:4, 4:6, 5:7] = 0.0  # a hole inside: still within the box
    box = nonzero_box(array)
    assert box.start_zyx == (1, 2, 3) and box.stop_zyx == (5, 8, 9) and box.size_zyx == (4, 6, 6)
    assert nonzero_box(np.zeros((3, 4, 5))).size_zyx == (3, 4, 5)


def test_plan_like_nnunet_v1_from_the_command_line(tmp_path, capsys):
    from HepatoblastomaSegLib.cli import main

    write_dataset(tmp_path / "ds", "ct", 2, seed=18, size="small")
    out = tmp_path / "plans_v1.json"
    assert main(["plan", str(tmp_path / "ds"), "--modality", "ct", "--like", "nnunet-v1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ExperimentPlanner3D_v21" in text and "cropped          2 of 2 cases" in text
    plans = Plans.load(out)
    assert plans.spacing.rule == "percentile10" and plans.nnunet_v1.normalization_scheme == "CT"
    assert plans.ct.mean_hu == pytest.approx(plans.nnunet_v1.intensity_properties["mean"])
    assert main(["plan", str(tmp_path / "ds"), "--modality", "ct", "--like", "nnunet-v1", "--gpu-memory-gb", "11",
                 "-o", str(tmp_path / "other.json")]) == 2
    assert "--like nnunet-v1" in capsys.readouterr().err and not (tmp_path / "other.json").exists()
