"""What both importers (nnU-Net result folders, MONAI bundles) need: their JSON files and their labels in our terms."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from ..bundle_manifest import NAME_PATTERN
from ..errors import ConfigError, InputError, ModelError

#: Label names taken for the tumour when ``--tumor-label`` is not given (one match needed).
TUMOR_NAMES = ("tumor", "tumour", "hepatoblastoma", "lesion", "cancer", "neoplasm")


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object; a :class:`ModelError` naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"not readable JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise ModelError("must hold a JSON object", path)
    return data



def choose_tumor(labels: Mapping[str, int], wanted: str | None, source: Path) -> str:
    """The name of the tumour label: ``--tumor-label NAME|VALUE``, else the one name that says tumour, else label 1
    of a two-label model; a :class:`ConfigError` when it cannot be told."""
    if wanted is not None:
        for name, value in labels.items():
            if wanted == name or wanted == str(value):
                if value == 0:
                    raise ConfigError("--tumor-label cannot be the background")
                return name
        raise ConfigError(f"--tumor-label {wanted!r} is not one of the model's labels {dict(labels)}")
    matches = [n for n in labels if any(t in n.lower() for t in TUMOR_NAMES)]
    if len(matches) == 1:
        return matches[0]
    if len(labels) == 2:
        return next(n for n, v in labels.items() if v == 1)
    raise ConfigError(f"cannot tell which of the labels {dict(labels)} is the tumour; say it with --tumor-label",
                      source)


def our_labels(labels: Mapping[str, int], tumor: str) -> dict[str, int]:
    """The model's labels renamed in our terms: ``tumor`` for the tumour, ``background`` for 0, the rest kept
    (spaces to underscores, a value suffix where names would clash)."""
    out = {}
    for name, value in labels.items():
        ours = "tumor" if name == tumor else ("background" if value == 0 else re.sub(r"\s+", "_", name.strip()))
        if ours in out or (ours == "tumor" and name != tumor):
            ours = f"{ours}_{value}"
        out[ours] = value
    return out


def check_import_paths(folder: str | Path, output: str | Path, what: str) -> tuple[Path, Path]:
    """(folder, output) as paths, once the model ``folder`` exists and ``output`` does not (nothing is overwritten)."""
    folder, output = Path(folder).expanduser(), Path(output).expanduser()
    if not folder.is_dir():
        raise InputError(f"{what} folder not found", folder)
    if output.exists():
        raise ConfigError("the output bundle folder already exists; choose a new folder (nothing is overwritten)",
                          output)
    return folder, output


def check_bundle_name(name: str) -> None:
    """Refuse a bundle name the model catalogue cannot hold (letters, digits, '.', '_', '-'; at most 64)."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"bundle name must be letters, digits, '.', '_' or '-' (got {name!r})")
