"""The phantom generator in memory: grids, masks, realism of intensities and anatomy, annotators, reproducibility.

Dice is computed by medpy (``medpy.metric.binary.dc``), morphology by scipy; the majority vote is ``sum >= 2``.
Small cases (at most 128x128x48) keep the module to a few seconds per case.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from medpy.metric.binary import dc

from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.phantom import RATERS, Tissue, generate_case
from HepatoblastomaSegLib.phantom.anatomy import MAX_AGE_MONTHS, sample_age_months
from HepatoblastomaSegLib.phantom.annotators import Annotators
from HepatoblastomaSegLib.phantom.tumour import pretext_group

N_CT, N_MRI = 6, 4


@pytest.fixture(scope="module")
def ct_cases():
    return [generate_case("ct", 5, i, "small") for i in range(N_CT)]


@pytest.fixture(scope="module")
def mri_cases():
    return [generate_case("mri", 5, i, "small") for i in range(N_MRI)]


def _eroded(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """In-plane erosion (slices are thick): voxels whose neighbours share the label, away from partial volume."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndi.generate_binary_structure(2, 1)
    return ndi.binary_erosion(mask, structure, iterations=iterations)


# ------------------------------------------------------------------------------------------------ grids and masks

def test_small_cases_share_one_axis_aligned_grid(ct_cases, mri_cases):
    for case in ct_cases + mri_cases:
        geometry = case.image.geometry
        assert all(n <= m for n, m in zip(geometry.size, (128, 128, 48), strict=True)), geometry.size
        assert geometry.size[2] >= 20
        assert geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert geometry.spacing_mm[0] == geometry.spacing_mm[1]
        # The whole abdomen fits: a coarse grid, at least as coarse as the full-size ranges.
        assert 0.7 <= geometry.spacing_mm[0] <= 3.0 and 2.5 <= geometry.spacing_mm[2] <= 8.0
        for volume in (case.tumor, case.liver, case.tissues, *case.raters.values()):
            assert volume.geometry == geometry
        assert set(case.raters) == set(RATERS)


def test_image_types(ct_cases, mri_cases):
    for case in ct_cases:
        assert case.image.array.dtype == np.int16
        assert case.image.array.min() >= -1024 and case.image.array.max() <= 3071
    for case in mri_cases:
        assert case.image.array.dtype == np.uint16


def test_masks_are_binary_uint8_and_tumour_inside_liver(ct_cases, mri_cases):
    for case in ct_cases + mri_cases:
        for volume in (case.tumor, case.liver, *case.raters.values()):
            assert volume.array.dtype == np.uint8
            assert set(np.unique(volume.array).tolist()) <= {0, 1}
        tumour, liver = case.tumor.array.astype(bool), case.liver.array.astype(bool)
        assert tumour.sum() > 0
        # The liver mask includes the tumour (MRI standardisation needs liver + tumour).
        assert (tumour & liver).sum() == tumour.sum()
        assert liver.sum() > 1.3 * tumour.sum() or case.tumor_ml > 150


def test_tumour_sits_in_liver_tissue(ct_cases):
    """Most of the tumour's outer shell is liver (parenchyma or its vessels): it grew in the liver."""
    fractions = []
    for case in ct_cases:
        tumour = case.tumor.array.astype(bool)
        shell = ndi.binary_dilation(tumour) & ~tumour
        liverish = np.isin(case.tissues.array, [Tissue.LIVER, Tissue.PORTAL_VEIN, Tissue.HEPATIC_VEIN, Tissue.IVC])
        fractions.append(liverish[shell].mean())
    assert min(fractions) > 0.6 and np.mean(fractions) > 0.8, fractions


