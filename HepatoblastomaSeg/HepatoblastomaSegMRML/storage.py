"""Files <-> nodes through Slicer's storage nodes (the same code path in the application and headless).

Writes are atomic: a storage node writes to a temporary name in the destination folder, which is renamed onto the
real name only when the write succeeded (a table's ``.schema.tsv`` is renamed before its ``.tsv``), so a killed
run never leaves a half-written file under a final name. ``slicer.util.saveNode``/``loadVolume`` are not used:
they need ``slicer.app``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import slicer

from HepatoblastomaSegLib.errors import GeometryError, InputError
from HepatoblastomaSegLib.io import atomic_path, full_suffix

from .nodes import unique_name
from .terminology import TUMOR_SEGMENT, apply_segment_spec
from .volumes import find_segment, node_grid, segment_mask, set_segment_mask, volume_array_on_grid

#: Which storage node writes which node class, and the file suffixes it is used with here.
_STORAGE = {
    "vtkMRMLSegmentationNode": ("vtkMRMLSegmentationStorageNode", (".seg.nrrd",)),
    "vtkMRMLScalarVolumeNode": ("vtkMRMLVolumeArchetypeStorageNode", (".nrrd", ".nii.gz", ".nii", ".mha")),
    "vtkMRMLLabelMapVolumeNode": ("vtkMRMLVolumeArchetypeStorageNode", (".nrrd", ".nii.gz", ".nii", ".mha")),
    "vtkMRMLTableNode": ("vtkMRMLTableStorageNode", (".tsv", ".csv")),
}
_MASK_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _storage_class(node) -> tuple[str, tuple[str, ...]]:
    for class_name, entry in _STORAGE.items():
        if node.IsA(class_name) and (class_name != "vtkMRMLScalarVolumeNode"
                                     or not node.IsA("vtkMRMLLabelMapVolumeNode")):
            return entry
    raise InputError(f"cannot save a {node.GetClassName()} node ('{node.GetName()}') with this module")


def _storage_node(node, class_name: str):
    """The node's storage node (made and added to its scene when it has none)."""
    storage = node.GetStorageNode()
    if storage is None or not storage.IsA(class_name):
        storage = getattr(slicer, class_name)()
        scene = node.GetScene()
        if scene is not None:
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
    return storage


def save_node(node, path: str | Path) -> Path:
    """Write ``node`` to ``path`` with its storage node, atomically; return the path.

    Segmentations are written uncropped (the full reference grid), volumes compressed, tables with their
    ``.schema.tsv`` (column types, units, descriptions) beside them.
    """
    path = Path(path)
    class_name, suffixes = _storage_class(node)
    suffix = full_suffix(path)
    if suffix not in suffixes:
        raise InputError(f"a {node.GetClassName()} is saved as {' or '.join(suffixes)}, not '{suffix}'", path)
    storage = _storage_node(node, class_name)
    if hasattr(storage, "SetCropToMinimumExtent"):
        storage.SetCropToMinimumExtent(False)  # keep the reference grid: the file lines up with the image
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(True)
    schema = path.with_name(path.name[: -len(suffix)] + ".schema" + suffix) if class_name == \
        "vtkMRMLTableStorageNode" else None
    with atomic_path(path) as tmp:
        tmp_schema = tmp.with_name(tmp.name[: -len(suffix)] + ".schema" + suffix) if schema else None
        tmp.unlink()  # the storage node would otherwise log that it replaces the placeholder file
        storage.SetFileName(str(tmp))
        if tmp_schema is not None:
            storage.SetSchemaFileName(str(tmp_schema))
        try:
            if not storage.WriteData(node):
                raise InputError(f"3D Slicer could not write '{node.GetName()}' here", path)
            if tmp_schema is not None:
                os.replace(tmp_schema, schema)
        except BaseException:
            if tmp_schema is not None:
                with contextlib.suppress(FileNotFoundError):
                    tmp_schema.unlink()
            raise
    storage.SetFileName(str(path))
    if schema is not None:
        storage.SetSchemaFileName(str(schema))
    return path


def _read(scene, node_class: str, storage_class: str, path: Path, name: str | None) -> Any:
    if not path.is_file():
        raise InputError("file not found", path)
    node = scene.AddNewNodeByClass(node_class, unique_name(scene, name or _stem(path)))
    storage = getattr(slicer, storage_class)()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if hasattr(storage, "SetSingleFile"):
        storage.SetSingleFile(True)  # never a series guessed from numbered names (case_1.nii.gz, case_2.nii.gz...)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError("3D Slicer could not read this file (unreadable, truncated or not a "
                         f"{node_class.replace('vtkMRML', '').replace('Node', '')})", path)
    return node


