"""Library outputs -> MRML nodes: segmentation, entropy volume, metrics table, and their place in the subject
hierarchy. Every function takes the scene (or a node of it) as a parameter.

Nodes made here carry the attribute :data:`ROLE_ATTRIBUTE` (``segmentation``, ``ai_mask``, ``entropy``,
``metrics``, ``consensus``, ``agreement``, ``liver``, ``anchor_removed``), and the reviewer's segmentation node
references the others (roles in :data:`REFERENCE_ROLES`), so a result can be found again from that one node after the
scene was saved and reloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import slicer
import vtk

from HepatoblastomaSegLib.infer import MAX_ENTROPY_2CLASS_NATS
from HepatoblastomaSegLib.terminology import SegmentSpec

from .environment import INFERNO_COLOR_NODE_ID
from .terminology import TUMOR_SEGMENT, apply_segment_spec
from .volumes import node_grid, set_segment_mask, set_volume_array

ROLE_ATTRIBUTE = "HepatoblastomaSeg.Role"
LOCKED_ATTRIBUTE = "HepatoblastomaSeg.Locked"
CHECKSUM_ATTRIBUTE = "HepatoblastomaSeg.MaskSHA256"
SUMMARY_ATTRIBUTE = "HepatoblastomaSeg.Summary"
OPACITY_ATTRIBUTE = "HepatoblastomaSeg.ForegroundOpacity"
RUN_ATTRIBUTE = "HepatoblastomaSeg.Run"
CASE_ATTRIBUTE = "HepatoblastomaSeg.Case"
RUN_LABEL_ATTRIBUTE = "HepatoblastomaSeg.RunLabel"

#: Node reference roles from the reviewer's segmentation node to the rest of its result.
REFERENCE_ROLES = {"ai_mask": "HepatoblastomaSeg.AIMask", "entropy": "HepatoblastomaSeg.Entropy",
                   "metrics": "HepatoblastomaSeg.Metrics", "volume": "HepatoblastomaSeg.InputVolume",
                   "liver": "HepatoblastomaSeg.LiverMask", "anchor_removed": "HepatoblastomaSeg.AnchorRemoved"}

#: Opacity the entropy map is shown with as the slice views' foreground layer.
DEFAULT_ENTROPY_OPACITY = 0.5
#: Entropy below this is drawn transparent (a tenth of ln 2, a softmax probability beyond about 0.986 or 0.014):
#: Inferno starts near black, so without a threshold every confident voxel would darken the image under the overlay.
ENTROPY_OVERLAY_MIN_NATS = 0.1 * MAX_ENTROPY_2CLASS_NATS


def unique_name(scene, name: str) -> str:
    """``name`` when no node of ``scene`` has it yet, else Slicer's next free variant (``name_1``...)."""
    return name if scene.GetFirstNodeByName(name) is None else scene.GenerateUniqueName(name)


# --- segmentations -----------------------------------------------------------------------------------------------

def mask_checksum(mask_zyx: np.ndarray) -> str:
    """SHA256 of a mask's shape and 0/1 voxels (to tell whether a locked mask was edited)."""
    digest = hashlib.sha256(str(tuple(mask_zyx.shape)).encode())
    digest.update(memoryview(np.ascontiguousarray(mask_zyx != 0).view(np.uint8)))
    return digest.hexdigest()


