"""Model bundles: a trained model as a folder, checked before anything is run.

A bundle folder holds four files:

- ``model.safetensors``: the weights (never a pickle: loading a pickle runs code), optionally float16;
- ``plans.json``: the :class:`~HepatoblastomaSegLib.preprocess.plans.Plans` the model was trained with;
- ``model_card.md``: what it was trained on, intended use, validation figures, limits (for people);
- ``bundle.json``: name, semantic version, modality, labels (value, name, colour), the SHA256 of the weights, the
  network width, the minimum library version that can run it, and ``files``: the SHA256 of every other file of the
  bundle (:func:`bundle_checksums`), so that an edited ``plans.json`` or model card is refused like corrupt weights.
  Whoever writes or changes a bundle's files (``save_bundle``, the nnU-Net import) records them with
  :func:`refresh_bundle_checksums`. A bundle written before ``files`` existed still loads, its weights checked.

:func:`load_bundle` reads and checks all of it and says exactly what is wrong: a missing file, corrupt weights
(checksum), a bundle newer than the library, plans and bundle that disagree, or (with ``modality=``) a CT model
given an MRI. :meth:`ModelBundle.build_network` re-hashes the very bytes it loads, so weights swapped after loading
are refused too.

Where bundles live: a path to a folder, or a name looked up in each folder of ``$HBSEG_MODELS_DIR``
(``os.pathsep``-separated) and then in ``Resources/Models/<name>/`` of the repository (the parent of the
``HepatoblastomaSegLib`` package).

Saving (:func:`save_bundle`) writes into a temporary sibling folder and renames it into place, so a bundle is either
complete or absent; overwriting an existing bundle replaces its files one by one with ``bundle.json`` last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ConfigError, ModelError
from .preprocess.plans import Plans

BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON, PLANS_JSON, WEIGHTS_FILE, CARD_FILE = "bundle.json", "plans.json", "model.safetensors", "model_card.md"
BUNDLE_FILES = (BUNDLE_JSON, PLANS_JSON, WEIGHTS_FILE, CARD_FILE)
#: bundle.json key of the {file: SHA256} manifest of every other file of the bundle.
CHECKSUMS_KEY = "files"
MODELS_ENV = "HBSEG_MODELS_DIR"
#: The repository's bundled models: <repo root>/Resources/Models, the repo root being the package's parent.
RESOURCES_MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
DEFAULT_COLORS = {"background": (0, 0, 0), "tumor": (230, 60, 60), "liver": (221, 130, 101)}
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.-]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class BundleLabel:
    """One output channel: its value in the label map, name and display colour (RGB 0-255)."""

    value: int
    name: str
    color_rgb: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "color_rgb": list(self.color_rgb)}


@dataclasses.dataclass
class ModelBundle:
    """A loaded, checked bundle. ``build_network(device)`` gives the ready network."""

    name: str
    version: str
    modality: str
    labels: list[BundleLabel]
    plans: Plans
    card: str
    path: Path
    sha256: str
    width: float = 1.0
    weights_dtype: str = "float32"
    min_library_version: str = "0.0.0"
    created_utc: str = ""
    _networks: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    def require_modality(self, modality: str) -> None:
        """Raise :class:`ModelError` unless this model is for ``modality`` ("ct" or "mri")."""
        if modality != self.modality:
            raise ModelError(f"'{self.name}' is a {self.modality.upper()} model; it cannot segment a "
                             f"{modality.upper()} image (available {modality.upper()} models: "
                             f"{', '.join(list_bundles(modality)) or 'none'})", self.path)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights, from bytes whose SHA256 was just checked against bundle.json."""
        from safetensors.torch import load as load_safetensors

        try:
            data = self.weights_path.read_bytes()
        except FileNotFoundError as exc:
            raise ModelError(f"missing file {WEIGHTS_FILE}", self.path) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ModelError(f"{WEIGHTS_FILE} is corrupt or was replaced: its SHA256 is {digest[:16]}..., "
                             f"bundle.json says {self.sha256[:16]}...", self.path)
        try:
            return load_safetensors(data)
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{WEIGHTS_FILE} is not a readable safetensors file ({exc})", self.path) from exc

    def build_network(self, device: str | torch.device = "cpu", *, deep_supervision: bool = False
                      ) -> torch.nn.Module:
        """The DynUNet of ``plans.json`` at the bundle's width, verified weights loaded, in eval mode on ``device``.

        Without deep supervision every parameter comes from the weights file, so the network is laid out on the meta
        device and allocated straight on ``device``: no random initialisation to overwrite (0.3 s of a 0.6 s load
        for the paper's network on a CPU) and no copy from the CPU. Deep-supervision heads are not saved, so with
        them the network is initialised as for training.
        """
        from .network import build_network, load_weights

        if deep_supervision:
            net = build_network(self.plans, width=self.width, deep_supervision=True)
            load_weights(net, self.state_dict(), source=str(self.weights_path))
            return net.to(device).eval()
        with torch.device("meta"):
            net = build_network(self.plans, width=self.width)
        net = net.to_empty(device=device)
        load_weights(net, self.state_dict(), source=str(self.weights_path), every_parameter=True)
        return net.eval()

    def cached_network(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """:meth:`build_network` once per device for this loaded bundle (e.g. the liver model, used once per MRI
        case); callers must not modify it."""
        key = str(torch.device(device))
        if key not in self._networks:
            self._networks[key] = self.build_network(device)
        return self._networks[key]


# ------------------------------------------------------------------------------------------------ finding
def models_dirs() -> list[Path]:
    """Folders searched for bundles by name, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]
    return dirs + [RESOURCES_MODELS_DIR]


def list_bundles(modality: str | None = None) -> list[str]:
    """Names of the bundles found in :func:`models_dirs` (optionally only those for ``modality``)."""
    names: list[str] = []
    for folder in models_dirs():
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            meta = sub / BUNDLE_JSON
            if sub.name in names or not meta.is_file():
                continue
            if modality is not None:
                try:
                    if json.loads(meta.read_text(encoding="utf-8")).get("modality") != modality:
                        continue
                except (OSError, ValueError):
                    continue
            names.append(sub.name)
    return names


def find_bundle(name_or_dir: str | Path) -> Path:
    """The folder of a bundle given as a path or a name (see module docstring)."""
    candidate = Path(name_or_dir).expanduser()
    if candidate.is_dir():
        return candidate
    text = str(name_or_dir)
    if os.sep in text or "/" in text or not _NAME.match(text):
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


# ------------------------------------------------------------------------------------------------ loading
def _version_tuple(text: str) -> tuple[int, int, int] | None:
    match = _SEMVER.match(text) if isinstance(text, str) else None
    return None if match is None else tuple(int(g) for g in match.groups())


def _read_json(path: Path, folder: Path) -> dict:
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


def _parse_labels(raw: Any, folder: Path) -> list[BundleLabel]:
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
    return sorted(labels, key=lambda lab: lab.value)


def load_bundle(name_or_dir: str | Path, *, modality: str | None = None, verify_weights: bool = True
                ) -> ModelBundle:
    """Find, read and check a bundle. With ``modality`` ("ct"/"mri"), refuse a model for the other one.

    Checks: all four files present; bundle.json fields (name, semantic version, modality, labels, SHA256, width);
    minimum library version; plans.json valid and consistent with bundle.json (modality, labels); the SHA256 of
    every file bundle.json lists under ``files`` (of the weights alone for an older bundle without that list); the
    weights' are skipped with ``verify_weights=False``, e.g. for listing.
    """
    folder = find_bundle(name_or_dir)
    meta = _read_json(folder / BUNDLE_JSON, folder)
    for file in (PLANS_JSON, WEIGHTS_FILE, CARD_FILE):
        if not (folder / file).is_file():
            raise ModelError(f"missing file {file}", folder)
    fmt = meta.get("format_version")
    if not isinstance(fmt, int) or fmt < 1:
        raise ModelError(f"bundle.json format_version must be a positive integer (got {fmt!r})", folder)
    if fmt > BUNDLE_FORMAT_VERSION:
        raise ModelError(f"bundle format {fmt} is newer than this library understands ({BUNDLE_FORMAT_VERSION}); "
                         "update HepatoblastomaSeg", folder)
    name, version, bundle_modality = meta.get("name"), meta.get("version"), meta.get("modality")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelError(f"bundle.json name must be letters, digits, '.', '_' or '-' (got {name!r})", folder)
    if _version_tuple(version) is None:
        raise ModelError(f"bundle.json version must be a semantic version like 1.0.0 (got {version!r})", folder)
    if bundle_modality not in ("ct", "mri"):
        raise ModelError(f"bundle.json modality must be 'ct' or 'mri' (got {bundle_modality!r})", folder)
    minimum = meta.get("min_library_version", "0.0.0")
    if _version_tuple(minimum) is None:
        raise ModelError(f"bundle.json min_library_version must be a semantic version (got {minimum!r})", folder)
    if _version_tuple(minimum) > _version_tuple(__version__):
        raise ModelError(f"'{name}' {version} needs HepatoblastomaSeg >= {minimum}; this is {__version__}. "
                         "Update the library.", folder)
    weights = meta.get("weights")
    if not isinstance(weights, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(weights.get("sha256", ""))):
        raise ModelError('bundle.json weights must be {"file": "model.safetensors", "sha256": <64 hex digits>}',
                         folder)
    network = meta.get("network", {})
    width = network.get("width", 1.0) if isinstance(network, dict) else None
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ModelError(f"bundle.json network.width must be a positive number (got {width!r})", folder)
    labels = _parse_labels(meta.get("labels"), folder)
    try:
        plans = Plans.load(folder / PLANS_JSON)
    except ConfigError as exc:
        raise ModelError(f"{PLANS_JSON}: {exc.problem}", folder) from exc
    if plans.modality != bundle_modality:
        raise ModelError(f"bundle.json says modality {bundle_modality} but plans.json says {plans.modality}", folder)
    plan_labels = {lab.name: lab.value for lab in labels}
    if plan_labels != plans.labels:
        raise ModelError(f"bundle.json labels {plan_labels} do not match plans.json labels {plans.labels}", folder)
    card = (folder / CARD_FILE).read_text(encoding="utf-8")
    if not card.strip():
        raise ModelError(f"{CARD_FILE} is empty; a model card must say what the model was trained on, its intended "
                         "use, validation figures and limits", folder)
    bundle = ModelBundle(name=name, version=version, modality=bundle_modality, labels=labels, plans=plans, card=card,
                         path=folder, sha256=weights["sha256"], width=float(width),
                         weights_dtype=str(weights.get("dtype", "float32")), min_library_version=minimum,
                         created_utc=str(meta.get("created_utc", "")))
    if modality is not None:
        bundle.require_modality(modality)
    if CHECKSUMS_KEY in meta:
        listed = meta[CHECKSUMS_KEY]
        if isinstance(listed, dict) and listed.get(WEIGHTS_FILE, bundle.sha256) != bundle.sha256:
            raise ModelError(f"bundle.json lists two different SHA256 for {WEIGHTS_FILE}", folder)
        _verify_checksums(folder, listed, skip=() if verify_weights else (WEIGHTS_FILE,))
    elif verify_weights:
        digest = sha256_file(bundle.weights_path)
        if digest != bundle.sha256:
            raise ModelError(f"{WEIGHTS_FILE} is corrupt or was replaced: its SHA256 is {digest[:16]}..., "
                             f"bundle.json says {bundle.sha256[:16]}...", folder)
    return bundle


def bundle_checksums(folder: str | Path, names: Sequence[str] | None = None) -> dict[str, str]:
    """``{file name: SHA256}`` of a bundle's files: ``names`` (relative paths), or every regular, non-hidden file at
    the top of ``folder`` except ``bundle.json`` (the manifest that holds this list)."""
    folder = Path(folder)
    if names is None:
        names = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                 and p.name != BUNDLE_JSON]
    return {name: sha256_file(folder / name) for name in sorted(names)}


def refresh_bundle_checksums(folder: str | Path, names: Sequence[str] | None = None) -> Path:
    """Record :func:`bundle_checksums` in ``bundle.json`` (atomically); returns its path.

    For a deliberate change of a bundle's files (a new model card, added training logs). The weights are not
    re-blessed: when they no longer match the ``weights.sha256`` they were saved with, this refuses.
    """
    from .io.atomic import write_text_atomic

    folder = Path(folder)
    meta = _read_json(folder / BUNDLE_JSON, folder)
    checksums = bundle_checksums(folder, names)
    weights = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
    if WEIGHTS_FILE in checksums and weights.get("sha256") not in (None, checksums[WEIGHTS_FILE]):
        raise ModelError(f"{WEIGHTS_FILE} no longer has the SHA256 it was saved with; refusing to record a checksum "
                         "for replaced weights", folder)
    meta[CHECKSUMS_KEY] = checksums
    return write_text_atomic(folder / BUNDLE_JSON, json.dumps(meta, indent=2) + "\n")


def _verify_checksums(folder: Path, listed: Any, *, skip: Sequence[str] = ()) -> None:
    """Refuse a bundle whose files differ from the SHA256 that ``bundle.json`` lists for them."""
    rule = f'bundle.json {CHECKSUMS_KEY} must map file names inside the bundle to SHA256 hex digests'
    if not isinstance(listed, dict):
        raise ModelError(rule, folder)
    for name, expected in listed.items():
        if (not isinstance(name, str) or not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected)
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


def sha256_file(path: Path) -> str:
    """SHA256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ saving
def model_card(name: str, plans: Plans, *, trained_on: str, intended_use: str, validation: str, limits: str,
               title: str | None = None) -> str:
    """A model card in the bundle's standard sections (Markdown); the plans add spacing, patch and labels."""
    sp = plans.spacing.target_spacing_mm_xyz
    return "\n".join([
        f"# {title or name}", "",
        f"{plans.modality.upper()} model, labels: {', '.join(plans.label_names)}. Target spacing "
        f"{sp[0]:g} x {sp[1]:g} x {sp[2]:g} mm (x, y, z), patch {' x '.join(map(str, plans.patch_size_zyx))} "
        "(z, y, x).", "",
        "## Trained on", "", trained_on.strip(), "",
        "## Intended use", "", intended_use.strip(), "",
        "## Validation", "", validation.strip(), "",
        "## Limits", "", limits.strip(), ""])


def _labels_for(plans: Plans, labels: Sequence[BundleLabel | Mapping] | Mapping[str, Sequence[int]] | None
                ) -> list[BundleLabel]:
    if labels is None:
        return [BundleLabel(v, n, DEFAULT_COLORS.get(n, (255, 255, 0))) for n, v in plans.labels.items()]
    if isinstance(labels, Mapping):  # name -> colour
        return [BundleLabel(v, n, tuple(labels.get(n, DEFAULT_COLORS.get(n, (255, 255, 0)))))
                for n, v in plans.labels.items()]
    out = []
    for lab in labels:
        if isinstance(lab, BundleLabel):
            out.append(lab)
        else:
            out.append(BundleLabel(int(lab["value"]), str(lab["name"]), tuple(int(c) for c in lab["color_rgb"])))
    return out



def stage_bundle(folder: Path, contents: Mapping[str, bytes], meta: dict) -> Path:
    """Write ``contents`` and their ``bundle.json`` (``meta`` plus the SHA256 of every file, :data:`CHECKSUMS_KEY`)
    into a new hidden ``.partial`` folder beside ``folder``; the caller renames it into place, then removes what is
    left of it. Every writer of bundles (training, importers) goes through here, so every bundle checksums every file.
    """
    meta[CHECKSUMS_KEY] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(contents.items())}
    files = {**contents, BUNDLE_JSON: (json.dumps(meta, indent=2) + "\n").encode()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        for file, data in files.items():
            (staging / file).write_bytes(data)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging

def save_bundle(folder: str | Path, state_dict: Mapping[str, torch.Tensor] | torch.nn.Module, plans: Plans, *,
                name: str, version: str, modality: str, card_markdown: str,
                labels: Sequence[BundleLabel | Mapping] | Mapping[str, Sequence[int]] | None = None,
                width: float = 1.0, fp16: bool = False, min_library_version: str | None = None) -> Path:
    """Write a complete bundle folder and return its path.

    Args:
        state_dict: the trained weights (or the network itself); wrapper prefixes, DynUNet aliases and deep-supervision
            heads are dropped (:func:`~HepatoblastomaSegLib.network.canonical_state_dict`) and the rest must fit the
            network that ``plans`` and ``width`` describe.
        labels: ``None`` (plans' labels, default colours), ``{name: (r, g, b)}``, or a list of :class:`BundleLabel`
            / ``{"value", "name", "color_rgb"}``; names and values must match ``plans.labels``.
        fp16: store the weights as float16 (half the size; loaded back as float32).
        min_library_version: defaults to this library's version.
    """
    from safetensors.torch import save as save_safetensors

    from .network import build_network, canonical_state_dict, load_weights

    folder = Path(folder)
    if not _NAME.match(name):
        raise ConfigError(f"bundle name must be letters, digits, '.', '_' or '-' (got {name!r})")
    if _version_tuple(version) is None:
        raise ConfigError(f"bundle version must be a semantic version like 1.0.0 (got {version!r})")
    if modality != plans.modality:
        raise ConfigError(f"modality {modality!r} does not match the plans' modality {plans.modality!r}")
    if not card_markdown or not card_markdown.strip():
        raise ConfigError("a model card is required (what it was trained on, intended use, validation, limits)")
    minimum = min_library_version or __version__
    if _version_tuple(minimum) is None:
        raise ConfigError(f"min_library_version must be a semantic version (got {minimum!r})")
    bundle_labels = _labels_for(plans, labels)
    if {lab.name: lab.value for lab in bundle_labels} != plans.labels:
        raise ConfigError(f"labels {[lab.name for lab in bundle_labels]} do not match the plans' labels "
                          f"{plans.labels}")
    tensors = canonical_state_dict(state_dict)
    load_weights(build_network(plans, width=width), tensors, source="state_dict given to save_bundle")
    if fp16:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    weights = save_safetensors(tensors, metadata={"name": name, "version": version, "format": "pt"})
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "version": version,
        "modality": modality,
        "labels": [lab.to_dict() for lab in sorted(bundle_labels, key=lambda lab: lab.value)],
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights).hexdigest(),
                    "dtype": "float16" if fp16 else "float32", "bytes": len(weights)},
        "network": {"architecture": "monai.networks.nets.DynUNet", "width": float(width)},
        "min_library_version": minimum,
        "written_by": f"HepatoblastomaSeg {__version__}",
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    contents = {WEIGHTS_FILE: weights, PLANS_JSON: plans.to_json().encode(),
                CARD_FILE: card_markdown.rstrip("\n").encode() + b"\n"}
    staging = stage_bundle(folder, contents, meta)
    try:
        if not folder.exists():
            try:
                os.replace(staging, folder)
                return folder
            except OSError:
                if not folder.exists():
                    raise
        # bundle.json last: until it is replaced, the old checksum refuses the new weights instead of mixing them.
        for file in BUNDLE_FILES[1:] + BUNDLE_FILES[:1]:
            os.replace(staging / file, folder / file)
        return folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
