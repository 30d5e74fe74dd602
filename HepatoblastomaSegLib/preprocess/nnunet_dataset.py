"""Training datasets in nnU-Net's and the Medical Segmentation Decathlon's layout, read as our manifest entries.

A folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` is one of:

- **MSD** (e.g. ``Task03_Liver``): ``dataset.json`` lists ``training: [{"image": "./imagesTr/liver_0.nii.gz",
  "label": "./labelsTr/liver_0.nii.gz"}]``, ``labels`` maps value -> name (``{"0": "background", "1": "liver",
  "2": "cancer"}``), ``modality`` channel -> name; images are the files named (3D; 4D multi-channel MSD tasks are
  refused: hbseg segments one image per case).
- **nnU-Net v1** (``TaskXXX_Name``): as MSD, but images carry the channel suffix, ``imagesTr/liver_0_0000.nii.gz``.
- **nnU-Net v2** (``DatasetXXX_Name``): ``labels`` maps name -> value (``{"background": 0, "liver": 1,
  "tumor": 2}``), ``channel_names`` channel -> name, ``file_ending``; cases are the files of ``labelsTr/`` and their
  images ``imagesTr/<case>_0000<file_ending>``.

The label files hold several values; :class:`LabelChoice` says which value(s) are the tumour and which the liver
(``--label tumor=2``, optionally ``--label liver=1``). Without ``--label``, the one label whose name says tumour,
cancer or lesion is the tumour (the only foreground label when there is one), labels named liver are the liver,
and every other label is background. Each case becomes a :class:`~.dataset.CaseEntry` whose ``tumor`` file is the
label map and whose ``tumor_values``/``liver_values`` say how to read it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from ..errors import ConfigError, InputError

DATASET_JSON = "dataset.json"
TUMOR_WORDS = ("tumor", "tumour", "cancer", "lesion", "hepatoblastoma", "neoplasm")
LABEL_ROLES = ("tumor", "liver")


@dataclasses.dataclass(frozen=True)
class LabelChoice:
    """Which values of a multi-label mask are the tumour and the liver (``None``: decide from the label names)."""

    tumor: tuple[int, ...] | None = None
    liver: tuple[int, ...] | None = None


def parse_label_options(options: list[str] | tuple[str, ...] | None) -> LabelChoice | None:
    """``["tumor=2", "liver=1"]`` (or ``["tumor=2,liver=1"]``, ``"tumor=2+3"`` for several values) -> LabelChoice."""
    if not options:
        return None
    found: dict[str, tuple[int, ...]] = {}
    for option in options:
        for part in str(option).split(","):
            match = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+(?:\s*\+\s*\d+)*)\s*", part)
            if not match or match.group(1).lower() not in (*LABEL_ROLES, "tumour"):
                raise ConfigError(f"--label takes ROLE=VALUE with ROLE tumor or liver, e.g. tumor=2 or tumor=2,liver=1 "
                                  f"(got {part.strip()!r})")
            role = "tumor" if match.group(1).lower() == "tumour" else match.group(1).lower()
            if role in found:
                raise ConfigError(f"--label gives the {role} twice")
            found[role] = tuple(int(v) for v in match.group(2).replace(" ", "").split("+"))
    if "tumor" in found and "liver" in found and set(found["tumor"]) & set(found["liver"]):
        raise ConfigError(f"--label gives the same value to tumour and liver ({found})")
    if 0 in found.get("tumor", ()) or 0 in found.get("liver", ()):
        raise ConfigError("--label: value 0 is the background in nnU-Net datasets")
    return LabelChoice(found.get("tumor"), found.get("liver"))


def is_nnunet_folder(folder: Path) -> bool:
    return (folder / DATASET_JSON).is_file() and (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir()


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable ({exc})", path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path) from exc
    if not isinstance(data, dict):
        raise InputError("must hold a JSON object", path)
    return data


def dataset_labels(data: dict, path: Path) -> dict[int, str]:
    """value -> name from v1/MSD (``{"1": "liver"}``) or v2 (``{"liver": 1}``) ``labels``."""
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError("has no 'labels' object (value -> name, or name -> value in nnU-Net v2)", path)
    out: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).strip().isdigit() and isinstance(value, str):
            out[int(key)] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            out[value] = str(key)
        else:
            raise InputError(f"label {key!r}: {value!r} is not a single value (nnU-Net v2 regions are not supported; "
                             "give one value per label)", path)
    return out


def resolve_choice(labels: dict[int, str], choice: LabelChoice | None, path: Path) -> tuple[tuple[int, ...],
                                                                                            tuple[int, ...]]:
    """(tumour values, liver values) from the user's choice or the label names (module docstring)."""
    listed = ", ".join(f"{v}={n}" for v, n in sorted(labels.items()))
    foreground = {v: n for v, n in labels.items() if v != 0}
    choice = choice or LabelChoice()
    tumor = choice.tumor
    if tumor is None:
        named = [v for v, n in foreground.items() if any(w in n.lower() for w in TUMOR_WORDS)]
        if len(named) == 1:
            tumor = (named[0],)
        elif len(foreground) == 1:
            tumor = tuple(foreground)
        else:
            raise ConfigError(f"{path}: cannot tell which label is the tumour (labels: {listed}); say it with "
                              "--label tumor=VALUE")
    liver = choice.liver
    if liver is None:
        liver = tuple(v for v, n in sorted(foreground.items()) if "liver" in n.lower() and v not in tumor)
    unknown = [v for v in (*tumor, *liver) if v not in labels]
    if unknown:
        raise ConfigError(f"{path}: --label names value(s) {unknown} that dataset.json does not list "
                          f"(labels: {listed})")
    return tuple(tumor), tuple(liver)


