"""The full-variety phantom (``generate_case(..., variety="full")``): hard negatives where they belong, contrast
phases, adult bodies, acquisition variety, annotators still in the paper's range; the demo phantom unchanged.

Cases of series 3 (small grid), chosen for what they draw: CT 0 adult, delayed phase, pelvis, reconstruction circle
at -3024; CT 4 a 2-year-old, arterial phase, pelvis; CT 5 adult, non-contrast, no pelvis; CT 7 an infant,
portal venous, pelvis, arms down. MRI 0: T2 without fat suppression, motion ghosts; MRI 2: T2 with fat suppression.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from HepatoblastomaSegLib.errors import ConfigError
from HepatoblastomaSegLib.phantom import generate_case
from HepatoblastomaSegLib.phantom import case as case_module
from HepatoblastomaSegLib.phantom import ct as ct_module
from HepatoblastomaSegLib.phantom import hilum as hilum_module
from HepatoblastomaSegLib.phantom import tumour as tumour_module
from HepatoblastomaSegLib.phantom.tissues import Tissue

CT_INDICES = (0, 4, 5, 7)


@pytest.fixture(scope="module")
def ct_full():
    return {i: generate_case("ct", 3, i, "small", variety="full") for i in CT_INDICES}


@pytest.fixture(scope="module")
def mri_full():
    return {i: generate_case("mri", 3, i, "small", variety="full") for i in (0, 2)}


def _eroded(mask, n=1):
    return ndimage.binary_erosion(mask, iterations=n) if n else mask


def _mean_hu(case, tissue, erode=1):
    region = _eroded(case.tissues.array == tissue, erode)
    assert region.sum() > 3, f"{Tissue(tissue).name} missing in {case.case_id}"
    return float(case.image.array[region].mean())


def test_draws_are_what_the_module_docstring_says(ct_full):
    v = {i: c.info["variety"] for i, c in ct_full.items()}
    assert [v[i]["phase"] for i in CT_INDICES] == ["delayed", "arterial", "non_contrast", "portal_venous"]
    assert [v[i]["pelvis"] for i in CT_INDICES] == [True, True, False, True]
    assert ct_full[0].age_months >= 216 and ct_full[5].age_months >= 216 and ct_full[7].age_months < 12
    assert v[7]["arms_down"]


def test_hard_negatives_exist_where_they_should(ct_full):
    seen = set()
    for case in ct_full.values():
        labels = set(np.unique(case.tissues.array).tolist())
        seen |= labels
        assert {Tissue.SPINAL_CORD, Tissue.MUSCLE, Tissue.KIDNEY_CORTEX, Tissue.BOWEL_WALL} <= labels, case.case_id
    # A large tumour in a small child can cover the pancreas and the adrenals; some case shows each.
    assert {Tissue.ADRENAL, Tissue.PANCREAS, Tissue.SPLEEN, Tissue.STOMACH_WALL, Tissue.GAS} <= seen
    for case in ct_full.values():
        z_mm = case.image.geometry.origin_mm[2] + case.image.spacing_mm[2] * np.arange(case.image.array.shape[0])
        if not case.info["variety"]["pelvis"]:
            continue
        # The pelvis lies below the liver: bone, muscle and the bladder on the lowest slices, no liver there.
        liver_z = z_mm[case.liver.array.any(axis=(1, 2))]
        low = z_mm < liver_z.min() - 20.0
        assert low.sum() >= 3
        pelvis = case.tissues.array[low]
        muscle_share = (pelvis == Tissue.MUSCLE).sum() / max((pelvis != Tissue.AIR).sum(), 1)
        assert muscle_share > 0.15, f"{case.case_id}: only {muscle_share:.0%} muscle in the pelvis"
        assert (pelvis == Tissue.BONE_CORTICAL).sum() > 50 and (pelvis == Tissue.URINE).sum() > 20
        # Bone on both sides of the midline (the iliac wings / femoral heads), not only the spine.
        cols = np.nonzero((pelvis == Tissue.BONE_CORTICAL).any(axis=(0, 1)))[0]
        centre = case.image.array.shape[2] / 2
        assert cols.min() < centre - 10 and cols.max() > centre + 10


def test_muscle_bone_and_bowel_never_inside_the_liver(ct_full):
    hard = [Tissue.MUSCLE, Tissue.BONE_CORTICAL, Tissue.BONE_MARROW, Tissue.BOWEL_WALL, Tissue.BOWEL_FLUID,
            Tissue.STOOL, Tissue.PANCREAS, Tissue.SPINAL_CORD, Tissue.URINE]
    for case in ct_full.values():
        liver = case.liver.array.astype(bool)
        inside = np.isin(case.tissues.array[liver], hard).sum()
        # The liver mask and the labels are thresholds of different fields: a rim voxel may disagree.
        assert inside <= 0.002 * liver.sum(), f"{case.case_id}: {inside} hard-negative voxels in the liver"


def test_contrast_phases_move_vessels_kidneys_and_urine(ct_full):
    aorta = {i: _mean_hu(c, Tissue.AORTA) for i, c in ct_full.items()}
    assert aorta[4] > 230                       # arterial
    assert aorta[5] < 75                        # non-contrast: blood 35-50 HU plus noise
    assert 100 < aorta[0] < 190                 # delayed
    assert 130 < aorta[7] < 230                 # portal venous (the demo's range)
    liver = {i: _mean_hu(c, Tissue.LIVER, 2) for i, c in ct_full.items()}
    assert liver[5] < 75 < liver[7]
    assert _mean_hu(ct_full[0], Tissue.URINE) > 250   # excreted contrast in the bladder
    kidney = ct_full[4]                         # corticomedullary: cortex far brighter than medulla
    assert _mean_hu(kidney, Tissue.KIDNEY_CORTEX, 0) - _mean_hu(kidney, Tissue.KIDNEY_MEDULLA, 0) > 40


def test_apply_phase_levels_follow_the_table():
    levels = {}
    for phase in ("non_contrast", "arterial", "portal_venous", "delayed"):
        rng = np.random.default_rng(0)
        look = ct_module.appearance(rng, (-50, -50, -50), (50, 50, 50))
        ct_module.apply_phase(look, phase, np.random.default_rng(1), adult=False)
        levels[phase] = look.means
    assert levels["arterial"][Tissue.AORTA] > levels["portal_venous"][Tissue.AORTA] > \
        levels["non_contrast"][Tissue.AORTA]
    assert levels["delayed"][Tissue.URINE] > 250 > levels["portal_venous"][Tissue.URINE]
    assert levels["non_contrast"][Tissue.LIVER] < levels["arterial"][Tissue.LIVER] < \
        levels["portal_venous"][Tissue.LIVER]
    with pytest.raises(ValueError, match="phase"):
        ct_module.apply_phase(look, "venous-ish", np.random.default_rng(1), adult=False)


def test_liver_has_a_smooth_regional_enhancement_of_the_drawn_size(ct_full, monkeypatch):
    """The field changes the liver's attenuation and nothing else: the same case rendered without it differs only
    in and at the rim of the liver, by a smooth field whose SD is the one recorded (drawn for the phase)."""
    case = ct_full[7]
    sd = case.info["variety"]["liver_regional_sd_hu"]
    lo, hi = ct_module.REGIONAL_SD_HU[case.info["variety"]["phase"]]
    assert lo <= sd <= hi
    monkeypatch.setattr(ct_module, "add_regional_enhancement", lambda *args, **kwargs: 0.0)
    even = generate_case("ct", 3, 7, "small", variety="full")
    for name in ("tissues", "liver", "tumor"):
        assert np.array_equal(getattr(even, name).array, getattr(case, name).array), name
    diff = case.image.array.astype(np.float64) - even.image.array
    liver_tissue = case.tissues.array == Tissue.LIVER
    # Other tissues, noise included, as before, but for partial volume with the liver: the image is painted on a
    # coarser model grid and interpolated, and liver covered by a later structure still shares its edge voxels.
    away = ndimage.distance_transform_edt(~liver_tissue, sampling=case.spacing_mm[::-1]) > 12.0
    assert np.abs(diff[away]).max() <= 3 and (diff[away] != 0).mean() < 1e-3
    assert (diff[liver_tissue] != 0).mean() > 0.5
    inner = ndimage.binary_erosion(liver_tissue, iterations=2)
    # The field's SD over one small liver is a sample of a smooth field (a few correlation lengths): near sd.
    assert 0.3 * sd < diff[inner].std() < 1.5 * sd
    # Smooth: neighbouring voxels share it (rounding to whole HU adds +-1 HU of independent error).
    pairs = inner[:, :, 1:] & inner[:, :, :-1]
    assert np.corrcoef(diff[:, :, 1:][pairs], diff[:, :, :-1][pairs])[0, 1] > 0.8


def test_liver_has_fissures_periportal_sheaths_and_bile_ducts(ct_full, monkeypatch):
    """The full variety's liver landmarks: sheaths and ducts inside the liver mask, the sheath darker than the
    liver and the ducts near water; the fissures cut from the liver mask and filled with the abdominal fat."""
    case = ct_full[7]
    labels, image, liver = case.tissues.array, case.image.array, case.liver.array.astype(bool)
    sheath, ducts = labels == Tissue.PERIPORTAL, labels == Tissue.BILE_DUCT
    assert sheath.sum() > 50 and ducts.sum() > 5
    assert liver[sheath].mean() > 0.95 and liver[ducts].mean() > 0.95
    liver_hu = _mean_hu(case, Tissue.LIVER, 2)
    # Thin structures: every voxel shares partial volume with the liver or the vessel beside it.
    assert image[sheath].mean() < liver_hu - 20
    assert image[ducts].mean() < liver_hu - 30

    def without_fissures(rng, an):
        found = hilum_module.sample_hilum(rng, an)
        found.fissures = []
        return found

    monkeypatch.setattr(case_module, "sample_hilum", without_fissures)
    uncut = generate_case("ct", 3, 7, "small", variety="full")
    cut = uncut.liver.array.astype(bool) & ~liver
    assert cut.sum() > 20 and not (liver & ~uncut.liver.array.astype(bool)).any()
    assert (labels[cut] == Tissue.VISCERAL_FAT).mean() > 0.5


def test_portal_venous_tumours_come_closer_to_the_liver():
    """Full variety: the portal-venous tumour is drawn 12-55 HU below the liver (the demo: 25-55); other phases
    keep their own drop; the septa keep their offset from the tumour."""
    drops = []
    for seed in range(200):
        look = ct_module.appearance(np.random.default_rng(seed), (-50, -50, -50), (50, 50, 50))
        septum_above = look.means[Tissue.SEPTUM] - look.means[Tissue.TUMOUR]
        ct_module.add_hilum_tissues(look, "portal_venous", np.random.default_rng(seed + 1000))
        drops.append(look.means[Tissue.LIVER] - look.means[Tissue.TUMOUR])
        assert look.means[Tissue.SEPTUM] - look.means[Tissue.TUMOUR] == pytest.approx(septum_above)
        assert -68.0 <= look.means[Tissue.PERIPORTAL] <= 80.0   # 80 % fat at most
    assert 12.0 <= min(drops) < 18.0 and 50.0 < max(drops) <= 55.0
    look = ct_module.appearance(np.random.default_rng(0), (-50, -50, -50), (50, 50, 50))
    ct_module.apply_phase(look, "delayed", np.random.default_rng(1), adult=False)
    before = look.means[Tissue.TUMOUR]
    ct_module.add_hilum_tissues(look, "delayed", np.random.default_rng(2))
    assert look.means[Tissue.TUMOUR] == before


def _case_with_shell(monkeypatch, probability: float):
    """CT case 7 of series 3 with the calcified shell drawn with ``probability``, and the shell drawn."""
    monkeypatch.setattr(tumour_module, "SHELL_PROBABILITY", probability)
    drawn = []

    def recording(rng, lesion):
        tumour_module.add_calcified_shell(rng, lesion)
        drawn.append(lesion.shell)

    monkeypatch.setattr(case_module, "add_calcified_shell", recording)
    return generate_case("ct", 3, 7, "small", variety="full"), drawn[0]


def test_calcified_shell_lies_under_the_tumour_surface_around_the_necrosis(monkeypatch):
    """Full variety: the shell's calcification sits at its drawn depth under the tumour's surface (measured with
    scipy's distance transform on the tumour mask), is bright, and the necrosis stays inside it; the tumour mask
    and the annotators do not change."""
    with_shell, shell = _case_with_shell(monkeypatch, 1.0)
    without, none = _case_with_shell(monkeypatch, 0.0)
    assert shell is not None and none is None
    assert 3.0 <= shell.depth_mm <= 15.0 and 0.5 <= shell.half_mm <= 1.5
    for name in ("tumor", "liver", "R1", "R2", "R3"):
        a = getattr(with_shell, name) if name in ("tumor", "liver") else with_shell.raters[name]
        b = getattr(without, name) if name in ("tumor", "liver") else without.raters[name]
        assert np.array_equal(a.array, b.array), name
    labels, image = with_shell.tissues.array, with_shell.image.array.astype(float)
    tumour = with_shell.tumor.array.astype(bool)
    depth_mm = ndimage.distance_transform_edt(tumour, sampling=with_shell.spacing_mm[::-1])
    ring = (labels == Tissue.CALCIFICATION) & (without.tissues.array != Tissue.CALCIFICATION)
    assert ring.sum() > 30
    voxel_mm = max(with_shell.spacing_mm)
    near = np.abs(depth_mm[ring] - shell.depth_mm) <= shell.half_mm + voxel_mm
    assert near.mean() > 0.9
    assert image[ring].mean() > image[labels == Tissue.TUMOUR].mean() + 100
    necrosis = labels == Tissue.NECROSIS
    assert necrosis.sum() > 30
    # The mask's distance transform is coarse on 4.5 mm slices: most, not all, of the necrosis measures deep enough.
    assert (depth_mm[necrosis] >= shell.depth_mm - 2.0).mean() > 0.85
    assert (depth_mm[without.tissues.array == Tissue.NECROSIS] >= shell.depth_mm - 2.0).mean() < 0.75


def test_a_weakly_enhanced_scan_moves_only_the_enhancing_tissues_towards_their_unenhanced_levels(monkeypatch):
    """Full variety, CT 4 (arterial phase): forced weak, every enhancing tissue lies between its unenhanced range and
    its level in the same case as drawn, in proportion to the recorded strength; fat and bone keep theirs, and the
    masks and tissue map do not change."""
    def case(share):
        monkeypatch.setattr(ct_module, "WEAK_CONTRAST_SHARE", share)
        return generate_case("ct", 3, 4, "small", variety="full")

    weak, full = case(1.0), case(0.0)
    strength = weak.info["variety"]["contrast_strength"]
    assert full.info["variety"]["contrast_strength"] == 1.0 and full.info["variety"]["phase"] == "arterial"
    assert ct_module.WEAK_CONTRAST_STRENGTH[0] <= strength <= ct_module.WEAK_CONTRAST_STRENGTH[1]
    assert np.array_equal(weak.tissues.array, full.tissues.array)
    for name in ("tumor", "liver"):
        assert np.array_equal(getattr(weak, name).array, getattr(full, name).array), name

    def median_hu(c, tissue):
        return float(np.median(c.image.array[c.tissues.array == tissue]))

    # Unenhanced ranges (HU) as the non-contrast phase draws them; 3 HU for noise and partial volume.
    for tissue, (lo, hi) in ((Tissue.LIVER, (50, 65)), (Tissue.HEART, (35, 55)), (Tissue.AORTA, (35, 55))):
        drawn, weakened = median_hu(full, tissue), median_hu(weak, tissue)
        assert lo + strength * (drawn - lo) - 3 <= weakened <= hi + strength * (drawn - hi) + 3, tissue.name
    assert median_hu(full, Tissue.HEART) - median_hu(weak, Tissue.HEART) > 50  # arterial blood is far above 50 HU
    for tissue in (Tissue.FAT, Tissue.BONE_CORTICAL):
        assert abs(median_hu(weak, tissue) - median_hu(full, tissue)) <= 1.0, tissue.name


def test_adult_bodies_are_bigger(ct_full):
    demo = generate_case("ct", 3, 0, "small")
    def body_area_cm2(case):
        body = (case.tissues.array != Tissue.AIR) & (case.tissues.array != Tissue.TABLE)
        return body.sum(axis=(1, 2)).max() * case.spacing_mm[0] * case.spacing_mm[1] / 100.0
    adults = [body_area_cm2(ct_full[i]) for i in (0, 5)]
    assert min(adults) > 1.8 * body_area_cm2(demo)
    assert min(adults) > 2.5 * body_area_cm2(ct_full[7])       # an infant, arms down beside the trunk
    assert ct_full[0].liver_ml > 2 * demo.liver_ml - demo.tumor_ml


def test_reconstruction_circle_and_no_new_tissue_in_the_demo(ct_full):
    case = ct_full[0]
    image = case.image.array
    assert image[:, 0, 0].tolist() == [-3024] * image.shape[0]    # corner: outside the circle
    assert image.min() == -3024
    demo = generate_case("ct", 3, 0, "small")
    assert demo.info["variety"]["name"] == "demo"
    assert not np.isin(demo.tissues.array, [Tissue.SPINAL_CORD, Tissue.ADRENAL, Tissue.ORAL_CONTRAST,
                                            Tissue.PERIPORTAL, Tissue.BILE_DUCT]).any()
    assert demo.image.array.min() >= -1024


def test_annotators_stay_in_the_papers_range(ct_full):
    def dice(a, b):
        return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    pairs = [dice(c.raters["R1"].array, c.raters["R2"].array) for c in ct_full.values()]
    # Table 2 of the paper: annotator pairs 0.88-0.89 on average.
    assert 0.82 <= float(np.mean(pairs)) <= 0.95, pairs


def test_mri_without_fat_suppression_has_bright_fat(mri_full):
    def ratio(case):
        fat = case.image.array[_eroded(case.tissues.array == Tissue.FAT, 1)].mean()
        return fat / case.image.array[_eroded(case.tissues.array == Tissue.LIVER, 2)].mean()
    assert mri_full[0].info["variety"]["phase"] == "t2" and mri_full[2].info["variety"]["phase"] == "t2_fs"
    assert ratio(mri_full[0]) > 1.5 > 0.8 > ratio(mri_full[2])


def test_unknown_variety_is_refused():
    with pytest.raises(ConfigError, match="variety"):
        generate_case("ct", 3, 0, "small", variety="extreme")
