"""The review flag fires on deliberately bad cases and stays quiet on a good phantom; the liver-anchored tumour step
drops what does not lie in the liver and keeps a tumour that bulges out of it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from HepatoblastomaSegLib.bundle import RESOURCES_MODELS_DIR, load_bundle
from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.evaluate.domain_shift import thick_slices, without_contrast, without_fat_suppression
from HepatoblastomaSegLib.infer.cohort import CohortCase, run_cohort
from HepatoblastomaSegLib.infer.options import PredictorOptions
from HepatoblastomaSegLib.infer.postprocess import keep_components_in_liver
from HepatoblastomaSegLib.infer.result import Prediction
from HepatoblastomaSegLib.infer.review import (ReviewSettings, body_mask, count_pieces, fill_holes_in_plane,
                                               flagged_table, measure_image, open_with_cross, review, review_settings,
                                               scan_length_mm, tumor_on_scan_edge, write_review_settings)
from HepatoblastomaSegLib.io import Geometry, Volume, write_volume
from HepatoblastomaSegLib.phantom import generate_case

SEED = 779  # a series no training, demo, benchmark or other test uses


@pytest.fixture(scope="module")
def ct_case():
    return generate_case("ct", SEED, 0, "small")


@pytest.fixture(scope="module")
def ct_settings() -> ReviewSettings:
    settings = review_settings(RESOURCES_MODELS_DIR / "ct-demo")
    assert settings.max_mean_entropy_nats is not None and {"liver_hu", "slice_thickness_mm"} <= set(settings.reference)
    return settings


def flag(image, tumor, liver, settings, *, entropy=None, modality="ct"):
    """The review of ``image`` with ``tumor`` as the model's mask; entropy just under the threshold by default."""
    tumor = np.asarray(tumor, dtype=bool)
    facts = measure_image(image, modality, tumor, liver)
    if entropy is None:
        entropy = 0.9 * settings.max_mean_entropy_nats
    result = review(facts, tumor_volume_ml=float(tumor.sum()) * image.voxel_volume_ml, mean_entropy_nats=entropy,
                    modality=modality, settings=settings, liver_source="test liver")
    assert set(result) == {"needed", "reasons"} and result["needed"] == bool(result["reasons"])
    for reason in result["reasons"]:
        assert set(reason) == {"code", "message"} and reason["message"].endswith((".", "?"))
    return result, facts


def codes(result) -> set[str]:
    return {r["code"] for r in result["reasons"]}


def liver_of(case) -> np.ndarray:
    return (case.liver.array > 0) | (case.tumor.array > 0)


def test_a_good_phantom_case_is_not_flagged(ct_case, ct_settings):
    result, facts = flag(ct_case.image, ct_case.tumor.array, liver_of(ct_case), ct_settings)
    assert result == {"needed": False, "reasons": []}
    assert facts.tumor_outside_liver_ml == 0.0 and facts.tumor_pieces == 1
    lo, hi = ct_settings.reference["liver_hu"]
    assert lo <= facts.liver_hu <= hi


def test_a_tumour_far_outside_the_liver_is_flagged(ct_case, ct_settings):
    liver = liver_of(ct_case)
    # The tumour moved to the other side of the body: the liver's mirror image along x holds none of the liver.
    moved = ct_case.tumor.array[:, :, ::-1] & ~liver
    assert moved.sum() * ct_case.image.voxel_volume_ml > ct_settings.max_outside_liver_ml
    result, facts = flag(ct_case.image, moved, liver, ct_settings)
    assert "outside_liver" in codes(result)
    assert facts.tumor_outside_liver_ml == pytest.approx(moved.sum() * ct_case.image.voxel_volume_ml)
    message = next(r["message"] for r in result["reasons"] if r["code"] == "outside_liver")
    assert f"{facts.tumor_outside_liver_ml:.0f} mL" in message and "test liver" in message


def test_a_ct_without_contrast_is_out_of_domain_and_says_so(ct_case, ct_settings):
    result, facts = flag(without_contrast(ct_case.image), ct_case.tumor.array, liver_of(ct_case), ct_settings)
    assert codes(result) == {"out_of_domain"}
    assert facts.liver_hu < ct_settings.reference["liver_hu"][0]
    assert "without intravenous contrast" in result["reasons"][0]["message"]


