"""A bundle's manifest (``bundle.json`` with its ``plans.json``), read and checked with the standard library alone.

Everything about a model bundle that can be known without building its network lives here: where bundles are found
(:func:`models_dirs`, :func:`find_bundle`, :func:`list_manifests`), what ``bundle.json`` says (:class:`BundleManifest`:
name, version, modality, labels, kind, weights' SHA256, review thresholds, the SHA256 of every file) and whether the
files on disk still match it (:meth:`BundleManifest.verify`). It imports neither torch, numpy nor MONAI, so the
3D Slicer module lists, describes and imports models before any of them is installed, from the same code as the
library: :mod:`HepatoblastomaSegLib.bundle` builds its :class:`~HepatoblastomaSegLib.bundle.ModelBundle` (plans
validated, network) on top of :func:`read_manifest`.

``bundle.json`` may hold keys that this reader does not know (a newer writer, another importer's section); they are
ignored here and kept in :attr:`BundleManifest.raw` for the code that knows them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelError

BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON, PLANS_JSON, WEIGHTS_FILE, CARD_FILE = "bundle.json", "plans.json", "model.safetensors", "model_card.md"
BUNDLE_FILES = (BUNDLE_JSON, PLANS_JSON, WEIGHTS_FILE, CARD_FILE)
#: bundle.json key of the {file: SHA256} manifest of every other file of the bundle.
CHECKSUMS_KEY = "files"
#: bundle.json key of the review thresholds and reference ranges (read by ``infer.review``).
REVIEW_KEY = "review"
#: The kind of model a bundle holds, from the importer's section in bundle.json: our own DynUNet (no section), an
#: imported nnU-Net model (``"nnunet"``) or an imported MONAI bundle (``"monai"``).
KIND_SECTIONS = {"nnunet": "nnunet", "monai_bundle": "monai"}  # bundle.json section -> kind
KINDS = ("own", *KIND_SECTIONS.values())
MODELS_ENV = "HBSEG_MODELS_DIR"
#: The repository's bundled models: <repo root>/Resources/Models, the repo root being the package's parent.
RESOURCES_MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.-]+)?$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class BundleLabel:
    """One output channel: its value in the label map, name and display colour (RGB 0-255)."""

    value: int
    name: str
    color_rgb: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "color_rgb": list(self.color_rgb)}


@dataclasses.dataclass(frozen=True)
class BundleManifest:
    """What a bundle folder's ``bundle.json`` says, checked against its ``plans.json`` (see :func:`read_manifest`)."""

    name: str
    version: str
    modality: str
    labels: tuple[BundleLabel, ...]
    path: Path
    weights_sha256: str
    kind: str = "own"
    width: float = 1.0
    weights_dtype: str = "float32"
    min_library_version: str = "0.0.0"
    created_utc: str = ""
    #: ``{file name: SHA256}`` of every file but bundle.json; empty for a bundle written before the list existed.
    checksums: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The review thresholds and reference ranges (``infer.review.ReviewSettings`` reads them); empty: defaults.
    review: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The whole bundle.json, for the sections only their own readers understand (e.g. ``"nnunet"``).
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def plans_path(self) -> Path:
        return self.path / PLANS_JSON

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.labels)

    def read_card(self) -> str:
        """The model card (Markdown)."""
        return self.card_path.read_text(encoding="utf-8")

    def read_plans(self) -> dict[str, Any]:
        """``plans.json`` as JSON (validated as plans only by the library's ``Plans``, which needs numpy)."""
        return json.loads(self.plans_path.read_text(encoding="utf-8"))

    def section(self, key: str) -> dict[str, Any] | None:
        """A section of bundle.json that this reader does not interpret (None when absent or not an object)."""
        value = self.raw.get(key)
        return value if isinstance(value, dict) else None

    def require_modality(self, modality: str) -> None:
        """Raise :class:`ModelError` unless this model is for ``modality`` ("ct" or "mri")."""
        if modality != self.modality:
            raise ModelError(f"'{self.name}' is a {self.modality.upper()} model; it cannot segment a "
                             f"{modality.upper()} image (available {modality.upper()} models: "
                             f"{', '.join(list_bundles(modality)) or 'none'})", self.path)

    def verify(self, *, weights: bool = True) -> None:
        """Refuse the bundle when a file differs from the SHA256 bundle.json records for it: every file listed under
        ``files`` (the weights only with ``weights``), or the weights alone for a bundle without that list."""
        if CHECKSUMS_KEY in self.raw:
            _verify_checksums(self.path, self.raw[CHECKSUMS_KEY], skip=() if weights else (WEIGHTS_FILE,))
        elif weights:
            check_weights_digest(self.path, sha256_file(self.weights_path), self.weights_sha256)


