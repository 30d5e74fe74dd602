"""Voxel grids and arrays between MRML nodes and the library's :class:`~HepatoblastomaSegLib.io.Volume`.

Conventions (each one checked by a round trip through files in the tests):

- MRML nodes hold IJK -> RAS; the library (SimpleITK, every file) holds LPS: ``lps = diag(-1, -1, 1) @ ras``.
- Arrays are ``[k, j, i]`` = ``[z, y, x]`` on both sides (``slicer.util.arrayFromVolume`` and SimpleITK agree).
- A *grid* is a ``vtkOrientedImageData`` that carries only a geometry (extent + image-to-world matrix, no voxels);
  segments are read from and written to segmentations on a grid, which is how the segmentation keeps the input
  volume's geometry exactly (no cropping, no resampling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from HepatoblastomaSegLib.errors import GeometryError, InputError
from HepatoblastomaSegLib.io import Geometry, Volume

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
#: Largest difference between two grids' voxel index frames that still counts as the same grid (in voxels).
_GRID_TOLERANCE_VOXELS = 1e-3


def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(node_or_grid) -> np.ndarray:
    """The 4x4 IJK -> RAS matrix of a volume node or a grid."""
    matrix = vtk.vtkMatrix4x4()
    if isinstance(node_or_grid, slicer.vtkOrientedImageData):
        node_or_grid.GetImageToWorldMatrix(matrix)
    else:
        node_or_grid.GetIJKToRASMatrix(matrix)
    return _matrix_to_array(matrix)


def node_name(node) -> str:
    """A node's name for messages (its storage file when it has one)."""
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    filename = storage.GetFileName() if storage is not None else None
    return f"'{node.GetName()}'" + (f" ({filename})" if filename else "")


# --- volume nodes <-> Volume -------------------------------------------------------------------------------------

def _image_data(volume_node):
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"volume node {node_name(volume_node)} holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume node {node_name(volume_node)} has {image.GetNumberOfScalarComponents()} "
                         "components per voxel; a single-channel scalar volume is required")
    return image


def geometry_of_node(volume_node) -> Geometry:
    """The LPS :class:`Geometry` of a volume node, from its spacing, origin and directions (not re-derived from
    the composed matrix, so 2.5 mm stays 2.5 mm)."""
    image = _image_data(volume_node)
    extent = image.GetExtent()
    if extent[0] != 0 or extent[2] != 0 or extent[4] != 0:
        raise InputError(f"volume node {node_name(volume_node)} has image extent {extent} that does not start at 0")
    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    direction_ras = _matrix_to_array(directions)[:3, :3]
    origin_ras = np.array(volume_node.GetOrigin())
    return Geometry(image.GetDimensions(), volume_node.GetSpacing(), _LPS_FROM_RAS @ origin_ras,
                    (_LPS_FROM_RAS @ direction_ras).ravel())


def set_node_geometry(volume_node, geometry: Geometry) -> None:
    """Place ``volume_node`` on ``geometry`` (LPS) by setting its spacing, origin and directions (RAS)."""
    direction_ras = _LPS_FROM_RAS @ geometry.direction_matrix
    volume_node.SetSpacing(*geometry.spacing_mm)
    volume_node.SetOrigin(*(_LPS_FROM_RAS @ np.asarray(geometry.origin_mm)))
    matrix = np.eye(4)
    matrix[:3, :3] = direction_ras
    volume_node.SetIJKToRASDirectionMatrix(_array_to_matrix(matrix))


def volume_from_node(volume_node) -> Volume:
    """The voxels (copied, ``[z, y, x]``) and LPS geometry of a scalar volume node as a library Volume."""
    geometry = geometry_of_node(volume_node)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    storage = volume_node.GetStorageNode()
    path = storage.GetFileName() if storage is not None and storage.GetFileName() else None
    return Volume(array, geometry, Path(path) if path else None, {"node_name": volume_node.GetName()})


def set_volume_array(volume_node, array_zyx: np.ndarray) -> None:
    """Replace the voxels of ``volume_node`` (its geometry is left as is); ``array_zyx`` is copied."""
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array_zyx))


