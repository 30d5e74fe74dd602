"""Segment -> MRML nodes -> files, on the real MRML classes (slicer-core, headless), on an oblique, axis-flipped,
anisotropic grid. Files are read back with slicerio and SimpleITK, which share no code with Slicer's writers."""

from __future__ import annotations

import csv
import json
import math

import pytest

slicer = pytest.importorskip("slicer")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import slicerio  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402

from slicer_env import (  # noqa: E402,F401  (slicer_env is a fixture)
    add_volume_node,
    assert_geometry_close,
    awkward_geometry,
    make_case,
    mrml,
    prediction_of,
    sitk_geometry,
    sitk_volume_ml,
    slicer_env,
)

from HepatoblastomaSegLib.errors import GeometryError, InputError  # noqa: E402
from HepatoblastomaSegLib.infer import MAX_ENTROPY_2CLASS_NATS  # noqa: E402
from HepatoblastomaSegLib.infer.outputs import write_prediction  # noqa: E402
from HepatoblastomaSegLib.io import Geometry, write_volume  # noqa: E402
from HepatoblastomaSegLib.io.segmentation_file import write_segmentation_nrrd  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture
def case():
    return make_case(seed=3)


def _segment(env, case, name="case01"):
    scene = env.scene
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_node = add_volume_node(scene, case.image, name)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT abdomen")
    item = sh.GetItemByDataNode(volume_node) or sh.CreateItem(study, volume_node)
    sh.SetItemParent(item, study)
    seen = []

    def predict(volume):
        seen.append(volume)
        return prediction_of(case)

    result = mrml.segment(scene, volume_node, predict)
    return result, study, seen


def _physical_points_mm(mask, geometry: Geometry) -> np.ndarray:
    ijk = np.argwhere(mask)[:, ::-1].astype(float)
    matrix = geometry.index_to_physical_matrix()
    return ijk @ matrix[:3, :3].T + matrix[:3, 3]


def test_segment_builds_the_result_nodes_in_a_run_folder_of_the_study(slicer_env, case):
    result, study, seen = _segment(slicer_env, case)
    scene = slicer_env.scene
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)

    # The predictor saw the input's voxels and LPS geometry exactly.
    assert len(seen) == 1 and np.array_equal(seen[0].array, case.image.array)
    assert_geometry_close(seen[0].geometry, case.image.geometry)

    folder = result.folder_item
    assert sh.GetItemParent(folder) == study and sh.GetItemName(folder) == "Hepatoblastoma run 1"
    for node in result.result_nodes:
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == folder
    again = mrml.segment(scene, result.volume_node, lambda v: prediction_of(case))
    assert sh.GetItemName(again.folder_item) == "Hepatoblastoma run 2"

    grid = mrml.volumes.node_grid(result.volume_node)
    seg = result.segmentation_node
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is result.volume_node
    segment = seg.GetSegmentation().GetSegment(result.segment_id)
    assert segment.GetName() == "Hepatoblastoma"
    assert segment.GetTerminology() == mrml.terminology_entry()
    np.testing.assert_allclose(segment.GetColor(), mrml.TUMOR_SEGMENT.color_rgb, atol=1e-6)
    assert np.array_equal(mrml.segment_mask(seg, result.segment_id, grid), case.tumor.array)

    ai = result.ai_node
    assert ai is not seg and ai.GetAttribute("HepatoblastomaSeg.Locked") == "1"
    assert not ai.GetDisplayNode().GetVisibility()
    assert np.array_equal(mrml.segment_mask(ai, result.ai_segment_id, grid), case.tumor.array)

    entropy = result.entropy_node
    assert entropy.GetImageData().GetScalarTypeAsString() == "float"
    assert np.array_equal(slicer.util.arrayFromVolume(entropy), case.entropy.array)
    assert_geometry_close(mrml.geometry_of_node(entropy), case.image.geometry)
    display = entropy.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileInferno.txt"
    assert not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(0.0)
    assert display.GetWindowLevelMax() == pytest.approx(math.log(2.0))
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    assert result.show_entropy(0.35) == 1
    assert composite.GetForegroundVolumeID() == entropy.GetID()
    assert composite.GetBackgroundVolumeID() == result.volume_node.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.35)

    # The table's figures against code that is not the library's.
    rows = mrml.table_rows(result.table_node)
    assert [r["reference"] for r in rows] == ["", mrml.AI_REFERENCE_NAME]
    own = rows[0]
    assert own["case"] == "case01" and own["edited"] == 0
    assert own["volume_ml"] == pytest.approx(sitk_volume_ml(case.tumor), rel=1e-9)
    diameter = pdist(_physical_points_mm(case.tumor.array, case.image.geometry)).max()
    assert own["largest_diameter_mm"] == pytest.approx(diameter, rel=1e-9)
    inside = case.tumor.array.astype(bool)
    assert own["mean_entropy_nats"] == pytest.approx(float(case.entropy.array[inside].mean(dtype=np.float64)),
                                                     rel=1e-6)
    assert 0 < own["core_entropy_nats"] < own["boundary_entropy_nats"] < MAX_ENTROPY_2CLASS_NATS
    assert (own["model_name"], own["model_version"], own["device"], own["modality"], own["tta"]) == \
        ("ct-phantom", "0.1", "cpu", "ct", "True")
    assert own["time_s"] == pytest.approx(2.5)
    assert rows[1]["dice"] == 1.0 and rows[1]["volume_error_pct"] == 0.0
    assert result.table_node.GetColumnUnitLabel("volume_ml") == "mL"

    # Found again from the reviewer's node alone.
    found = mrml.SegmentationResult.from_segmentation_node(seg)
    assert (found.ai_node, found.entropy_node, found.table_node, found.volume_node) == \
        (ai, entropy, result.table_node, result.volume_node)


