"""Helpers for the tests of the Slicer module's MRML glue on the real MRML classes (``slicer-core``, headless).

Import this only after ``pytest.importorskip("slicer")``. It puts ``HepatoblastomaSeg/`` on ``sys.path`` (as 3D
Slicer does for a scripted module's folder) and provides:

- the ``slicer_env`` fixture: a fresh headless scene with its logics (and the extension's terminology loaded);
- ``make_case()``: a phantom-like case on an oblique, axis-flipped (left-handed), anisotropic grid: an image, a
  tumour mask, an entropy map computed as the binary entropy of a softmax-like probability that falls across the
  tumour surface, and three annotators' masks that differ from the tumour in known ways;
- small builders that use Slicer's own API (not the glue under test) to put volumes and masks into a scene.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import slicer  # the callers importorskip'ed it
import vtk

MODULE_DIR = Path(__file__).resolve().parent.parent / "HepatoblastomaSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

import HepatoblastomaSegMRML as mrml  # noqa: E402
from HepatoblastomaSegLib.infer import Prediction  # noqa: E402
from HepatoblastomaSegLib.io import Geometry, Volume  # noqa: E402

GEOMETRY_ATOL = 1e-6


@pytest.fixture
def slicer_env():
    """A headless scene with the Colors, Volumes, Segmentations, Tables, Terminologies and Subject hierarchy logics
    (kept alive for the test: the default colour nodes vanish with them)."""
    from vtkmodules.vtkCommonCore import vtkObject

    was_on = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()  # Slicer logs informational "warnings" on routine operations
    env = mrml.headless_environment()
    yield env
    env.scene.Clear(1)
    vtkObject.SetGlobalWarningDisplay(was_on)


def oblique_flipped_direction() -> tuple[float, ...]:
    """A rotation of 0.35 rad about a tilted axis, with the x axis flipped (a left-handed frame)."""
    rotation = np.array(sitk.VersorTransform((0.3, -1.0, 2.0), 0.35).GetMatrix()).reshape(3, 3)
    return tuple((rotation @ np.diag([-1.0, 1.0, 1.0])).ravel())


def awkward_geometry(size=(44, 40, 12), spacing=(0.78, 0.71, 2.5), origin=(-31.25, 12.5, -80.0)) -> Geometry:
    return Geometry(size, spacing, origin, oblique_flipped_direction())


@dataclasses.dataclass
class Case:
    image: Volume
    tumor: Volume
    entropy: Volume
    raters: dict[str, Volume]


def make_case(seed: int = 0, geometry: Geometry | None = None) -> Case:
    """A small phantom-like case; the tumour is an ellipsoid wide enough (> 21 px in-plane) to have a core."""
    geometry = geometry or awkward_geometry()
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(geometry.shape_zyx).astype(float)
    sz, sy, sx = geometry.spacing_mm[::-1]
    cz, cy, cx = (np.array(geometry.shape_zyx) - 1) / 2 + rng.uniform(-1, 1, 3) * (0.5, 2, 2)
    # Signed distance-like field in mm: negative inside an ellipsoid of semi-axes 10 x 9 x 9 mm.
    radius = np.sqrt(((x - cx) * sx / 10.0) ** 2 + ((y - cy) * sy / 9.0) ** 2 + ((z - cz) * sz / 9.0) ** 2)
    signed_mm = (radius - 1.0) * 9.0
    tumor = (signed_mm < 0).astype(np.uint8)
    liver = (np.sqrt(((x - cx + 3) * sx / 16.0) ** 2 + ((y - cy) * sy / 14.0) ** 2) < 1.0)
    image = (rng.normal(0, 12, geometry.shape_zyx) + 40 + 60 * liver - 25 * tumor).astype(np.int16)
    probability = 1.0 / (1.0 + np.exp(signed_mm / 1.2))
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    entropy = (-(p * np.log(p) + (1 - p) * np.log1p(-p))).astype(np.float32)
    raters = {
        "R1": (signed_mm < 0.8).astype(np.uint8),   # generous
        "R2": (signed_mm < -0.8).astype(np.uint8),  # tight
        "R3": np.roll(tumor, 2, axis=2),            # shifted by two columns
    }
    return Case(Volume(image, geometry), Volume(tumor, geometry), Volume(entropy, geometry),
                {k: Volume(v, geometry) for k, v in raters.items()})


def prediction_of(case: Case, **summary) -> Prediction:
    base = {"model_name": "ct-phantom", "model_version": "0.1", "modality": "ct", "device": "cpu", "tta": True,
            "seconds": {"network": 1.25, "total": 2.5}}
    return Prediction(case.tumor, case.entropy, {**base, **summary})


def add_volume_node(scene, volume: Volume, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A volume node built with Slicer's own calls (IJK->RAS = diag(-1, -1, 1) @ IJK->LPS)."""
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.geometry.index_to_physical_matrix()
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.CreateDefaultDisplayNodes()
    return node


def import_mask_as_segmentation(scene, mask: Volume, reference_node, name: str):
    """A one-segment segmentation node made the way ``slicer.util.updateSegmentBinaryLabelmapFromArray`` does it
    (labelmap node + ``ImportLabelmapToSegmentationNode``), independent of the glue."""
    labelmap = add_volume_node(scene, mask, "__labelmap__", "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segment_id = node.GetSegmentation().AddEmptySegment("", name)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node, ids):
        raise RuntimeError("ImportLabelmapToSegmentationNode failed")
    color = labelmap.GetDisplayNode().GetColorNode() if labelmap.GetDisplayNode() else None
    scene.RemoveNode(labelmap)
    if color is not None and not color.GetSingletonTag():
        scene.RemoveNode(color)
    return node, segment_id


def replace_segment_voxels(scene, segmentation_node, segment_id: str, mask: Volume, reference_node) -> None:
    """Overwrite a segment's labelmap the way a reviewer's edit (or slicer.util) does, through a labelmap node."""
    labelmap = add_volume_node(scene, mask, "__edit__", "vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids)
    scene.RemoveNode(labelmap)
    if not ok:
        raise RuntimeError("ImportLabelmapToSegmentationNode failed")


def sitk_geometry(image: sitk.Image) -> Geometry:
    return Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def assert_geometry_close(a: Geometry, b: Geometry, atol: float = GEOMETRY_ATOL) -> None:
    assert a.size == b.size
    np.testing.assert_allclose(a.spacing_mm, b.spacing_mm, rtol=0, atol=atol)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, rtol=0, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=atol)


def sitk_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice by SimpleITK's LabelOverlapMeasuresImageFilter (independent of the library)."""
    flt = sitk.LabelOverlapMeasuresImageFilter()
    flt.Execute(sitk.GetImageFromArray(a.astype(np.uint8)), sitk.GetImageFromArray(b.astype(np.uint8)))
    return flt.GetDiceCoefficient()


def sitk_volume_ml(mask: Volume) -> float:
    """Physical size of label 1 by SimpleITK's LabelShapeStatistics, in mL."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask.to_sitk())
    return stats.GetPhysicalSize(1) / 1000.0 if stats.HasLabel(1) else 0.0
