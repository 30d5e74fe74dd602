"""Phantom series on disk: manifest, files, byte-for-byte reproducibility, DICOM round trip, atomicity, the CLI.

Files are read back with SimpleITK (through the library's reader) and pydicom, independently of the writer.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import ConfigError, InputError
from HepatoblastomaSegLib.io import read_mask, read_volume
from HepatoblastomaSegLib.phantom import COLUMNS, generate_case, write_dataset
from HepatoblastomaSegLib.phantom import dataset as dataset_module
from HepatoblastomaSegLib.phantom.dataset import parse_spacing

REQUIRED = ("case", "modality", "age_months", "spacing_mm", "image", "tumor", "liver", "R1", "R2", "R3", "tumor_ml",
            "liver_ml")


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """Two small CT cases with DICOM, written twice with the same seed (one case at a time, then two at a time in
    worker processes) and once with another."""
    root = tmp_path_factory.mktemp("phantom")
    first = write_dataset(root / "a", "ct", 2, seed=3, size="small", dicom=True)
    second = write_dataset(root / "b", "ct", 2, seed=3, size="small", dicom=True, workers=2)
    other = write_dataset(root / "c", "ct", 2, seed=4, size="small")
    return first, second, other


def test_manifest_columns_and_relative_paths(ct_series):
    manifest = ct_series[0]
    assert manifest.name == "manifest.csv"
    rows = _rows(manifest)
    assert len(rows) == 2
    assert set(REQUIRED) <= set(rows[0]) and tuple(rows[0]) == COLUMNS
    for row in rows:
        assert row["modality"] == "ct" and row["size"] == "small"
        for key in ("image", "tumor", "liver", "R1", "R2", "R3"):
            path = Path(row[key])
            assert not path.is_absolute() and path.parts[0] == row["case"]
            assert (manifest.parent / path).is_file()
        assert row["dicom"] == f"{row['case']}/dicom"
        assert 0 <= float(row["age_months"]) <= 168


def test_files_match_the_manifest(ct_series):
    manifest = ct_series[0]
    for row in _rows(manifest):
        folder = manifest.parent
        image = read_volume(folder / row["image"])
        assert image.array.dtype == np.int16
        assert np.allclose(image.spacing_mm, parse_spacing(row["spacing_mm"]), rtol=1e-5)
        assert "x".join(map(str, image.geometry.size)) == row["shape_xyz"]
        masks = {key: read_mask(folder / row[key], reference=image, what=key)
                 for key in ("tumor", "liver", "R1", "R2", "R3")}
        stats = sitk.StatisticsImageFilter()
        stats.Execute(sitk.ReadImage(str(folder / row["tumor"])))
        tumour_ml = stats.GetSum() * np.prod(image.spacing_mm) / 1000.0
        assert float(row["tumor_ml"]) == pytest.approx(tumour_ml, abs=0.01)
        assert float(row["liver_ml"]) == pytest.approx(masks["liver"].array.sum() * image.voxel_volume_ml, abs=0.01)
        assert float(row["tumor_diameter_cm"]) == pytest.approx(np.cbrt(6 * tumour_ml / np.pi), abs=0.01)
        assert 1 <= int(row["pretext"]) <= 4


def test_same_seed_gives_identical_bytes_in_one_or_two_processes_different_seed_does_not(ct_series):
    first, second, other = ct_series
    a, b = _digests(first.parent), _digests(second.parent)
    assert any(name.endswith(".dcm") for name in a)
    assert a == b
    c = _digests(other.parent)
    for name in ("hb_ct_000/image.nii.gz", "hb_ct_001/tumor.nii.gz", "hb_ct_001/R3.nii.gz"):
        assert a[name] != c[name]


def test_case_k_does_not_depend_on_the_number_of_cases(ct_series, tmp_path):
    manifest = write_dataset(tmp_path, "ct", 1, seed=3, size="small", first_index=1)
    assert [row["case"] for row in _rows(manifest)] == ["hb_ct_001"]
    one, both = _digests(tmp_path), _digests(ct_series[2].parent.parent / "a")
    for name, digest in one.items():
        if name != "manifest.csv":
            assert both[name] == digest, name


def test_dicom_round_trip(ct_series):
    folder = ct_series[0].parent
    row = _rows(ct_series[0])[0]
    nifti = read_volume(folder / row["image"])
    series = read_volume(folder / row["dicom"])
    assert series.geometry.matches(nifti.geometry), series.geometry.mismatches(nifti.geometry)
    assert np.array_equal(series.array, nifti.array)
    files = sorted((folder / row["dicom"]).glob("*.dcm"))
    assert len(files) == nifti.geometry.size[2]
    first = pydicom.dcmread(files[0])
    assert first.Modality == "CT"
    hu = first.pixel_array.astype(float) * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert np.array_equal(hu, nifti.array[0].astype(float))
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([nifti.spacing_mm[1], nifti.spacing_mm[0]])
    assert float(first.SliceThickness) == pytest.approx(nifti.spacing_mm[2])
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx(list(nifti.origin_mm), abs=1e-3)
    last = pydicom.dcmread(files[-1])
    assert float(last.ImagePositionPatient[2]) == pytest.approx(
        nifti.origin_mm[2] + (nifti.geometry.size[2] - 1) * nifti.spacing_mm[2], abs=1e-3)


def test_mri_series_with_dicom(tmp_path):
    manifest = write_dataset(tmp_path, "mri", 1, seed=8, size="small", dicom=True)
    row = _rows(manifest)[0]
    nifti = read_volume(tmp_path / row["image"])
    assert nifti.array.dtype == np.uint16
    series = read_volume(tmp_path / row["dicom"])
    assert np.array_equal(series.array.astype(np.int64), nifti.array.astype(np.int64))
    assert series.geometry.matches(nifti.geometry)
    assert pydicom.dcmread(sorted((tmp_path / row["dicom"]).glob("*.dcm"))[0]).Modality == "MR"
    spacing = parse_spacing(row["spacing_mm"])
    assert spacing[2] >= 4.0


def test_interrupted_run_leaves_no_manifest(tmp_path, monkeypatch):
    write_dataset(tmp_path, "ct", 1, seed=2, size="small")
    assert (tmp_path / "manifest.csv").exists()
    real = dataset_module.generate_case

    def failing(modality, seed, index, size, **options):
        if index == 1:
            raise RuntimeError("simulated crash while generating the second case")
        return real(modality, seed, index, size, **options)

    monkeypatch.setattr(dataset_module, "generate_case", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_dataset(tmp_path, "ct", 2, seed=2, size="small")
    assert not (tmp_path / "manifest.csv").exists()          # the old manifest was withdrawn first
    assert (tmp_path / "hb_ct_000" / "image.nii.gz").exists()
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name]


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="modality"):
        write_dataset(tmp_path, "pet", 1, seed=0)
    with pytest.raises(ConfigError, match="at least 1"):
        write_dataset(tmp_path, "ct", 0, seed=0)
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        write_dataset(tmp_path, "ct", 1, seed=0, workers=0)
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_dataset(not_a_folder, "ct", 1, seed=0)


def test_cli_writes_a_series(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["phantom", "--modality", "mri", "--cases", "1", "--seed", "5", "--size", "small", "-o", str(out),
                 "--progress", "none"]) == 0
    assert (out / "manifest.csv").exists() and (out / "hb_mri_000" / "R3.nii.gz").exists()
    printed = capsys.readouterr().out
    assert "hb_mri_000" in printed and "manifest" in printed
    # The same case as the library makes in memory.
    case = generate_case("mri", 5, 0, "small")
    assert np.array_equal(read_volume(out / "hb_mri_000" / "image.nii.gz").array, case.image.array)


def test_cli_help_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["phantom", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--dicom" in text and "mm" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["phantom", "--modality", "ct", "--cases", "0", "-o", "x"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_full_size_ct_case():
    """One clinical-size CT: the grid and the tumour size (its generation time is measured by hand, see
    ``phantom.case``)."""
    case = generate_case("ct", 7, 0, "full")
    geometry = case.image.geometry
    assert geometry.size[:2] == (512, 512)
    assert 0.5 <= geometry.spacing_mm[0] <= 0.9 and geometry.spacing_mm[0] == geometry.spacing_mm[1]
    assert geometry.spacing_mm[2] in (1.25, 2.0, 2.5, 3.0, 5.0)
    assert 3.0 <= np.cbrt(6 * case.tumor_ml / np.pi) <= 12.0
    small = generate_case("ct", 7, 0, "small")
    assert case.tumor_ml == pytest.approx(small.tumor_ml, rel=0.1)   # the same child on a finer grid


@pytest.mark.slow
def test_full_size_mri_case():
    case = generate_case("mri", 7, 1, "full")
    geometry = case.image.geometry
    assert 0.7 <= geometry.spacing_mm[0] <= 1.6 and 4.0 <= geometry.spacing_mm[2] <= 8.0
    assert geometry.size[0] % 16 == 0 and geometry.size[0] <= 512
    assert case.image.array.dtype == np.uint16