def require_node_geometry(volume: Volume, volume_node, *, what: str) -> None:
    """Raise :class:`GeometryError` naming ``what`` and the node when ``volume`` is not on the node's grid
    (the library's tolerances: 1e-4 mm spacing, 1e-3 mm origin, 1e-5 direction)."""
    problems = geometry_of_node(volume_node).mismatches(volume.geometry)
    if problems:
        raise GeometryError(f"{what} does not lie on the grid of volume {node_name(volume_node)}: "
                            + "; ".join(problems), volume.path)


# --- grids -------------------------------------------------------------------------------------------------------

def node_grid(volume_node) -> slicer.vtkOrientedImageData:
    """The voxel grid of a volume node (geometry only, no voxels)."""
    grid = slicer.vtkOrientedImageData()
    grid.SetExtent(_image_data(volume_node).GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    grid.SetImageToWorldMatrix(matrix)
    return grid


def segmentation_grid(segmentation_node) -> slicer.vtkOrientedImageData:
    """The reference grid of a segmentation: its reference volume node when that is in the scene, else the
    reference geometry stored with the segmentation (what a ``.seg.nrrd`` file keeps).

    Raises :class:`InputError` naming the node when it has neither.
    """
    reference = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
    if reference is not None and reference.GetImageData() is not None:
        return node_grid(reference)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    serialized = segmentation_node.GetSegmentation().GetConversionParameter(parameter)
    grid = slicer.vtkOrientedImageData()
    if not serialized or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, grid, False):
        raise InputError(f"segmentation {node_name(segmentation_node)} has no reference geometry; choose the "
                         "volume it was drawn on")
    return grid


def grid_shape_zyx(grid) -> tuple[int, int, int]:
    e = grid.GetExtent()
    return (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)


def geometry_of_grid(grid) -> Geometry:
    """The LPS :class:`Geometry` of a grid (its first voxel is the origin, whatever the extent's start)."""
    matrix = ijk_to_ras(grid)
    extent = grid.GetExtent()
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    direction_ras = matrix[:3, :3] / spacing
    origin_ras = matrix[:3, :3] @ np.array(extent[0::2], float) + matrix[:3, 3]
    size = grid_shape_zyx(grid)[::-1]
    return Geometry(size, spacing, _LPS_FROM_RAS @ origin_ras, (_LPS_FROM_RAS @ direction_ras).ravel())


def lattice_map(source_ijk_to_ras: np.ndarray, target_ijk_to_ras: np.ndarray
                ) -> tuple[list[int], list[int], np.ndarray] | None:
    """How ``source`` voxel indices map onto ``target`` ones when both grids are the same lattice of voxel centres,
    possibly with axes reversed or swapped: ``(axes, signs, shift)`` with ``target[a] = signs[a] *
    source[axes[a]] + shift[a]``; None when they are not the same lattice (other spacing, a rotation, a sub-voxel
    shift). 3D Slicer's volume reader, for one, reverses the k axis of a left-handed image file."""
    relative = np.linalg.solve(target_ijk_to_ras, source_ijk_to_ras)
    block = relative[:3, :3]
    rounded = np.round(block)
    if not np.allclose(block, rounded, atol=_GRID_TOLERANCE_VOXELS):
        return None
    if not (np.abs(rounded).sum(axis=0) == 1).all() or not (np.abs(rounded).sum(axis=1) == 1).all():
        return None
    shift = relative[:3, 3]
    if not np.allclose(shift, np.round(shift), atol=_GRID_TOLERANCE_VOXELS):
        return None
    axes = [int(np.flatnonzero(rounded[a])[0]) for a in range(3)]
    signs = [int(rounded[a, axes[a]]) for a in range(3)]
    return axes, signs, np.round(shift).astype(int)