def test_tumour_size_and_volume_bookkeeping(ct_cases):
    for case in ct_cases:
        voxels = int(case.tumor.array.sum())
        assert case.tumor_ml == pytest.approx(voxels * np.prod(case.spacing_mm) / 1000.0)
        diameter_cm = np.cbrt(6.0 * case.tumor_ml / np.pi)
        assert 2.8 <= diameter_cm <= 12.5, diameter_cm
        # The normal liver has the child's expected volume (Urata), and the liver mask holds it and the tumour.
        assert case.info["normal_liver_ml"] == pytest.approx(case.info["expected_liver_ml"], rel=0.1)
        assert case.liver_ml > 0.8 * case.info["normal_liver_ml"]
        assert 1 <= case.info["pretext"] <= 4 and 1 <= case.info["sections_involved"] <= 4


def test_age_distribution():
    rng = np.random.default_rng(0)
    ages = np.array([sample_age_months(rng) for _ in range(4000)])
    assert ages.min() >= 0 and ages.max() <= MAX_AGE_MONTHS
    assert 0.60 <= np.mean((ages >= 12) & (ages <= 48)) <= 0.80   # most are 1-4 years old
    assert 24 <= ages.mean() <= 42                                   # the paper's cohort: mean about 2.5 years
    assert np.mean(ages > 120) > 0.005                               # but up to 14 years


def test_pretext_group_from_sections():
    assert pretext_group([True, False, False, False]) == 1
    assert pretext_group([False, False, False, True]) == 1
    assert pretext_group([False, True, False, False]) == 2   # a middle section leaves only 2 adjacent free
    assert pretext_group([True, True, False, False]) == 2
    assert pretext_group([True, False, False, True]) == 2    # multifocal at both ends
    assert pretext_group([True, True, True, False]) == 3
    assert pretext_group([False, True, True, False]) == 3
    assert pretext_group([True, True, True, True]) == 4


# ------------------------------------------------------------------------------------------------ intensities

def _median(case, tissue, erode=1):
    mask = case.tissues.array == tissue
    if erode:
        mask = _eroded(mask, erode)
    values = case.image.array[mask]
    assert values.size > 20, f"{case.case_id}: too few voxels of {Tissue(tissue).name}"
    return float(np.median(values))


def test_ct_attenuation_per_tissue(ct_cases):
    for case in ct_cases:
        assert _median(case, Tissue.AIR) == pytest.approx(-1000, abs=15)
        assert -125 <= _median(case, Tissue.FAT) <= -75
        assert 35 <= _median(case, Tissue.MUSCLE) <= 75
        assert 95 <= _median(case, Tissue.LIVER) <= 135
        assert 120 <= _median(case, Tissue.AORTA, erode=0) <= 215
        assert 250 <= _median(case, Tissue.BONE_MARROW, erode=0) <= 1000
        assert 500 <= _median(case, Tissue.BONE_CORTICAL, erode=0) <= 1000
        assert _median(case, Tissue.LUNG) < -700
        gas = case.image.array[case.tissues.array == Tissue.GAS]
        assert gas.size and np.median(gas) < -700


def test_ct_tumour_is_hypoattenuating_and_heterogeneous(ct_cases):
    for case in ct_cases:
        image = case.image.array.astype(float)
        tumour = case.tumor.array.astype(bool)
        liver_tissue = case.tissues.array == Tissue.LIVER
        assert image[tumour].mean() < image[liver_tissue].mean() - 15
        # Heterogeneous: necrosis/cysts well below the viable tumour, more spread than the liver.
        assert np.percentile(image[_eroded(tumour)], 90) - np.percentile(image[_eroded(tumour)], 10) > \
            np.percentile(image[_eroded(liver_tissue)], 90) - np.percentile(image[_eroded(liver_tissue)], 10)
    assert any((c.tissues.array == Tissue.NECROSIS).any() for c in ct_cases)


