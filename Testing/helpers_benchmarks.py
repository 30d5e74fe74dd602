"""Importing the scripts of ``benchmarks/`` and ``Resources/Models/`` (not packages) from tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """The module ``benchmarks/<name>.py``; ``benchmarks/`` is on ``sys.path`` only while importing."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def import_train_demo_models() -> ModuleType:
    """``Resources/Models/train_demo_models.py``, the demo models' training script, as a module."""
    import importlib.util

    script = BENCHMARKS.parent / "Resources" / "Models" / "train_demo_models.py"
    spec = importlib.util.spec_from_file_location("train_demo_models", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
