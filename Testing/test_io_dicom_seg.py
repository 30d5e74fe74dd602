"""DICOM Segmentation and Parametric Map outputs: decoded by highdicom and by plain pydicom, they give back the mask
and entropy map voxel for voxel, in the source study, on axial and oblique series whose files are in any order."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from HepatoblastomaSegLib.cli import main
from HepatoblastomaSegLib.errors import ConfigError, InputError
from HepatoblastomaSegLib.infer.cohort import CohortCase, run_cohort
from HepatoblastomaSegLib.infer.outputs import is_finished
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.infer.runner import segment_cohort
from HepatoblastomaSegLib.io import Geometry, Volume, read_volume, write_volume
from HepatoblastomaSegLib.io.dicom_seg import AlgorithmInfo, write_dicom_seg, write_entropy_parametric_map
from HepatoblastomaSegLib.terminology import HEPATOBLASTOMA

from helpers_dicom_seg import (
    dciodvfy_errors,
    decode_pm_pydicom,
    decode_seg_highdicom,
    decode_seg_pydicom,
    first_source_header,
    listing,
    phantom_series,
)

ALGORITHM = AlgorithmInfo("ct-test", "9.8.7", "0.1.0")


def _blobs(volume: Volume, seed: int = 3) -> Volume:
    """An irregular, asymmetric mask (smoothed noise) with empty slices at both ends."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(volume.array.shape), (1.0, 3.0, 3.0))
    mask = (field > 0.12).astype(np.uint8)
    mask[:3] = 0
    mask[-2:] = 0
    assert 0.01 < mask.mean() < 0.5
    return volume.with_array(mask)


@pytest.fixture(scope="module", params=["axial", "oblique"])
def series(request, tmp_path_factory):
    folder = phantom_series(tmp_path_factory.mktemp(request.param) / "dicom", oblique=request.param == "oblique")
    return folder, read_volume(folder)


def test_seg_decodes_to_the_mask_with_highdicom_and_pydicom(series, tmp_path):
    folder, volume = series
    mask = _blobs(volume)
    path = write_dicom_seg(mask, tmp_path / "segmentation.dcm", folder, volume.metadata["dicom"]["series_uid"],
                           ALGORITHM)
    assert np.array_equal(decode_seg_pydicom(path, folder), mask.array)
    assert np.array_equal(decode_seg_highdicom(path, folder), mask.array)
    assert listing(tmp_path) == ["segmentation.dcm"]  # the temporary file is gone


def test_seg_sits_in_the_source_study_and_names_its_segment_and_algorithm(series, tmp_path):
    folder, volume = series
    path = write_dicom_seg(_blobs(volume), tmp_path / "s.dcm", folder, volume.metadata["dicom"]["series_uid"],
                           ALGORITHM)
    seg, source = pydicom.dcmread(path), first_source_header(folder)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID and seg.Modality == "SEG"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    source_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir()}
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == source_uids
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == HEPATOBLASTOMA.name and segment.SegmentAlgorithmType == "AUTOMATIC"
    for item, code in ((segment.SegmentedPropertyCategoryCodeSequence[0], HEPATOBLASTOMA.category),
                       (segment.SegmentedPropertyTypeCodeSequence[0], HEPATOBLASTOMA.type),
                       (segment.AnatomicRegionSequence[0], HEPATOBLASTOMA.anatomic_region)):
        assert (item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning) == (code.scheme, code.value,
                                                                                   code.meaning)
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("ct-test", "9.8.7")
    assert seg.ManufacturerModelName == "ct-test"


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian package dicom3tools; make test installs it as root)")
def test_seg_and_parametric_map_pass_the_dicom3tools_validator(series, tmp_path):
    folder, volume = series
    uid = volume.metadata["dicom"]["series_uid"]
    seg = write_dicom_seg(_blobs(volume), tmp_path / "seg.dcm", folder, uid, ALGORITHM)
    assert dciodvfy_errors(seg) == []
    entropy = volume.with_array(np.linspace(0, np.log(2), volume.array.size, dtype=np.float32).reshape(
        volume.array.shape))
    pm = write_entropy_parametric_map(entropy, tmp_path / "pm.dcm", folder, uid, ALGORITHM)
    # Laterality (General Series, 2C) is required only for paired body parts; dciodvfy cannot tell, the liver is not.
    assert [e for e in dciodvfy_errors(pm) if "<Laterality>" not in e] == []
    assert np.array_equal(decode_pm_pydicom(pm, folder), entropy.array)