def test_ct_noise_is_spatially_correlated(ct_cases):
    """Correlated noise: neighbouring voxels in a uniform region correlate (a white noise would not)."""
    case = ct_cases[0]
    image = case.image.array.astype(float)
    air = _eroded(case.tissues.array == Tissue.AIR, 3)
    a, b = image[:, :, :-1][air[:, :, :-1] & air[:, :, 1:]], image[:, :, 1:][air[:, :, :-1] & air[:, :, 1:]]
    inside = (a > -1020) & (b > -1020)   # away from the -1024 clip
    assert np.corrcoef(a[inside], b[inside])[0, 1] > 0.3


def test_mri_contrast(mri_cases):
    for case in mri_cases:
        image = case.image.array.astype(float)
        liver = _median(case, Tissue.LIVER)
        assert image[case.tumor.array.astype(bool)].mean() > 1.3 * liver      # tumour hyperintense
        assert _median(case, Tissue.FAT) < liver                             # fat suppressed
        fluid = case.image.array[np.isin(case.tissues.array, [Tissue.CSF, Tissue.GALLBLADDER, Tissue.URINE,
                                                               Tissue.BOWEL_FLUID, Tissue.STOMACH_CONTENT])]
        assert np.median(fluid) > 2.0 * liver                                # fluid bright
        # Rician noise floor: outside the body the signal is small but positive.
        air = image[_eroded(case.tissues.array == Tissue.AIR, 3)]
        assert 0 < air.mean() < 0.2 * liver


def test_mri_bias_field_is_smooth_and_multiplicative(mri_cases):
    """The liver's local mean varies smoothly across the liver by more than noise would make it."""
    case = mri_cases[0]
    image = ndi.uniform_filter(case.image.array.astype(float), size=(1, 9, 9))
    liver = _eroded(case.tissues.array == Tissue.LIVER, 5)
    values = image[liver]
    assert values.std() / values.mean() > 0.02


# ------------------------------------------------------------------------------------------------ annotators

def test_annotator_agreement_is_near_the_paper(ct_cases):
    pairs, versus_majority, ratios = [], [], []
    for case in ct_cases:
        masks = [case.raters[r].array.astype(bool) for r in RATERS]
        majority = np.sum(masks, axis=0) >= 2
        pairs.append([dc(masks[i], masks[j]) for i, j in ((0, 1), (0, 2), (1, 2))])
        versus_majority.append([dc(m, majority) for m in masks])
        ratios.append([m.sum() / majority.sum() for m in masks])
        for m in masks:
            assert dc(m, case.tumor.array) > 0.82
    pairs, versus_majority = np.mean(pairs, axis=0), np.mean(versus_majority, axis=0)
    # Paper (CT): pairs 0.89, 0.88, 0.88; each vs the consensus 0.94, 0.95, 0.94.
    assert np.all((pairs > 0.84) & (pairs < 0.93)), pairs
    assert np.all((versus_majority > 0.92) & (versus_majority < 0.97)), versus_majority
    median_ratio = np.median(ratios, axis=0)
    assert median_ratio[0] < 1.0 < median_ratio[1]   # R1 under-segments, R2 over-segments


def test_annotators_draw_slice_by_slice(ct_cases):
    """Boundary disagreements change from slice to slice (the per-slice noise), not only smoothly in 3D."""
    case = ct_cases[1]
    r1 = case.raters["R1"].array.astype(float)
    areas = r1.sum(axis=(1, 2))
    gt = case.tumor.array.sum(axis=(1, 2)).astype(float)
    rows = gt > 50
    relative = areas[rows] / gt[rows]
    assert np.std(np.diff(relative)) > 0.005


