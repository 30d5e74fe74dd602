"""The Slicer module's export of the current segment as DICOM SEG, on the real MRML classes (headless): the SEG
decodes (pydicom alone) to the AI mask, or to the reviewer's edit of it, on the volume's source series."""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer")

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from slicer_env import add_volume_node, replace_segment_voxels, slicer_env  # noqa: E402,F401  (fixture)

from HepatoblastomaSegLib.errors import InputError  # noqa: E402
from HepatoblastomaSegLib.infer import Prediction  # noqa: E402
from HepatoblastomaSegLib.io import read_volume  # noqa: E402
from HepatoblastomaSegMRML.dicom_export import INSTANCE_UIDS_ATTRIBUTE, export_dicom_seg  # noqa: E402
from HepatoblastomaSegMRML.segment import add_prediction  # noqa: E402

from helpers_dicom_seg import decode_seg_pydicom, phantom_series  # noqa: E402


class FilesByInstance:
    """Stands in for Slicer's DICOM database (ctkDICOMDatabase, Qt-only): SOPInstanceUID -> file."""

    def __init__(self, folder):
        self.files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): str(p)
                      for p in folder.iterdir()}

    def fileForInstance(self, uid):  # noqa: N802 - the database's method name
        return self.files.get(uid, "")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = phantom_series(tmp_path_factory.mktemp("oblique") / "dicom", oblique=True)
    return folder, read_volume(folder)


def _loaded_from_dicom(scene, folder, volume):
    """A volume node as Slicer's DICOM loader leaves it: the image plus the instance UIDs it came from."""
    node = add_volume_node(scene, volume, "CT")
    database = FilesByInstance(folder)
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(database.files))
    return node, database


def test_export_ai_mask_then_the_reviewers_edit(slicer_env, series, tmp_path):
    folder, volume = series
    scene = slicer_env.scene
    node, database = _loaded_from_dicom(scene, folder, volume)
    z, y, x = np.indices(volume.array.shape)
    mask = (((x - 60) ** 2 + (y - 70) ** 2 < 150) & (z > 10) & (z < 30)).astype(np.uint8)
    entropy = np.zeros(volume.array.shape, np.float32)
    summary = {"model_name": "ct-phantom", "model_version": "0.1", "modality": "ct", "device": "cpu", "tta": False,
               "seconds": {"network": 1.0}}
    result = add_prediction(scene, node, Prediction(volume.with_array(mask), volume.with_array(entropy), summary))

    ai_path = export_dicom_seg(result.segmentation_node, node, tmp_path / "ai.dcm", database=database)
    assert np.array_equal(decode_seg_pydicom(ai_path, folder), mask)
    segment = pydicom.dcmread(ai_path).SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "ct-phantom"

    edited = mask.copy()
    edited[20, 60:80, 50:70] = 1
    replace_segment_voxels(scene, result.segmentation_node, result.segment_id, volume.with_array(edited), node)
    edit_path = export_dicom_seg(result.segmentation_node, node, tmp_path / "edit.dcm", database=database)
    assert np.array_equal(decode_seg_pydicom(edit_path, folder), edited)
    assert pydicom.dcmread(edit_path).SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert pydicom.dcmread(edit_path).StudyInstanceUID == pydicom.dcmread(next(folder.iterdir())).StudyInstanceUID


def test_volume_not_from_dicom_is_refused(slicer_env, series, tmp_path):
    folder, volume = series
    scene = slicer_env.scene
    node = add_volume_node(scene, volume, "from a NIfTI file")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    with pytest.raises(InputError, match="not loaded from Slicer's DICOM database"):
        export_dicom_seg(segmentation, node, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
