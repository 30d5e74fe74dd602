"""Consensus of annotators' segmentation nodes, on the real MRML classes: equals the library's majority vote and
SimpleITK's LabelVoting; the agreement table's Dice equals SimpleITK's."""

from __future__ import annotations

import itertools

import pytest

slicer = pytest.importorskip("slicer")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import slicerio  # noqa: E402

from slicer_env import (  # noqa: E402,F401  (slicer_env is a fixture)
    add_volume_node,
    import_mask_as_segmentation,
    make_case,
    mrml,
    sitk_dice,
    sitk_volume_ml,
    slicer_env,
)

from HepatoblastomaSegLib.errors import ConfigError  # noqa: E402
from HepatoblastomaSegLib.evaluate.consensus import majority_vote  # noqa: E402
from HepatoblastomaSegLib.io import Volume  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture
def annotated(slicer_env):
    case = make_case(seed=7)
    scene = slicer_env.scene
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_node = add_volume_node(scene, case.image, "case07")
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.SetItemParent(sh.GetItemByDataNode(volume_node) or sh.CreateItem(study, volume_node), study)
    nodes = {name: import_mask_as_segmentation(scene, mask, volume_node, name)[0]
             for name, mask in case.raters.items()}
    return case, volume_node, nodes, study


def test_consensus_of_three_nodes_is_the_majority_vote(slicer_env, annotated, tmp_path):
    case, volume_node, nodes, study = annotated
    scene = slicer_env.scene
    result = mrml.consensus(scene, list(nodes.values()), volume_node=volume_node)

    grid = mrml.volumes.node_grid(volume_node)
    vote = mrml.segment_mask(result.segmentation_node, result.segment_id, grid)
    masks = [case.raters[name].array for name in ("R1", "R2", "R3")]
    assert np.array_equal(vote, majority_vote(masks))
    voting = sitk.LabelVoting([sitk.GetImageFromArray(m) for m in masks], 0)
    assert np.array_equal(vote, sitk.GetArrayFromImage(voting))
    assert 0 < vote.sum() < sum(m.sum() for m in masks)

    segment = result.segmentation_node.GetSegmentation().GetSegment(result.segment_id)
    assert segment.GetName() == "Hepatoblastoma" and segment.GetTerminology() == mrml.terminology_entry()
    assert result.segmentation_node.GetAttribute("HepatoblastomaSeg.ConsensusRule") == ">= 2 of 3 votes"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(result.folder_item) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(result.table_node)) == result.folder_item

    rows = mrml.table_rows(result.table_node)
    pairs = {(r["annotator_a"], r["annotator_b"]): r for r in rows}
    for a, b in itertools.combinations(("R1", "R2", "R3"), 2):
        assert pairs[(a, b)]["dice"] == pytest.approx(sitk_dice(case.raters[a].array, case.raters[b].array),
                                                      rel=1e-9)
        assert pairs[(a, b)]["volume_a_ml"] == pytest.approx(sitk_volume_ml(case.raters[a]), rel=1e-9)
    consensus_name = result.segmentation_node.GetName()
    for name in ("R1", "R2", "R3"):
        assert pairs[(name, consensus_name)]["dice"] == pytest.approx(sitk_dice(case.raters[name].array, vote),
                                                                      rel=1e-9)
    assert len(rows) == 3 + 3

    # Saved, it is a normal one-segment .seg.nrrd on the image grid.
    path = mrml.save_node(result.segmentation_node, tmp_path / "consensus.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    assert np.array_equal(seg["voxels"].transpose(2, 1, 0) == 1, vote == 1)
    np.testing.assert_allclose(seg["ijkToLPS"], case.image.geometry.index_to_physical_matrix(), atol=1e-6)


def test_consensus_takes_the_grid_from_the_annotations_and_honours_min_votes(slicer_env, annotated):
    case, volume_node, nodes, _ = annotated
    scene = slicer_env.scene
    # A reference geometry but no reference volume node, as after loading a .seg.nrrd on its own.
    for node in nodes.values():
        node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), None)
    result = mrml.consensus(scene, [nodes["R1"], nodes["R2"]], min_votes=1, name="Union")
    grid = mrml.volumes.segmentation_grid(result.segmentation_node)
    union = mrml.segment_mask(result.segmentation_node, result.segment_id, grid)
    assert np.array_equal(union, np.maximum(case.raters["R1"].array, case.raters["R2"].array))
    assert result.segmentation_node.GetName() == "Union"

    with pytest.raises(ConfigError, match="at least 2"):
        mrml.consensus(scene, [nodes["R1"]], volume_node=volume_node)


def test_consensus_of_an_empty_and_a_full_annotation(slicer_env, annotated):
    case, volume_node, _, _ = annotated
    scene = slicer_env.scene
    empty = import_mask_as_segmentation(scene, Volume(np.zeros_like(case.tumor.array), case.image.geometry),
                                        volume_node, "empty")[0]
    full = import_mask_as_segmentation(scene, case.tumor, volume_node, "tumour")[0]
    result = mrml.consensus(scene, [empty, full], volume_node=volume_node)
    grid = mrml.volumes.node_grid(volume_node)
    assert mrml.segment_mask(result.segmentation_node, result.segment_id, grid).sum() == 0  # 1 of 2 is no majority
    (pair, *_) = mrml.table_rows(result.table_node)
    assert pair["dice"] == 0.0 and pair["volume_a_ml"] == 0.0