def map_onto_grid(values_zyx: np.ndarray, source_extent, source_ijk_to_ras: np.ndarray, grid, *,
                  what: str) -> tuple[np.ndarray, bool]:
    """Copy voxels from a source grid onto ``grid`` exactly (no interpolation): the two must be the same lattice
    (:func:`lattice_map`; :class:`GeometryError` naming ``what`` otherwise). Returns the array on ``grid``
    (zeros where the source has no voxels) and whether the source covered all of ``grid``."""
    mapping = lattice_map(source_ijk_to_ras, ijk_to_ras(grid))
    if mapping is None:
        source = slicer.vtkOrientedImageData()
        source.SetExtent(source_extent)
        source.SetImageToWorldMatrix(_array_to_matrix(source_ijk_to_ras))
        problems = geometry_of_grid(source).mismatches(geometry_of_grid(grid)) or ["shifted by part of a voxel"]
        raise GeometryError(f"{what} is not on the voxel grid of the reference volume ("
                            + "; ".join(problems) + "); resample it onto that volume first")
    axes, signs, shift = mapping
    target_extent = grid.GetExtent()
    out_ijk = np.zeros(grid_shape_zyx(grid)[::-1], dtype=values_zyx.dtype)
    source_ijk = values_zyx.transpose(2, 1, 0).transpose(axes)  # source axes in target order
    src, dst, covered = [], [], True
    for a in range(3):
        lo, hi = source_extent[2 * axes[a]], source_extent[2 * axes[a] + 1]
        if signs[a] < 0:
            source_ijk = np.flip(source_ijk, axis=a)
            start = -hi + shift[a]
        else:
            start = lo + shift[a]
        stop = start + (hi - lo)  # inclusive, in target indices
        t_lo, t_hi = target_extent[2 * a], target_extent[2 * a + 1]
        first, last = max(start, t_lo), min(stop, t_hi)
        covered = covered and start <= t_lo and stop >= t_hi
        if first > last:
            return out_ijk.transpose(2, 1, 0), False
        src.append(slice(first - start, last - start + 1))
        dst.append(slice(first - t_lo, last - t_lo + 1))
    out_ijk[tuple(dst)] = source_ijk[tuple(src)]
    return out_ijk.transpose(2, 1, 0), covered


def volume_array_on_grid(volume_node, grid, *, what: str) -> np.ndarray:
    """The voxels of ``volume_node`` on ``grid`` (same lattice, any axis order; it must cover the whole grid),
    as a new ``[z, y, x]`` array of the node's type. :class:`GeometryError` naming ``what`` otherwise."""
    image = _image_data(volume_node)
    values = slicer.util.arrayFromVolume(volume_node)
    array, covered = map_onto_grid(values, image.GetExtent(), ijk_to_ras(volume_node), grid, what=what)
    if not covered:
        problems = geometry_of_node(volume_node).mismatches(geometry_of_grid(grid))
        raise GeometryError(f"{what} does not cover the reference volume's grid (" + "; ".join(problems) + ")")
    return array


# --- segments <-> masks ------------------------------------------------------------------------------------------

def oriented_image_from_mask(mask_zyx: np.ndarray, grid) -> slicer.vtkOrientedImageData:
    """A uint8 0/1 ``vtkOrientedImageData`` holding ``mask_zyx`` (shape = the grid's) on ``grid``."""
    shape = grid_shape_zyx(grid)
    if tuple(mask_zyx.shape) != shape:
        raise GeometryError(f"mask shape {tuple(mask_zyx.shape)} does not match the grid's {shape} ([z, y, x])")
    image = slicer.vtkOrientedImageData()
    image.SetExtent(grid.GetExtent())
    matrix = vtk.vtkMatrix4x4()
    grid.GetImageToWorldMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    target = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
    target[:] = mask_zyx != 0
    image.Modified()
    return image


BINARY_LABELMAP = "Binary labelmap"