def test_saved_files_match_the_library_output_voxel_for_voxel(slicer_env, case, tmp_path):
    result, _, _ = _segment(slicer_env, case)
    paths = mrml.save_results(result, tmp_path / "out", case="case 01/a")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["case_01_a.seg.nrrd", "case_01_a_ai.seg.nrrd", "case_01_a_entropy.nrrd", "case_01_a_metrics.tsv",
         "case_01_a_metrics.schema.tsv"])
    library_file = write_segmentation_nrrd(case.tumor, tmp_path / "library.seg.nrrd", [mrml.TUMOR_SEGMENT])
    library = sitk.ReadImage(str(library_file))

    for kind in ("segmentation", "ai_mask"):
        image = sitk.ReadImage(str(paths[kind]))
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(library))
        assert np.array_equal(sitk.GetArrayFromImage(image), case.tumor.array)
        assert_geometry_close(sitk_geometry(image), sitk_geometry(library))
        assert_geometry_close(sitk_geometry(image), case.image.geometry)

        seg = slicerio.read_segmentation(str(paths[kind]))
        ijk_to_lps = case.image.geometry.index_to_physical_matrix()
        np.testing.assert_allclose(seg["ijkToLPS"], ijk_to_lps, rtol=0, atol=1e-6)
        (segment,) = seg["segments"]
        assert segment["name"] == "Hepatoblastoma"
        np.testing.assert_allclose(segment["color"], mrml.TUMOR_SEGMENT.color_rgb, atol=1e-6)
        assert np.array_equal(seg["voxels"].transpose(2, 1, 0) == segment["labelValue"], case.tumor.array == 1)
        terminology = segment["terminology"]
        assert terminology["contextName"] == mrml.CONTEXT_NAME
        spec = mrml.TUMOR_SEGMENT
        assert terminology["category"] == [spec.category.scheme, spec.category.value, spec.category.meaning]
        assert terminology["type"] == ["SCT", "108369006", "Neoplasm"]
        assert terminology["anatomicRegion"] == ["SCT", "10200004", "Liver"]

    entropy = sitk.ReadImage(str(paths["entropy"]))
    assert entropy.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayFromImage(entropy), case.entropy.array)
    assert_geometry_close(sitk_geometry(entropy), case.image.geometry)

    # The table round-trips through Slicer's reader, and plain CSV sees the unit-carrying column names.
    other = mrml.headless_environment()
    table = mrml.load_table(other.scene, paths["metrics"])
    before, after = mrml.table_rows(result.table_node), mrml.table_rows(table)
    assert len(before) == len(after) == 2
    for row_before, row_after in zip(before, after):
        assert row_before.keys() == row_after.keys()
        for key, value in row_before.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(row_after[key]), key
            elif isinstance(value, float):
                assert row_after[key] == pytest.approx(value, rel=1e-5), key  # .tsv keeps 6 significant digits
            else:
                assert row_after[key] == value, key
    assert table.GetColumnUnitLabel("largest_diameter_mm") == "mm"
    with open(paths["metrics"], newline="") as handle:
        header = next(csv.reader(handle, delimiter="\t"))
    assert header == [c.name for c in mrml.METRICS_COLUMNS]
    assert not list((tmp_path / "out").glob(".*partial*"))


