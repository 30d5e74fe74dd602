"""Volume I/O: every format round-trips voxels and geometry exactly; every bad input gets a clear error."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from HepatoblastomaSegLib.errors import GeometryError, InputError
from HepatoblastomaSegLib.io import (
    Geometry,
    Volume,
    atomic_path,
    read_mask,
    read_volume,
    require_same_geometry,
    write_dicom_series,
    write_volume,
)

from conftest import oblique_direction

FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha"]


def _sitk_geometry(path) -> Geometry:
    """Geometry as SimpleITK itself reads it, independently of our reader."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Geometry(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, ct_like_volume, suffix, dtype):
    volume = ct_like_volume.with_array(ct_like_volume.array.astype(dtype))
    path = write_volume(volume, tmp_path / f"image{suffix}")
    back = read_volume(path)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.geometry.mismatches(volume.geometry, spacing_tol_mm=1e-6, origin_tol_mm=1e-5, direction_tol=1e-6) == []
    # SimpleITK's own reader agrees on where the voxels are.
    assert _sitk_geometry(path).matches(volume.geometry, spacing_tol_mm=1e-6, origin_tol_mm=1e-5)
    assert np.linalg.det(back.geometry.direction_matrix) < 0  # the flip survived


def test_round_trip_physical_position_of_a_voxel(tmp_path, ct_like_volume):
    path = write_volume(ct_like_volume, tmp_path / "image.nrrd")
    image = sitk.ReadImage(str(path))
    index = (5, 7, 3)
    expected = ct_like_volume.geometry.index_to_physical_matrix() @ np.array([*index, 1.0])
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), expected[:3], atol=1e-6)


@pytest.mark.parametrize("flip_x", [False, True])
def test_dicom_round_trip_same_voxels_in_space(tmp_path, ct_like_volume, flip_x):
    geometry = Geometry(ct_like_volume.geometry.size, ct_like_volume.spacing_mm, ct_like_volume.origin_mm,
                        oblique_direction(flip_x=flip_x))
    volume = Volume(ct_like_volume.array, geometry)
    write_dicom_series(volume, tmp_path / "dicom", modality="CT", uid_seed="t")
    back = read_volume(tmp_path / "dicom")
    assert back.array.dtype == np.int16
    assert back.metadata["dicom"]["n_slices"] == 6
    # DICOM grids are right-handed; a left-handed input comes back with the slice order reversed, same voxels in space.
    resampled = sitk.Resample(back.to_sitk(), volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, -4000)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), volume.array)
    if not flip_x:
        assert back.geometry.mismatches(volume.geometry) == []
    # pydicom (independent reader): stored values, rescale, spacing.
    first = pydicom.dcmread(sorted((tmp_path / "dicom").iterdir())[0])
    assert (float(first.RescaleIntercept), float(first.RescaleSlope)) == (-1024.0, 1.0)
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([0.8, 0.7])
    hu = first.pixel_array.astype(np.int32) * 1 - 1024
    assert hu.shape == (20, 24)
    assert any(np.array_equal(hu, volume.array[k]) for k in (0, 5))


def test_dicom_picks_largest_series_or_the_named_one(tmp_path, ct_like_volume):
    small = Volume(ct_like_volume.array[:3].copy(),
                   Geometry((24, 20, 3), ct_like_volume.spacing_mm, (0, 0, 0), oblique_direction()))
    write_dicom_series(ct_like_volume, tmp_path / "d", modality="CT", uid_seed="big")
    for path in write_dicom_series(small, tmp_path / "tmp_small", modality="MR", uid_seed="small"):
        path.rename(tmp_path / "d" / f"small_{path.name}")
    chosen = read_volume(tmp_path / "d")
    assert chosen.array.shape[0] == 6
    info = chosen.metadata["dicom"]
    assert "most slices" in info["reason"] and len(info["other_series"]) == 1
    other_uid = next(iter(info["other_series"]))
    assert read_volume(tmp_path / "d", series_uid=other_uid).array.shape[0] == 3
    with pytest.raises(InputError, match="1.2.3 is not in this folder"):
        read_volume(tmp_path / "d", series_uid="1.2.3")


def test_dicom_missing_slice_is_refused(tmp_path, ct_like_volume):
    paths = write_dicom_series(ct_like_volume, tmp_path / "d", modality="CT", uid_seed="m")
    paths[2].unlink()
    with pytest.raises(InputError, match="missing slice") as info:
        read_volume(tmp_path / "d")
    assert str(tmp_path / "d") in str(info.value)


