"""Re-scoring an edited segment (no network run), on the real MRML classes; expected values from SimpleITK."""

from __future__ import annotations

import math

import pytest

slicer = pytest.importorskip("slicer")

import numpy as np  # noqa: E402

from slicer_env import (  # noqa: E402,F401  (slicer_env is a fixture)
    add_volume_node,
    import_mask_as_segmentation,
    make_case,
    mrml,
    prediction_of,
    replace_segment_voxels,
    sitk_dice,
    sitk_volume_ml,
    slicer_env,
)

from HepatoblastomaSegLib.errors import GeometryError, InputError  # noqa: E402
from HepatoblastomaSegLib.io import Volume, write_volume  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture
def segmented(slicer_env):
    case = make_case(seed=5)
    volume_node = add_volume_node(slicer_env.scene, case.image, "case05")
    calls = []

    def predict(volume):
        calls.append(1)
        return prediction_of(case)

    result = mrml.segment(slicer_env.scene, volume_node, predict)
    return case, result, calls


def _by_reference(rows):
    return {row["reference"]: row for row in rows}


def test_rescore_after_an_edit_gives_the_dice_and_volumes_of_the_edited_mask(slicer_env, segmented):
    case, result, calls = segmented
    scene = slicer_env.scene
    table_id = result.table_node.GetID()
    edited = case.tumor.array.copy()
    edited[:, :, :20] = 0                       # the reviewer erases the left part
    edited[5:7, 2:6, 30:36] = 1                 # and paints a small blob elsewhere
    edited_volume = Volume(edited, case.image.geometry)
    replace_segment_voxels(scene, result.segmentation_node, result.segment_id, edited_volume, result.volume_node)

    table = mrml.rescore(scene, result)
    assert table.GetID() == table_id and len(calls) == 1  # same table node, the network did not run again
    rows = _by_reference(mrml.table_rows(table))
    own, vs_ai = rows[""], rows[mrml.AI_REFERENCE_NAME]
    assert own["edited"] == 1
    assert own["volume_ml"] == pytest.approx(sitk_volume_ml(edited_volume), rel=1e-9)
    inside = edited.astype(bool)
    assert own["mean_entropy_nats"] == pytest.approx(float(case.entropy.array[inside].mean(dtype=np.float64)),
                                                     rel=1e-6)
    ai_ml = sitk_volume_ml(case.tumor)
    assert vs_ai["dice"] == pytest.approx(sitk_dice(edited, case.tumor.array), rel=1e-9)
    assert vs_ai["reference_volume_ml"] == pytest.approx(ai_ml, rel=1e-9)
    assert vs_ai["volume_difference_ml"] == pytest.approx(own["volume_ml"] - ai_ml, rel=1e-9)
    assert vs_ai["volume_error_pct"] == pytest.approx(abs(own["volume_ml"] - ai_ml) / ai_ml * 100, rel=1e-9)
    assert 0.3 < vs_ai["dice"] < 0.95

    # The locked AI copy is untouched.
    grid = mrml.volumes.node_grid(result.volume_node)
    assert np.array_equal(mrml.segment_mask(result.ai_node, result.ai_segment_id, grid), case.tumor.array)