def test_novice_misses_small_satellite_and_includes_vessel():
    shape = (12, 40, 60)
    z, y, x = np.indices(shape).astype(np.float32)
    primary = np.sqrt((x - 15) ** 2 + (y - 20) ** 2 + (z - 6) ** 2) - 8
    satellite = np.sqrt((x - 45) ** 2 + (y - 20) ** 2 + (z - 6) ** 2) - 3
    labels = np.zeros(shape, np.uint8)
    labels[:, 18:22, 23:30] = Tissue.PORTAL_VEIN   # a vessel touching the primary
    axes = (np.arange(60.0), np.arange(40.0), np.arange(12.0) * 2.5)
    raters = Annotators.sample(np.random.default_rng(0), 3 / 8, (-5, -5, -5), (65, 45, 35), axes[2], [16.0, 6.0],
                               (0, 12))
    raters.sigma_mm = 0.5
    raters.r3_skips = (1,)
    raters.include_vessel_slices = (4, 7)
    masks = {r: raters.draw(r, [primary, satellite], axes, labels, np.arange(12)) for r in RATERS}
    near_satellite = satellite < 2
    assert masks["R1"][near_satellite].any() and masks["R2"][near_satellite].any()
    assert not masks["R3"][near_satellite].any()
    vessel = labels == Tissue.PORTAL_VEIN
    touching = vessel & (primary < 5)   # the vessel where it runs within 5 mm of the tumour
    assert masks["R3"][4:7][touching[4:7]].all()
    assert not masks["R3"][:4][vessel[:4] & (primary[:4] > 2)].any()
    assert not masks["R1"][vessel & (primary > 2)].any()


# ------------------------------------------------------------------------------------------------ reproducibility

def test_same_seed_same_case_different_seed_different(ct_cases):
    again = generate_case("ct", 5, 1, "small", workers=1)
    reference = ct_cases[1]
    for name in ("image", "tumor", "liver", "tissues"):
        assert np.array_equal(getattr(again, name).array, getattr(reference, name).array), name
    for rater in RATERS:
        assert np.array_equal(again.raters[rater].array, reference.raters[rater].array)
    other = generate_case("ct", 6, 1, "small")
    assert other.image.array.shape != reference.image.array.shape or \
        not np.array_equal(other.image.array, reference.image.array)


def test_same_child_in_ct_and_mri(ct_cases, mri_cases):
    for ct_case, mri_case in zip(ct_cases, mri_cases, strict=False):
        assert ct_case.age_months == mri_case.age_months
        assert ct_case.info["lesion_diameters_mm"] == mri_case.info["lesion_diameters_mm"]
        assert ct_case.tumor_ml == pytest.approx(mri_case.tumor_ml, rel=0.15)


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="modality"):
        generate_case("pet", 0)
    with pytest.raises(ConfigError, match="size"):
        generate_case("ct", 0, size="huge")
    with pytest.raises(ConfigError, match="non-negative"):
        generate_case("ct", -1)


def test_structure_boxes_never_truncate_displaced_tissue(monkeypatch):
    """Structures are evaluated only in boxes grown by a bound on the tumour's displacement; with unbounded boxes
    the result is bit-identical, so the bound never cuts tissue off."""
    from HepatoblastomaSegLib.phantom import render

    tight = generate_case("ct", 9, 0, "small")
    monkeypatch.setattr(render.Displacement, "margins_mm", lambda self, lo, hi: (np.full(3, 300.0), np.full(3, 300.0)))
    loose = generate_case("ct", 9, 0, "small")
    for name in ("image", "tissues", "tumor", "liver"):
        assert np.array_equal(getattr(tight, name).array, getattr(loose, name).array), name


def test_lesion_field_past_a_slabs_last_slice_is_skipped_not_drawn_empty():
    """Full-size CT seed 49: a lesion's recorded field reaches rows beyond one slab's last image slice, which once gave
    an empty box and crashed the annotators' drawing ("zero-size array"). The case now renders, and every
    annotator's mask overlaps the truth as closely as annotators do."""
    case = generate_case("ct", 49, 0, "full")
    truth = case.tumor.array.astype(bool)
    assert truth.any()
    for rater, mask in case.raters.items():
        drawn = mask.array.astype(bool)
        assert 2 * (drawn & truth).sum() / (drawn.sum() + truth.sum()) > 0.8, rater
