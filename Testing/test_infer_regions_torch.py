"""The torch twin of the core/boundary entropy figures (used on a GPU) against scipy and the numpy version."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from HepatoblastomaSegLib.evaluate.regions import disc_footprint, entropy_core_boundary
from HepatoblastomaSegLib.infer.regions_torch import disc_core, entropy_core_boundary_torch
from HepatoblastomaSegLib.infer.summary import case_summary
from HepatoblastomaSegLib.io import Geometry, Volume


def blobs(shape, seed, threshold=0.0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 2, 2))
    return field > threshold * field.std()  # touches the image edges: outside must count as background


@pytest.mark.parametrize("radius_px", [0, 1, 2, 3, 5, 10, 13])
def test_disc_core_is_scipy_binary_erosion_by_the_disc_slice_by_slice(radius_px):
    mask = blobs((4, 90, 80), seed=radius_px, threshold=-1.3)
    footprint = disc_footprint(radius_px)
    expected = np.stack([ndimage.binary_erosion(s, footprint, border_value=0) for s in mask]) if radius_px else mask
    core = disc_core(torch.from_numpy(mask), radius_px).numpy()
    assert 0 < core.sum() < mask.sum() or radius_px == 0
    np.testing.assert_array_equal(core, expected)


def test_disc_core_of_a_filled_image_keeps_only_pixels_farther_than_r_from_the_edge():
    core = disc_core(torch.ones(2, 30, 25, dtype=torch.uint8), 10).numpy()
    assert core[:, 10:20, 10:15].all() and core.sum() == 2 * 10 * 5


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 1.5, 99.0])  # large, ragged, small, empty masks
def test_region_figures_equal_the_numpy_version(threshold):
    mask = blobs((6, 80, 70), seed=3, threshold=threshold).astype(np.uint8)
    entropy = np.random.default_rng(4).random(mask.shape, dtype=np.float32) * math.log(2)
    expected = entropy_core_boundary(entropy, mask)
    got = entropy_core_boundary_torch(torch.from_numpy(entropy), torch.from_numpy(mask))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_case_summary_on_cuda_equals_the_cpu_summary():
    mask = blobs((20, 128, 96), seed=6, threshold=-0.3).astype(np.uint8)
    entropy = np.random.default_rng(7).random(mask.shape, dtype=np.float32) * math.log(2)
    geometry = Geometry((96, 128, 20), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0))
    mask_v, entropy_v = Volume(mask, geometry), Volume(entropy, geometry)
    on_gpu = case_summary(mask_v, entropy_v, device=torch.device("cuda"))
    on_cpu = case_summary(mask_v, entropy_v)
    assert on_gpu.keys() == on_cpu.keys()
    for key, value in on_cpu.items():
        assert on_gpu[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), key
