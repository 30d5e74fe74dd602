"""The library's dependency floors (pyproject.toml) and the 3D Slicer module's installer agree, and pip can resolve
them: MONAI 1.4 needs numpy < 2, MONAI >= 1.5 needs torch >= 2.4.1."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "HepatoblastomaSeg"))

from HepatoblastomaSegRunner import dependencies as deps  # noqa: E402

from helpers_dependencies import MONAI_RELEASES, SLICER_5_10_NUMPY  # noqa: E402


def _library_requirements() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return dict(deps.split_requirement(r.split(";")[0]) for r in project["dependencies"])


def test_the_module_installs_what_the_library_requires_with_the_same_floors():
    library = _library_requirements()
    module = dict(deps.split_requirement(r) for r in (deps.TORCH_REQUIREMENT, *deps.REQUIREMENTS))
    assert module, "the module names its requirements"
    for name, specifier in module.items():
        assert library.get(name) == specifier, (name, specifier, library.get(name))


def test_the_library_floors_resolve_with_monai_and_slicers_numpy():
    library = _library_requirements()
    admitted = [v for v in MONAI_RELEASES if deps.satisfies(v, library["monai"])]
    assert admitted == ["1.5.0"]
    oldest_torch = library["torch"].removeprefix(">=")
    assert deps.satisfies(oldest_torch, MONAI_RELEASES["1.5.0"]["torch"])
    assert deps.satisfies(SLICER_5_10_NUMPY, library["numpy"])
    assert deps.satisfies(SLICER_5_10_NUMPY, MONAI_RELEASES["1.5.0"]["numpy"])