def test_empty_mask_gives_a_valid_seg_with_every_frame_empty(series, tmp_path):
    folder, volume = series
    empty = volume.with_array(np.zeros(volume.array.shape, np.uint8))
    path = write_dicom_seg(empty, tmp_path / "empty.dcm", folder, volume.metadata["dicom"]["series_uid"], ALGORITHM)
    assert int(pydicom.dcmread(path).NumberOfFrames) == volume.array.shape[0]
    assert not decode_seg_pydicom(path, folder).any()
    assert not decode_seg_highdicom(path, folder).any()


def test_mask_on_another_grid_is_refused_and_nothing_is_written(series, tmp_path):
    folder, volume = series
    g = volume.geometry
    shifted = Geometry(g.size, g.spacing_mm, tuple(np.add(g.origin_mm, (0.0, 0.0, g.spacing_mm[2] / 2))), g.direction)
    with pytest.raises(InputError, match="does not lie on a slice"):
        write_dicom_seg(Volume(np.zeros(g.shape_zyx, np.uint8), shifted), tmp_path / "s.dcm", folder,
                        volume.metadata["dicom"]["series_uid"], ALGORITHM)
    cropped = Geometry((g.size[0] - 1, *g.size[1:]), g.spacing_mm, g.origin_mm, g.direction)
    with pytest.raises(InputError, match="pixels"):
        write_dicom_seg(Volume(np.zeros(cropped.shape_zyx, np.uint8), cropped), tmp_path / "s.dcm", folder,
                        volume.metadata["dicom"]["series_uid"], ALGORITHM)
    assert listing(tmp_path) == []


def test_nifti_input_with_dicom_output_is_refused_up_front(tmp_path, capsys):
    image = tmp_path / "scan.nii.gz"
    write_volume(Volume(np.zeros((4, 5, 6), np.int16), Geometry((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))), image)
    assert main(["segment", str(image), "--format", "dicom-seg", "-o", str(tmp_path / "out")]) == 2
    assert "needs a DICOM series folder" in capsys.readouterr().err
    assert main(["segment", str(image), "--entropy-format", "dicom-pm", "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case,image\na,scan.nii.gz\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="case a: --format dicom-seg needs a DICOM series folder"):
        segment_cohort(manifest, tmp_path / "cohort_out", PredictorOptions(), fmt="dicom-seg")
    assert not (tmp_path / "cohort_out").exists()


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory):
    """The end-to-end run uses the oblique series only (the axial one is the DICOMweb round trip's)."""
    return phantom_series(tmp_path_factory.mktemp("oblique_e2e") / "dicom", oblique=True)


@pytest.fixture(scope="module")
def ct_demo():
    return Predictor.from_options(PredictorOptions(model="ct-demo", tta=False, device="cpu"), modality="ct")


@pytest.mark.slow
def test_cohort_run_writes_seg_and_parametric_map_equal_to_the_nifti_outputs(oblique_series, ct_demo, tmp_path):
    """One prediction per case (the bundled ct-demo), written by the cohort runner as NIfTI and as DICOM."""
    folder = oblique_series
    cases = [CohortCase("child", folder, "ct")]
    predictions = {}

    def predict(case, progress):
        if case.case not in predictions:
            predictions[case.case] = ct_demo.predict(read_volume(case.image), progress)
        return predictions[case.case]

    nifti = run_cohort(cases, tmp_path / "nifti", predict, fmt="nifti")
    dicom = run_cohort(cases, tmp_path / "dicom", predict, fmt="dicom-seg", entropy_fmt="dicom-pm")
    assert [r["status"] for r in nifti.rows + dicom.rows] == ["ok", "ok"]
    out = tmp_path / "dicom" / "child"
    assert listing(out) == ["entropy.dcm", "liver_mask.nii.gz", "segmentation.dcm", "summary.json"]
    assert is_finished(out)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti" / "child" / "segmentation.nii.gz")))
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti" / "child" / "entropy.nii.gz")))
    assert mask.sum() > 100  # ct-demo finds the phantom's tumour
    assert np.array_equal(decode_seg_pydicom(out / "segmentation.dcm", folder), mask)
    assert np.array_equal(decode_seg_highdicom(out / "segmentation.dcm", folder), mask)
    assert np.array_equal(decode_pm_pydicom(out / "entropy.dcm", folder), entropy)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["outputs"]["segmentation"]["file"] == "segmentation.dcm"
    seg = pydicom.dcmread(out / "segmentation.dcm")
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "ct-demo"
