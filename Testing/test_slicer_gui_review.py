"""Review tools without Qt: the uncertain regions on the tumour boundary ("Next uncertain region"), moving the slice
views there, stepping through the regions, and the debounce of automatic re-scoring. Geometry is checked against
SimpleITK (index -> physical point, and its Maurer distance map for the boundary band)."""

from __future__ import annotations

import math

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import SimpleITK as sitk  # noqa: E402

from slicer_env import (add_volume_node, make_case, mrml, prediction_of, replace_segment_voxels,  # noqa: E402,F401
                        slicer_env)

from HepatoblastomaSegLib.io import Geometry, Volume  # noqa: E402
from HepatoblastomaSegMRML.review import (Debouncer, RegionCursor, boundary_band,  # noqa: E402
                                          find_uncertain_regions, jump_slices_to, regions_of_result, spacing_zyx_of)
from HepatoblastomaSegMRML.volumes import ijk_to_ras  # noqa: E402

from conftest import oblique_direction  # noqa: E402

pytestmark = pytest.mark.slicer
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture
def geometry() -> Geometry:
    return Geometry((40, 36, 12), (0.8, 0.7, 2.5), (12.5, -40.0, 7.25), oblique_direction(flip_x=True))


def _ijk_to_ras(geometry: Geometry) -> np.ndarray:
    return LPS_TO_RAS @ geometry.index_to_physical_matrix()


def _ellipsoid(geometry: Geometry) -> np.ndarray:
    z, y, x = np.indices(geometry.shape_zyx).astype(float)
    sx, sy, sz = geometry.spacing_mm
    return ((((x - 20) * sx / 11) ** 2 + ((y - 18) * sy / 10) ** 2 + ((z - 6) * sz / 10) ** 2) < 1).astype(np.uint8)


def _blob(shape, centre_kji, radius_vox) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - centre_kji[0]) ** 2 + (y - centre_kji[1]) ** 2 + (x - centre_kji[2]) ** 2) <= radius_vox ** 2


def _sitk_ras(geometry: Geometry, ijk) -> np.ndarray:
    image = Volume(np.zeros(geometry.shape_zyx, np.uint8), geometry).to_sitk()
    lps = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk))
    return np.array([-lps[0], -lps[1], lps[2]])


def test_boundary_band_matches_simpleitk_distances_in_mm(geometry):
    mask = _ellipsoid(geometry)
    spacing_zyx = spacing_zyx_of(_ijk_to_ras(geometry))
    np.testing.assert_allclose(spacing_zyx, geometry.spacing_mm[::-1])

    def maurer(m: np.ndarray) -> np.ndarray:  # distance (mm) of every voxel outside m to the nearest voxel of m
        image = sitk.GetImageFromArray(m.astype(np.uint8))
        image.SetSpacing(geometry.spacing_mm)
        return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=False,
                                                                  squaredDistance=False, useImageSpacing=True))

    for band_mm in (0.75, 2.0, 3.0):
        expected = np.where(mask == 1, maurer(1 - mask) <= band_mm + 1e-4, maurer(mask) <= band_mm + 1e-4)
        band = boundary_band(mask, spacing_zyx, band_mm)
        assert np.array_equal(band, expected), band_mm
        assert band[mask == 1].any() and band[mask == 0].any()
    assert not boundary_band(np.zeros_like(mask), spacing_zyx).any()


