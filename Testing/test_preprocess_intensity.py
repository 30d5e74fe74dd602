"""Intensity: CT window + foreground z-score, Nyul against torchio, N4 on a known bias field, bad-input checks,
padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from HepatoblastomaSegLib.errors import InputError
from HepatoblastomaSegLib.io import Geometry, Volume, write_volume
from HepatoblastomaSegLib.preprocess import check_modality, check_spacing, crop_padding, pad_to_size
from HepatoblastomaSegLib.preprocess.intensity import (
    ct_foreground_statistics,
    foreground_sample,
    normalize_ct,
    zscore_per_image,
)
from HepatoblastomaSegLib.preprocess.n4 import n4_correct, shrink_factors
from HepatoblastomaSegLib.preprocess.nyul import apply_landmarks, fit_landmarks, image_landmarks
from HepatoblastomaSegLib.preprocess.plans import N4Settings

from helpers_synthetic import synthetic_case


# ----------------------------------------------------------------------------------------------------- CT
def test_ct_statistics_are_nnunet_on_the_windowed_foreground():
    cases = [synthetic_case("ct", seed=s) for s in range(3)]
    # Put some tumour voxels outside the window so the window visibly matters.
    image0 = cases[0][0].array.reshape(-1)
    image0[np.flatnonzero(cases[0][1].array)[:5]] = 900
    samples = [foreground_sample(img.array, tum.array) for img, tum, _ in cases]
    stats = ct_foreground_statistics(samples)
    pooled = np.concatenate([np.clip(img.array[tum.array > 0].astype(float), 0, 350) for img, tum, _ in cases])
    assert stats.foreground_voxels == pooled.size
    np.testing.assert_allclose([stats.mean_hu, stats.std_hu], [pooled.mean(), pooled.std()], rtol=1e-6)
    np.testing.assert_allclose(stats.clip_hu, np.percentile(pooled, [0.5, 99.5]), rtol=1e-6)
    assert 0 <= stats.clip_hu[0] < stats.clip_hu[1] <= 350


def test_ct_normalisation_zscores_the_foreground_and_clips():
    image, tumor, _ = synthetic_case("ct", seed=4)
    stats = ct_foreground_statistics([foreground_sample(image.array, tumor.array)])
    out = normalize_ct(image.array, stats)
    assert out.dtype == np.float32
    assert abs(float(out[tumor.array > 0].mean())) < 0.05 and abs(float(out[tumor.array > 0].std()) - 1) < 0.1
    # Air (-1000 HU) and bone-like values end up at the ends of the clipped range, never beyond.
    lo = (stats.clip_hu[0] - stats.mean_hu) / stats.std_hu
    hi = (stats.clip_hu[1] - stats.mean_hu) / stats.std_hu
    np.testing.assert_allclose([out.min(), out.max()], [lo, hi], rtol=1e-5)
    torch.testing.assert_close(normalize_ct(torch.from_numpy(image.array), stats), torch.from_numpy(out))


def test_zscore_per_image():
    x = np.random.default_rng(1).gamma(2, 30, size=(5, 6, 7)).astype(np.float32)
    out = zscore_per_image(x)
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5
    torch.testing.assert_close(zscore_per_image(torch.from_numpy(x)), torch.from_numpy(out), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------- Nyul
def _mri_cases(n=3):
    return [synthetic_case("mri", seed=10 + s, bias=False) for s in range(n)]


def test_nyul_fit_and_apply_match_torchio(tmp_path):
    cases = _mri_cases()
    paths, masks = [], []
    for i, (img, _, liver) in enumerate(cases):
        paths.append(write_volume(img, tmp_path / f"img{i}.nii.gz"))
        masks.append(write_volume(liver, tmp_path / f"liver{i}.nii.gz"))
    ours = fit_landmarks([image_landmarks(img.array, liver.array) for img, _, liver in cases])
    theirs = tio.HistogramStandardization.train(paths, mask_path=masks, progress=False)
    # torchio keeps 13 landmarks (adds p25/p75, unused when applying); ours are the other 11.
    used = [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12]
    np.testing.assert_allclose(ours.standard_landmarks, theirs[used], rtol=1e-4, atol=1e-3)

    img, _, liver = synthetic_case("mri", seed=99, bias=False)
    mine = apply_landmarks(img.array, liver.array, ours)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(img.array[None])),
                          liver=tio.LabelMap(tensor=torch.from_numpy(liver.array[None])))
    transform = tio.HistogramStandardization({"image": np.asarray(theirs)}, masking_method="liver")
    expected = transform(subject)["image"].data[0].numpy()
    np.testing.assert_allclose(mine, expected, rtol=1e-4, atol=1e-2)


def test_nyul_maps_landmarks_onto_the_standard_scale_and_extrapolates_linearly():
    cases = _mri_cases()
    nyul = fit_landmarks([image_landmarks(img.array, liver.array) for img, _, liver in cases])
    assert nyul.standard_landmarks[0] == 0 and nyul.standard_landmarks[-1] == pytest.approx(100)
    img, _, liver = cases[0]
    scaled = img.with_array(img.array * 3.0 + 50)  # the same anatomy on another scanner scale
    a = apply_landmarks(img.array, liver.array, nyul)
    b = apply_landmarks(scaled.array, liver.array, nyul)
    np.testing.assert_allclose(a, b, atol=1e-2)  # Nyul removes affine intensity differences
    landmarks = image_landmarks(img.array, liver.array)
    # Below p1 and above p99 the end segments continue with their slopes.
    probe = np.array([landmarks[0] - 40, landmarks[0], landmarks[-1], landmarks[-1] + 40], dtype=np.float32)
    full = apply_landmarks(np.concatenate([img.array.ravel(), probe]), np.concatenate(
        [liver.array.ravel(), np.zeros(4, np.uint8)]), nyul)[-4:]
    s = np.asarray(nyul.standard_landmarks)
    slope_low = (s[1] - s[0]) / (landmarks[1] - landmarks[0])
    slope_high = (s[-1] - s[-2]) / (landmarks[-1] - landmarks[-2])
    assert np.all(np.diff(full) > 0)
    assert full[1] - full[0] == pytest.approx(40 * slope_low, rel=1e-3)
    assert full[3] - full[2] == pytest.approx(40 * slope_high, rel=1e-3)


# ----------------------------------------------------------------------------------------------------- N4
def test_n4_removes_most_of_a_known_bias_field():
    shape = (8, 48, 48)
    z, y, x = np.indices(shape, dtype=float)
    body = ((y - 24) / 21) ** 2 + ((x - 24) / 19) ** 2 < 1
    clean = np.where(body, 300.0, 4.0)
    clean[body & (((y - 22) ** 2 + (x - 27) ** 2) < 60)] = 190.0
    bias = np.exp(0.45 * (x - 24) / 24 + 0.25 * (y - 24) / 24)
    image = (clean * bias).astype(np.float32)
    volume = Volume(image, Geometry(shape[::-1], (1.5, 1.5, 5.0), (1, 2, 3)))
    result = n4_correct(volume, N4Settings(iterations=(20, 20, 20)))
    assert result.shrink_xyz == (4, 4, 1)  # 5 mm slices are not shrunk along z
    assert result.corrected.geometry == volume.geometry and result.corrected.array.dtype == np.float32

    def residual(a):  # SD of log(a / truth) in the body: 0 for a perfect correction up to a global scale
        return float(np.log(a[body] / clean[body]).std())

    assert residual(result.corrected.array) < residual(image) / 4
    np.testing.assert_allclose(result.corrected.array * result.bias_field, image, rtol=1e-4)


def test_n4_shrink_factor_rules():
    assert shrink_factors((0.7, 0.7, 5.0), N4Settings()) == (4, 4, 1)
    assert shrink_factors((1.0, 1.0, 1.0), N4Settings()) == (4, 4, 4)
    assert shrink_factors((0.8, 0.8, 1.6), N4Settings(shrink_inplane=2)) == (2, 2, 1)


# ----------------------------------------------------------------------------------------------------- checks
def test_mri_given_to_a_ct_model_is_refused_and_vice_versa(tmp_path):
    mri, _, _ = synthetic_case("mri")
    mri = mri.with_array(mri.array)
    mri.path = tmp_path / "t2.nii.gz"
    with pytest.raises(InputError, match="Is it an MRI given to a CT model") as info:
        check_modality(mri, "ct")
    assert "t2.nii.gz" in str(info.value) and "-1000 HU" in str(info.value)
    ct, _, _ = synthetic_case("ct")
    with pytest.raises(InputError, match="Is it a CT given to an MRI model"):
        check_modality(ct, "mri")
    check_modality(ct, "ct")
    check_modality(mri, "mri")


@pytest.mark.parametrize("spacing, ok", [((0.7, 0.7, 2.5), True), ((0.7, 0.7, 12.0), False),
                                         ((0.05, 0.7, 2.5), False), ((0.1, 0.1, 10.0), True)])
def test_implausible_spacing_is_refused(spacing, ok):
    volume = Volume(np.zeros((2, 3, 4), np.int16), Geometry((4, 3, 2), spacing, (0, 0, 0)))
    if ok:
        check_spacing(volume)
    else:
        with pytest.raises(InputError, match="implausible voxel spacing"):
            check_spacing(volume)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_padding_to_the_patch_and_back(as_tensor):
    data = np.arange(2 * 3 * 5 * 40, dtype=np.float32).reshape(2, 3, 5, 40)
    data = torch.from_numpy(data) if as_tensor else data
    padded, pad = pad_to_size(data, (8, 16, 32), value=-7)
    assert tuple(padded.shape) == (2, 8, 16, 40)  # x already large enough: untouched
    assert pad.before_zyx == (2, 5, 0) and pad.after_zyx == (3, 6, 0)
    assert float(padded[0, 0, 0, 0]) == -7
    back = crop_padding(padded, pad)
    assert tuple(back.shape) == tuple(data.shape)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(data))