def binary_labelmap(segmentation_node, segment_id: str, grid) -> slicer.vtkOrientedImageData:
    """The segment's binary labelmap; converted onto ``grid`` when the segment has none.

    A segment imported from a model, an RT structure set or a closed-surface file holds only a closed surface, and
    ``GetBinaryLabelmapRepresentation`` then returns nothing (it would read as an empty mask). Such a segment is
    converted in a scratch segmentation, with ``grid`` as the conversion's reference geometry, so the user's node
    is left as it is (no representation added, no events). :class:`InputError` naming the segment when Slicer
    cannot convert it.
    """
    segmentation = segmentation_node.GetSegmentation()
    labelmap = slicer.vtkOrientedImageData()
    if segmentation.ContainsRepresentation(BINARY_LABELMAP):
        if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
            raise InputError(f"Slicer could not read the labelmap of segment '{segment_id}' of "
                             f"{node_name(segmentation_node)}")
        return labelmap
    converter = slicer.vtkSegmentationConverter
    scratch = slicer.vtkSegmentation()
    source_name = (segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName")
                   else segmentation.GetMasterRepresentationName())
    if hasattr(scratch, "SetSourceRepresentationName"):
        scratch.SetSourceRepresentationName(source_name)
    else:
        scratch.SetMasterRepresentationName(source_name)
    scratch.CopySegmentFromSegmentation(segmentation, segment_id)
    # After the copy (which may already convert with default settings), then converted again on purpose: a
    # reference geometry set before the copy was ignored by slicer-core 5.13 (a 0.06 mm default grid came out).
    scratch.CopyConversionParameters(segmentation)
    scratch.SetConversionParameter(converter.GetReferenceImageGeometryParameterName(),
                                   converter.SerializeImageGeometry(grid))
    segment = scratch.GetSegment(segment_id)
    if segment is None or not scratch.CreateRepresentation(BINARY_LABELMAP, True) \
            or segment.GetRepresentation(BINARY_LABELMAP) is None:
        name = segmentation.GetSegment(segment_id).GetName()
        raise InputError(f"segment '{name}' of {node_name(segmentation_node)} holds a {source_name.lower()} "
                         "that Slicer cannot convert to a binary labelmap; convert it in the Segmentations module")
    labelmap.DeepCopy(segment.GetRepresentation(BINARY_LABELMAP))
    return labelmap


def segment_mask(segmentation_node, segment_id: str, grid, *, what: str | None = None) -> np.ndarray:
    """The segment's voxels on ``grid`` as a uint8 0/1 ``[z, y, x]`` array (a copy).

    The segment may be stored cropped (Slicer keeps only its extent), on a larger grid or with its axes in another
    order; either way it must lie on the same voxel lattice as ``grid`` (:class:`GeometryError` naming the node
    otherwise: a mask drawn on another series has to be resampled deliberately, not silently). Voxels outside
    ``grid`` are dropped. ``what`` names the segment in error messages.
    """
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segmentation {node_name(segmentation_node)} has no segment '{segment_id}'")
    labelmap = binary_labelmap(segmentation_node, segment_id, grid)
    extent = labelmap.GetExtent()
    if labelmap.GetPointData().GetScalars() is None or extent[1] < extent[0] or extent[3] < extent[2] \
            or extent[5] < extent[4]:
        return np.zeros(grid_shape_zyx(grid), dtype=np.uint8)  # an empty segment
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(grid_shape_zyx(labelmap))
    if what is None:
        segment_name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        what = f"segment '{segment_name}' of {node_name(segmentation_node)}"
    mask, _ = map_onto_grid(values != 0, extent, ijk_to_ras(labelmap), grid, what=what)
    return mask.astype(np.uint8)


def set_segment_mask(segmentation_node, segment_id: str, mask_zyx: np.ndarray, grid) -> None:
    """Replace the segment's voxels by ``mask_zyx`` (nonzero = inside) on ``grid``."""
    image = oriented_image_from_mask(mask_zyx, grid)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE,
                                            image.GetExtent()):
        raise RuntimeError(f"Slicer could not set the voxels of segment '{segment_id}' in "
                           f"{node_name(segmentation_node)}")


def find_segment(segmentation_node, segment: str | None = None, *, preferred_name: str | None = None) -> str:
    """The ID of a segment of ``segmentation_node``: ``segment`` (an ID or a name) when given; otherwise the only
    segment, or the one named ``preferred_name``. :class:`InputError` naming the node when that is ambiguous."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if segment is not None:
        if segment in ids:
            return segment
        by_name = segmentation.GetSegmentIdBySegmentName(segment)
        if by_name:
            return by_name
        raise InputError(f"segmentation {node_name(segmentation_node)} has no segment named '{segment}'")
    if len(ids) == 1:
        return ids[0]
    if preferred_name:
        by_name = segmentation.GetSegmentIdBySegmentName(preferred_name)
        if by_name:
            return by_name
    names = [segmentation.GetSegment(i).GetName() for i in ids]
    raise InputError(f"segmentation {node_name(segmentation_node)} has {len(ids)} segments "
                     f"({', '.join(names) or 'none'}); say which one to use")
