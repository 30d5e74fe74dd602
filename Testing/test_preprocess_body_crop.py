"""Cropping a CT to the trunk: the box, its place in space (against SimpleITK's RegionOfInterest) and pasting back."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from HepatoblastomaSegLib.io import Geometry, Volume
from HepatoblastomaSegLib.preprocess.body_crop import CropBox, body_box, crop_volume, paste

from conftest import oblique_direction

STEP = 4  # the coarse in-plane grid the trunk is found on may widen the box by up to STEP - 1 voxels per side


def _ct(shape_zyx=(12, 90, 100), spacing_mm_xyz=(1.0, 1.0, 2.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Volume:
    return Volume(np.full(shape_zyx, -1000, dtype=np.int16),
                  Geometry(shape_zyx[::-1], spacing_mm_xyz, (-40.0, 12.5, 300.0), direction))


def _trunk_ct() -> Volume:
    """Air with a trunk (y 30..59, x 20..69, slices 2..9), a table below it (y 75..77) and a cable beside it."""
    ct = _ct()
    ct.array[2:10, 30:60, 20:70] = 40
    ct.array[2:10, 40:50, 41:45] = -900  # bowel gas inside the trunk, whose walls around it are 9-10 mm thin
    ct.array[:, 75:78, :] = -300         # the table: wide and thin, apart from the trunk
    ct.array[4:8, 35:45, 80:88] = 60     # a cable or a line, apart from the trunk
    ct.array[4, 10:22, 80:92] = 60       # something thick but small: under 3 % of either half of the trunk
    return ct


def _assert_box_around(box: CropBox, lo_zyx, hi_zyx, shape, in_plane_slack=STEP - 1):
    for axis, (a, b, n) in enumerate(zip(lo_zyx, hi_zyx, shape)):
        slack = 0 if axis == 0 else in_plane_slack
        want_lo, want_hi = max(0, a), min(n, b)
        assert max(0, want_lo - slack) <= box.start_zyx[axis] <= want_lo, (axis, box)
        assert want_hi <= box.stop_zyx[axis] <= min(n, want_hi + slack), (axis, box)


def test_box_is_the_trunk_plus_margin_without_table_or_arm():
    ct = _trunk_ct()
    box = body_box(ct, margin_mm=4.0)
    # margin 4 mm = 4 voxels in-plane, 2 slices along z (2 mm spacing)
    _assert_box_around(box, (0, 26, 16), (12, 64, 74), ct.array.shape)
    assert box.stop_zyx[1] < 75 and box.stop_zyx[2] < 80  # table, cable and the small thing left out
    ct.array[3:9, 20:50, 76:96] = 60     # an arm: thick and 8 % of the trunk, so it is kept (wider is safe)
    assert body_box(ct, margin_mm=4.0).stop_zyx[2] >= 96
    assert box.to_dict(ct.array.shape)["fraction_of_voxels"] == pytest.approx(box.fraction_of(ct.array.shape),
                                                                              abs=1e-4)


def test_a_table_under_a_newborn_is_not_taken_for_the_trunk():
    """The table top touches the child and outweighs its trunk in voxels (wider, full length), but is 6 mm thin."""
    ct = _ct()
    ct.array[3:9, 40:60, 35:60] = 40       # a small trunk: 20 x 25 mm over 6 slices (3000 voxels)
    ct.array[:, 60:66, 2:98] = 200         # the table right under it: 6 x 96 mm over all 12 slices (6912 voxels)
    box = body_box(ct, margin_mm=2.0)
    # In-plane the box is the trunk's (the table's part right under the trunk survives the opening: + 6 mm in y).
    _assert_box_around(box, (2, 38, 33), (10, 62, 62), ct.array.shape, in_plane_slack=STEP + 1 + 6)
    assert box.start_zyx[2] >= 33 - STEP and box.stop_zyx[2] <= 62 + STEP  # not the table's 2..97
    alone = _ct()
    alone.array[:, 60:66, 2:98] = 200      # a table and nothing else: then that is what there is
    _assert_box_around(body_box(alone, margin_mm=0.0), (0, 60, 2), (12, 66, 98), alone.array.shape)


def test_box_is_widened_to_the_patch_and_kept_inside_the_image():
    ct = _trunk_ct()
    box = body_box(ct, margin_mm=0.0, min_extent_mm_zyx=(30.0, 50.0, 90.0))
    assert box.shape_zyx[0] == 12                     # 30 mm > 12 slices of 2 mm: all slices
    assert box.shape_zyx[1] == 50                     # trunk 30 voxels -> 50, about its centre
    assert 17 <= box.start_zyx[1] <= 21 and box.stop_zyx[1] >= 60  # centre 44.5 +- the coarse grid
    assert box.shape_zyx[2] == 90 and box.stop_zyx[2] <= 100  # trunk 50 -> 90 voxels, within the 100 of the image
    assert box.start_zyx[2] <= 20 and box.stop_zyx[2] >= 70


def test_no_box_when_the_body_fills_the_image_or_there_is_none():
    ct = _ct(shape_zyx=(6, 40, 40))
    assert body_box(ct) is None                       # nothing above -500 HU
    ct.array[:, 2:38, 2:38] = 30
    assert body_box(ct, margin_mm=5.0) is None        # trunk + margin covers everything


@pytest.mark.parametrize("flip", [False, True])
def test_crop_lies_where_simpleitk_puts_the_same_region(flip):
    ct = _trunk_ct()
    ct = Volume(ct.array, Geometry(ct.geometry.size, (0.8, 1.3, 2.5), (12.0, -7.5, 40.0),
                                   oblique_direction(flip_x=flip)))
    box = CropBox((2, 26, 16), (11, 64, 74))
    cropped = crop_volume(ct, box)
    reference = sitk.RegionOfInterest(ct.to_sitk(), list(box.shape_zyx[::-1]), list(box.start_zyx[::-1]))
    assert cropped.geometry.matches(Geometry.of(reference), origin_tol_mm=1e-9)
    np.testing.assert_array_equal(cropped.array, sitk.GetArrayFromImage(reference))


def test_paste_puts_the_box_back_and_fills_the_rest():
    ct = _trunk_ct()
    box = CropBox((1, 20, 10), (9, 70, 80))
    back = paste(crop_volume(ct, box).array, box, ct.array.shape, fill=-1)
    np.testing.assert_array_equal(back[box.slices], ct.array[box.slices])
    outside = np.ones(ct.array.shape, bool)
    outside[box.slices] = False
    assert (back[outside] == -1).all() and back.dtype == ct.array.dtype
    with pytest.raises(ValueError, match="box's shape"):
        paste(np.zeros((2, 2, 2)), box, ct.array.shape)
