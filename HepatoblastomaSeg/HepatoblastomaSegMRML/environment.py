"""Where the MRML scene comes from: the running 3D Slicer application, or a headless one on the ``slicer-core`` wheel.

Every other module of this package takes the scene as a parameter and never looks it up; only the batch script
and the tests call this module. Headless, the logics that fill the scene with colour tables and handle
segmentations, tables and terminologies are created here and must stay alive as long as the scene (garbage
collecting them removes the default colour nodes), so :class:`Environment` keeps references to them.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import slicer

from .terminology import TERMINOLOGY_FILE, load_terminology

#: Application node ID of Slicer's Inferno colour table (loaded from ``Inferno.txt`` in the application).
INFERNO_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
_INFERNO_SINGLETON_TAG = "FileInferno.txt"


def in_application() -> bool:
    """True inside the 3D Slicer application (``slicer.app`` exists), False on the headless wheel."""
    return hasattr(slicer, "app")


@dataclasses.dataclass
class Environment:
    """A scene and the module logics that act on it (kept referenced: see the module docstring)."""

    scene: Any
    app_logic: Any = None
    logics: dict[str, Any] = dataclasses.field(default_factory=dict)
    _keep: list[Any] = dataclasses.field(default_factory=list, repr=False)

    @property
    def terminology_logic(self):
        return self.logics.get("Terminologies")


def application_environment() -> Environment:
    """The running application's scene and logics (call inside 3D Slicer only)."""
    logics = {}
    for name in ("Segmentations", "Volumes", "Tables", "Terminologies", "SubjectHierarchy", "Colors"):
        module = getattr(slicer.modules, name.lower(), None)
        if module is not None:
            logics[name] = module.logic()
    if "Terminologies" in logics:
        load_terminology(logics["Terminologies"])
    return Environment(slicer.mrmlScene, slicer.app.applicationLogic(), logics)


def headless_environment(terminology_share_dir: str | Path | None = None) -> Environment:
    """A new scene with the Colors, Volumes, Segmentations, Tables, Terminologies and Subject hierarchy logics.

    The wheel has no colour files and no terminology files: a stand-in colour table gets Inferno's application
    node ID (so display settings are the same as in the application), and this extension's terminology is loaded.
    ``terminology_share_dir`` is where the Terminologies logic looks for Slicer's default ``.term.json`` files
    (an empty temporary folder when None: the defaults are then absent, which only the terminology browser needs).
    """
    from vtkmodules.vtkCommonCore import vtkObject

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    env = Environment(scene, app_logic)

    def register(name: str, logic: Any, share_dir: str | Path | None = None) -> None:
        if share_dir is not None:
            logic.SetModuleShareDirectory(str(share_dir))  # read by SetMRMLScene, so it must come first
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        env.logics[name] = logic

    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    register("Colors", color_logic)
    register("Volumes", slicer.vtkSlicerVolumesLogic())
    if terminology_share_dir is None:
        empty = tempfile.TemporaryDirectory(prefix="hbseg-terminology-")
        env._keep.append(empty)
        terminology_share_dir = empty.name
    # Without Slicer's default files the logic logs one error per missing default; they say nothing useful here.
    was_on = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        register("Terminologies", slicer.vtkSlicerTerminologiesModuleLogic(), terminology_share_dir)
    finally:
        vtkObject.SetGlobalWarningDisplay(was_on)
    register("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
    register("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
    register("Tables", slicer.vtkSlicerTablesLogic())
    load_terminology(env.logics["Terminologies"], TERMINOLOGY_FILE)
    add_inferno_stand_in(scene)
    env._keep.append(_remove_items_of_removed_nodes(scene))
    return env


def _remove_items_of_removed_nodes(scene):
    """Remove a node's subject hierarchy item when the node leaves the scene, as the application's (Qt) subject
    hierarchy plugin logic does; headless nothing does, and the stale item would keep a dangling node pointer."""
    import vtk

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_node_about_to_be_removed(caller, _event, node=None):  # the scene is the caller: no closure to outlive
        if node is None or caller is None or node.IsA("vtkMRMLSubjectHierarchyNode"):
            return
        hierarchy = caller.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
        item = hierarchy.GetItemByDataNode(node) if hierarchy is not None else 0
        if item:
            hierarchy.RemoveItem(item, False, False)

    scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, on_node_about_to_be_removed)
    return on_node_about_to_be_removed


def add_inferno_stand_in(scene) -> Any:
    """Give ``scene`` a colour table with Inferno's application node ID unless it has one (headless only).

    The colours are matplotlib's Inferno when matplotlib is importable, a grey ramp otherwise; only the node ID
    matters for the files this package writes.
    """
    existing = scene.GetNodeByID(INFERNO_COLOR_NODE_ID)
    if existing is not None:
        return existing
    table = slicer.vtkMRMLColorTableNode()
    table.SetSingletonTag(_INFERNO_SINGLETON_TAG)
    table.SetName("Inferno")
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    try:
        from matplotlib import colormaps

        rgba = colormaps["inferno"](range(256))
    except ImportError:
        rgba = [(i / 255.0, i / 255.0, i / 255.0, 1.0) for i in range(256)]
    for index, (r, g, b, _a) in enumerate(rgba):
        table.SetColor(index, f"inferno{index}", float(r), float(g), float(b), 1.0)
    scene.AddNode(table)
    if table.GetID() != INFERNO_COLOR_NODE_ID:  # the ID scheme changed: fail loudly rather than show grey
        raise RuntimeError(f"stand-in Inferno colour table got ID {table.GetID()}, expected {INFERNO_COLOR_NODE_ID}")
    return table
