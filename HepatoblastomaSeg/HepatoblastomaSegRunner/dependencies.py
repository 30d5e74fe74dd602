"""The Python packages the module needs inside 3D Slicer, and the rules for installing them.

- torch comes from the PyTorch extension (``EXTENSION_DEPENDS PyTorch``; its PyTorch Utils module installs a build
  that matches the GPU driver), never from plain pip: :data:`TORCH_REQUIREMENT` is only checked here.
- MONAI and the library's other needs (:data:`REQUIREMENTS`) are installed with ``slicer.packaging.pip_ensure``
  (3D Slicer 5.12+) or ``slicer.util.pip_install``, when the user first segments, never at import or module load.
- 3D Slicer's own numpy, SimpleITK and VTK (:data:`SLICER_PROVIDED`) are never reinstalled: every install gets a
  constraints file that pins their installed versions, and torch's (:func:`constraints_text`), so pip keeps them or
  fails.

Only the standard library (and ``packaging`` when present, as in 3D Slicer) is used here, so the check runs before
anything else is importable.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

#: 3D Slicer 5.10 ships numpy 2.0.2, which is kept. MONAI 1.4 needs numpy < 2, so MONAI >= 1.5; MONAI 1.5.0 needs
#: torch >= 2.4.1 (and < 2.7; MONAI 1.6 needs torch >= 2.8), so with an older torch pip could resolve nothing.
TORCH_REQUIREMENT = "torch>=2.4.1"
#: What ``hbseg segment`` needs besides torch and what 3D Slicer ships (pip requirement strings); highdicom for the
#: DICOM SEG export. The same floors as the library's ``pyproject.toml`` (a test keeps them equal).
REQUIREMENTS = ("monai>=1.5", "safetensors>=0.4", "tqdm>=4.66", "scipy>=1.11", "highdicom>=0.28")
#: Shipped with 3D Slicer and loaded by it: pinned, never replaced.
SLICER_PROVIDED = ("numpy", "SimpleITK", "vtk")
#: Pinned in every install: Slicer's own packages, and torch (the PyTorch extension's build, matched to the GPU).
PINNED = SLICER_PROVIDED + ("torch",)

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*$")


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_key(version: str) -> tuple:
    """A comparable key for a release version (``2.13.0+cpu`` -> (2, 13, 0)); pre-release tags sort lower."""
    release = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    numbers = tuple(int(p) for p in release.group(1).split(".")) if release else (0,)
    return numbers + (0,) * (4 - len(numbers))


def satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets ``specifier`` (``>=1.4``, ``>=1.4,<2``, ``==2.3.1``; empty: any)."""
    if not specifier.strip():
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(specifier, prereleases=True)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - an unusual version string: fall back to the simple comparison
        pass
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
           ">": lambda a, b: a > b, "<": lambda a, b: a < b, "!=": lambda a, b: a != b}
    for clause in specifier.split(","):
        match = re.match(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$", clause)
        if not match or not ops[match.group(1)](_version_key(version), _version_key(match.group(2))):
            return False
    return True


def split_requirement(requirement: str) -> tuple[str, str]:
    """``"monai>=1.5"`` -> ``("monai", ">=1.5")``."""
    match = _REQUIREMENT.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1), match.group(2)


def unmet(requirements: Iterable[str] = REQUIREMENTS) -> list[str]:
    """The requirements that are not installed, or installed in a version that does not satisfy them."""
    missing = []
    for requirement in requirements:
        name, specifier = split_requirement(requirement)
        version = installed_version(name)
        if version is None or not satisfies(version, specifier):
            missing.append(requirement)
    return missing


def constraints_text(packages: Sequence[str] = PINNED) -> str:
    """pip constraints pinning the installed version of each of ``packages`` (absent ones are left out)."""
    lines = [f"{name}=={installed_version(name)}" for name in packages if installed_version(name) is not None]
    return "".join(line + "\n" for line in lines)


def write_constraints(path: str | Path, packages: Sequence[str] = PINNED) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(constraints_text(packages), encoding="utf-8")
    return path


def torch_problem(requirement: str = TORCH_REQUIREMENT) -> str:
    """``""`` when an installed torch satisfies ``requirement``, else what is wrong and what to do."""
    name, specifier = split_requirement(requirement)
    version = installed_version(name)
    if version is None:
        return ("PyTorch is not installed. It is installed by the PyTorch extension's PyTorch Utils module (a build "
                "that matches your GPU driver).")
    if not satisfies(version, specifier):
        return (f"PyTorch {version} is installed, but this module needs {requirement}. Open the PyTorch Utils "
                "module, uninstall PyTorch, restart 3D Slicer and install it again.")
    return ""