def test_seven_mm_slices_are_out_of_domain(ct_case, ct_settings):
    image = thick_slices(ct_case.image, 7.0)
    tumor = thick_slices(ct_case.tumor, 7.0, labels=True).array
    liver = thick_slices(ct_case.liver, 7.0, labels=True).array > 0
    assert image.spacing_mm[2] == 7.0 and ct_settings.reference["slice_thickness_mm"][1] < 7.0
    result, _ = flag(image, tumor, liver | (tumor > 0), ct_settings)
    assert codes(result) == {"out_of_domain"}
    assert "slices 7 mm thick" in result["reasons"][0]["message"]


def test_a_mask_filling_the_body_is_implausible(ct_case, ct_settings):
    huge = ndimage.binary_fill_holes(ct_case.image.array > -500)
    result, facts = flag(ct_case.image, huge, liver_of(ct_case), ct_settings)
    assert {"implausible", "outside_liver"} <= codes(result)
    message = next(r["message"] for r in result["reasons"] if r["code"] == "implausible")
    assert "larger than the whole liver" in message
    # No liver at all: the child-sized limit still catches a mask of several litres.
    settings = ReviewSettings(max_tumor_ml=facts.liver_volume_ml)
    result, _ = flag(ct_case.image, huge, None, settings, entropy=0.0)
    # (the body runs through the phantom's first and last slices, and so does this mask)
    assert codes(result) == {"implausible", "at_scan_edge"}
    assert "fits in a child's abdomen" in result["reasons"][0]["message"]


def test_high_uncertainty_against_the_calibrated_threshold(ct_case, ct_settings):
    threshold = ct_settings.max_mean_entropy_nats
    result, _ = flag(ct_case.image, ct_case.tumor.array, liver_of(ct_case), ct_settings, entropy=threshold + 0.01)
    assert codes(result) == {"high_uncertainty"} and f"{threshold:.2f} nats" in result["reasons"][0]["message"]
    # A bundle without a calibrated threshold has no uncertainty check (and no reference ranges either).
    result, _ = flag(ct_case.image, ct_case.tumor.array, liver_of(ct_case), ReviewSettings(), entropy=0.6)
    assert result == {"needed": False, "reasons": []}


def test_mri_without_fat_suppression_is_out_of_domain():
    case = generate_case("mri", SEED, 0, "small")
    settings = review_settings(RESOURCES_MODELS_DIR / "mri-demo")
    assert "fat_to_liver_ratio" in settings.reference
    good, _ = flag(case.image, case.tumor.array, liver_of(case), settings, modality="mri")
    assert good["needed"] is False
    bad, facts = flag(without_fat_suppression(case.image), case.tumor.array, liver_of(case), settings, modality="mri")
    assert codes(bad) == {"out_of_domain"} and "fat suppression" in bad["reasons"][0]["message"]
    assert facts.fat_to_liver_ratio > settings.reference["fat_to_liver_ratio"][1]


