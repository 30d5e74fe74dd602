"""What every benchmark script ends with: its results printed as JSON and, with ``--json PATH``, written there."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(results: dict, json_path: Path | None) -> int:
    """Print ``results`` (indented JSON) and write them to ``json_path`` when given; returns the exit code 0."""
    text = json.dumps(results, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n", encoding="utf-8")
    return 0
