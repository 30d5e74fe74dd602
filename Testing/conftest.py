"""Shared fixtures: volumes on awkward grids (oblique, axis-flipped, anisotropic), as real files need them."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

os.environ.setdefault("MPLBACKEND", "Agg")

from HepatoblastomaSegLib.io import Geometry, Volume  # noqa: E402


def oblique_direction(flip_x: bool = False) -> tuple[float, ...]:
    """A rotated direction matrix (about 17 degrees around a tilted axis); with ``flip_x`` a left-handed one."""
    matrix = np.array(sitk.VersorTransform((1.0, 2.0, 3.0), 0.3).GetMatrix()).reshape(3, 3)
    if flip_x:
        matrix = matrix @ np.diag([-1.0, 1.0, 1.0])
    return tuple(matrix.ravel())


@pytest.fixture
def oblique_geometry() -> Geometry:
    """A 24x20x6 grid, 0.7x0.8x2.5 mm, oblique and axis-flipped (left-handed)."""
    return Geometry((24, 20, 6), (0.7, 0.8, 2.5), (10.5, -20.25, 30.0), oblique_direction(flip_x=True))


@pytest.fixture
def ct_like_volume(oblique_geometry: Geometry) -> Volume:
    rng = np.random.default_rng(1234)
    array = rng.integers(-1000, 1500, size=oblique_geometry.shape_zyx).astype(np.int16)
    return Volume(array, oblique_geometry)


@pytest.fixture
def binary_mask(oblique_geometry: Geometry) -> Volume:
    z, y, x = np.indices(oblique_geometry.shape_zyx)
    array = (((x - 12) ** 2 + (y - 10) ** 2) < 36).astype(np.uint8)
    return Volume(array, oblique_geometry)