def add_segmentation_node(scene, volume_node, mask_zyx: np.ndarray, name: str, *, spec: SegmentSpec = TUMOR_SEGMENT,
                          role: str = "segmentation", locked: bool = False, grid=None) -> tuple[Any, str]:
    """A segmentation node whose reference geometry is ``volume_node`` and whose one segment (``spec``: name,
    colour, terminology) holds ``mask_zyx`` (the volume's ``[z, y, x]`` grid). Returns ``(node, segment_id)``.

    ``volume_node`` may be None when ``grid`` (a geometry-only ``vtkOrientedImageData``) gives the reference
    geometry instead. ``locked``: the node is marked read-only (attribute :data:`LOCKED_ATTRIBUTE`) and remembers
    the checksum of its voxels, so a later re-score can refuse an edited copy; it is hidden in the views (the
    editable copy is shown).
    """
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", unique_name(scene, name))
    node.CreateDefaultDisplayNodes()
    if volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        if volume_node.GetTransformNodeID():
            node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        grid = node_grid(volume_node)
    else:
        node.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(grid))
    segment_id = node.GetSegmentation().AddEmptySegment("", spec.name, list(spec.color_rgb))
    apply_segment_spec(node.GetSegmentation().GetSegment(segment_id), spec)
    set_segment_mask(node, segment_id, mask_zyx, grid)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if locked:
        node.SetAttribute(LOCKED_ATTRIBUTE, "1")
        node.SetAttribute(CHECKSUM_ATTRIBUTE, mask_checksum(mask_zyx))
        node.GetDisplayNode().SetVisibility(False)
    return node, segment_id


# --- entropy volume ----------------------------------------------------------------------------------------------

def add_entropy_node(scene, volume_node, entropy_zyx: np.ndarray, name: str, *,
                     opacity: float = DEFAULT_ENTROPY_OPACITY) -> Any:
    """A float32 scalar volume on ``volume_node``'s exact grid, displayed with Inferno (the application's
    ``vtkMRMLColorTableNodeFileInferno.txt``; left at the default grey when the scene has no such node) over the
    window 0 .. ln 2 nats, transparent below :data:`ENTROPY_OVERLAY_MIN_NATS`; ``opacity`` is stored for
    :func:`show_entropy_overlay`."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", unique_name(scene, name))
    node.CopyOrientation(volume_node)
    if volume_node.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    # NumPy 2 promotes float32 x float64 scalars to float64: cast here so the map is written as float32.
    set_volume_array(node, np.asarray(entropy_zyx, dtype=np.float32))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if scene.GetNodeByID(INFERNO_COLOR_NODE_ID) is not None:
        display.SetAndObserveColorNodeID(INFERNO_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, MAX_ENTROPY_2CLASS_NATS)
    display.SetThreshold(ENTROPY_OVERLAY_MIN_NATS, np.finfo(np.float32).max)  # confident voxels: transparent
    display.ApplyThresholdOn()
    node.SetAttribute(ROLE_ATTRIBUTE, "entropy")
    node.SetAttribute(OPACITY_ATTRIBUTE, f"{float(opacity):g}")
    return node


def show_entropy_overlay(scene, volume_node, entropy_node, opacity: float | None = None) -> int:
    """Show ``volume_node`` as background and ``entropy_node`` as foreground at ``opacity`` (default: the one
    stored on the entropy node) in every slice view of ``scene``; returns how many views were set."""
    if opacity is None:
        opacity = float(entropy_node.GetAttribute(OPACITY_ATTRIBUTE) or DEFAULT_ENTROPY_OPACITY)
    count = 0
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(volume_node.GetID())
        composite.SetForegroundVolumeID(entropy_node.GetID())
        composite.SetForegroundOpacity(float(opacity))
        count += 1
    return count


# --- tables ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: its name (unit as suffix), value type ("string", "double", "int"), unit and meaning."""

    name: str
    kind: str
    unit: str = ""
    description: str = ""


