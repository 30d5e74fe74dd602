"""Packaging of the 3D Slicer extension: the CMake lists name every file the module imports or loads.

Without the Slicer SDK, the extension is configured with real CMake against a stand-in ``SlicerConfig.cmake`` whose
``slicerMacroBuildScriptedModule`` places files exactly as Slicer's macro and CTK's ``ctkMacroCompilePythonScript``
do (relative paths as they are, absolute build-tree paths relative to the module's build folder) and fails on a
missing file as Slicer's does; ``cmake --install`` then builds the installed module folder. The installed folder
alone (nothing from the checkout on ``sys.path``) must import the module's package and every library module the
module, the ``hbseg`` parser and a segmentation use, find its terminology, UI, icon and the bundled models, and
run a real segmentation through the background-process runner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "HepatoblastomaSeg"
SCRIPTED = "lib/Slicer-5.99/qt-scripted-modules"

STUB_CONFIG = """\
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
"""
STUB_USE = f"""\
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "{SCRIPTED}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "{SCRIPTED}")
set(BUILD_TESTING ON)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
  foreach(file ${{MY_SCRIPTS}})
    if(IS_ABSOLUTE "${{file}}")
      set(src "${{file}}")
      file(RELATIVE_PATH rel "${{CMAKE_CURRENT_BINARY_DIR}}" "${{file}}")
    else()
      set(src "${{CMAKE_CURRENT_SOURCE_DIR}}/${{file}}")
      set(rel "${{file}}")
    endif()
    if(NOT EXISTS "${{src}}")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule(SCRIPTS) given nonexistent file '${{file}}'")
    endif()
    get_filename_component(dir "${{rel}}" DIRECTORY)
    install(FILES "${{src}}" DESTINATION "${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/${{dir}}")
    file(APPEND "${{CMAKE_BINARY_DIR}}/scripts.txt" "${{rel}}\\n")
  endforeach()
  foreach(file ${{MY_RESOURCES}})
    if(NOT EXISTS "${{CMAKE_CURRENT_SOURCE_DIR}}/${{file}}")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule(RESOURCES) given nonexistent file '${{file}}'")
    endif()
    get_filename_component(dir "${{file}}" DIRECTORY)
    install(FILES "${{CMAKE_CURRENT_SOURCE_DIR}}/${{file}}"
            DESTINATION "${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/${{dir}}")
    file(APPEND "${{CMAKE_BINARY_DIR}}/resources.txt" "${{file}}\\n")
  endforeach()
  file(APPEND "${{CMAKE_BINARY_DIR}}/generic_tests.txt" "${{MY_NAME}} ${{MY_WITH_GENERIC_TESTS}}\\n")
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(T "" "SCRIPT" "SLICER_ARGS" ${{ARGN}})
  file(APPEND "${{CMAKE_BINARY_DIR}}/unittests.txt" "${{T_SCRIPT}}\\n")
