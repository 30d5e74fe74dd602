"""The Qt GUI cannot run here, so its code is checked statically: every ``self.ui.<name>`` the widget uses exists in
the Qt Designer file, every parameter-node field is wired to a widget of a type Slicer's GUI connectors accept,
the module file imports nothing heavy when Slicer loads it, the Qt-free package never imports Qt, and every module
file compiles."""

from __future__ import annotations

import ast
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "HepatoblastomaSeg"
MODULE_FILE = MODULE_DIR / "HepatoblastomaSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "HepatoblastomaSeg.ui"
MRML_DIR = MODULE_DIR / "HepatoblastomaSegMRML"
RUNNER_DIR = MODULE_DIR / "HepatoblastomaSegRunner"
#: The widget classes Slicer's parameterNodeWrapper connects to each kind of field (guiConnectors.py).
CONNECTABLE = {"bool": {"QCheckBox", "QPushButton"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
               "int": {"QSpinBox", "QSlider"}, "str-choice": {"QComboBox"}, "str": {"QLineEdit", "QTextEdit"},
               "node": {"qMRMLNodeComboBox"}}
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QCheckBox", "QProgressBar", "QTextBrowser",
              "QPlainTextEdit", "QVBoxLayout", "QHBoxLayout", "QFormLayout", "QLineEdit", "QSpinBox"}


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