def test_review_settings_live_in_bundle_json_and_keep_the_bundle_valid(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(RESOURCES_MODELS_DIR / "ct-demo", folder)
    settings = ReviewSettings(max_mean_entropy_nats=0.123, reference={"liver_hu": (90.0, 140.0)},
                              calibration={"note": "test"})
    write_review_settings(folder, settings)
    meta = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    assert meta["review"]["max_mean_entropy_nats"] == 0.123 and meta["name"] == "ct-demo"
    load_bundle(folder)  # the weights' checksum still holds
    back = review_settings(folder)
    assert back.max_mean_entropy_nats == 0.123 and back.reference == {"liver_hu": (90.0, 140.0)}
    # Unknown keys and malformed ranges are ignored, missing ones take the defaults.
    meta["review"] = {"reference": {"liver_hu": [1, 2, 3], "fat_hu": [-150, -50]}, "future_key": 1}
    (folder / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")
    back = review_settings(folder)
    assert back.reference == {"fat_hu": (-150.0, -50.0)} and back.max_mean_entropy_nats is None


def test_liver_anchor_at_fraction_zero_keeps_what_touches_the_liver_and_drops_the_rest():
    liver = np.zeros((20, 40, 40), dtype=bool)
    liver[5:15, 5:20, 5:20] = True
    tumor = np.zeros_like(liver)
    tumor[8:12, 10:26, 10:14] = True  # bulges 6 voxels out of the liver: kept whole
    tumor[8:12, 30:35, 30:35] = True  # far away: dropped
    tumor[15, 20, 20] = True          # touches the liver's corner voxel (14, 19, 19) diagonally: kept
    kept, dropped = keep_components_in_liver(tumor.astype(np.uint8), liver, min_fraction_inside=0.0)
    assert dropped == 1
    labels, n = ndimage.label(tumor, structure=np.ones((3, 3, 3)))
    assert n == 3
    far = labels == labels[10, 32, 32]
    np.testing.assert_array_equal(kept.astype(bool), tumor & ~far)
    assert kept[10, 25, 12] == 1  # the bulging part outside the liver survives
    empty, none_dropped = keep_components_in_liver(np.zeros_like(tumor, dtype=np.uint8), liver)
    assert none_dropped == 0 and not empty.any()


def test_liver_anchor_drops_an_organ_pressed_against_the_liver_and_keeps_a_bulging_tumour():
    """A fraction above 0: a component counts as in the liver by the share of its voxels inside the liver mask."""
    liver = np.zeros((20, 60, 60), dtype=bool)
    liver[2:18, 5:30, 5:30] = True
    tumor = np.zeros_like(liver)
    tumor[6:14, 10:36, 8:14] = True   # 20 of its 26 rows inside the liver (77 %), 6 outside: kept whole
    tumor[6:14, 30:45, 18:24] = True  # an organ against the liver's face (its row 30 touches row 29): dropped
    tumor[6:14, 22:34, 26:36] = True  # straddles the liver's corner: 8 x 4 of its 12 x 10 voxels per slice inside
    labels, n = ndimage.label(tumor, structure=np.ones((3, 3, 3)))
    assert n == 3
    bulge, organ, corner = (labels == labels[10, 12, 10]), (labels == labels[10, 40, 20]), \
        (labels == labels[10, 30, 30])
    shares = {name: (part & liver).sum() / part.sum() for name, part in
              (("bulge", bulge), ("organ", organ), ("corner", corner))}
    assert shares["organ"] == 0.0 and 0.2 < shares["corner"] < 0.3 and shares["bulge"] > 0.7
    # The organ touches the liver, so fraction 0 keeps it.
    touching, _ = keep_components_in_liver(tumor.astype(np.uint8), liver, min_fraction_inside=0.0)
    assert touching[organ].all()
    for fraction, kept_parts in ((0.2, (bulge, corner)), (0.3, (bulge,)), (0.8, ())):
        kept, dropped = keep_components_in_liver(tumor.astype(np.uint8), liver, min_fraction_inside=fraction)
        expected = np.any(kept_parts, axis=0) if kept_parts else np.zeros_like(tumor)
        np.testing.assert_array_equal(kept.astype(bool), expected)
        assert dropped == 3 - len(kept_parts)
    default = PredictorOptions().liver_anchor_min_fraction_inside
    kept, _ = keep_components_in_liver(tumor.astype(np.uint8), liver, min_fraction_inside=default)
    assert kept[bulge].all() and not kept[organ].any()
    with pytest.raises(ValueError, match="min_fraction_inside"):
        keep_components_in_liver(tumor.astype(np.uint8), liver, min_fraction_inside=1.5)
    with pytest.raises(ConfigError, match="--liver-anchor-min-fraction-inside"):
        PredictorOptions(liver_anchor_min_fraction_inside=-0.1).validate()


def test_what_the_liver_anchor_removed_is_flagged_above_the_outside_liver_limit(ct_case, ct_settings):
    limit = ct_settings.max_outside_liver_ml
    _, facts = flag(ct_case.image, ct_case.tumor.array, liver_of(ct_case), ct_settings)
    for removed_ml, fires in ((None, False), (0.0, False), (limit, False), (limit + 0.5, True), (10 * limit, True)):
        facts.anchor_removed_ml = removed_ml
        result = review(facts, tumor_volume_ml=float(ct_case.tumor.array.sum()) * ct_case.image.voxel_volume_ml,
                        mean_entropy_nats=0.0, modality="ct", settings=ct_settings, liver_source="test liver")
        assert ("anchor_removed" in codes(result)) is fires, removed_ml
        if fires:
            message = next(r["message"] for r in result["reasons"] if r["code"] == "anchor_removed")
            assert message.startswith(f"{removed_ml:.0f} mL") and "(test liver)" in message


def test_much_tumour_outside_the_liver_is_flagged_however_large_the_tumour(ct_settings):
    """Below a quarter of a large mask, outside_liver still fires past the absolute limit (50 mL by default, a bundle
    may set another); under it the share rule alone decides."""
    from HepatoblastomaSegLib.infer.review import ImageFacts

    def fires(outside_ml, tumor_ml, settings):
        facts = ImageFacts(slice_thickness_mm=2.5, liver_volume_ml=2000.0, tumor_outside_liver_ml=outside_ml,
                           tumor_pieces=1)
        result = review(facts, tumor_volume_ml=tumor_ml, mean_entropy_nats=None, modality="ct", settings=settings)
        return "outside_liver" in codes(result)

    limit = ct_settings.max_outside_liver_ml_any_share
    assert limit == 50.0 and ct_settings.max_outside_liver_fraction == 0.25
    assert not fires(45.0, 800.0, ct_settings)          # 6 % of the mask, under 50 mL: boundary disagreement
    assert fires(55.0, 800.0, ct_settings)              # 7 % of the mask, but over 50 mL
    assert fires(30.0, 100.0, ct_settings)              # the share rule: 30 % and over 25 mL
    assert not fires(20.0, 50.0, ct_settings)           # 40 %, but under 25 mL
    wider = ReviewSettings.from_dict({**ct_settings.to_dict(), "max_outside_liver_ml_any_share": 100.0})
    assert wider.max_outside_liver_ml_any_share == 100.0 and not fires(55.0, 800.0, wider)
    older = {k: v for k, v in ct_settings.to_dict().items() if k != "max_outside_liver_ml_any_share"}
    assert ReviewSettings.from_dict(older).max_outside_liver_ml_any_share == 50.0  # a bundle written before it


def test_every_reason_at_once_is_listed_in_the_documented_order(ct_settings):
    from HepatoblastomaSegLib.infer.review import REVIEW_CODES, ImageFacts

    facts = ImageFacts(slice_thickness_mm=3.0, body_width_mm=200.0, liver_hu=40.0, fat_hu=-100.0,
                       liver_volume_ml=300.0, tumor_outside_liver_ml=400.0, tumor_pieces=1, anchor_removed_ml=100.0,
                       tumor_edge_area_mm2=500.0, tumor_edge_side="the scan's upper (head) end")
    result = review(facts, tumor_volume_ml=500.0, mean_entropy_nats=1.0, modality="ct", settings=ct_settings)
    assert [r["code"] for r in result["reasons"]] == list(REVIEW_CODES)


def _corners_mm(image) -> np.ndarray:
    """The 8 outer corners of ``image``'s voxel box in world coordinates, by SimpleITK."""
    size = image.GetSize()
    return np.array([image.TransformContinuousIndexToPhysicalPoint([(-0.5, n - 0.5)[c >> k & 1] for k, n in
                                                                    enumerate(size)]) for c in range(8)])


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),             # axial
    (1, 0, 0, 0, 0, 1, 0, -1, 0),            # coronal: the array's j axis runs from head to foot
    (0, 0, -1, 1, 0, 0, 0, -1, 0),           # sagittal
    (0.866, -0.5, 0, 0.5, 0.866, 0, 0, 0, 1),  # axial, rotated in-plane
    (1, 0, 0, 0, 0.8, -0.6, 0, 0.6, 0.8),     # oblique
])
def test_scan_length_is_the_head_to_foot_extent_of_the_voxel_box(direction):
    import SimpleITK as sitk

    geometry = Geometry((40, 30, 12), (0.8, 0.9, 5.0), (10.0, -20.0, 300.0), direction)
    image = geometry.apply_to(sitk.Image(*geometry.size, sitk.sitkUInt8))
    corners_z = _corners_mm(image)[:, 2]
    assert scan_length_mm(geometry) == pytest.approx(corners_z.max() - corners_z.min(), rel=1e-9)


