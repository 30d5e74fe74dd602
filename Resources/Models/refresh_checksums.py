"""Record the SHA256 of every file of the bundled models in their bundle.json (``files``).

Run after a deliberate change of a bundle's files (a new model card, new training logs):

    python Resources/Models/refresh_checksums.py            # every bundle in Resources/Models
    python Resources/Models/refresh_checksums.py ct-demo    # one of them

Weights are never re-blessed: a model.safetensors that no longer matches the SHA256 it was saved with is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from HepatoblastomaSegLib.bundle import BUNDLE_JSON, refresh_bundle_checksums  # noqa: E402


def main(names: list[str]) -> int:
    folders = [HERE / name for name in names] or sorted(p for p in HERE.iterdir() if (p / BUNDLE_JSON).is_file())
    for folder in folders:
        print(refresh_bundle_checksums(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