@pytest.mark.parametrize("fmt", ["nrrd", "nifti"])
def test_load_results_of_an_hbseg_run_gives_the_same_nodes(slicer_env, case, tmp_path, fmt):
    scene = slicer_env.scene
    in_process, _, _ = _segment(slicer_env, case)
    write_prediction(prediction_of(case), tmp_path / "run", fmt=fmt)
    loaded = mrml.load_results(scene, in_process.volume_node, tmp_path / "run")

    grid = mrml.volumes.node_grid(in_process.volume_node)
    assert np.array_equal(mrml.segment_mask(loaded.segmentation_node, loaded.segment_id, grid), case.tumor.array)
    assert np.array_equal(mrml.segment_mask(loaded.ai_node, loaded.ai_segment_id, grid), case.tumor.array)
    assert np.array_equal(slicer.util.arrayFromVolume(loaded.entropy_node), case.entropy.array)
    assert loaded.segmentation_node.GetSegmentation().GetSegment(loaded.segment_id).GetTerminology() == \
        mrml.terminology_entry()
    # Same numbers (the node names differ: a second run in the same scene gets a unique name).
    assert loaded.segmentation_node.GetName() == "case01 hepatoblastoma_1"
    _assert_rows_equal(mrml.table_rows(loaded.table_node), mrml.table_rows(in_process.table_node), skip={"mask"})
    # No helper node is left behind.
    assert not [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())
                if scene.GetNthNode(i).GetName().startswith("__")]


@pytest.mark.parametrize("fmt", ["nrrd", "nifti"])
def test_the_review_masks_come_back_hidden_beside_the_result(slicer_env, case, tmp_path, fmt):
    """The liver mask and the anchor's removal, written by hbseg beside the result, each become a hidden segmentation
    in the run's folder, linked from the reviewer's node; the result itself is untouched."""
    import dataclasses

    scene = slicer_env.scene
    volume_node = add_volume_node(scene, case.image, "case01")
    removed = np.zeros(case.tumor.array.shape, np.uint8)
    removed[:2, :5, :6] = 1
    removed &= 1 - case.tumor.array.astype(np.uint8)
    assert removed.any()
    liver = np.zeros_like(removed)
    liver[3:, 10:, 10:] = 1
    masks = {"anchor_removed": case.tumor.with_array(removed), "liver": case.tumor.with_array(liver)}
    write_prediction(dataclasses.replace(prediction_of(case), review_masks=masks), tmp_path / "run", fmt=fmt)
    loaded = mrml.load_results(scene, volume_node, tmp_path / "run")
    grid = mrml.volumes.node_grid(volume_node)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for key, name in (("anchor_removed", "Removed by liver anchor"), ("liver", "Liver")):
        node = mrml.nodes.linked(loaded.segmentation_node, key)
        segment_id = node.GetSegmentation().GetNthSegmentID(0)
        assert np.array_equal(mrml.segment_mask(node, segment_id, grid), masks[key].array)
        assert node.GetSegmentation().GetSegment(segment_id).GetName() == name
        assert node.GetDisplayNode().GetVisibility() == 0
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == loaded.folder_item
    assert np.array_equal(mrml.segment_mask(loaded.segmentation_node, loaded.segment_id, grid), case.tumor.array)
    hint = mrml.review_masks_hint(loaded.segmentation_node)
    assert "'case01 liver mask used'" in hint and "'case01 removed by liver anchor'" in hint
    # Without them there are no such nodes.
    write_prediction(prediction_of(case), tmp_path / "plain", fmt=fmt)
    plain = mrml.load_results(scene, volume_node, tmp_path / "plain")
    assert mrml.nodes.linked(plain.segmentation_node, "anchor_removed") is None
    assert mrml.nodes.linked(plain.segmentation_node, "liver") is None
    assert mrml.review_masks_hint(plain.segmentation_node) == mrml.review_masks_hint(None) == ""