def test_dicom_uneven_slices_are_refused(tmp_path, ct_like_volume):
    geometry = ct_like_volume.geometry
    # Two series halves with different slice steps, same series UID: write twice and merge by hand.
    write_dicom_series(ct_like_volume, tmp_path / "d", modality="CT", uid_seed="u")
    moved = Geometry(geometry.size, (geometry.spacing_mm[0], geometry.spacing_mm[1], 2.5), geometry.origin_mm,
                     geometry.direction)
    # Shift the last slice by 1 mm along the slice normal: an uneven step.
    last = sorted((tmp_path / "d").iterdir())[-1]
    ds = pydicom.dcmread(last)
    normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float))
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array(ds.ImagePositionPatient, float) + 1.0 * normal]
    ds.save_as(last)
    assert moved.size == geometry.size
    with pytest.raises(InputError, match="unevenly spaced"):
        read_volume(tmp_path / "d")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        read_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(info.value)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder is empty"):
        read_volume(tmp_path / "empty")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM series of CT or MR images"):
        read_volume(tmp_path / "notes")


def test_unknown_extension(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="cannot read '.png'"):
        read_volume(tmp_path / "scan.png")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, ct_like_volume, suffix):
    path = write_volume(ct_like_volume, tmp_path / f"image{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="unreadable or truncated") as info:
        read_volume(path)
    assert path.name in str(info.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "image.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image" * 10))
    with pytest.raises(InputError, match="unreadable or truncated"):
        read_volume(path)


def test_empty_file(tmp_path):
    (tmp_path / "image.nii").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path / "image.nii")


def test_2d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkInt16), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "slice.nii.gz")


def test_4d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image([4, 5, 6, 3], sitk.sitkInt16), str(tmp_path / "series.nii.gz"))
    with pytest.raises(InputError, match="4D with 3 time points"):
        read_volume(tmp_path / "series.nii.gz")


def test_4d_with_one_time_point_reads_as_3d(tmp_path):
    sitk.WriteImage(sitk.Image([4, 5, 6, 1], sitk.sitkInt16), str(tmp_path / "one.nii.gz"))
    assert read_volume(tmp_path / "one.nii.gz").array.shape == (6, 5, 4)


def test_multi_component_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 components"):
        read_volume(tmp_path / "rgb.nrrd")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_refused(tmp_path, ct_like_volume, bad):
    array = ct_like_volume.array.astype(np.float32)
    array[2, 3, 4] = bad
    path = write_volume(ct_like_volume.with_array(array), tmp_path / "image.nrrd")
    with pytest.raises(InputError, match="not finite"):
        read_volume(path)
    assert read_volume(path, allow_non_finite=True).array.shape == array.shape


def _raw_nrrd(path, header_line: str) -> None:
    path.write_bytes(("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\n" + header_line +
                      "\nencoding: raw\nendian: little\n\n").encode() + b"\0" * 16)


@pytest.mark.parametrize("line", ["spacings: -1 1 1", "spacings: 0 1 1",
                                  "space: left-posterior-superior\nspace directions: (0,0,0) (0,1,0) (0,0,1)"])
def test_zero_or_negative_spacing_nrrd(tmp_path, line):
    _raw_nrrd(tmp_path / "bad.nrrd", line)
    with pytest.raises(InputError, match="zero or negative"):
        read_volume(tmp_path / "bad.nrrd")


def test_zero_spacing_metaimage(tmp_path):
    path = tmp_path / "bad.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementSpacing = 0 1 1\n"
                     b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + b"\0" * 16)
    with pytest.raises(InputError, match="zero or negative"):
        read_volume(path)


def test_negative_pixdim_nifti(tmp_path, ct_like_volume):
    path = write_volume(ct_like_volume, tmp_path / "image.nii")
    data = bytearray(path.read_bytes())
    data[80:84] = np.float32(-0.7).tobytes()  # pixdim[1] lives at byte 80 of the NIfTI-1 header
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="zero or negative"):
        read_volume(path)


def test_mask_must_be_binary(tmp_path, binary_mask):
    labels = binary_mask.with_array(binary_mask.array * 2)
    labels.array[0, 0, 0] = 3
    path = write_volume(labels, tmp_path / "labels.nii.gz")
    with pytest.raises(InputError, match="binary.*0, 2, 3|values 2, 3"):
        read_mask(path)
    ok = read_mask(write_volume(binary_mask, tmp_path / "mask.nii.gz"), reference=binary_mask)
    assert ok.array.dtype == np.uint8 and ok.array.sum() == binary_mask.array.sum()


def test_mask_on_another_grid_is_refused(tmp_path, binary_mask, ct_like_volume):
    shifted = Geometry(binary_mask.geometry.size, binary_mask.spacing_mm,
                       tuple(np.add(binary_mask.origin_mm, (0, 0, 2.0))), binary_mask.direction)
    path = write_volume(Volume(binary_mask.array, shifted), tmp_path / "mask.nii.gz")
    with pytest.raises(GeometryError, match="origin") as info:
        read_mask(path, reference=ct_like_volume)
    assert "mask.nii.gz" in str(info.value)