@pytest.fixture(scope="module")
def ui() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def _widgets(ui) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def _parameter_names(ui) -> dict[str, str]:
    """widget name -> its SlicerParameterName."""
    found = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[widget.get("name")] = prop.find("string").text
    return found


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_every_ui_name_the_widget_uses_exists_in_the_ui_file(module_tree, ui):
    used = {node.attr for node in ast.walk(module_tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    names = set(_widgets(ui))
    assert used, "the widget uses no self.ui.<name>: the check would prove nothing"
    missing = sorted(used - names)
    assert not missing, f"HepatoblastomaSeg.py uses self.ui.{missing} but {UI_FILE.name} has no such widget"


def test_ui_file_is_well_formed(ui):
    root = ui.getroot()
    assert root.tag == "ui" and root.find("class").text == "HepatoblastomaSeg"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"  # so setMRMLScene reaches every node selector
    widgets = _widgets(ui)
    assert len(widgets) == len(list(ui.iter("widget"))), "widget names must be unique"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used_custom = {cls for cls in widgets.values() if cls not in QT_CLASSES}
    assert used_custom <= declared, f"custom widgets not declared: {used_custom - declared}"
    selectors = {name for name, cls in widgets.items() if cls.startswith("qMRML") and cls != "qMRMLWidget"}
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors == connected, f"node selectors without a scene: {selectors - connected}"


def test_parameter_node_fields_are_wired_to_suitable_widgets(module_tree, ui):
    fields = {}
    for stmt in _class(module_tree, "HepatoblastomaSegParameterNode").body:
        if isinstance(stmt, ast.AnnAssign):
            fields[stmt.target.id] = ast.unparse(stmt.annotation)
    wired = _parameter_names(ui)
    widgets = _widgets(ui)
    assert set(wired.values()) <= set(fields), f"the .ui names unknown parameters: {set(wired.values()) - set(fields)}"
    assert set(fields) - set(wired.values()) == {"modelPath"}, "only the model (a dynamic list) is wired by hand"
    for widget, parameter in wired.items():
        annotation = fields[parameter]
        if annotation.startswith("vtkMRML"):
            kind = "node"
        elif "Choice" in annotation:
            kind = "str-choice"
        elif annotation.startswith("Annotated[float") or annotation == "float":
            kind = "float"
            assert "WithinRange" in annotation, "a ctkSliderWidget needs a bounded float"
        else:
            kind = annotation
        assert widgets[widget] in CONNECTABLE[kind], f"{widget} ({widgets[widget]}) cannot show {parameter}: {kind}"
    decorators = [ast.unparse(d) for d in _class(module_tree, "HepatoblastomaSegParameterNode").decorator_list]
    assert decorators == ["parameterNodeWrapper"]


def test_module_has_the_template_classes_and_cites_the_paper(module_tree):
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in module_tree.body if isinstance(n, ast.ClassDef)}
    assert classes["HepatoblastomaSeg"] == ["ScriptedLoadableModule"]
    assert classes["HepatoblastomaSegWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["HepatoblastomaSegLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["HepatoblastomaSegTest"] == ["ScriptedLoadableModuleTest"]
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "doi:10.1148/rycan.250041" in source and "acknowledgementText" in source and "helpText" in source
    assert 'self.resourcePath("UI/HepatoblastomaSeg.ui")' in source
    test_methods = [n.name for n in _class(module_tree, "HepatoblastomaSegTest").body if isinstance(n, ast.FunctionDef)]
    assert {"runTest", "test_workflow", "test_cancel_leaves_scene_unchanged"} <= set(test_methods)


def test_loading_the_module_imports_nothing_heavy(module_tree):
    """Slicer imports the module file at start-up: torch, MONAI and the library must wait for the first use."""
    top_level = set()
    for node in module_tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_level.add(node.module.split(".")[0])
        elif isinstance(node, ast.Try):
            for sub in node.body:
                if isinstance(sub, ast.ImportFrom):
                    top_level.add(sub.module.split(".")[0])
    assert top_level <= {"logging", "shutil", "sys", "time", "pathlib", "typing", "ctk", "qt", "slicer", "vtk"}, \
        top_level
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert not re.search(r"^(import|from) (torch|monai|HepatoblastomaSeg)", source, re.M)


def _imported_top_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_runner_package_needs_neither_qt_nor_mrml():
    """HepatoblastomaSegRunner imports only the standard library, numpy and the library: no Qt, no slicer/vtk, no
    MRML glue (checked in the source, and by importing every module in a Python where slicer cannot be found), and
    no torch or MONAI (the module lists and imports models before it installs them)."""
    modules = sorted(RUNNER_DIR.glob("*.py"))
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _imported_top_names(tree)
        assert not names & {"qt", "ctk", "slicer", "vtk", "vtkmodules", "HepatoblastomaSegMRML"}, path.name
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('slicer', 'vtk', 'vtkmodules', 'qt', 'torch', 'monai'):\n"
            "            raise ModuleNotFoundError(name, name=name)\n"
            "sys.meta_path.insert(0, Block()); sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "import importlib\n"
            "for name in sys.argv[3:]: importlib.import_module('HepatoblastomaSegRunner.' + name)\n")
    done = subprocess.run([sys.executable, "-c", code, str(REPO), str(MODULE_DIR),
                           *[p.stem for p in modules if p.stem != "__init__"]], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_qt_free_package_never_imports_qt():
    for path in sorted([*MRML_DIR.glob("*.py"), *RUNNER_DIR.glob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _imported_top_names(tree)
        assert not names & {"qt", "ctk", "PythonQt", "PyQt5", "PySide2"}, f"{path.name} imports Qt"
        uses_app = any(isinstance(n, ast.Attribute) and n.attr == "app" and isinstance(n.value, ast.Name)
                       and n.value.id == "slicer" for n in ast.walk(tree))
        assert not uses_app or path.name == "environment.py", f"{path.name} needs the application"


def test_every_module_file_compiles(tmp_path):
    files = [MODULE_FILE, *sorted(MRML_DIR.glob("*.py")), *sorted(RUNNER_DIR.glob("*.py")),
             *sorted((MODULE_DIR / "Scripts").glob("*.py"))]
    for index, path in enumerate(files):
        py_compile.compile(str(path), cfile=str(tmp_path / f"{index}.pyc"), doraise=True)
    assert len(files) >= 20


def test_the_widget_talks_only_to_its_logic(module_tree):
    """The widget imports neither the MRML glue nor the runner; every ``self.logic.<name>`` it uses is defined on
    the Logic (a typo here would only show inside 3D Slicer)."""
    widget = _class(module_tree, "HepatoblastomaSegWidget")
    imported = _imported_top_names(widget)
    assert not imported & {"HepatoblastomaSegMRML", "HepatoblastomaSegRunner"}, imported
    used = {node.attr for node in ast.walk(widget)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "logic" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    logic = _class(module_tree, "HepatoblastomaSegLogic")
    defined = {n.name for n in logic.body if isinstance(n, ast.FunctionDef)}
    assert used and used <= defined, f"the widget uses Logic members that do not exist: {sorted(used - defined)}"
