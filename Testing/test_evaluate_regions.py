"""Tumour core/boundary (slice-by-slice disc erosion) and entropy means, against scipy's binary erosion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from HepatoblastomaSegLib.evaluate.regions import core_and_boundary, disc_footprint, entropy_core_boundary


def reference_core(mask: np.ndarray, radius: int) -> np.ndarray:
    """Independent definition: erode each z slice with the disc footprint; outside the image is background."""
    footprint = disc_footprint(radius)[None]          # (1, 2r+1, 2r+1): no coupling between slices
    return ndimage.binary_erosion(mask.astype(bool), structure=footprint, border_value=0)


def test_disc_footprint_is_the_euclidean_disc():
    disc = disc_footprint(10)
    assert disc.shape == (21, 21) and int(disc.sum()) == 317
    assert disc[10, 0] and disc[0, 10] and not disc[0, 0] and not disc[2, 2]   # 8^2 + 8^2 > 100


@pytest.mark.parametrize("radius", [0, 1, 3, 10])
def test_core_equals_slicewise_disc_erosion(radius):
    rng = np.random.default_rng(radius)
    field = ndimage.gaussian_filter(rng.random((12, 70, 64)), (1, 6, 6))
    mask = field > np.quantile(field, 0.55)
    mask[:, :5, 20:40] = True                     # touches the image border
    core, boundary = core_and_boundary(mask.astype(np.uint8), radius)
    np.testing.assert_array_equal(core, reference_core(mask, radius))
    np.testing.assert_array_equal(boundary, mask & ~core)
    assert not (core & boundary).any()


def test_erosion_is_per_slice_not_3d():
    mask = np.zeros((3, 41, 41), dtype=bool)
    mask[1, 5:36, 5:36] = True                    # one thick slice: a 3D ball erosion would leave nothing
    core, _ = core_and_boundary(mask, 10)
    assert core[1].sum() == (31 - 20) ** 2 and not core[0].any() and not core[2].any()


def test_entropy_means_and_empty_core():
    rng = np.random.default_rng(3)
    mask = np.zeros((5, 60, 60), dtype=np.uint8)
    mask[1:4, 10:50, 12:48] = 1
    entropy = rng.random(mask.shape).astype(np.float32) * 0.69
    core, boundary = core_and_boundary(mask, 10)
    result = entropy_core_boundary(entropy, mask, 10)
    assert result["core_mean"] == pytest.approx(float(entropy[core].astype(np.float64).mean()), rel=1e-12)
    assert result["boundary_mean"] == pytest.approx(float(entropy[boundary].astype(np.float64).mean()), rel=1e-12)
    assert result["mask_mean"] == pytest.approx(float(entropy[mask > 0].astype(np.float64).mean()), rel=1e-12)
    assert result["mean"] == pytest.approx(float(entropy.astype(np.float64).mean()), rel=1e-9)
    assert result["n_core"] + result["n_boundary"] == result["n_mask"] == int(mask.sum())
    assert result["core_empty"] is False

    thin = np.zeros_like(mask)
    thin[2, 20:40, 20:35] = 1                      # 15 pixels wide < 21: no core survives
    result = entropy_core_boundary(entropy, thin, 10)
    assert result["core_empty"] is True and math.isnan(result["core_mean"]) and result["n_core"] == 0
    assert result["boundary_mean"] == pytest.approx(float(entropy[thin > 0].astype(np.float64).mean()))

    result = entropy_core_boundary(entropy, np.zeros_like(mask), 10)
    assert result["mask_empty"] and math.isnan(result["mask_mean"]) and math.isnan(result["boundary_mean"])