_ARRAYS = {"string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}


def fill_table(table_node, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> Any:
    """Replace the contents of ``table_node`` by ``rows`` (dicts by column name; missing cells are empty strings,
    NaN or 0). Units and descriptions go into the column properties, which the ``.schema.tsv`` file keeps."""
    table_node.RemoveAllColumns()
    arrays = []
    for column in columns:
        array = _ARRAYS[column.kind]()
        array.SetName(column.name)
        array.SetNumberOfTuples(len(rows))
        for index, row in enumerate(rows):
            value = row.get(column.name)
            if column.kind == "string":
                array.SetValue(index, "" if value is None else str(value))
            elif column.kind == "double":
                array.SetValue(index, math.nan if value is None else float(value))
            else:
                array.SetValue(index, 0 if value is None else int(value))
        arrays.append(array)
    for array in arrays:
        table_node.AddColumn(array)
    for column in columns:
        if column.unit:
            table_node.SetColumnUnitLabel(column.name, column.unit)
        if column.description:
            table_node.SetColumnDescription(column.name, column.description)
    table_node.Modified()
    return table_node


def add_table_node(scene, name: str, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], *,
                   role: str) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", unique_name(scene, name))
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    return fill_table(node, columns, rows)


def table_rows(table_node) -> list[dict[str, Any]]:
    """The rows of a table node as dicts (doubles as float, ints as int, the rest as str)."""
    table = table_node.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for column in columns:
            if isinstance(column, vtk.vtkStringArray):
                row[column.GetName()] = column.GetValue(r)
            elif column.GetDataType() in (vtk.VTK_FLOAT, vtk.VTK_DOUBLE):
                row[column.GetName()] = float(column.GetValue(r))
            else:
                row[column.GetName()] = int(column.GetValue(r))
        rows.append(row)
    return rows


# --- summary and references --------------------------------------------------------------------------------------

def store_summary(node, summary: Mapping[str, Any]) -> None:
    node.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary, default=str))


def stored_summary(node) -> dict[str, Any]:
    text = node.GetAttribute(SUMMARY_ATTRIBUTE)
    return json.loads(text) if text else {}


def link(segmentation_node, **nodes: Any) -> None:
    """Reference the result's other nodes from the reviewer's segmentation (keys of :data:`REFERENCE_ROLES`)."""
    for key, node in nodes.items():
        segmentation_node.SetNodeReferenceID(REFERENCE_ROLES[key], node.GetID() if node is not None else None)


def linked(segmentation_node, key: str) -> Any:
    return segmentation_node.GetNodeReference(REFERENCE_ROLES[key])


# --- subject hierarchy -------------------------------------------------------------------------------------------

def hierarchy(scene):
    """The scene's subject hierarchy node (created when missing)."""
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def hierarchy_item(scene, node, parent_item: int | None = None) -> int:
    """The node's subject hierarchy item; created (under ``parent_item`` or the scene) when it has none, which
    happens headless, where no plugin adds items for new nodes."""
    sh = hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(parent_item or sh.GetSceneItemID(), node)
    return item


def create_run_folder(scene, anchor_node, label: str) -> int:
    """A new folder, named ``label`` plus a run number, in the study of ``anchor_node`` (the input volume), or
    beside it when it is in no study; returns the folder item."""
    sh = hierarchy(scene)
    volume_item = hierarchy_item(scene, anchor_node)
    study = sh.GetItemAncestorAtLevel(volume_item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    parent = study or sh.GetItemParent(volume_item) or sh.GetSceneItemID()
    children = vtk.vtkIdList()
    sh.GetItemChildren(parent, children, False)
    runs = [int(sh.GetItemAttribute(child, RUN_ATTRIBUTE) or 0)
            for child in (children.GetId(i) for i in range(children.GetNumberOfIds()))
            if sh.GetItemAttribute(child, RUN_LABEL_ATTRIBUTE) == label]
    number = max(runs, default=0) + 1
    folder = sh.CreateFolderItem(parent, f"{label} {number}")
    sh.SetItemAttribute(folder, RUN_ATTRIBUTE, str(number))
    sh.SetItemAttribute(folder, RUN_LABEL_ATTRIBUTE, label)
    return folder


def move_to_folder(scene, folder_item: int, nodes: Sequence[Any]) -> None:
    sh = hierarchy(scene)
    for node in nodes:
        sh.SetItemParent(hierarchy_item(scene, node, folder_item), folder_item)


def folder_of(scene, node) -> int:
    """The subject hierarchy parent item of ``node`` (0 when it has no item)."""
    sh = hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    return sh.GetItemParent(item) if item else 0