def _stem(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def load_volume(scene, path: str | Path, *, name: str | None = None, labelmap: bool = False) -> Any:
    """Read an image file into a new scalar (or labelmap) volume node with a display node.

    Slicer's reader gives a left-handed image (e.g. one x axis flipped) a right-handed grid by reversing its k axis:
    the voxels are in the same places, but the array is not the file's. Map it with :func:`volumes.map_onto_grid`
    (as :func:`load_mask` and :func:`~.segment.load_results` do) when it must line up with another grid.
    """
    node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = _read(scene, node_class, "vtkMRMLVolumeArchetypeStorageNode", Path(path), name)
    node.CreateDefaultDisplayNodes()
    return node


def load_segmentation(scene, path: str | Path, *, name: str | None = None) -> Any:
    """Read a ``.seg.nrrd`` into a new segmentation node (segments, colours, terminology and the reference
    geometry stored in the file included)."""
    node = _read(scene, "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", Path(path), name)
    node.CreateDefaultDisplayNodes()
    return node


def load_table(scene, path: str | Path, *, name: str | None = None) -> Any:
    """Read a ``.tsv``/``.csv`` table (and its ``.schema.tsv`` when present) into a new table node."""
    return _read(scene, "vtkMRMLTableNode", "vtkMRMLTableStorageNode", Path(path), name)


def load_mask(scene, path: str | Path, volume_node, *, name: str | None = None,
              segment: str | None = None) -> tuple[Any, str]:
    """A segmentation node on ``volume_node``'s grid from a mask file: a ``.seg.nrrd`` (its ``segment``, or its
    only segment, or the one named like the tumour segment) or a binary image (NIfTI, NRRD, MetaImage: nonzero is
    inside). Returns ``(node, segment_id)``. :class:`GeometryError` naming the file when the mask is not on the
    volume's voxel lattice (the same voxel centres, axes in any order: Slicer's reader reverses the k axis of a
    left-handed file) or does not cover it."""
    path = Path(path)
    suffix = full_suffix(path)
    grid = node_grid(volume_node)
    if suffix == ".seg.nrrd":
        node = load_segmentation(scene, path, name=name)
        segment_id = find_segment(node, segment, preferred_name=TUMOR_SEGMENT.name)
        try:
            segment_mask(node, segment_id, grid, what="the mask")  # checks that the file lies on the volume's grid
        except InputError as exc:
            _remove_with_helpers(scene, node)
            raise type(exc)(exc.problem, path) from exc
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        return node, segment_id
    if suffix not in _MASK_IMAGE_SUFFIXES:
        raise InputError(f"cannot read a mask from '{suffix or 'no extension'}' files; use .seg.nrrd or one of "
                         + ", ".join(_MASK_IMAGE_SUFFIXES), path)
    labelmap = load_volume(scene, path, name="__mask__", labelmap=True)
    try:
        mask = volume_array_on_grid(labelmap, grid, what="the mask") != 0
    except GeometryError as exc:
        raise GeometryError(exc.problem, path) from exc
    finally:
        _remove_with_helpers(scene, labelmap)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", unique_name(scene, name or _stem(path)))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segment_id = node.GetSegmentation().AddEmptySegment("", TUMOR_SEGMENT.name, list(TUMOR_SEGMENT.color_rgb))
    apply_segment_spec(node.GetSegmentation().GetSegment(segment_id))
    set_segment_mask(node, segment_id, mask, grid)
    return node, segment_id


def _remove_with_helpers(scene, node) -> None:
    """Remove a node with its storage and display nodes."""
    helpers = [node.GetStorageNode(), node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is scene:
            scene.RemoveNode(helper)


def remove_node(scene, node) -> None:
    """Remove ``node`` and the storage and display nodes that belong to it only."""
    _remove_with_helpers(scene, node)


def file_stem(text: str) -> str:
    """``text`` made safe as a file name stem (letters, digits, ``-``, ``_``, ``.``; others become ``_``)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip()).strip("._")
    return stem or "case"


def result_paths(folder: str | Path, case: str) -> dict[str, Path]:
    """Where :func:`save_results` puts each file of ``case`` in ``folder``."""
    folder, stem = Path(folder), file_stem(case)
    return {"segmentation": folder / f"{stem}.seg.nrrd", "ai_mask": folder / f"{stem}_ai.seg.nrrd",
            "entropy": folder / f"{stem}_entropy.nrrd", "metrics": folder / f"{stem}_metrics.tsv"}


def save_results(result, folder: str | Path, *, case: str | None = None, include_ai: bool = True) -> dict[str, Path]:
    """Save a :class:`~.segment.SegmentationResult` to ``folder``: the reviewer's segmentation ``CASE.seg.nrrd``,
    the AI mask ``CASE_ai.seg.nrrd`` (unless ``include_ai`` is False), the entropy map ``CASE_entropy.nrrd`` and the
    metrics ``CASE_metrics.tsv`` (+ ``.schema.tsv``), each on the input's exact grid; returns the paths by kind.
    ``case`` defaults to the input volume's name."""
    paths = result_paths(folder, case if case is not None else result.volume_node.GetName())
    nodes_by_kind = {"segmentation": result.segmentation_node, "ai_mask": result.ai_node if include_ai else None,
                     "entropy": result.entropy_node, "metrics": result.table_node}
    saved = {}
    for kind, node in nodes_by_kind.items():
        if node is not None:
            saved[kind] = save_node(node, paths[kind])
    return saved
