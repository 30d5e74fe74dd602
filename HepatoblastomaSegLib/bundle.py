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

Reading ``bundle.json`` (finding bundles, their fields, checksums) is :mod:`.bundle_manifest`'s, which needs neither
torch nor numpy (the 3D Slicer module reads it too); this module adds the plans and the network.

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
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import __version__
from .bundle_manifest import (BUNDLE_FILES, BUNDLE_FORMAT_VERSION, BUNDLE_JSON, CARD_FILE, CHECKSUMS_KEY, MODELS_ENV,
                              NAME_PATTERN, PLANS_JSON, RESOURCES_MODELS_DIR, WEIGHTS_FILE, BundleLabel,
                              BundleManifest, check_weights_digest, find_bundle, list_bundles, models_dirs,
                              read_json_object, read_manifest, sha256_file, version_tuple)
from .errors import ConfigError, ModelError
from .preprocess.plans import Plans

__all__ = ["BUNDLE_FILES", "BUNDLE_FORMAT_VERSION", "BUNDLE_JSON", "CARD_FILE", "CHECKSUMS_KEY", "DEFAULT_COLORS",
           "MODELS_ENV", "PLANS_JSON", "RESOURCES_MODELS_DIR", "WEIGHTS_FILE", "BundleLabel", "BundleManifest",
           "ModelBundle", "bundle_checksums", "find_bundle", "list_bundles", "load_bundle", "model_card",
           "models_dirs", "refresh_bundle_checksums", "save_bundle", "sha256_file", "stage_bundle"]

DEFAULT_COLORS = {"background": (0, 0, 0), "tumor": (230, 60, 60), "liver": (221, 130, 101)}
_NAME = NAME_PATTERN
_version_tuple = version_tuple


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
    #: What bundle.json says (kind, review thresholds, checksums, importers' sections).
    manifest: BundleManifest | None = dataclasses.field(default=None, repr=False, compare=False)
    _networks: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def kind(self) -> str:
        """"own", "nnunet" or "monai" (:data:`~HepatoblastomaSegLib.bundle_manifest.KINDS`)."""
        return self.manifest.kind if self.manifest is not None else "own"

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
        check_weights_digest(self.path, hashlib.sha256(data).hexdigest(), self.sha256)
        try:
            return load_safetensors(data)
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{WEIGHTS_FILE} is not a readable safetensors file ({exc})", self.path) from exc

    def build_network(self, device: str | torch.device = "cpu", *, deep_supervision: bool = False
                      ) -> torch.nn.Module:
        """The DynUNet of ``plans.json`` at the bundle's width, verified weights loaded, in eval mode on ``device``.

        Without deep supervision (inference) its convolutions and norms take the faster CPU inference kernels of
        :mod:`.cpu_kernels` (the same results within float32 rounding; torch's own on a GPU and in training).

        Without deep supervision every parameter comes from the weights file, so the network is laid out on the meta
        device and allocated straight on ``device``: no random initialisation to overwrite (0.3 s of a 0.6 s load
        for the paper's network on a CPU) and no copy from the CPU. Deep-supervision heads are not saved, so with
        them the network is initialised as for training.
        """
        from .cpu_kernels import use_fast_cpu_kernels
        from .network import build_network, load_weights

        if deep_supervision:
            net = build_network(self.plans, width=self.width, deep_supervision=True)
            load_weights(net, self.state_dict(), source=str(self.weights_path))
            return net.to(device).eval()
        with torch.device("meta"):
            net = build_network(self.plans, width=self.width)
        net = net.to_empty(device=device)
        load_weights(net, self.state_dict(), source=str(self.weights_path), every_parameter=True)
        return use_fast_cpu_kernels(net).eval()

    def cached_network(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """:meth:`build_network` once per device for this loaded bundle (e.g. the liver model, used once per MRI
        case); callers must not modify it."""
        key = str(torch.device(device))
        if key not in self._networks:
            self._networks[key] = self.build_network(device)
        return self._networks[key]


# ------------------------------------------------------------------------------------------------ loading
def load_bundle(name_or_dir: str | Path, *, modality: str | None = None, verify_weights: bool = True
                ) -> ModelBundle:
    """Find, read and check a bundle. With ``modality`` ("ct"/"mri"), refuse a model for the other one.

    Checks: the manifest (:func:`~HepatoblastomaSegLib.bundle_manifest.read_manifest`: files present, bundle.json's
    fields, minimum library version, plans.json's modality and labels, a model card); plans.json valid as
    :class:`Plans`; the SHA256 of every file bundle.json lists under ``files`` (of the weights alone for an older
    bundle without that list); the weights' are skipped with ``verify_weights=False``, e.g. for listing.
    """
    manifest = read_manifest(name_or_dir)
    try:
        plans = Plans.load(manifest.plans_path)
    except ConfigError as exc:
        raise ModelError(f"{PLANS_JSON}: {exc.problem}", manifest.path) from exc
    bundle = ModelBundle(name=manifest.name, version=manifest.version, modality=manifest.modality,
                         labels=list(manifest.labels), plans=plans, card=manifest.read_card(), path=manifest.path,
                         sha256=manifest.weights_sha256, width=manifest.width, weights_dtype=manifest.weights_dtype,
                         min_library_version=manifest.min_library_version, created_utc=manifest.created_utc,
                         manifest=manifest)
    if modality is not None:
        bundle.require_modality(modality)
    manifest.verify(weights=verify_weights)
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
    meta = read_json_object(folder / BUNDLE_JSON, folder)
    checksums = bundle_checksums(folder, names)
    weights = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
    if WEIGHTS_FILE in checksums and weights.get("sha256") not in (None, checksums[WEIGHTS_FILE]):
        raise ModelError(f"{WEIGHTS_FILE} no longer has the SHA256 it was saved with; refusing to record a checksum "
                         "for replaced weights", folder)
    meta[CHECKSUMS_KEY] = checksums
    return write_text_atomic(folder / BUNDLE_JSON, json.dumps(meta, indent=2) + "\n")


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


def write_new_bundle(folder: Path, contents: Mapping[str, bytes], meta: dict) -> Path:
    """:func:`stage_bundle`, then rename it to ``folder`` (which must not exist): the bundle appears complete or not
    at all, and nothing already there is overwritten."""
    staging = stage_bundle(folder, contents, meta)
    try:
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


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