# ------------------------------------------------------------------------------------------------ finding
def search_dirs() -> list[tuple[Path, str]]:
    """``(folder, source)`` searched for bundles by name, in order: each folder of ``$HBSEG_MODELS_DIR``
    ("environment"), then the repository's ``Resources/Models`` ("bundled")."""
    env = [(Path(p).expanduser(), "environment") for p in os.environ.get(MODELS_ENV, "").split(os.pathsep)
           if p.strip()]
    return env + [(RESOURCES_MODELS_DIR, "bundled")]


def models_dirs() -> list[Path]:
    """Folders searched for bundles by name, in order."""
    return [folder for folder, _ in search_dirs()]


def _modality_of(meta_path: Path) -> str | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("modality") if isinstance(meta, dict) else None


def list_bundles(modality: str | None = None) -> list[str]:
    """Names of the bundles found in :func:`models_dirs` (optionally only those for ``modality``); the first folder
    of a name wins, as in :func:`find_bundle`."""
    names: list[str] = []
    for folder in models_dirs():
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            meta = sub / BUNDLE_JSON
            if sub.name in names or not meta.is_file():
                continue
            if modality is not None and _modality_of(meta) != modality:
                continue
            names.append(sub.name)
    return names


def list_manifests(folders: Sequence[tuple[Path, str]] | None = None) -> list[tuple[BundleManifest, str]]:
    """``(manifest, source)`` of every readable bundle in ``folders`` (default :func:`search_dirs`), one per folder
    name, the first found winning as in :func:`find_bundle`; a folder whose bundle.json is broken is left out
    (:func:`read_manifest` on it says why). Checksums are not verified here."""
    found: dict[str, tuple[BundleManifest, str]] = {}
    for folder, source in (search_dirs() if folders is None else folders):
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if sub.name in found or not (sub / BUNDLE_JSON).is_file():
                continue
            try:
                found[sub.name] = (read_manifest(sub), source)
            except ModelError:
                continue
    return list(found.values())


def find_bundle(name_or_dir: str | Path) -> Path:
    """The folder of a bundle given as a path, or as a name looked up in :func:`models_dirs`."""
    candidate = Path(name_or_dir).expanduser()
    if candidate.is_dir():
        return candidate
    text = str(name_or_dir)
    if os.sep in text or "/" in text or not NAME_PATTERN.match(text):
        raise ModelError("model bundle folder not found", candidate)
    looked = []
    for folder in models_dirs():
        path = folder / text
        looked.append(str(path))
        if path.is_dir():
            return path
    available = list_bundles()
    raise ModelError(f"model bundle '{text}' not found; looked in {', '.join(looked)} (set {MODELS_ENV} to add "
                     f"folders); available: {', '.join(available) or 'none'}")


# ------------------------------------------------------------------------------------------------ reading
def version_tuple(text: Any) -> tuple[int, int, int] | None:
    """``"1.2.3"`` -> (1, 2, 3); None when ``text`` is not a semantic version."""
    match = _SEMVER.match(text) if isinstance(text, str) else None
    return None if match is None else tuple(int(g) for g in match.groups())


def read_json_object(path: Path, folder: Path) -> dict:
    """A bundle's JSON file as an object; :class:`ModelError` naming the bundle when absent or not a JSON object."""
    if not path.is_file():
        raise ModelError(f"missing file {path.name} (an incomplete or wrong bundle folder? it needs "
                         f"{', '.join(BUNDLE_FILES)})", folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path.name} is not valid JSON ({exc})", folder) from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path.name} must hold a JSON object", folder)
    return data


