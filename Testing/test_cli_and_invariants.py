"""The hbseg command as a whole, and the architecture's invariants (what the library may import, how it loads)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from HepatoblastomaSegLib.cli import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "HepatoblastomaSegLib"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in text, f"hbseg --help does not mention {name}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_teaching_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: hbseg " + name in text and len(text) > 400


def test_console_script_and_module_entry_point_agree():
    by_module = subprocess.run([sys.executable, "-m", "HepatoblastomaSegLib.cli", "--version"], capture_output=True,
                               text=True, cwd=REPO)
    assert by_module.returncode == 0 and by_module.stdout.startswith("hbseg ")


def test_library_error_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "HepatoblastomaSegLib.cli", "consensus", str(tmp_path / "a.nii.gz"),
                             str(tmp_path / "b.nii.gz"), "-o", str(tmp_path / "c.nii.gz")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "a.nii.gz" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.stderr
    debug = subprocess.run([sys.executable, "-m", "HepatoblastomaSegLib.cli", "--debug", "consensus",
                            str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "-o", str(tmp_path / "c.nii.gz")],
                           capture_output=True, text=True, cwd=REPO)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_library_never_imports_slicer_qt_ctk_or_vtk():
    forbidden = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt"}
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & forbidden) for p in LIBRARY.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_evaluate_never_imports_network_train_or_infer():
    for path in (LIBRARY / "evaluate").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module.split(".")[0] if node.level <= 1 else node.module
                assert not (node.level >= 2 and node.module.split(".")[0] in {"network", "train", "infer"}), path
                assert module not in {"torch", "monai"}, f"{path} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & {"torch", "monai"}, path


def test_importing_everything_loads_no_gui_toolkit():
    code = ("import importlib, pkgutil, sys, HepatoblastomaSegLib as p\n"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')"
            " if not m.name.endswith('__main__')]\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in {'slicer','qt','ctk','vtk','vtkmodules'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_weights_are_never_unpickled():
    for path in REPO.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and \
                    getattr(getattr(node.func, "value", None), "id", "") == "torch":
                keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert keywords.get("weights_only") is True, f"{path}:{node.lineno} torch.load without weights_only"


def test_demo_runs_on_a_small_case(tmp_path, capsys):
    assert main(["demo", "--size", "small", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "consensus.nii.gz").is_file() and (tmp_path / "agreement.txt").is_file()
    assert "R1 vs Rc" in out