endmacro()
"""

# Runs with only the installed module folder (and the venv's site-packages) on sys.path.
INSTALLED_CHECK = textwrap.dedent("""\
    import json, sys
    installed = sys.argv[1]
    sys.path[:] = [installed] + [p for p in sys.path[1:] if "site-packages" in p or "lib/python" in p]
    import HepatoblastomaSegLib, HepatoblastomaSegMRML as mrml
    from HepatoblastomaSegLib import bundle
    from HepatoblastomaSegRunner import models
    from HepatoblastomaSegMRML import terminology
    from HepatoblastomaSegMRML.background import SegmentJob, SegmentRequest, library_dir
    from HepatoblastomaSegRunner.process import RunState
    from HepatoblastomaSegMRML.volumes import geometry_of_node
    import HepatoblastomaSegMRML.review, HepatoblastomaSegRunner.diagnostics, HepatoblastomaSegRunner.selftest
    import HepatoblastomaSegRunner.failures, HepatoblastomaSegRunner.dependencies
    from HepatoblastomaSegLib.cli import build_parser; build_parser()
    import HepatoblastomaSegLib.infer.runner, HepatoblastomaSegLib.phantom, HepatoblastomaSegLib.preprocess
    env = mrml.headless_environment()
    volume = mrml.load_volume(env.scene, sys.argv[2], name="case")
    entry = models.default_model(models.list_models(), "ct")
    job = SegmentJob(volume, SegmentRequest(model_path=entry.path, modality="ct", device="cpu", tta=False),
                     work_dir=sys.argv[3])
    job.start()
    state = job.wait(180)
    result = job.load_results(env.scene) if state is RunState.DONE else None
    print(json.dumps({
        "library": HepatoblastomaSegLib.__file__, "mrml": mrml.__file__, "library_dir": str(library_dir()),
        "models_dir": str(bundle.RESOURCES_MODELS_DIR), "catalogue_dir": str(models.bundled_models_dir()),
        "terminology": str(terminology.TERMINOLOGY_FILE), "terminology_exists": terminology.TERMINOLOGY_FILE.is_file(),
        "model": entry.name, "model_path": str(entry.path), "state": state.value, "log": job.log_text(last=30),
        "same_grid": bool(result and geometry_of_node(result.entropy_node).matches(geometry_of_node(volume))),
        "bundle_ok": bundle.load_bundle(entry.path).name,
        "imported": sorted(m.__file__ for n, m in sys.modules.items()
                           if n.split(".")[0] in ("HepatoblastomaSegLib", "HepatoblastomaSegMRML",
                                                                      "HepatoblastomaSegRunner")
                           and getattr(m, "__file__", None))}))