def parse_labels(raw: Any, folder: Path) -> tuple[BundleLabel, ...]:
    """bundle.json ``labels``: values 0, 1, ... each with a name and an RGB colour; sorted by value."""
    rule = 'a list of {"value": int, "name": str, "color_rgb": [r, g, b]} entries, values 0, 1, ...'
    if not isinstance(raw, list) or len(raw) < 2:
        raise ModelError(f"bundle.json labels must be {rule}", folder)
    labels = []
    for entry in raw:
        try:
            color = tuple(int(c) for c in entry["color_rgb"])
            label = BundleLabel(int(entry["value"]), str(entry["name"]), color)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"bundle.json labels must be {rule} (bad entry {entry!r})", folder) from exc
        if len(color) != 3 or any(not 0 <= c <= 255 for c in color):
            raise ModelError(f"bundle.json label '{label.name}' colour must be 3 integers 0-255", folder)
        labels.append(label)
    if sorted(lab.value for lab in labels) != list(range(len(labels))):
        raise ModelError(f"bundle.json labels must be {rule}", folder)
    return tuple(sorted(labels, key=lambda lab: lab.value))


def read_manifest(name_or_dir: str | Path, *, modality: str | None = None) -> BundleManifest:
    """Find a bundle and read its manifest, refusing it with what is wrong.

    Checks: all four files present; bundle.json's format version, name, semantic version, modality, labels, weights'
    SHA256 and network width; the minimum library version; plans.json a JSON object whose modality and labels agree
    with bundle.json; a non-empty model card; with ``modality`` ("ct"/"mri"), a model for it. File checksums are
    :meth:`BundleManifest.verify`'s job (hashing the weights takes a while).
    """
    folder = find_bundle(name_or_dir)
    meta = read_json_object(folder / BUNDLE_JSON, folder)
    for file in (PLANS_JSON, WEIGHTS_FILE, CARD_FILE):
        if not (folder / file).is_file():
            raise ModelError(f"missing file {file}", folder)
    fmt = meta.get("format_version")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ModelError(f"bundle.json format_version must be a positive integer (got {fmt!r})", folder)
    if fmt > BUNDLE_FORMAT_VERSION:
        raise ModelError(f"bundle format {fmt} is newer than this library understands ({BUNDLE_FORMAT_VERSION}); "
                         "update HepatoblastomaSeg", folder)
    name, version, bundle_modality = meta.get("name"), meta.get("version"), meta.get("modality")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ModelError(f"bundle.json name must be letters, digits, '.', '_' or '-' (got {name!r})", folder)
    if version_tuple(version) is None:
        raise ModelError(f"bundle.json version must be a semantic version like 1.0.0 (got {version!r})", folder)
    if bundle_modality not in ("ct", "mri"):
        raise ModelError(f"bundle.json modality must be 'ct' or 'mri' (got {bundle_modality!r})", folder)
    minimum = meta.get("min_library_version", "0.0.0")
    if version_tuple(minimum) is None:
        raise ModelError(f"bundle.json min_library_version must be a semantic version (got {minimum!r})", folder)
    if version_tuple(minimum) > version_tuple(__version__):
        raise ModelError(f"'{name}' {version} needs HepatoblastomaSeg >= {minimum}; this is {__version__}. "
                         "Update the library.", folder)
    weights = meta.get("weights")
    if not isinstance(weights, dict) or not _SHA256.fullmatch(str(weights.get("sha256", ""))):
        raise ModelError('bundle.json weights must be {"file": "model.safetensors", "sha256": <64 hex digits>}',
                         folder)
    network = meta.get("network", {})
    width = network.get("width", 1.0) if isinstance(network, dict) else None
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ModelError(f"bundle.json network.width must be a positive number (got {width!r})", folder)
    labels = parse_labels(meta.get("labels"), folder)
    checksums = meta.get(CHECKSUMS_KEY, {})
    if isinstance(checksums, dict) and checksums.get(WEIGHTS_FILE, weights["sha256"]) != weights["sha256"]:
        raise ModelError(f"bundle.json lists two different SHA256 for {WEIGHTS_FILE}", folder)
    _check_plans_agree(folder, bundle_modality, labels)
    if not (folder / CARD_FILE).read_text(encoding="utf-8").strip():
        raise ModelError(f"{CARD_FILE} is empty; a model card must say what the model was trained on, its intended "
                         "use, validation figures and limits", folder)
    kinds = [kind for key, kind in KIND_SECTIONS.items() if isinstance(meta.get(key), dict)]
    if len(kinds) > 1:
        raise ModelError(f"bundle.json has sections of two kinds of model ({', '.join(kinds)})", folder)
    review = meta.get(REVIEW_KEY)
    manifest = BundleManifest(
        name=name, version=version, modality=bundle_modality, labels=labels, path=folder,
        weights_sha256=weights["sha256"], kind=kinds[0] if kinds else "own", width=float(width),
        weights_dtype=str(weights.get("dtype", "float32")), min_library_version=minimum,
        created_utc=str(meta.get("created_utc", "")), checksums=dict(checksums) if isinstance(checksums, dict) else {},
        review=review if isinstance(review, dict) else {}, raw=meta)
    if modality is not None:
        manifest.require_modality(modality)
    return manifest