def _image_for(label_file: Path, images: Path, listed_image: Path | None, ending: str) -> Path:
    """The case's single-channel image: the listed file (MSD), else ``<case>_0000<ending>`` (nnU-Net v1/v2)."""
    case = label_file.name[: -len(ending)]
    candidates = ([listed_image] if listed_image is not None else []) + [images / f"{case}_0000{ending}"]
    for candidate in candidates:
        if candidate.is_file():
            if (images / f"{case}_0001{ending}").exists():
                raise InputError(f"case {case} has several channels ({case}_0001{ending} ...); hbseg trains on one "
                                 "image per case", images)
            return candidate
    raise InputError(f"no image for case {case} (looked for {', '.join(c.name for c in candidates)})", images)


def read_nnunet_dataset(folder: str | Path, choice: LabelChoice | None = None):
    """The cases of an MSD / nnU-Net v1 / v2 folder as :class:`~.dataset.CaseEntry` (sorted by case)."""
    from .dataset import CaseEntry

    folder = Path(folder)
    path = folder / DATASET_JSON
    data = _load_json(path)
    channels = data.get("channel_names", data.get("modality", {"0": "?"}))
    if isinstance(channels, dict) and len(channels) != 1:
        raise InputError(f"lists {len(channels)} channels ({', '.join(map(str, channels.values()))}); hbseg trains "
                         "on one image per case", path)
    tumor, liver = resolve_choice(dataset_labels(data, path), choice, path)
    ending = str(data.get("file_ending", ".nii.gz"))
    images, labels_dir = folder / "imagesTr", folder / "labelsTr"
    listed = data.get("training")
    pairs: list[tuple[Path, Path | None]] = []
    if isinstance(listed, list) and listed:
        for i, item in enumerate(listed):
            if not isinstance(item, dict) or "label" not in item:
                raise InputError(f"training[{i}] must be an object with 'image' and 'label'", path)
            label = folder / str(item["label"])
            image = folder / str(item["image"]) if item.get("image") else None
            pairs.append((label, image))
    else:
        pairs = [(p, None) for p in sorted(labels_dir.iterdir()) if p.name.endswith(ending)
                 and not p.name.startswith(".")]
    if not pairs:
        raise InputError(f"no training cases (dataset.json lists none and labelsTr holds no *{ending} files)", folder)
    entries = []
    for label, image in pairs:
        if not label.name.endswith(ending):
            ending_here = "".join(label.suffixes[-2:]) if label.name.endswith(".nii.gz") else label.suffix
        else:
            ending_here = ending
        if not label.is_file():
            raise InputError(f"label file of case {label.name[: -len(ending_here)]} not found", label)
        entries.append(CaseEntry(label.name[: -len(ending_here)], _image_for(label, images, image, ending_here),
                                 label, None, tumor_values=tumor, liver_values=liver))
    return sorted(entries, key=lambda e: e.case)