def _assert_rows_equal(a, b, skip=()) -> None:
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in set(row_a) - set(skip):
            x, y = row_a[key], row_b[key]
            if isinstance(x, float) and math.isnan(x):
                assert math.isnan(y), key
            else:
                assert x == y, key


def test_load_results_refuses_an_unfinished_or_foreign_run(slicer_env, case, tmp_path):
    scene = slicer_env.scene
    volume_node = add_volume_node(scene, case.image, "case01")
    with pytest.raises(InputError, match="summary.json"):
        mrml.load_results(scene, volume_node, tmp_path)
    write_prediction(prediction_of(case), tmp_path / "run", fmt="nifti")
    entropy_file = tmp_path / "run" / "entropy.nii.gz"
    entropy_file.write_bytes(entropy_file.read_bytes()[:-10])  # truncated after the summary was written
    with pytest.raises(InputError, match="checksum"):
        mrml.load_results(scene, volume_node, tmp_path / "run")

    # Outputs of another image: same size, other origin.
    shifted = awkward_geometry(origin=(0.0, 0.0, 0.0))
    other = make_case(seed=3, geometry=shifted)
    write_prediction(prediction_of(other), tmp_path / "other", fmt="nrrd")
    with pytest.raises(GeometryError, match="origin"):
        mrml.load_results(scene, volume_node, tmp_path / "other")


def test_a_prediction_on_another_grid_is_refused(slicer_env, case):
    scene = slicer_env.scene
    volume_node = add_volume_node(scene, case.image, "case01")
    other = make_case(seed=3, geometry=awkward_geometry(spacing=(0.78, 0.71, 3.0)))
    with pytest.raises(GeometryError, match="spacing"):
        mrml.segment(scene, volume_node, lambda v: prediction_of(other))
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_terminology_file_loads_in_slicer_and_matches_the_library_and_dicom(slicer_env):
    from pydicom.sr.codedict import codes

    logic = slicer_env.terminology_logic
    assert mrml.load_terminology(logic) == mrml.CONTEXT_NAME
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(mrml.terminology_entry(), entry)
    found = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(mrml.CONTEXT_NAME, "hepatoblastoma", found)
    spec = mrml.TUMOR_SEGMENT
    assert found.GetCategoryObject().GetCodeValue() == spec.category.value == "49755003"
    assert found.GetTypeObject().GetCodeValue() == spec.type.value == "108369006"
    rgb = np.array(found.GetTypeObject().GetRecommendedDisplayRGBValue()) / 255.0
    np.testing.assert_allclose(rgb, spec.color_rgb, atol=1 / 255)
    # The codes mean what the file says, by DICOM PS3.16 as pydicom ships it.
    assert codes.SCT.Neoplasm.value == spec.type.value
    assert codes.SCT.Liver.value == spec.anatomic_region.value
    assert codes.SCT.MorphologicallyAbnormalStructure.value == spec.category.value
    assert json.loads(mrml.TERMINOLOGY_FILE.read_text())["SegmentationCategoryTypeContextName"] == mrml.CONTEXT_NAME


def test_entropy_written_from_float64_is_float32(slicer_env, case, tmp_path):
    scene = slicer_env.scene
    volume_node = add_volume_node(scene, case.image, "case01")
    prediction = prediction_of(case)
    prediction.entropy = prediction.entropy.with_array(prediction.entropy.array * np.float64(1.0))
    result = mrml.add_prediction(scene, volume_node, prediction)
    path = mrml.save_node(result.entropy_node, tmp_path / "e.nrrd")
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkFloat32
    write_volume(case.entropy, tmp_path / "ref.nrrd")
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref.nrrd"))))


def test_the_glue_imports_neither_qt_nor_torch():
    """Inside Slicer the GUI imports the glue in the application's process: no Qt here (the module must run headless)
    and no torch (the network runs in a background process there)."""
    import subprocess
    import sys

    from slicer_env import MODULE_DIR

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import HepatoblastomaSegMRML; "
            "bad = sorted(m for m in ('qt', 'ctk', 'torch', 'monai') if m in sys.modules); print(bad)")
    done = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