def _check_plans_agree(folder: Path, modality: str, labels: Sequence[BundleLabel]) -> None:
    """plans.json says the same modality and labels as bundle.json (its full validation is the library's Plans)."""
    path = folder / PLANS_JSON
    try:
        plans = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(f"{PLANS_JSON}: plans file is not UTF-8 text ({exc.reason})", folder) from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{PLANS_JSON}: plans file is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg})", folder) from exc
    if not isinstance(plans, dict):
        raise ModelError(f"{PLANS_JSON} must hold a JSON object", folder)
    if plans.get("modality") != modality:
        raise ModelError(f"bundle.json says modality {modality} but plans.json says {plans.get('modality')}", folder)
    bundle_labels = {lab.name: lab.value for lab in labels}
    if bundle_labels != plans.get("labels"):
        raise ModelError(f"bundle.json labels {bundle_labels} do not match plans.json labels {plans.get('labels')}",
                         folder)


# ------------------------------------------------------------------------------------------------ checksums
def sha256_file(path: Path) -> str:
    """SHA256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights_digest(folder: Path, digest: str, expected: str) -> None:
    if digest != expected:
        raise ModelError(f"{WEIGHTS_FILE} is corrupt or was replaced: its SHA256 is {digest[:16]}..., "
                         f"bundle.json says {expected[:16]}...", folder)


def _verify_checksums(folder: Path, listed: Any, *, skip: Sequence[str] = ()) -> None:
    """Refuse a bundle whose files differ from the SHA256 that ``bundle.json`` lists for them."""
    rule = f'bundle.json {CHECKSUMS_KEY} must map file names inside the bundle to SHA256 hex digests'
    if not isinstance(listed, dict):
        raise ModelError(rule, folder)
    for name, expected in listed.items():
        if (not isinstance(name, str) or not isinstance(expected, str) or not _SHA256.fullmatch(expected)
                or Path(name).is_absolute() or ".." in Path(name).parts or name == BUNDLE_JSON):
            raise ModelError(f"{rule} (bad entry {name!r})", folder)
    unlisted = [name for name in (PLANS_JSON, WEIGHTS_FILE, CARD_FILE) if name not in listed]
    if unlisted:
        raise ModelError(f"bundle.json {CHECKSUMS_KEY} lacks {', '.join(unlisted)}", folder)
    for name, expected in sorted(listed.items()):
        if name in skip:
            continue
        try:
            digest = sha256_file(folder / name)
        except FileNotFoundError as exc:
            raise ModelError(f"missing file {name} (listed in bundle.json)", folder) from exc
        if digest != expected:
            raise ModelError(f"{name} is corrupt or was replaced: its SHA256 is {digest[:16]}..., bundle.json says "
                             f"{expected[:16]}... (if the change was deliberate, record it with "
                             "HepatoblastomaSegLib.bundle.refresh_bundle_checksums)", folder)
