"""Defects found by checking the module's slicer/qt/vtk calls against the 3D Slicer sources (issue 19), each on the
real classes where they exist here: a closed-surface-only segment, the entropy overlay's display pipeline, the
dependency floors against MONAI's published requirements, the category's translation context, and the message on
3D Slicer versions older than 5.10 (run under a real Python 3.9 when one is installed)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from slicer_env import add_volume_node, make_case, slicer_env  # noqa: E402,F401  (slicer_env is a fixture)

import HepatoblastomaSegMRML as mrml  # noqa: E402
from HepatoblastomaSegLib.infer import MAX_ENTROPY_2CLASS_NATS  # noqa: E402
from HepatoblastomaSegRunner import dependencies as deps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "HepatoblastomaSeg" / "HepatoblastomaSeg.py"
COMPATIBILITY_FILE = REPO / "HepatoblastomaSeg" / "HepatoblastomaSegRunner" / "compatibility.py"


def _compatibility():
    """compatibility.py loaded by its path, as the module file loads it (without the package's __init__)."""
    spec = importlib.util.spec_from_file_location("hbseg_compatibility_under_test", COMPATIBILITY_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- supported versions ------------------------------------------------------------------------------------------

def test_older_slicer_or_python_gets_a_message_not_a_traceback():
    compatibility = _compatibility()
    assert compatibility.unsupported_reason((5, 10, 0), (3, 12, 10)) == ""
    assert compatibility.unsupported_reason((5, 12, 1), (3, 12, 10)) == ""
    assert compatibility.unsupported_reason(None, (3, 11, 4)) == ""  # headless: Python only
    old = compatibility.unsupported_reason((5, 8, 1), (3, 9, 10))
    assert "5.10 or later" in old and "5.8.1" in old and "3.9.10" in old and "download.slicer.org" in old
    assert "5.10 or later" in compatibility.unsupported_reason((5, 10, 0), (3, 9, 0))
    assert "3D Slicer 5.6.2" in compatibility.unsupported_reason((5, 6, 2), (3, 12, 0))
    assert compatibility.unsupported_reason() == ""  # this interpreter (3.11) is supported


def test_the_guard_and_the_module_file_use_only_python_3_9_grammar():
    for path in (MODULE_FILE, COMPATIBILITY_FILE):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def _python_3_9() -> str | None:
    """A working Python 3.9 (3D Slicer 5.8's): on PATH, or one pyenv installed."""
    candidates = [shutil.which("python3.9"), *map(str, sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None


def test_under_python_3_9_the_module_file_parses_and_the_guard_answers(tmp_path):
    """3D Slicer 5.8 runs Python 3.9: the module file must at least parse there, and the guard must run and say
    what is wrong (the library itself needs 3.10 and is not imported before the guard)."""
    python39 = _python_3_9()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter here")
    check = tmp_path / "check39.py"
    check.write_text(
        "import ast, importlib.util, sys\n"
        f"ast.parse(open({str(MODULE_FILE)!r}).read())\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(COMPATIBILITY_FILE)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(module.unsupported_reason((5, 8, 1)))\n"
        "print(repr(module.unsupported_reason((5, 10, 0), (3, 12, 0))))\n")
    done = subprocess.run([python39, str(check)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    message, supported = done.stdout.strip().splitlines()
    assert "needs 3D Slicer 5.10 or later" in message and "Python 3.9" in message and supported == "''"


def test_the_widget_checks_the_version_before_it_imports_the_glue():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HepatoblastomaSegWidget")
    setup = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == "setup")
    source = ast.unparse(setup)
    assert source.index("_supportProblem()") < source.index("loadUI") < source.index("HepatoblastomaSegLogic()")
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert "Needs 3D Slicer 5.10 or later" in text  # the module's help
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "Needs 3D Slicer 5.10 or later" in cmake and 'HBSEG_MINIMUM_SLICER_VERSION "5.10"' in cmake
    assert "3D Slicer 5.10 or later" in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_category_is_translated_in_slicers_own_context():
    """Slicer translates category names in the qSlicerAbstractCoreModule context; another context would show a
    second, untranslated "Segmentation" category in a translated application."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    assignments = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                   and ast.unparse(n.targets[0]) == "self.parent.categories"]
    assert len(assignments) == 1
    calls = assignments[0].value.elts
    assert [ast.unparse(c) for c in calls] == ["translate('qSlicerAbstractCoreModule', 'Segmentation')"]


# --- dependency floors -------------------------------------------------------------------------------------------

from helpers_dependencies import MONAI_RELEASES, SLICER_5_10_NUMPY  # noqa: E402


def test_torch_and_monai_floors_can_be_installed_together_with_slicers_numpy():
    monai_floor = dict(deps.split_requirement(r) for r in deps.REQUIREMENTS)["monai"]
    torch_floor = deps.split_requirement(deps.TORCH_REQUIREMENT)[1]
    admitted = [v for v in MONAI_RELEASES if deps.satisfies(v, monai_floor)]
    # Every MONAI release the floor admits works with Slicer's numpy 2 ...
    assert admitted and all(deps.satisfies(SLICER_5_10_NUMPY, MONAI_RELEASES[v]["numpy"]) for v in admitted)
    # ... and the oldest torch the module accepts works with the oldest such MONAI.
    oldest_torch = torch_floor.lstrip(">=")
    assert deps.satisfies(oldest_torch, MONAI_RELEASES[min(admitted)]["torch"]), (oldest_torch, min(admitted))
    # The installed MONAI (its own metadata) agrees with this environment's torch and numpy.
    requires = dict(deps.split_requirement(r.split(";")[0]) for r in importlib.metadata.requires("monai")
                    if ";" not in r)
    assert deps.satisfies(importlib.metadata.version("torch"), requires["torch"])
    assert deps.satisfies(importlib.metadata.version("numpy"), requires["numpy"])
    assert deps.unmet([deps.TORCH_REQUIREMENT, *deps.REQUIREMENTS]) == []


# --- MRML: closed-surface segments and the entropy overlay --------------------------------------------------------

def _voxel_centres_ras(volume_node) -> np.ndarray:
    """RAS of every voxel centre, [z, y, x, 3], from the node's own IJK->RAS matrix."""
    shape = slicer.util.arrayFromVolume(volume_node).shape
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    m = slicer.util.arrayFromVTKMatrix(matrix)
    k, j, i = np.indices(shape)
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk @ m.T)[..., :3]


def _closed_surface_segmentation(scene, name: str):
    """A segmentation whose source representation is the closed surface, as after loading a model (STL/OBJ) or an
    RT structure set: its segments hold no binary labelmap."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.GetSegmentation().SetSourceRepresentationName("Closed surface")
    return node


def test_a_closed_surface_only_segment_is_converted_not_read_as_empty(slicer_env):
    """A segment imported from a model or an RT structure set holds only a closed surface; it must be read as its
    voxels on the volume's (oblique, left-handed) grid, and the user's node must not change."""
    scene = slicer_env.scene
    case = make_case(seed=3)
    volume = add_volume_node(scene, case.image, "ct")
    centres = _voxel_centres_ras(volume)
    centre_ras = centres.reshape(-1, 3).mean(axis=0)
    radius_mm = 8.0
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre_ras)
    sphere.SetRadius(radius_mm)
    sphere.SetPhiResolution(64)
    sphere.SetThetaResolution(64)
    sphere.Update()
    node = _closed_surface_segmentation(scene, "from a model")
    segment_id = node.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "ball")
    segmentation = node.GetSegmentation()
    assert not segmentation.ContainsRepresentation("Binary labelmap")
    empty = slicer.vtkOrientedImageData()
    assert not node.GetBinaryLabelmapRepresentation(segment_id, empty)  # what the old code read: nothing

    mask = mrml.segment_mask(node, segment_id, mrml.volumes.node_grid(volume))
    inside = (np.linalg.norm(centres - centre_ras, axis=-1) < radius_mm).astype(np.uint8)
    dice = 2 * np.sum(mask & inside) / (mask.sum() + inside.sum())
    assert mask.sum() > 0.8 * inside.sum() and dice > 0.9, dice
    assert not segmentation.ContainsRepresentation("Binary labelmap")  # the user's node is unchanged


def test_a_closed_surface_segment_is_scored_like_its_labelmap(slicer_env, tmp_path):
    """End to end: rescore against an annotator whose segment is a closed surface gives a real Dice (not 0)."""
    from slicer_env import prediction_of

    scene = slicer_env.scene
    case = make_case(seed=4)
    volume = add_volume_node(scene, case.image, "ct")
    result = mrml.segment(scene, volume, lambda v: prediction_of(case), case="c")
    # The AI mask itself, turned into a closed surface by Slicer and kept as that representation only.
    surface_node = _closed_surface_segmentation(scene, "R1 surface")
    labelmap = result.segmentation_node.GetSegmentation().GetSegment(result.segment_id)
    assert labelmap is not None
    assert result.segmentation_node.CreateClosedSurfaceRepresentation()
    polydata = vtk.vtkPolyData()
    result.segmentation_node.GetClosedSurfaceRepresentation(result.segment_id, polydata)
    surface_id = surface_node.AddSegmentFromClosedSurfaceRepresentation(polydata, "R1")
    table = mrml.rescore(scene, result, [(surface_node, surface_id)])
    rows = mrml.table_rows(table)
    dice = [r for r in rows if r["reference"] == "R1 surface"][0]["dice"]
    assert 0.8 < dice <= 1.0, dice


def test_the_entropy_overlay_is_transparent_where_the_model_is_confident(slicer_env):
    """Through the display node's own pipeline (what the slice views draw): RGBA alpha 0 below the threshold,
    opaque above, and the colour window still spans 0 .. ln 2."""
    scene = slicer_env.scene
    case = make_case(seed=6)
    volume = add_volume_node(scene, case.image, "ct")
    entropy = np.linspace(0.0, MAX_ENTROPY_2CLASS_NATS, case.image.array.size, dtype=np.float32)
    entropy = entropy.reshape(case.image.array.shape)
    node = mrml.nodes.add_entropy_node(scene, volume, entropy, "entropy")
    display = node.GetDisplayNode()
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(0.1 * math.log(2.0))
    display.SetInputImageDataConnection(node.GetImageDataConnection())
    producer = display.GetOutputImageDataConnection().GetProducer()
    producer.Update()
    rgba = numpy_support.vtk_to_numpy(producer.GetOutputDataObject(0).GetPointData().GetScalars())
    assert rgba.shape[1] == 4
    flat = entropy.ravel()  # the VTK image is x-fastest, as the [z, y, x] array's ravel
    low = flat < mrml.nodes.ENTROPY_OVERLAY_MIN_NATS - 1e-4
    high = flat > mrml.nodes.ENTROPY_OVERLAY_MIN_NATS + 1e-4
    assert low.sum() > 0 and high.sum() > 0
    assert np.all(rgba[low, 3] == 0) and np.all(rgba[high, 3] == 255)
    assert rgba[high, :3].max() > 200  # the top of the window is bright


def test_the_batch_script_under_python_3_9_says_which_slicer_it_needs(tmp_path):
    """3D Slicer 5.8's Python running the batch script: exit status 2 and the supported versions, no traceback."""
    python39 = _python_3_9()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter here")
    script = REPO / "HepatoblastomaSeg" / "Scripts" / "segment_cohort.py"
    done = subprocess.run([python39, str(script), "--manifest", "m.csv", "--out", "o"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "needs 3D Slicer 5.10 or later" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()