@pytest.mark.parametrize(("direction", "face", "side"), [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), (0, -1), "the scan's upper (head) end"),       # LPS z grows to the head
    ((1, 0, 0, 0, 1, 0, 0, 0, -1), (0, -1), "the scan's lower (foot) end"),      # slices stored head first
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), (2, 0), "the field of view's right side"),    # LPS x grows to the left
    ((-1, 0, 0, 0, -1, 0, 0, 0, 1), (1, 0), "the field of view's posterior side"),  # RAS-like storage
])
def test_a_tumour_on_a_face_of_the_scan_is_measured_and_placed_in_patient_words(direction, face, side):
    import SimpleITK as sitk

    geometry = Geometry((20, 16, 10), (0.7, 0.8, 3.0), (0.0, 0.0, 0.0), direction)
    tumor = np.zeros(geometry.shape_zyx, dtype=bool)
    tumor[4:7, 5:9, 6:12] = True
    assert tumor_on_scan_edge(tumor, geometry) == (0.0, None)
    axis, end = face
    index = [slice(4, 7), slice(5, 9), slice(6, 12)]
    index[axis] = slice(0, 3) if end == 0 else slice(geometry.shape_zyx[axis] - 3, None)
    tumor[tuple(index)] = True
    area, where = tumor_on_scan_edge(tumor, geometry)
    on_face = np.take(tumor, end, axis=axis).sum()
    assert area == pytest.approx(on_face * np.prod([geometry.spacing_mm[::-1][a] for a in range(3) if a != axis]))
    assert where == side
    # The face's side by SimpleITK: the world step from the image's centre to the face's voxels.
    image = geometry.apply_to(sitk.Image(*geometry.size, sitk.sitkUInt8))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in geometry.size]))
    face_voxel = [n // 2 for n in geometry.shape_zyx]
    face_voxel[axis] = 0 if end == 0 else geometry.shape_zyx[axis] - 1
    step = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in face_voxel[::-1]])) - centre
    world = int(np.argmax(np.abs(step)))
    words = {(0, 1): "left", (0, -1): "right", (1, 1): "posterior", (1, -1): "anterior", (2, 1): "head",
             (2, -1): "foot"}
    assert words[(world, int(np.sign(step[world])))] in where


