"""Per-pair metrics checked against SimpleITK, MONAI and medpy on random masks with several spacings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from HepatoblastomaSegLib.evaluate import metrics

SPACINGS_ZYX = [(1.0, 1.0, 1.0), (2.5, 0.7, 0.7), (0.5, 1.3, 3.0)]


def blob(rng: np.random.Generator, shape=(20, 40, 36), threshold=0.55, sigma=3.0) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return field > threshold


def pairs(seed: int = 0, n: int = 3):
    rng = np.random.default_rng(seed)
    for spacing in SPACINGS_ZYX:
        for _ in range(n):
            yield blob(rng), blob(rng), spacing


def sitk_image(mask: np.ndarray, spacing_zyx) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return image


def monai_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def test_dice_and_volume_match_simpleitk():
    for a, b, spacing in pairs():
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(sitk_image(a, spacing), sitk_image(b, spacing))
        value, both_empty = metrics.dice(a, b)
        assert not both_empty
        assert value == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.Execute(sitk_image(a, spacing))
        voxel_ml = float(np.prod(spacing)) / 1000.0
        assert metrics.volume_ml(a, voxel_ml) == pytest.approx(shape.GetPhysicalSize(1) / 1000.0, rel=1e-12)


def test_dice_uses_integer_counts_and_empty_handling():
    a = np.zeros((4, 5, 6), dtype=np.uint8)
    b = np.zeros((4, 5, 6), dtype=bool)
    value, both_empty = metrics.dice(a, b)
    assert math.isnan(value) and both_empty
    assert metrics.dice(a, b, empty_value=1.0) == (1.0, True)
    a[1, 1, 1:4] = 1   # 3 voxels
    assert metrics.dice(a, b) == (0.0, False)
    b[1, 1, 2:5] = True  # 3 voxels, 2 shared
    assert metrics.dice(a, b) == (2 * 2 / 6, False)


def test_volume_error_matches_medpy_ravd():
    for a, b, spacing in pairs(1):
        voxel_ml = float(np.prod(spacing)) / 1000.0
        pv, tv = metrics.volume_ml(a, voxel_ml), metrics.volume_ml(b, voxel_ml)
        assert metrics.volume_percentage_error(pv, tv) == pytest.approx(abs(medpy_binary.ravd(a, b)) * 100, rel=1e-9)
        assert metrics.volume_ratio(pv, tv) == pytest.approx(1 + medpy_binary.ravd(a, b), rel=1e-9)
    assert math.isnan(metrics.volume_percentage_error(3.0, 0.0))
    assert math.isnan(metrics.volume_ratio(3.0, 0.0))


def test_hd95_and_surface_dice_match_monai():
    for a, b, spacing in pairs(2):
        expected_hd = compute_hausdorff_distance(monai_tensor(a), monai_tensor(b), include_background=True,
                                                 percentile=95, spacing=list(spacing)).item()
        assert metrics.hausdorff_mm(a, b, spacing) == pytest.approx(expected_hd, rel=1e-5)
        for tolerance in (1.0, 2.5):
            expected = compute_surface_dice(monai_tensor(a), monai_tensor(b), [tolerance], include_background=True,
                                            spacing=list(spacing)).item()
            assert metrics.surface_dice(a, b, spacing, tolerance_mm=tolerance) == pytest.approx(expected, abs=1e-6)


def test_surface_distances_match_simpleitk_and_medpy():
    for a, b, spacing in pairs(3, n=2):
        d_ab, d_ba = metrics.surface_distances_mm(a, b, spacing)
        hausdorff = sitk.HausdorffDistanceImageFilter()
        hausdorff.Execute(sitk_image(a, spacing), sitk_image(b, spacing))
        assert metrics.hausdorff_mm(a, b, spacing, percentile=100) == pytest.approx(
            hausdorff.GetHausdorffDistance(), rel=1e-9)
        assert d_ab.mean() == pytest.approx(medpy_binary.asd(a, b, spacing), rel=1e-9)
        assert d_ba.mean() == pytest.approx(medpy_binary.asd(b, a, spacing), rel=1e-9)


def test_masks_touching_the_image_border_match_monai():
    a = np.zeros((10, 20, 20), dtype=bool)
    b = np.zeros_like(a)
    a[:, :12, :9] = True          # touches three faces of the image
    b[2:, 3:15, :11] = True
    spacing = (3.0, 0.8, 0.8)
    expected = compute_hausdorff_distance(monai_tensor(a), monai_tensor(b), include_background=True, percentile=95,
                                          spacing=list(spacing)).item()
    assert metrics.hausdorff_mm(a, b, spacing) == pytest.approx(expected, rel=1e-5)


def test_compare_to_reference_flags_and_surface_reuse():
    rng = np.random.default_rng(5)
    ref, mask = blob(rng), blob(rng)
    spacing = (2.0, 0.9, 0.9)
    direct = metrics.compare_to_reference(mask, ref, spacing, tolerance_mm=1.5)
    reused = metrics.compare_to_reference(mask, ref, spacing, tolerance_mm=1.5,
                                          reference_surface=metrics.Surface(ref, spacing))
    assert direct == reused
    assert direct.flags == ()
    assert direct.hd95_mm == pytest.approx(metrics.hausdorff_mm(mask, ref, spacing))

    empty = np.zeros_like(ref)
    m = metrics.compare_to_reference(mask, empty, spacing)
    assert m.dice == 0.0 and m.tv_ml == 0.0
    assert math.isnan(m.vpe_pct) and math.isnan(m.pv_tv) and math.isnan(m.hd95_mm) and math.isnan(m.surface_dice)
    assert set(m.flags) == {metrics.FLAG_EMPTY_REFERENCE, metrics.FLAG_SURFACE_UNDEFINED}
    m = metrics.compare_to_reference(empty, empty, spacing, empty_dice=1.0)
    assert m.dice == 1.0 and metrics.FLAG_BOTH_EMPTY in m.flags and metrics.FLAG_EMPTY_MASK in m.flags
    m = metrics.compare_to_reference(mask, ref, spacing, surface=False)
    assert math.isnan(m.hd95_mm) and m.dice == direct.dice


def test_surface_points_are_found_on_the_crop_only():
    big = np.zeros((60, 256, 256), dtype=bool)
    big[20:30, 100:140, 50:90] = True
    surface = metrics.Surface(big, (2.0, 0.7, 0.7))
    expected = np.argwhere(big ^ ndimage.binary_erosion(big)) * np.array([2.0, 0.7, 0.7])
    assert sorted(map(tuple, surface.points_mm)) == sorted(map(tuple, expected))
    assert metrics.bounding_box(big, margin=1) == (slice(19, 31), slice(99, 141), slice(49, 91))
    assert metrics.bounding_box(np.zeros((3, 3, 3), bool)) is None