""")


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return match.group(1).split()


def _copy_repo(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", ".git", "*.egg-info")
    target.mkdir(parents=True)
    for name in ("CMakeLists.txt",):
        shutil.copy2(REPO / name, target / name)
    for name in ("HepatoblastomaSeg", "HepatoblastomaSegLib", "Resources"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    return target


def test_module_cmake_lists_every_module_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = [s.replace("${MODULE_NAME}", "HepatoblastomaSeg") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    on_disk = sorted(str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py")
                     if "__pycache__" not in p.parts and "Testing" not in p.parts)
    assert sorted(scripts) == on_disk, "add the missing .py files to MODULE_PYTHON_SCRIPTS (or remove stale ones)"
    resources = [r.replace("${MODULE_NAME}", "HepatoblastomaSeg") for r in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for resource in resources:
        assert (MODULE_DIR / resource).is_file(), resource
    # What the code loads: the .ui (resourcePath), the icon Slicer shows for the module, the terminology file.
    assert {"Resources/UI/HepatoblastomaSeg.ui", "Resources/Icons/HepatoblastomaSeg.png",
            "Resources/HepatoblastomaSeg.term.json"} <= set(resources)
    loaded = set(re.findall(r'resourcePath\("([^"]+)"\)', (MODULE_DIR / "HepatoblastomaSeg.py").read_text()))
    assert {f"Resources/{r}" for r in loaded} <= set(resources)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "HepatoblastomaSeg.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"?([^")]*)"?\)', text))
    assert values["EXTENSION_CATEGORY"] == "Segmentation"
    assert "PyTorch" in values["EXTENSION_DEPENDS"].split()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert values.get(key, "").strip(), key
    icon_in_repo = values["EXTENSION_ICONURL"].split("/main/", 1)[1]
    assert (REPO / icon_in_repo).is_file(), f"the icon URL points to {icon_in_repo}, which is not in the repository"
    assert "add_subdirectory(HepatoblastomaSeg)" in text


def test_the_library_reads_no_data_files_the_glob_would_miss():
    """The CMake glob ships the library's .py files only; any other file in the package would be left out."""
    data_files = [p for p in (REPO / "HepatoblastomaSegLib").rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and p.name != "py.typed"]
    assert not data_files, f"the CMake glob ships only .py files; these would be missing: {data_files}"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_configure_and_install_gives_a_working_module_folder(tmp_path):
    source = _copy_repo(tmp_path / "src")
    # A bundled model, as a real one will be shipped, to check the model rules end to end.
    sys.path.insert(0, str(REPO / "Testing"))
    from helpers_synthetic import synthetic_case
    from tiny_models import tiny_bundle

    from HepatoblastomaSegLib.io import write_volume

    tiny_bundle(source / "Resources" / "Models", name="ct-demo")
    stub = tmp_path / "slicer-stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE)
    (stub / "Empty.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    env = {**os.environ, "CMAKE_GENERATOR": "Ninja" if shutil.which("ninja") else "Unix Makefiles"}
    configure = subprocess.run(["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={stub}"],
                               capture_output=True, text=True, timeout=240, env=env)
    if configure.returncode != 0 and "CMAKE_C_COMPILER" in configure.stderr:
        pytest.skip("no C compiler for project()")
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    assert (build / "unittests.txt").read_text().split() == ["HepatoblastomaSeg.py"]
    assert (build / "generic_tests.txt").read_text().split() == ["HepatoblastomaSeg", "TRUE"]
    install = subprocess.run(["cmake", "--install", str(build), "--prefix", str(prefix)], capture_output=True,
                             text=True, timeout=240)
    assert install.returncode == 0, install.stderr[-3000:]

    installed = prefix / SCRIPTED
    library = sorted(str(p.relative_to(REPO)) for p in (REPO / "HepatoblastomaSegLib").rglob("*.py")
                     if "__pycache__" not in p.parts)
    for relative in library:
        assert (installed / relative).is_file(), f"not installed: {relative}"
    for relative in ("HepatoblastomaSeg.py", "HepatoblastomaSegRunner/process.py", "Scripts/segment_cohort.py",
                     "Resources/UI/HepatoblastomaSeg.ui", "Resources/Icons/HepatoblastomaSeg.png",
                     "Resources/HepatoblastomaSeg.term.json", "Resources/Models/ct-demo/model.safetensors",
                     "Resources/Models/ct-demo/bundle.json", "Resources/Models/ct-demo/plans.json",
                     "Resources/Models/ct-demo/model_card.md"):
        assert (installed / relative).is_file(), f"not installed: {relative}"

    image, _, _ = synthetic_case("ct", shape_zyx=(8, 36, 40))
    write_volume(image, tmp_path / "case.nrrd")
    script = tmp_path / "installed_check.py"
    script.write_text(INSTALLED_CHECK)
    run = subprocess.run([sys.executable, str(script), str(installed), str(tmp_path / "case.nrrd"),
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["state"] == "done", report["log"]
    for key in ("library", "mrml", "library_dir", "models_dir", "catalogue_dir", "terminology", "model_path"):
        assert Path(report[key]).resolve().is_relative_to(installed.resolve()), (key, report[key])
    assert report["models_dir"] == report["catalogue_dir"] == str(installed / "Resources" / "Models")
    assert report["terminology_exists"] and report["same_grid"]
    assert report["model"] == report["bundle_ok"] == "ct-demo"
    # Everything the module, the hbseg parser and a segmentation imported came from the installed folder.
    assert len(report["imported"]) > 40
    for file in report["imported"]:
        assert Path(file).resolve().is_relative_to(installed.resolve()), file


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_building_against_slicer_5_8_stops_with_the_supported_versions(tmp_path):
    """The library needs Python 3.10; 3D Slicer 5.8 ships 3.9, so the extension refuses to build against it."""
    stub = tmp_path / "slicer-stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_CONFIG + 'set(Slicer_VERSION "5.8.1")\n')
    (stub / "UseSlicer.cmake").write_text(STUB_USE)
    (stub / "Empty.cmake").write_text("")
    env = {**os.environ, "CMAKE_GENERATOR": "Ninja" if shutil.which("ninja") else "Unix Makefiles"}
    configure = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={stub}"],
                               capture_output=True, text=True, timeout=240, env=env)
    if configure.returncode != 0 and "CMAKE_C_COMPILER" in configure.stderr:
        pytest.skip("no C compiler for project()")
    assert configure.returncode != 0
    assert "needs 3D Slicer 5.10 or later" in configure.stderr and "5.8.1" in configure.stderr