def test_regions_are_the_uncertain_boundary_blobs_ranked_by_summed_entropy(geometry):
    mask = _ellipsoid(geometry)
    shape = mask.shape
    band = boundary_band(mask, geometry.spacing_mm[::-1], 3.0)
    entropy = np.zeros(shape, np.float32)
    # A and B sit on the surface (A larger); C is deep inside and D far outside (both uncertain, not boundary);
    # E is on the surface but below the threshold.
    surface = np.argwhere(band & (mask == 1))
    a_centre = surface[np.argmax(surface[:, 2])]   # the +i end of the tumour
    b_centre = surface[np.argmin(surface[:, 2])]   # the -i end
    e_centre = surface[np.argmin(surface[:, 1])]
    entropy[_blob(shape, a_centre, 3) & band] = 0.6
    entropy[_blob(shape, b_centre, 1.5) & band] = 0.65
    entropy[_blob(shape, (6, 18, 20), 2)] = 0.69
    entropy[_blob(shape, (1, 2, 2), 2)] = 0.69
    entropy[_blob(shape, e_centre, 2) & band] = 0.2
    matrix = _ijk_to_ras(geometry)
    regions = find_uncertain_regions(entropy, mask, matrix, band_mm=3.0, threshold_nats=math.log(2) / 2)
    assert len(regions) == 2
    a, b = regions
    a_voxels, b_voxels = _blob(shape, a_centre, 3) & band, _blob(shape, b_centre, 1.5) & band
    assert (a.voxels, b.voxels) == (int(a_voxels.sum()), int(b_voxels.sum()))
    assert a.summed_entropy_nats == pytest.approx(0.6 * a_voxels.sum(), rel=1e-5)
    assert a.summed_entropy_nats > b.summed_entropy_nats
    assert b.max_entropy_nats == pytest.approx(0.65)
    for region, voxels in ((a, a_voxels), (b, b_voxels)):
        i, j, k = region.centre_ijk
        assert voxels[k, j, i], "the centre must be a voxel of the region"
        np.testing.assert_allclose(region.centre_ras, _sitk_ras(geometry, region.centre_ijk), atol=1e-6)
    assert "Uncertain region 1/2" in a.describe(1, 2)

    only_big = find_uncertain_regions(entropy, mask, matrix, min_voxels=int(b_voxels.sum()) + 1)
    assert [r.voxels for r in only_big] == [a.voxels]
    assert find_uncertain_regions(entropy, mask, matrix, max_regions=1) == [a]
    with_e = find_uncertain_regions(entropy, mask, matrix, threshold_nats=0.1)
    assert len(with_e) == 3
    everything = find_uncertain_regions(entropy, mask, matrix, threshold_nats=0.0, max_regions=None)
    assert sum(r.voxels for r in everything) == int(band.sum())  # the whole band, nothing outside it
    assert find_uncertain_regions(entropy, np.zeros_like(mask), matrix) == []
    with pytest.raises(ValueError, match="not on one grid"):
        find_uncertain_regions(entropy[1:], mask, matrix)


def test_regions_of_a_result_follow_edits_and_transforms_and_views_jump_there(slicer_env):
    scene = slicer_env.scene
    case = make_case(seed=2)
    volume = add_volume_node(scene, case.image, "case")
    result = mrml.add_prediction(scene, volume, prediction_of(case))
    matrix = ijk_to_ras(volume)
    regions = regions_of_result(result.segmentation_node, threshold_nats=0.3)
    assert regions and regions == find_uncertain_regions(case.entropy.array, case.tumor.array, matrix,
                                                         threshold_nats=0.3)
    # After the reviewer's edit, the regions come from the edited mask.
    replace_segment_voxels(scene, result.segmentation_node, result.segment_id, case.raters["R1"], volume)
    edited = regions_of_result(result.segmentation_node, threshold_nats=0.3)
    assert edited == find_uncertain_regions(case.entropy.array, case.raters["R1"].array, matrix, threshold_nats=0.3)
    assert edited != regions
    # Under a transform, the centres are in world coordinates.
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (10.0, -5.0, 2.5)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    result.entropy_node.SetAndObserveTransformNodeID(transform.GetID())
    moved = regions_of_result(result.segmentation_node, threshold_nats=0.3)
    np.testing.assert_allclose(np.array([r.centre_ras for r in moved]),
                               np.array([r.centre_ras for r in edited]) + (10.0, -5.0, 2.5), atol=1e-9)

    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    green = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    green.SetLayoutName("Green")
    assert jump_slices_to(scene, moved[0].centre_ras) == 2
    for node in (red, green):
        matrix = node.GetSliceToRAS()
        np.testing.assert_allclose([matrix.GetElement(i, 3) for i in range(3)], moved[0].centre_ras, atol=1e-9)


