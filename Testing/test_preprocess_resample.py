"""Resampling: the torch path agrees with SimpleITK (the reference) and scipy; the way back lands exactly on the
original grid; thick slices are handled as planned."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_volume
from HepatoblastomaSegLib.preprocess import target_geometry
from HepatoblastomaSegLib.preprocess.resample import axis_orders, resample_array

from conftest import oblique_direction


@pytest.fixture
def smooth_volume() -> Volume:
    """A smooth random field (values ~ +-100) on an oblique, left-handed, anisotropic grid."""
    geometry = Geometry((37, 29, 11), (0.7, 0.8, 2.5), (10.5, -20.25, 30.0), oblique_direction(flip_x=True))
    rng = np.random.default_rng(7)
    array = ndimage.gaussian_filter(rng.normal(size=geometry.shape_zyx), 1.2) * 400
    return Volume(array.astype(np.float32), geometry)


def _corners_mm(geometry: Geometry) -> np.ndarray:
    """The 8 outer corners of the voxel grid (voxel edges, not centres), LPS mm."""
    m = geometry.index_to_physical_matrix()
    pts = [[i - 0.5, j - 0.5, k - 0.5, 1] for i in (0, geometry.size[0]) for j in (0, geometry.size[1])
           for k in (0, geometry.size[2])]
    return (m @ np.array(pts).T).T[:, :3]


@pytest.mark.parametrize("spacing", [(1.0, 1.1, 2.0), (0.5, 0.55, 3.3), (0.9, 0.6, 1.0)])
def test_target_grid_keeps_extent_and_direction(smooth_volume, spacing):
    target = target_geometry(smooth_volume.geometry, spacing)
    np.testing.assert_allclose(_corners_mm(target), _corners_mm(smooth_volume.geometry), atol=1e-9)
    assert target.direction == smooth_volume.geometry.direction
    np.testing.assert_allclose(target.spacing_mm, spacing, rtol=0.2)  # nearest whole number of voxels


@pytest.mark.parametrize("spacing", [(1.0, 1.1, 2.0), (0.5, 0.55, 3.3), (0.9, 0.6, 1.0)])
@pytest.mark.parametrize("orders", [(3, 3, 3), (0, 3, 3), (1, 1, 1), (0, 1, 1), (0, 0, 0)])
def test_torch_path_matches_simpleitk_reference(smooth_volume, spacing, orders):
    target = target_geometry(smooth_volume.geometry, spacing)
    reference = resample_array(smooth_volume.array, smooth_volume.geometry, target, orders, backend="sitk")
    ours = resample_array(torch.from_numpy(smooth_volume.array), smooth_volume.geometry, target, orders,
                          backend="torch")
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    assert reference.shape == tuple(ours.shape) == target.shape_zyx
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-3)  # values span several hundred


def test_simpleitk_bspline_is_the_image_resampler(smooth_volume):
    """Independent of our code: the sitk path equals a direct sitk.Resample with sitkBSpline."""
    target = target_geometry(smooth_volume.geometry, (1.0, 1.1, 2.0))
    direct = sitk.Resample(smooth_volume.to_sitk(), target.size, sitk.Transform(), sitk.sitkBSpline,
                           target.origin_mm, target.spacing_mm, target.direction, 0.0, sitk.sitkFloat32)
    ours = resample_array(smooth_volume.array, smooth_volume.geometry, target, (3, 3, 3), backend="sitk")
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(direct))


def test_torch_bspline_matches_scipy_map_coordinates(smooth_volume):
    target = target_geometry(smooth_volume.geometry, (0.5, 0.55, 3.3))
    n_in = np.array(smooth_volume.array.shape, dtype=float)
    n_out = np.array(target.shape_zyx, dtype=float)
    grids = np.meshgrid(*[(np.arange(o) + 0.5) * i / o - 0.5 for i, o in zip(n_in, n_out)], indexing="ij")
    expected = ndimage.map_coordinates(smooth_volume.array.astype(np.float64), grids, order=3, mode="mirror")
    ours = resample_array(smooth_volume.array, smooth_volume.geometry, target, (3, 3, 3), backend="torch")
    np.testing.assert_allclose(ours, expected, atol=1e-3)


def test_linear_path_matches_torch_trilinear_interpolate(smooth_volume):
    target = target_geometry(smooth_volume.geometry, (0.45, 1.3, 1.7))
    x = torch.from_numpy(smooth_volume.array)
    expected = F.interpolate(x[None, None], size=target.shape_zyx, mode="trilinear", align_corners=False)[0, 0]
    ours = resample_array(x, smooth_volume.geometry, target, (1, 1, 1), backend="torch")
    torch.testing.assert_close(ours, expected, atol=1e-3, rtol=0)


def test_channels_and_integer_masks(smooth_volume):
    target = target_geometry(smooth_volume.geometry, (1.0, 1.1, 2.0))
    stack = np.stack([smooth_volume.array, -smooth_volume.array])
    out = resample_array(stack, smooth_volume.geometry, target, (1, 1, 1), backend="torch")
    assert out.shape == (2, *target.shape_zyx)
    np.testing.assert_allclose(out[0], -out[1], atol=1e-4)
    labels = (smooth_volume.array > 0).astype(np.uint8) + (smooth_volume.array > 100).astype(np.uint8)
    for backend in ("torch", "sitk"):
        nn = resample_array(labels, smooth_volume.geometry, target, (0, 0, 0), backend=backend)
        assert nn.dtype == np.uint8 and set(np.unique(nn)) <= {0, 1, 2}


def test_thick_slices_are_resampled_separately_along_z():
    thick = Geometry((64, 64, 20), (0.7, 0.7, 5.0), (0, 0, 0))
    target = target_geometry(thick, (0.8, 0.8, 2.5))
    assert axis_orders(thick, target, 3) == (0, 3, 3)  # nearest along z, B-spline in-plane
    assert axis_orders(thick, target, 1) == (0, 1, 1)
    iso = Geometry((64, 64, 40), (0.7, 0.7, 1.0), (0, 0, 0))
    assert axis_orders(iso, target_geometry(iso, (0.8, 0.8, 1.2)), 3) == (3, 3, 3)
    # Nearest along z copies whole slices: every target slice equals one (in-plane resampled) source slice.
    rng = np.random.default_rng(0)
    array = rng.normal(size=thick.shape_zyx).astype(np.float32)
    out = resample_array(array, thick, target, (0, 3, 3), backend="torch")
    inplane = resample_array(array, thick, target_geometry(thick, (0.8, 0.8, 5.0)), (0, 3, 3), backend="torch")
    for k in range(out.shape[0]):
        assert min(np.abs(out[k] - s).max() for s in inplane) < 1e-5


def test_round_trip_returns_to_the_exact_original_grid(tmp_path, smooth_volume):
    """Forward (B-spline) then back (linear) on a smooth image, written and re-read: same grid, close values."""
    original = smooth_volume.geometry
    target = target_geometry(original, (0.45, 0.5, 1.5))
    forward = resample_array(smooth_volume.array, original, target, axis_orders(original, target, 3),
                             backend="torch")
    back = resample_array(forward, target, original, axis_orders(target, original, 1), backend="sitk")
    path = write_volume(Volume(back, original), tmp_path / "back.nii.gz")
    reread = read_volume(path)
    assert reread.geometry.matches(read_volume(write_volume(smooth_volume, tmp_path / "in.nii.gz")).geometry)
    inner = (slice(1, -1),) * 3
    error = np.abs(reread.array - smooth_volume.array)[inner]
    assert error.mean() < 0.05 * np.abs(smooth_volume.array).mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(smooth_volume):
    target = target_geometry(smooth_volume.geometry, (0.5, 0.55, 3.3))
    x = torch.from_numpy(smooth_volume.array)
    cpu = resample_array(x, smooth_volume.geometry, target, (0, 3, 3), backend="torch")
    gpu = resample_array(x.cuda(), smooth_volume.geometry, target, (0, 3, 3))  # auto picks torch on CUDA
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