def test_a_tumour_cut_off_by_the_scan_is_flagged_and_a_short_scan_is_out_of_domain(ct_case, ct_settings):
    """A slab through the phantom's tumour: the tumour runs off both ends of the scan and the scan is much shorter
    than the reference phantoms'; the whole phantom has neither (and is never flagged for being long)."""
    assert "scan_length_mm" in ct_settings.reference
    lo = ct_settings.reference["scan_length_mm"][0]
    tumor = ct_case.tumor.array > 0
    slices = np.flatnonzero(tumor.any(axis=(1, 2)))
    middle = int(slices[len(slices) // 2])
    thickness = ct_case.image.spacing_mm[2]
    n = max(3, int(0.5 * lo / thickness))
    assert n * thickness < lo and slices.size > n + 2
    first = max(0, middle - n // 2)
    slab = slice(first, first + n)
    image = Volume(ct_case.image.array[slab].copy(), Geometry(
        (*ct_case.image.geometry.size[:2], n), ct_case.image.spacing_mm,
        ct_case.image.to_sitk().TransformIndexToPhysicalPoint((0, 0, first)), ct_case.image.direction))
    result, facts = flag(image, tumor[slab], liver_of(ct_case)[slab], ct_settings)
    assert facts.scan_length_mm == pytest.approx(n * thickness)
    assert {"at_scan_edge", "out_of_domain"} <= codes(result)
    edge = next(r["message"] for r in result["reasons"] if r["code"] == "at_scan_edge")
    assert "lower bound" in edge and ("head" in edge or "foot" in edge)
    short = next(r["message"] for r in result["reasons"] if r["code"] == "out_of_domain")
    assert f"the scan {n * thickness:.0f} mm from head to foot (expected at least" in short
    whole, whole_facts = flag(ct_case.image, tumor, liver_of(ct_case), ct_settings)
    assert whole_facts.tumor_edge_area_mm2 == 0.0 and whole_facts.scan_length_mm > lo and not whole["needed"]
    whole_facts.scan_length_mm = 10 * ct_settings.reference["scan_length_mm"][1]
    assert not review(whole_facts, tumor_volume_ml=1.0, mean_entropy_nats=0.0, modality="ct",
                      settings=ct_settings)["needed"]


def test_the_edge_limit_is_a_setting_with_a_default_for_older_bundles(ct_case, ct_settings):
    from HepatoblastomaSegLib.infer.review import DEFAULT_MAX_TUMOR_EDGE_AREA_MM2, ImageFacts

    assert ReviewSettings.from_dict({}).max_tumor_edge_area_mm2 == DEFAULT_MAX_TUMOR_EDGE_AREA_MM2
    settings = ReviewSettings.from_dict({**ct_settings.to_dict(), "max_tumor_edge_area_mm2": 300.0})
    assert ReviewSettings.from_dict(settings.to_dict()) == settings
    for area, fires in ((None, False), (0.0, False), (300.0, False), (301.0, True)):
        facts = ImageFacts(slice_thickness_mm=3.0, tumor_edge_area_mm2=area, tumor_edge_side="x")
        result = review(facts, tumor_volume_ml=10.0, mean_entropy_nats=None, modality="ct", settings=settings)
        assert ("at_scan_edge" in codes(result)) is fires, area


def test_a_tumour_the_anchor_removes_whole_is_never_silent(ct_case):
    """A liver mask that misses the tumour's part of the liver (as the demo liver model can on a real scan): the
    anchor removes every component, and the summary says how much and why instead of reporting a clean 0 mL."""
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions

    predictor = Predictor.from_options(PredictorOptions(modality="ct", tta=False, device="cpu"))
    free = predictor.predict(ct_case.image, liver_mask=ct_case.tumor.with_array(liver_of(ct_case).astype(np.uint8)))
    assert free.summary["tumor_volume_ml"] > 2 * predictor.review_settings.max_outside_liver_ml
    far = np.zeros(ct_case.image.array.shape, dtype=np.uint8)
    far[:2, :4, :4] = 1  # a "liver" in the image's corner, touching nothing the model finds
    removed = predictor.predict(ct_case.image, liver_mask=ct_case.tumor.with_array(far))
    summary = removed.summary
    anchor = summary["postprocessing"]["liver_anchor"]
    assert summary["tumor_volume_ml"] == 0.0 and anchor["applied"]
    assert anchor["ml_dropped"] == pytest.approx(free.summary["tumor_volume_ml"], abs=0.01)
    assert summary["review_measurements"]["anchor_removed_ml"] == pytest.approx(anchor["ml_dropped"], abs=0.01)
    assert summary["review"]["needed"] and "anchor_removed" in codes(summary["review"])
    assert free.summary["review_measurements"]["anchor_removed_ml"] == 0.0
    # What was removed is handed on whole, on the input's grid, for a reviewer to see and take back, with the liver
    # mask it was judged against.
    assert set(free.review_masks) == {"liver"} and set(removed.review_masks) == {"liver", "anchor_removed"}
    np.testing.assert_array_equal(removed.review_masks["anchor_removed"].array, free.mask.array)
    np.testing.assert_array_equal(removed.review_masks["liver"].array, far)
    assert removed.review_masks["anchor_removed"].geometry == ct_case.image.geometry


def test_cohort_table_and_evaluate_read_the_flag(tmp_path, ct_case):
    def predict(case, progress):
        flagged = case.case == "b"
        summary = {"tumor_volume_ml": 1.0, "modality": "ct", "seconds": {"network": 1.0},
                   "review": {"needed": flagged, "reasons": [{"code": "outside_liver", "message": "x."}] if flagged
                              else []}}
        return Prediction(ct_case.tumor, ct_case.tumor.with_array(np.zeros(ct_case.tumor.array.shape, np.float32)),
                          summary)

    cases = [CohortCase("a", write_volume(ct_case.image, tmp_path / "a.nii.gz"), "ct"),
             CohortCase("b", write_volume(ct_case.image, tmp_path / "b.nii.gz"), "ct")]
    result = run_cohort(cases, tmp_path / "out", predict)
    assert result.n_flagged == 1
    table = (tmp_path / "out" / "cohort_summary.csv").read_text(encoding="utf-8").splitlines()
    assert table[0].endswith("review_needed,review_reasons")
    assert table[1].endswith(",False,") and table[2].endswith(",True,outside_liver")
    masks = [("M", c.case, next((tmp_path / "out" / c.case).glob("segmentation*"))) for c in cases]
    rows = flagged_table(masks + [("M", "c", tmp_path / "nowhere" / "mask.nii.gz")])
    assert [(r["case"], r["review_needed"], r["reasons"]) for r in rows] == [("a", "False", ""),
                                                                              ("b", "True", "outside_liver")]


def test_hbseg_segment_reports_the_liver_anchor_and_the_review(tmp_path, ct_case):
    """End to end on a small phantom CT: ct-demo with ct-liver-demo, the anchor on by default and off on request."""
    image = write_volume(ct_case.image, tmp_path / "ct.nii.gz")
    assert main(["segment", str(image), "--no-tta", "--device", "cpu", "--progress", "none",
                 "-o", str(tmp_path / "on")]) == 0
    summary = json.loads((tmp_path / "on" / "summary.json").read_text(encoding="utf-8"))
    assert summary["liver_source"].startswith("ct-liver-demo")
    assert summary["postprocessing"]["liver_anchor"]["applied"] is True
    assert summary["liver_volume_ml"] > summary["tumor_volume_ml"] > 0
    # The demo liver model (held-out liver Dice 0.84) misses part of some tumours: the flag follows its rule exactly.
    outside, tumor = summary["tumor_outside_liver_ml"], summary["tumor_volume_ml"]
    codes_found = {r["code"] for r in summary["review"]["reasons"]}
    assert ("outside_liver" in codes_found) == (outside > 25.0 and (outside > 0.25 * tumor or outside > 50.0))
    assert not codes_found & {"out_of_domain", "implausible"}  # a phantom like the training ones, a plausible mask
    assert main(["segment", str(image), "--no-tta", "--device", "cpu", "--progress", "none", "--no-liver-anchor",
                 "-o", str(tmp_path / "off")]) == 0
    off = json.loads((tmp_path / "off" / "summary.json").read_text(encoding="utf-8"))
    assert off["postprocessing"]["liver_anchor"] == {"on": False, "min_fraction_inside": 0.2, "applied": False,
                                                      "components_dropped": 0, "ml_dropped": 0.0}
    assert off["tumor_volume_ml"] >= summary["tumor_volume_ml"]


def test_the_demo_liver_model_anchors_only_the_bundled_ct_models_unless_asked(tmp_path):
    """A user's own (or imported) CT model is not cut down to the phantom-trained demo liver mask by default."""
    from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions

    from tiny_models import tiny_bundle

    own = str(tiny_bundle(tmp_path))
    assert Predictor.from_options(PredictorOptions(modality="ct")).liver_bundle.name == "ct-liver-demo"
    assert Predictor.from_options(PredictorOptions(model=own)).liver_bundle is None
    asked = Predictor.from_options(PredictorOptions(model=own, liver_anchor=True))
    assert asked.liver_bundle.name == "ct-liver-demo" and asked.liver_anchor is True
    given = Predictor.from_options(PredictorOptions(model=own, liver_model="ct-liver-demo"))
    assert given.liver_bundle.name == "ct-liver-demo"


def test_the_anchor_liver_is_the_largest_piece_and_the_sizeable_pieces_on_its_slices():
    """Against scipy's labels of the whole mask: a piece is kept when it is the largest, or at least ``min_ml`` and
    sharing a slice (z) with the largest."""
    from HepatoblastomaSegLib.preprocess.liver import pieces_beside_largest

    rng = np.random.default_rng(11)
    for trial in range(4):
        mask = ndimage.binary_dilation(rng.random((40, 50, 50)) > 0.9992, iterations=3)
        mask[10:22, 5:25, 5:25] = True  # the largest
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())[1:]
        largest = 1 + int(np.argmax(sizes))
        z_largest = set(np.nonzero(labels == largest)[0])
        expected = np.zeros_like(mask)
        for label in range(1, n + 1):
            piece = labels == label
            beside = bool(z_largest & set(np.nonzero(piece)[0]))
            if label == largest or (beside and sizes[label - 1] * 0.5 >= 20.0):
                expected |= piece
        kept = pieces_beside_largest(mask, 20.0, 0.5)
        np.testing.assert_array_equal(kept.astype(bool), expected)
        kept_pieces = len(np.unique(labels[expected]))
        assert 1 < kept_pieces < n  # besides the largest, some pieces kept and some dropped
    below = np.zeros((30, 10, 10), dtype=bool)
    below[15:25, :, :] = True
    below[0:5, :, :] = True  # big, but wholly below the largest: another organ
    assert pieces_beside_largest(below, 1.0, 1.0)[0:5].sum() == 0
    assert not pieces_beside_largest(np.zeros_like(below), 1.0, 1.0).any()


def test_pieces_are_counted_as_scipy_labels_the_whole_mask():
    rng = np.random.default_rng(3)
    mask = ndimage.binary_dilation(rng.random((30, 60, 70)) > 0.9985, iterations=2)
    mask[0, 0, 0] = mask[-1, -1, -1] = True  # one-voxel pieces in opposite corners: the box is the whole array
    mask[10:12, 50:53, 60:70] = True
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())[1:]
    for min_voxels in (1, 5, 40):
        assert count_pieces(mask, 1.0, min_ml=min_voxels) == np.count_nonzero(sizes >= min_voxels)
    corner = np.zeros_like(mask)
    corner[-3:, :4, -5:] = True
    assert count_pieces(corner, 1.0, min_ml=1) == 1 and count_pieces(np.zeros_like(mask), 1.0) == 0


def test_the_body_is_found_on_a_grid_of_about_one_millimetre():
    array = np.full((4, 200, 200), -1000, dtype=np.int16)
    yy, xx = np.mgrid[:200, :200]
    array[:, (yy - 100) ** 2 + (xx - 100) ** 2 < 80 ** 2] = 40  # a 160-pixel-wide trunk
    for spacing_mm, step in ((0.5, 2), (0.6, 2), (0.8, 1), (1.5, 1), (0.3, 3)):
        volume = Volume(array, Geometry((200, 200, 4), (spacing_mm, spacing_mm, 5.0), (0.0, 0.0, 0.0)))
        body, used = body_mask(volume, "ct")
        assert used == step and body.shape == (4, -(-200 // step), -(-200 // step))
        width_px = body[0].any(axis=0).sum() * step
        assert abs(width_px - 159) <= step


def test_the_anchor_labels_only_the_masks_box_and_keeps_what_the_whole_image_would():
    rng = np.random.default_rng(11)
    structure = np.ones((3, 3, 3), dtype=bool)
    for trial in range(6):
        shape = (20, 40, 50)
        tumor = ndimage.binary_dilation(rng.random(shape) > 0.998, iterations=2)
        liver = ndimage.binary_dilation(rng.random(shape) > 0.999, iterations=3)
        if trial % 2:  # pieces on the image's border and a liver voxel just outside the mask's box
            tumor[0, :3, :3] = tumor[-1, -3:, -3:] = True
            liver[1, 3, 3] = True
        labels, n = ndimage.label(tumor, structure=structure)  # the whole-image reference
        touched = np.unique(labels[ndimage.binary_dilation(liver, structure=structure) & (labels > 0)])
        expected = np.isin(labels, touched[touched > 0])
        kept, dropped = keep_components_in_liver(tumor.astype(np.uint8), liver, min_fraction_inside=0.0)
        assert np.array_equal(kept.astype(bool), expected) and dropped == n - np.count_nonzero(touched)
        # With a fraction: scipy's per-label sums over the whole image.
        index = np.arange(1, n + 1)
        share = ndimage.sum(liver, labels, index) / ndimage.sum(tumor, labels, index)
        expected = np.isin(labels, index[share >= 0.2])
        kept, dropped = keep_components_in_liver(tumor.astype(np.uint8), liver, min_fraction_inside=0.2)
        assert np.array_equal(kept.astype(bool), expected) and dropped == n - np.count_nonzero(share >= 0.2)


def test_the_in_plane_opening_and_hole_filling_are_scipys():
    rng = np.random.default_rng(11)
    for _ in range(40):
        mask = rng.random((3, int(rng.integers(8, 40)), int(rng.integers(8, 40)))) > rng.uniform(0.1, 0.7)
        radius_yx = [int(r) for r in rng.integers(1, 5, 2)]
        cross = np.zeros((1, 2 * radius_yx[0] + 1, 2 * radius_yx[1] + 1), dtype=bool)
        cross[0, radius_yx[0], :] = True
        cross[0, :, radius_yx[1]] = True
        assert np.array_equal(open_with_cross(mask, radius_yx), ndimage.binary_opening(mask, structure=cross))
        in_plane = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool)
        assert np.array_equal(fill_holes_in_plane(mask), ndimage.binary_fill_holes(mask, structure=in_plane))
