"""Reading real-world DICOM: compressed transfer syntaxes, files without extension, folders with several series and
non-image objects, and every stack that a volume would misplace (tilt, non-parallel slices, changing pixel spacing,
a truncated file) refused in one line that names the file.

Compressed copies are made by encoders independent of the reader (pydicom with pylibjpeg-openjpeg and pyjpegls,
libjpeg-turbo and OpenJPH through imagecodecs); the reader decodes with GDCM inside SimpleITK; pydicom's decoders
check the encoding itself.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSNearLossless

from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import InputError
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_dicom_series
from HepatoblastomaSegLib.phantom import generate_case

from helpers_dicom import (
    LOSSLESS,
    NEAR_LOSSLESS_ERROR,
    compress_series,
    edit_slices,
    stored_values,
    write_non_image_objects,
)
from conftest import oblique_direction
from tiny_models import tiny_bundle

N_SLICES = 12


def _phantom_slab() -> Volume:
    """Twelve slices through the liver of a small phantom CT (HU from -1024 up)."""
    image = generate_case("ct", 31, 0, "small").image
    z0 = image.array.shape[0] // 2 - N_SLICES // 2
    origin = image.geometry.index_to_physical_matrix() @ np.array([0.0, 0.0, float(z0), 1.0])
    geometry = Geometry((*image.geometry.size[:2], N_SLICES), image.spacing_mm, tuple(origin[:3]), image.direction)
    return Volume(np.ascontiguousarray(image.array[z0:z0 + N_SLICES]), geometry)


@pytest.fixture(scope="module")
def plain_series(tmp_path_factory):
    """(folder, volume): an uncompressed phantom CT series and the volume it was written from."""
    volume = _phantom_slab()
    folder = tmp_path_factory.mktemp("plain") / "dicom"
    write_dicom_series(volume, folder, modality="CT", uid_seed="dicomread")
    return folder, volume


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("models"))


@pytest.fixture
def series_copy(tmp_path, plain_series):
    folder = tmp_path / "series"
    shutil.copytree(plain_series[0], folder)
    return folder


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda uid: uid.keyword)
def test_compressed_series_reads_the_same_voxels(tmp_path, plain_series, syntax):
    plain, volume = plain_series
    paths = compress_series(plain, tmp_path / "compressed", syntax)
    assert all(p.suffix == "" for p in paths)  # real-world files without ".dcm"
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    assert sum(p.stat().st_size for p in paths) < 0.8 * sum(p.stat().st_size for p in plain.iterdir())
    # The encoding is faithful, as pydicom's own decoders see it ...
    np.testing.assert_array_equal(stored_values(tmp_path / "compressed"), stored_values(plain))
    # ... and the reader gives the uncompressed series' voxels and grid, exactly.
    back = read_volume(tmp_path / "compressed")
    reference = read_volume(plain)
    np.testing.assert_array_equal(back.array, reference.array)
    np.testing.assert_array_equal(back.array, volume.array)  # the phantom's HU, not just self-consistency
    assert back.geometry.mismatches(reference.geometry) == []
    assert back.metadata["dicom"]["transfer_syntax"] == syntax.name
    assert np.ptp(back.array) > 1000


def test_near_lossless_jpeg_ls_stays_within_its_error_bound(tmp_path, plain_series):
    plain, volume = plain_series
    compress_series(plain, tmp_path / "jls", JPEGLSNearLossless)
    back = read_volume(tmp_path / "jls")
    error = np.abs(back.array.astype(np.int32) - volume.array.astype(np.int32))
    assert 0 < error.max() <= NEAR_LOSSLESS_ERROR
    # GDCM's decoder (CharLS) and pyjpegls agree on every value of the lossy stream.
    np.testing.assert_array_equal(back.array.astype(np.int32), stored_values(tmp_path / "jls") - 1024)


def test_lossy_jpeg2000_decodes_as_openjpeg_does(tmp_path, plain_series):
    plain, volume = plain_series
    compress_series(plain, tmp_path / "j2k", JPEG2000)
    back = read_volume(tmp_path / "j2k")
    assert np.abs(back.array.astype(np.int32) - volume.array).max() > 0  # really lossy
    # GDCM and pylibjpeg-openjpeg decode the same stream to the same values.
    np.testing.assert_array_equal(back.array.astype(np.int32), stored_values(tmp_path / "j2k") - 1024)


def test_folder_with_several_series_and_non_image_objects(tmp_path, plain_series):
    plain, volume = plain_series
    folder = tmp_path / "study"
    shutil.copytree(plain, folder)
    small = Volume(volume.array[:5], Geometry((*volume.geometry.size[:2], 5), volume.spacing_mm, volume.origin_mm,
                                              volume.direction))
    for path in write_dicom_series(small, tmp_path / "mr", modality="MR", uid_seed="other"):
        path.rename(folder / f"MR_{path.stem}")
    study_uid = str(pydicom.dcmread(next(plain.iterdir())).StudyInstanceUID)
    write_non_image_objects(folder, study_uid, n_frames=4 * N_SLICES)
    back = read_volume(folder)
    np.testing.assert_array_equal(back.array, volume.array)
    info = back.metadata["dicom"]
    assert info["n_slices"] == N_SLICES and info["reason"].startswith("the most slices of 2 CT/MR series")
    for named in ("5 MR slices", "3 Basic Text SR Storage", "1 Grayscale Softcopy Presentation State Storage",
                  "1 Segmentation Storage", "1 file(s) that are not DICOM"):
        assert named in info["reason"], named


def test_an_anonymised_series_with_its_sop_class_only_in_the_file_meta_reads_and_gets_a_seg(tmp_path, series_copy,
                                                                                            plain_series):
    """Some anonymisers strip SOPClassUID from the data set and leave MediaStorageSOPClassUID in the file meta (a
    public test CT does); the file meta names the same class, so the series reads, and a DICOM SEG can reference it."""
    from HepatoblastomaSegLib.io.dicom_seg import AlgorithmInfo, write_dicom_seg

    edit_slices(series_copy, lambda k, ds: delattr(ds, "SOPClassUID"))
    assert all("SOPClassUID" not in pydicom.dcmread(p) for p in series_copy.iterdir())
    back = read_volume(series_copy)
    np.testing.assert_array_equal(back.array, plain_series[1].array)
    mask = back.with_array((back.array > np.median(back.array)).astype(np.uint8))
    seg = write_dicom_seg(mask, tmp_path / "seg.dcm", series_copy, back.metadata["dicom"]["series_uid"],
                          AlgorithmInfo("ct-test", "1", "0"))
    referenced = pydicom.dcmread(seg).ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {str(r.ReferencedSOPClassUID) for r in referenced} == {"1.2.840.10008.5.1.4.1.1.2"}  # CT Image Storage
    # Without SeriesInstanceUID (the same anonymiser) the files cannot be grouped: refused, naming a file and why.
    edit_slices(series_copy, lambda k, ds: delattr(ds, "SeriesInstanceUID"))
    with pytest.raises(InputError, match="without SeriesInstanceUID.*anonymiser") as info:
        read_volume(series_copy)
    assert str(series_copy) in str(info.value)


def _tilt(degrees: float):
    def edit(k, dataset):
        cosines = np.array(dataset.ImageOrientationPatient, float)
        position = np.array(dataset.ImagePositionPatient, float)
        # A tilted gantry shears the stack: each slice is shifted along the column direction by step * tan(tilt).
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in position + k * 4.0 * np.tan(np.radians(degrees))
                                        * cosines[3:]]
        dataset.GantryDetectorTilt = degrees
    return edit


def test_gantry_tilt_is_refused_naming_the_file(series_copy):
    edit_slices(series_copy, _tilt(12.0))
    with pytest.raises(InputError, match="gantry tilt") as info:
        read_volume(series_copy)
    assert "IM00" in str(info.value) and "12 degrees" in str(info.value) and "\n" not in str(info.value)


def test_series_over_the_voxel_limit_is_refused_before_decoding(plain_series, monkeypatch):
    """The voxel limit of every reader (HBSEG_MAX_VOXELS) applies to DICOM folders too, from the headers alone."""
    folder, volume = plain_series
    monkeypatch.setenv("HBSEG_MAX_VOXELS", str(volume.array.size - 1))
    with pytest.raises(InputError, match="more than the limit of") as info:
        read_volume(folder)
    assert str(folder) in str(info.value) and "HBSEG_MAX_VOXELS" in str(info.value)
    monkeypatch.setenv("HBSEG_MAX_VOXELS", str(volume.array.size))
    np.testing.assert_array_equal(read_volume(folder).array, volume.array)


def test_straight_stack_with_a_tilt_tag_is_read(series_copy, plain_series):
    """A scanner that corrected the tilt itself leaves the tag: positions decide, not the tag."""
    edit_slices(series_copy, lambda k, ds: setattr(ds, "GantryDetectorTilt", 12.0))
    np.testing.assert_array_equal(read_volume(series_copy).array, plain_series[1].array)


def test_oblique_positions_rounded_to_a_tenth_of_a_mm_still_read(tmp_path):
    """Rounding noise in ImagePositionPatient is not a tilt."""
    direction = oblique_direction(flip_x=False)
    volume = Volume(np.zeros((8, 20, 24), np.int16), Geometry((24, 20, 8), (0.7, 0.8, 2.5), (10.5, -20.25, 30.0),
                                                               direction))
    write_dicom_series(volume, tmp_path / "d", modality="CT", uid_seed="rounded")
    edit_slices(tmp_path / "d", lambda k, ds: setattr(ds, "ImagePositionPatient",
                                                      [f"{float(v):.1f}" for v in ds.ImagePositionPatient]))
    back = read_volume(tmp_path / "d")
    assert back.geometry.mismatches(volume.geometry, spacing_tol_mm=0.05, origin_tol_mm=0.1) == []


def test_non_parallel_slices_are_refused(series_copy):
    def rotate(k, dataset):
        if k == 7:
            row, column = np.array(dataset.ImageOrientationPatient, float).reshape(2, 3)
            normal = np.cross(row, column)
            angle = np.radians(5.0)
            column = np.cos(angle) * column + np.sin(angle) * normal
            dataset.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
    edit_slices(series_copy, rotate)
    with pytest.raises(InputError, match="non-parallel slices .* 5 degrees apart") as info:
        read_volume(series_copy)
    assert info.value.path == series_copy / "IM0008.dcm"


def test_pixel_spacing_that_changes_between_slices_is_refused(series_copy):
    def widen(k, dataset):
        if k == 4:
            dataset.PixelSpacing = [f"{float(v) * 1.1:.6f}" for v in dataset.PixelSpacing]
    edit_slices(series_copy, widen)
    with pytest.raises(InputError, match="pixel spacing changes between slices") as info:
        read_volume(series_copy)
    assert info.value.path == series_copy / "IM0005.dcm"


@pytest.mark.parametrize("compressed", [False, True], ids=["native", "jpeg2000"])
def test_truncated_slice_is_named(tmp_path, plain_series, compressed):
    folder = tmp_path / "series"
    if compressed:
        compress_series(plain_series[0], folder, JPEG2000Lossless)
        victim = folder / "IM0006"
    else:
        shutil.copytree(plain_series[0], folder)
        victim = folder / "IM0006.dcm"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated DICOM file") as info:
        read_volume(folder)
    assert info.value.path == victim and "missing slice" not in str(info.value)


def test_undecodable_htj2k_gives_one_line(tmp_path, plain_series, capfd):
    """HTJ2K frames the decoder cannot read (here: no SOC marker) fail once, not once per slice on stderr."""
    folder = tmp_path / "htj2k"
    compress_series(plain_series[0], folder, pydicom.uid.HTJ2KLossless)

    def break_stream(k, dataset):
        frame = next(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1))
        dataset.PixelData = encapsulate([frame[2:]])

    edit_slices(folder, break_stream)
    capfd.readouterr()
    with pytest.raises(InputError, match="cannot decode the pixel data .*High-Throughput JPEG 2000") as info:
        read_volume(folder)
    assert info.value.path == folder / "IM0001" and "\n" not in str(info.value)
    captured = capfd.readouterr()
    assert "SOC marker" not in captured.err + captured.out


def test_two_series_with_the_same_slice_count_say_which_was_taken(tmp_path, plain_series):
    plain, volume = plain_series
    folder = tmp_path / "two"
    shutil.copytree(plain, folder)
    for path in write_dicom_series(volume, tmp_path / "twin", modality="CT", uid_seed="twin"):
        path.rename(folder / f"B{path.name}")
    uids = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in folder.iterdir()})
    info = read_volume(folder).metadata["dicom"]
    assert info["series_uid"] == uids[0]
    assert f"2 series have {N_SLICES} slices" in info["reason"] and "--series" in info["reason"]
    assert f"skipped series {uids[1]}" in info["reason"]
    assert read_volume(folder, series_uid=uids[1]).metadata["dicom"]["series_uid"] == uids[1]


def test_cli_series_option_picks_the_named_series(tmp_path, plain_series, bundle_dir, capsys):
    slab = plain_series[1]
    corner = slab.geometry.index_to_physical_matrix() @ np.array([48.0, 48.0, 0.0, 1.0])
    coarse = Volume(slab.array[:, 48:80, 48:80].copy(), Geometry((32, 32, N_SLICES), slab.spacing_mm,
                                                                 tuple(corner[:3]), slab.direction))
    folder = tmp_path / "two"
    write_dicom_series(coarse, folder, modality="CT", uid_seed="first")
    for path in write_dicom_series(coarse, tmp_path / "twin", modality="CT", uid_seed="twin"):
        path.rename(folder / f"B{path.name}")
    uids = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in folder.iterdir()})
    assert main(["segment", str(folder), "--series", uids[1], "--model", str(bundle_dir), "--no-tta",
                 "--progress", "none", "-o", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dicom_series"]["series_uid"] == uids[1]
    assert summary["dicom_series"]["reason"].startswith("named by the caller")
    assert main(["segment", str(folder), "--series", "1.2.3", "--model", str(bundle_dir), "--progress", "none",
                 "-o", str(tmp_path / "out2")]) == 2
    assert "1.2.3 is not in this folder" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_jpeg2000_ct_segments_like_its_uncompressed_copy(tmp_path):
    """End to end with the bundled ct-demo: a JPEG 2000 series gives the same mask as the uncompressed one."""
    case = generate_case("ct", 32, 0, "small")
    write_dicom_series(case.image, tmp_path / "plain", modality="CT", uid_seed="e2e")
    compress_series(tmp_path / "plain", tmp_path / "j2k", JPEG2000Lossless)
    for name in ("plain", "j2k"):
        assert main(["segment", str(tmp_path / name), "--no-tta", "--device", "cpu", "--progress", "none",
                     "-o", str(tmp_path / f"out_{name}")]) == 0
    masks = [read_volume(tmp_path / f"out_{name}" / "segmentation.nii.gz") for name in ("plain", "j2k")]
    assert masks[0].array.sum() > 1000
    np.testing.assert_array_equal(masks[1].array, masks[0].array)
    assert masks[1].geometry.mismatches(masks[0].geometry) == []
    summaries = [json.loads((tmp_path / f"out_{name}" / "summary.json").read_text()) for name in ("plain", "j2k")]
    assert summaries[0]["tumor_volume_ml"] == summaries[1]["tumor_volume_ml"] > 0


def test_a_written_series_does_not_depend_on_what_the_process_read_before(tmp_path, plain_series):
    """GDCM keeps state between calls: once a process has read a DICOM series it adds Spacing Between Slices to
    what it writes. The writer sets that tag itself, so a fresh process (a `hbseg phantom --workers` process) and one
    that has read DICOM write the same bytes."""
    import subprocess
    import sys

    from HepatoblastomaSegLib.io import write_volume

    source = tmp_path / "slab.nii.gz"
    write_volume(plain_series[1], source)
    volume = read_volume(source)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-c", "import sys; from HepatoblastomaSegLib.io import read_volume, "
                    "write_dicom_series; write_dicom_series(read_volume(sys.argv[1]), sys.argv[2], modality='CT', "
                    "uid_seed='dicomread')", str(source), str(fresh)], check=True)
    read_volume(plain_series[0])  # this process has read a series now
    after = write_dicom_series(volume, tmp_path / "after", modality="CT", uid_seed="dicomread")
    assert len(after) == N_SLICES
    for path in after:
        assert path.read_bytes() == (fresh / path.name).read_bytes(), path.name
    header = pydicom.dcmread(after[0], stop_before_pixels=True)
    assert float(header.SpacingBetweenSlices) == pytest.approx(volume.spacing_mm[2])