def test_rescore_against_annotators_picked_by_the_user(slicer_env, segmented, tmp_path):
    case, result, _ = segmented
    scene = slicer_env.scene
    # R1 from a NIfTI file, R2 made in the scene, R3 from a .seg.nrrd with a second segment in it.
    write_volume(case.raters["R1"], tmp_path / "R1.nii.gz")
    r1, r1_segment = mrml.load_mask(scene, tmp_path / "R1.nii.gz", result.volume_node, name="R1")
    r2, _ = import_mask_as_segmentation(scene, case.raters["R2"], result.volume_node, "R2")
    r3, r3_tumor = import_mask_as_segmentation(scene, case.raters["R3"], result.volume_node, "R3")
    r3.GetSegmentation().GetSegment(r3_tumor).SetName("Hepatoblastoma")
    liver = np.zeros_like(case.tumor.array)
    liver[2:4, 2:6, 2:6] = 1
    extra = import_mask_as_segmentation(scene, Volume(liver, case.image.geometry), result.volume_node, "liver")[0]
    liver_id = extra.GetSegmentation().GetNthSegmentID(0)
    r3.GetSegmentation().CopySegmentFromSegmentation(extra.GetSegmentation(), liver_id)
    r3_path = mrml.save_node(r3, tmp_path / "R3.seg.nrrd")
    r3_loaded, r3_segment = mrml.load_mask(scene, r3_path, result.volume_node, name="R3 file")
    assert r3_loaded.GetSegmentation().GetNumberOfSegments() == 2

    rows = _by_reference(mrml.table_rows(mrml.rescore(
        scene, result.segmentation_node, [r1, r2, (r3_loaded, "Hepatoblastoma")])))
    assert list(rows) == ["", mrml.AI_REFERENCE_NAME, "R1", "R2", "R3 file: Hepatoblastoma"]
    for name in ("R1", "R2"):
        assert rows[name]["dice"] == pytest.approx(sitk_dice(case.tumor.array, case.raters[name].array), rel=1e-9)
        assert rows[name]["reference_volume_ml"] == pytest.approx(sitk_volume_ml(case.raters[name]), rel=1e-9)
    assert rows["R3 file: Hepatoblastoma"]["dice"] == pytest.approx(
        sitk_dice(case.tumor.array, case.raters["R3"].array), rel=1e-9)
    assert rows["R1"]["dice"] < 1.0 and rows["R2"]["volume_error_pct"] > 0
    assert rows[""]["edited"] == 0 and rows[mrml.AI_REFERENCE_NAME]["dice"] == 1.0

    # Without a segment named "Hepatoblastoma" a two-segment node is ambiguous.
    r2.GetSegmentation().CopySegmentFromSegmentation(extra.GetSegmentation(), liver_id)
    with pytest.raises(InputError, match="2 segments"):
        mrml.rescore(scene, result, [r2])


def test_rescore_refuses_an_edited_ai_mask_and_an_annotator_on_another_grid(slicer_env, segmented, tmp_path):
    case, result, _ = segmented
    scene = slicer_env.scene
    coarse = case.image.geometry
    other_geometry = type(coarse)(coarse.size, (coarse.spacing_mm[0], coarse.spacing_mm[1], 3.0), coarse.origin_mm,
                                  coarse.direction)
    other_volume = add_volume_node(scene, Volume(case.image.array, other_geometry), "other series")
    stranger, _ = import_mask_as_segmentation(scene, Volume(case.raters["R1"].array, other_geometry), other_volume,
                                              "R1 on another series")
    with pytest.raises(GeometryError, match="spacing"):
        mrml.rescore(scene, result, [stranger])
    write_volume(Volume(case.raters["R1"].array, other_geometry), tmp_path / "R1.nii.gz")
    with pytest.raises(GeometryError, match="R1.nii.gz"):
        mrml.load_mask(scene, tmp_path / "R1.nii.gz", result.volume_node)

    emptied = Volume(np.zeros_like(case.tumor.array), case.image.geometry)
    replace_segment_voxels(scene, result.ai_node, result.ai_segment_id, emptied, result.volume_node)
    with pytest.raises(InputError, match="locked AI mask"):
        mrml.rescore(scene, result)


def test_an_emptied_segment_scores_zero_volume_and_nan_entropy(slicer_env, segmented):
    case, result, _ = segmented
    scene = slicer_env.scene
    emptied = Volume(np.zeros_like(case.tumor.array), case.image.geometry)
    replace_segment_voxels(scene, result.segmentation_node, result.segment_id, emptied, result.volume_node)
    rows = _by_reference(mrml.table_rows(mrml.rescore(scene, result)))
    assert rows[""]["volume_ml"] == 0.0 and rows[""]["largest_diameter_mm"] == 0.0
    assert math.isnan(rows[""]["mean_entropy_nats"])
    assert rows[mrml.AI_REFERENCE_NAME]["dice"] == 0.0
    assert rows[mrml.AI_REFERENCE_NAME]["volume_error_pct"] == pytest.approx(100.0)