def test_geometry_comparison_tolerates_float_noise(oblique_geometry):
    noisy = Geometry(oblique_geometry.size, np.add(oblique_geometry.spacing_mm, 1e-9),
                     np.add(oblique_geometry.origin_mm, 1e-6), oblique_geometry.direction)
    assert oblique_geometry.matches(noisy)
    other = Geometry((24, 20, 7), oblique_geometry.spacing_mm, oblique_geometry.origin_mm, oblique_geometry.direction)
    with pytest.raises(GeometryError, match="size"):
        require_same_geometry(oblique_geometry, other)
    assert Geometry.from_dict(oblique_geometry.to_dict()) == oblique_geometry


def test_atomic_write_leaves_nothing_on_failure(tmp_path, ct_like_volume, monkeypatch):
    target = tmp_path / "out" / "image.nii.gz"
    write_volume(ct_like_volume, target)
    before = target.read_bytes()

    def crash(image, name, *args):
        with open(name, "wb") as handle:  # half a file, then the "crash"
            handle.write(b"\x1f\x8b partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", crash)
    with pytest.raises(InputError, match="could not write"):
        write_volume(ct_like_volume.with_array(ct_like_volume.array + 1), target)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(target.parent)) == ["image.nii.gz"]  # no temp file left


def test_atomic_path_keeps_compound_suffix(tmp_path):
    with atomic_path(tmp_path / "seg.seg.nrrd") as tmp:
        assert tmp.name.endswith(".seg.nrrd") and tmp.parent == tmp_path
        tmp.write_text("x")
    assert (tmp_path / "seg.seg.nrrd").read_text() == "x"


def test_output_folder_that_cannot_exist(tmp_path, ct_like_volume):
    (tmp_path / "afile").write_text("a file where a folder should be")
    with pytest.raises(InputError, match="cannot create the output folder") as info:
        write_volume(ct_like_volume, tmp_path / "afile" / "x.nii.gz")
    assert "afile" in str(info.value)


def test_dicom_io_leaves_the_locale_alone(tmp_path, ct_like_volume):
    import locale

    before = locale.setlocale(locale.LC_ALL)
    write_dicom_series(ct_like_volume, tmp_path / "d", modality="CT", uid_seed="l")
    read_volume(tmp_path / "d")
    assert locale.setlocale(locale.LC_ALL) == before


def test_csv_tables_tolerate_bom_and_spaces_and_name_the_file(tmp_path):
    from HepatoblastomaSegLib.io.tables import read_csv_rows

    (tmp_path / "m.csv").write_bytes("\ufeffcase , image\nc1,a.nii.gz\nc2,b.nii.gz\n".encode("utf-8"))
    header, rows = read_csv_rows(tmp_path / "m.csv", "manifest")
    assert header == ["case", "image"]
    assert [(line, row["case"]) for line, row in rows] == [(2, "c1"), (3, "c2")]
    with pytest.raises(InputError, match="manifest not found"):
        read_csv_rows(tmp_path / "none.csv", "manifest")
    (tmp_path / "latin.csv").write_bytes(b"case,image\n\xe9,x\n")
    with pytest.raises(InputError, match="cannot read the cohort table") as info:
        read_csv_rows(tmp_path / "latin.csv", "cohort table")
    assert "latin.csv" in str(info.value)


@pytest.mark.parametrize("threads,backend", [(1, "zlib"), (3, "zlib"), (1, "isal"), (3, "isal")])
def test_parallel_gzip_is_one_standard_member_that_any_reader_decodes(tmp_path, ct_like_volume, monkeypatch, threads,
                                                                      backend):
    import nibabel

    from HepatoblastomaSegLib.io import parallel_gzip, volume as volume_module

    if backend not in parallel_gzip.BACKENDS:
        pytest.skip("isal is not installed")
    monkeypatch.setattr(parallel_gzip, "BACKEND", backend)
    monkeypatch.setattr(parallel_gzip, "CHUNK_BYTES", 1000)  # many chunks even for a small test volume
    real_gzip_file = parallel_gzip.gzip_file
    monkeypatch.setattr(volume_module, "gzip_file",
                        lambda source, target, level=1: real_gzip_file(source, target, level=level, threads=threads))
    volume = ct_like_volume.with_array(ct_like_volume.array.astype(np.float32) / 7.0)
    path = write_volume(volume, tmp_path / "image.nii.gz")
    raw = tmp_path / "raw.nii"
    sitk.WriteImage(volume.to_sitk(), str(raw), False)
    data = path.read_bytes()
    assert gzip.decompress(data) == raw.read_bytes()  # Python's gzip: same bytes as ITK's own .nii
    assert int.from_bytes(data[-4:], "little") == raw.stat().st_size  # the trailer's size: one member, real size
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), volume.array)  # ITK's zlib
    loaded = nibabel.load(str(path))  # nibabel's reader
    np.testing.assert_array_equal(np.asarray(loaded.dataobj).transpose(2, 1, 0), volume.array)
    assert write_volume(volume, tmp_path / "again.nii.gz").read_bytes() == data  # deterministic (mtime 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.nii.gz", "image.nii.gz", "raw.nii"]  # no temps

