"""Issue 21, hardening: no silent wrong answers, no lost inputs, outputs that stay true under races and kills.

Each test here failed on the code before the issue was fixed (the hostile case was read, repaired or run silently).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from HepatoblastomaSegLib.errors import InputError
from HepatoblastomaSegLib.io import read_volume, write_volume
from HepatoblastomaSegLib.io.headers import DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV

from helpers_hostile import metaimage, nifti_header_bomb, nifti_with

PIXDIM3 = 88  # byte offset of pixdim[3] (slice spacing) in a NIfTI-1 header


# ------------------------------------------------------------------------------------------------ headers
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf")])
def test_nifti_slice_spacing_zero_nan_inf_is_refused_not_read_as_1_mm(tmp_path, ct_like_volume, suffix, value):
    path = nifti_with(ct_like_volume, tmp_path / f"image{suffix}", PIXDIM3, "f", value)
    with pytest.raises(InputError, match="spacing in the header is zero or negative or not finite") as info:
        read_volume(path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_nifti_nan_inf_voxels_are_refused_not_read_as_0(tmp_path, ct_like_volume, suffix, bad):
    array = ct_like_volume.array.astype(np.float32)
    array[1, 2, 3] = bad
    path = write_volume(ct_like_volume.with_array(array), tmp_path / f"image{suffix}")
    with pytest.raises(InputError, match="1 voxels are not finite"):
        read_volume(path)
    assert np.isfinite(read_volume(path, allow_non_finite=True).array).all()  # ITK's repair, asked for


def test_truncated_uncompressed_nifti_is_refused_not_zero_filled(tmp_path, ct_like_volume):
    path = write_volume(ct_like_volume, tmp_path / "image.nii")
    path.write_bytes(path.read_bytes()[: 352 + ct_like_volume.array.nbytes // 2])
    with pytest.raises(InputError, match="truncated image file: 2880 bytes of voxel data, the header declares 5760"):
        read_volume(path)


@pytest.mark.parametrize("fields, problem", [
    ({"ElementSpacing": "-1 1 1"}, "zero or negative or not finite"),
    ({"ElementSpacing": "1 nan 1"}, "zero or negative or not finite"),
    ({"TransformMatrix": "1 0 0 0 1 0 0 0 0"}, "direction matrix in the header is singular"),
    ({"TransformMatrix": "1 0 0 0 nan 0 0 0 1"}, "direction matrix in the header is not finite"),
])
def test_metaimage_negative_spacing_and_bad_direction_are_refused(tmp_path, fields, problem):
    path = metaimage(tmp_path / "image.mha", **fields)
    with pytest.raises(InputError, match=problem) as info:
        read_volume(path)
    assert "bad.mha" in str(info.value) or "image.mha" in str(info.value)


def test_truncated_uncompressed_metaimage_and_nrrd_are_refused(tmp_path, ct_like_volume):
    for suffix in (".mha", ".nrrd"):
        path = tmp_path / f"image{suffix}"
        import SimpleITK as sitk

        sitk.WriteImage(ct_like_volume.to_sitk(), str(path), False)
        path.write_bytes(path.read_bytes()[:-100])
        with pytest.raises(InputError, match="truncated image file"):
            read_volume(path)


def test_nifti2_and_gzip_named_nii_say_what_they_are(tmp_path, ct_like_volume):
    gz = write_volume(ct_like_volume, tmp_path / "image.nii.gz")
    misnamed = tmp_path / "misnamed.nii"
    misnamed.write_bytes(gz.read_bytes())
    with pytest.raises(InputError, match="gzip-compressed data but is named .nii; rename it to .nii.gz"):
        read_volume(misnamed)
    nifti2 = tmp_path / "two.nii"
    nifti2.write_bytes((540).to_bytes(4, "little") + b"n+2\0\r\n\x1a\n" + bytes(600))
    with pytest.raises(InputError, match="NIfTI-2 file"):
        read_volume(nifti2)


def test_complex_voxels_are_refused(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6, 7), np.complex64)), str(tmp_path / "k.nii"))
    with pytest.raises(InputError, match="complex-valued voxels"):
        read_volume(tmp_path / "k.nii")


def test_qform_sform_disagreement_is_said(tmp_path, ct_like_volume, caplog):
    path = write_volume(ct_like_volume, tmp_path / "image.nii")
    assert "warnings" not in read_volume(path).metadata
    from helpers_hostile import patch_nifti

    patch_nifti(path, 280 + 12, "f", 50.0)  # srow_x[3]: the sform moves x from -10.5 (RAS) to 50, the qform not
    volume = read_volume(path)
    assert any("qform and sform disagree" in w and "60.5 mm" in w for w in volume.metadata["warnings"])
    assert "qform and sform disagree" in caplog.text


# ------------------------------------------------------------------------------------------------ bombs
@pytest.mark.parametrize("name, size", [("bomb.nii.gz", (1024, 1024, 1024)), ("huge.nii", (32767, 32767, 32767)),
                                        ("claims2gib.nii.gz", (1024, 1024, 1024))])
def test_header_bombs_are_refused_before_a_voxel_is_read(tmp_path, name, size):
    path = nifti_header_bomb(tmp_path / name, size, datatype=4 if "2gib" in name else 2,
                             bitpix=16 if "2gib" in name else 8)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"more than the limit of {DEFAULT_MAX_VOXELS}.*{MAX_VOXELS_ENV}"):
        read_volume(path)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 50e6  # no allocation of the declared size, no decompression of the stream


def test_voxel_limit_is_overridable(tmp_path, ct_like_volume, monkeypatch):
    path = write_volume(ct_like_volume, tmp_path / "image.mha")
    monkeypatch.setenv(MAX_VOXELS_ENV, "1000")
    with pytest.raises(InputError, match="declares 2880 voxels .24x20x6., more than the limit of 1000"):
        read_volume(path)
    monkeypatch.setenv(MAX_VOXELS_ENV, "2880")
    assert read_volume(path).array.shape == (6, 20, 24)