def test_cursor_steps_through_the_ranking_and_wraps_around():
    cursor = RegionCursor()
    assert cursor.next() is None and cursor.rank == 0
    cursor.reset(["a", "b", "c"])
    assert [cursor.next() for _ in range(4)] == ["a", "b", "c", "a"] and cursor.rank == 1
    cursor.reset(["x"])
    assert cursor.next() == "x" and cursor.rank == 1


def test_debouncer_fires_once_after_a_quiet_period():
    now = [0.0]
    debouncer = Debouncer(1.5, clock=lambda: now[0])
    assert not debouncer.ready() and not debouncer.pending
    for t in (0.0, 0.5, 1.0, 1.4):  # a burst of edits
        now[0] = t
        debouncer.poke()
        assert not debouncer.ready()
    now[0] = 2.8
    assert not debouncer.ready()  # 1.4 s after the last edit
    now[0] = 2.9
    assert debouncer.ready() and not debouncer.ready()  # once per burst
    debouncer.poke()
    debouncer.cancel()
    now[0] = 10.0
    assert not debouncer.ready()


# --- the review flag of a result -----------------------------------------------------------------------------------

def test_review_reasons_in_plain_words():
    from HepatoblastomaSegMRML.review import review_flag_text

    assert review_flag_text({}) == review_flag_text(None) == ""  # a summary from before the flag existed
    assert review_flag_text({"review": {"needed": False, "reasons": []}}) == ""
    text = review_flag_text({"review": {"needed": True, "reasons": [
        {"code": "outside_liver", "message": "12 % of the mask lies outside the liver."},
        {"code": "high_uncertainty"},
        {"code": "new_code_from_a_later_library"}]}})
    assert text.splitlines() == ["Please review this result carefully:",
                                 "\u2022 12 % of the mask lies outside the liver.",
                                 "\u2022 The model is unsure about a large part of the tumour.",
                                 "\u2022 new code from a later library"]
    assert review_flag_text({"review": {"needed": True}}) == "Please review this result carefully."


def test_every_reason_the_library_gives_has_plain_words_in_the_module():
    from HepatoblastomaSegLib.infer.review import REVIEW_CODES
    from HepatoblastomaSegMRML.review import REVIEW_REASON_WORDS, review_flag_text

    assert set(REVIEW_REASON_WORDS) == set(REVIEW_CODES)
    for code in REVIEW_CODES:
        text = review_flag_text({"review": {"needed": True, "reasons": [{"code": code}]}})
        assert text.splitlines()[1] == "\u2022 " + REVIEW_REASON_WORDS[code] and "_" not in text


def test_a_loaded_result_carries_its_review_reasons(slicer_env, tmp_path):
    """hbseg's summary.json with a review flag -> load_results -> the text the module shows beside the result."""
    from HepatoblastomaSegLib.infer.outputs import write_prediction
    from HepatoblastomaSegMRML import nodes
    from HepatoblastomaSegMRML.review import review_flag_text

    case = make_case(seed=21)
    volume = add_volume_node(slicer_env.scene, case.image, "ct")
    flag = {"needed": True, "reasons": [{"code": "out_of_domain",
                                         "message": "The voxels are 6 mm thick; the model saw at most 5 mm."}]}
    write_prediction(prediction_of(case, review=flag), tmp_path / "run", fmt="nrrd")
    result = mrml.load_results(slicer_env.scene, volume, tmp_path / "run")
    text = review_flag_text(nodes.stored_summary(result.segmentation_node))
    assert "6 mm thick" in text and text.startswith("Please review")
    older = mrml.load_results(slicer_env.scene, volume, _without_review(tmp_path / "run", tmp_path / "older"))
    assert review_flag_text(nodes.stored_summary(older.segmentation_node)) == ""


def _without_review(folder, target):
    import json
    import shutil

    shutil.copytree(folder, target)
    summary = json.loads((target / "summary.json").read_text())
    del summary["review"]
    (target / "summary.json").write_text(json.dumps(summary))
    return target
