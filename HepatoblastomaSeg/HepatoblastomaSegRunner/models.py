"""The model catalogue of the module: which bundles there are, importing a bundle folder, which model fits an
image, and about how much GPU memory a model needs.

Bundles are read by the library's :mod:`HepatoblastomaSegLib.bundle_manifest`, which needs neither torch nor numpy,
so the module shows and imports its models before any dependency is installed, with the library's own rules: the
same folders in the same order (:func:`~HepatoblastomaSegLib.bundle_manifest.search_dirs`), with the user's
imported-models folder first, and the same checks. Importing a folder (:func:`import_model_folder`) reads its
manifest and verifies the SHA256 of every file before and after copying, and copies through a temporary sibling
folder that is renamed into place, so the catalogue never holds half a bundle.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from HepatoblastomaSegLib import bundle_manifest
from HepatoblastomaSegLib.bundle_manifest import BundleManifest, read_manifest
from HepatoblastomaSegLib.errors import ModelError

#: The library's bundled default per modality (``HepatoblastomaSegLib.infer.predictor.DEFAULT_MODELS``).
DEFAULT_MODEL_NAMES = {"ct": "ct-demo", "mri": "mri-demo"}
#: Bundles that are helpers, not tumour models (the liver models: MRI Nyul masks, the CT liver anchor).
HELPER_MODEL_NAMES = ("mri-liver-demo", "ct-liver-demo")
MODALITY_LABELS = {"ct": "CT", "mri": "T2 MRI"}
#: How an imported model is named in the model list (the library's own models need no note).
KIND_LABELS = {"nnunet": "nnU-Net", "monai": "MONAI bundle"}

#: Same rule as the library's ``preprocess.checks``: a CT in HU holds air; MRI magnitudes are never below it.
AIR_THRESHOLD_HU = -500.0
CT_MIN_AIR_FRACTION = 0.005
_MAX_SAMPLES = 2_000_000


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One bundle found on disk: its manifest, and where it was found: ``source`` "imported" (the user's folder),
    "environment" ($HBSEG_MODELS_DIR) or "bundled" (shipped with the extension)."""

    manifest: BundleManifest
    source: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def modality(self) -> str:
        return self.manifest.modality

    @property
    def path(self) -> Path:
        return self.manifest.path

    @property
    def sha256(self) -> str:
        return self.manifest.weights_sha256

    @property
    def label(self) -> str:
        """``ct-demo 1.0.0 (CT)``; an imported model says its kind: ``liver 1.0.0 (CT, nnU-Net)``."""
        notes = [MODALITY_LABELS.get(self.modality, self.modality)]
        if self.manifest.kind in KIND_LABELS:
            notes.append(KIND_LABELS[self.manifest.kind])
        return f"{self.name} {self.version} ({', '.join(notes)})"

    def card(self) -> str:
        """The model card (Markdown); a note when the file cannot be read."""
        try:
            return self.manifest.read_card()
        except OSError as exc:
            return f"(no model card: {exc})"

    def plans(self) -> dict[str, Any]:
        return self.manifest.read_plans()

    def width(self) -> float:
        return self.manifest.width


def bundled_models_dir() -> Path:
    """``Resources/Models`` beside the library package in use (the library's ``RESOURCES_MODELS_DIR``)."""
    return bundle_manifest.RESOURCES_MODELS_DIR


def model_search_dirs(user_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """``(folder, source)`` pairs in search order: the user's imported models, then the library's
    (``$HBSEG_MODELS_DIR``, bundled)."""
    return ([(Path(user_dir), "imported")] if user_dir else []) + bundle_manifest.search_dirs()


def read_entry(folder: Path, source: str) -> ModelEntry | None:
    """The catalogue entry of a bundle folder; None when its manifest is missing or broken."""
    try:
        return ModelEntry(read_manifest(Path(folder)), source)
    except ModelError:
        return None


def list_models(user_dir: str | Path | None = None, modality: str | None = None, *,
                include_helpers: bool = False) -> list[ModelEntry]:
    """Every readable bundle in :func:`model_search_dirs`, one per folder name (the first found wins, as in the
    library), sorted by modality then name; ``modality`` keeps only "ct" or "mri" models."""
    found = [ModelEntry(manifest, source)
             for manifest, source in bundle_manifest.list_manifests(model_search_dirs(user_dir))]
    found = [e for e in found
             if (modality is None or e.modality == modality) and (include_helpers or e.name not in HELPER_MODEL_NAMES)]
    return sorted(found, key=lambda e: (e.modality, e.name != DEFAULT_MODEL_NAMES.get(e.modality), e.name))


def default_model(entries: Sequence[ModelEntry], modality: str) -> ModelEntry | None:
    """The library's default model of ``modality`` when listed, else the first model of that modality."""
    matching = [e for e in entries if e.modality == modality]
    for entry in matching:
        if entry.name == DEFAULT_MODEL_NAMES.get(modality):
            return entry
    return matching[0] if matching else None


def _checked(folder: Path) -> BundleManifest:
    """The manifest of ``folder``, every file's SHA256 verified (:class:`ModelError` naming what is wrong)."""
    manifest = read_manifest(folder)
    manifest.verify(weights=True)
    return manifest


def import_model_folder(source: str | Path, user_dir: str | Path, *, replace: bool = False) -> ModelEntry:
    """Check the bundle in ``source`` (its manifest and the SHA256 of every file) and copy it into ``user_dir``
    as ``user_dir/<bundle name>``; return its catalogue entry.

    :class:`ModelError` naming the folder when the bundle is broken (the library's message), or when a different
    model of that name was imported before and ``replace`` is False.
    """
    source = Path(source)
    manifest = _checked(source)
    user_dir = Path(user_dir)
    target = user_dir / manifest.name
    if target.resolve() == source.resolve():
        return ModelEntry(manifest, "imported")
    if target.exists():
        existing = read_entry(target, "imported")
        if existing is not None and existing.sha256 == manifest.weights_sha256 and \
                existing.version == manifest.version:
            return existing  # the same model again: nothing to do
        if not replace:
            raise ModelError(f"a different model named '{manifest.name}' was imported before "
                             f"({existing.version if existing else 'unreadable'}); replace it or rename the new one",
                             source)
    files = sorted({*bundle_manifest.BUNDLE_FILES, *manifest.checksums})
    user_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.", suffix=".partial", dir=user_dir))
    try:
        for file in files:
            (staging / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / file, staging / file)
        _checked(staging)  # the copy, not only the original, must pass
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.", suffix=".old", dir=user_dir))
            os.replace(target, old / manifest.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ModelEntry(read_manifest(target), "imported")


# ------------------------------------------------------------------------------------------------ modality
def guess_modality(array: np.ndarray) -> str:
    """"ct" when at least 0.5 % of the voxels are below -500 (air in Hounsfield units), else "mri" (the
    library's rule; see ``HepatoblastomaSegLib.preprocess.checks``)."""
    flat = np.asarray(array).ravel()
    sample = flat[:: max(1, flat.size // _MAX_SAMPLES)]
    air_fraction = float(np.mean(sample.astype(np.float32) < AIR_THRESHOLD_HU)) if sample.size else 0.0
    return "ct" if air_fraction >= CT_MIN_AIR_FRACTION else "mri"


def modality_mismatch(guessed: str | None, chosen: str | None, model: ModelEntry | None) -> str:
    """A warning when the image, the chosen modality and the model disagree; ``""`` when they agree."""
    if model is not None and chosen is not None and model.modality != chosen:
        return (f"The {MODALITY_LABELS[model.modality]} model '{model.name}' is selected, but Modality is "
                f"{MODALITY_LABELS[chosen]}: choose a {MODALITY_LABELS[chosen]} model, or change Modality.")
    if guessed is None:
        return ""
    model_modality = model.modality if model is not None else chosen
    if model_modality is None or guessed == model_modality:
        return ""
    looks = "an MRI (no air below -500 HU)" if guessed == "mri" else "a CT (it has air below -500 HU)"
    which = f"the {MODALITY_LABELS[model_modality]} model '{model.name}'" if model is not None else \
        f"Modality {MODALITY_LABELS[model_modality]}"
    return (f"This looks like {looks}, but {which} is selected: choose a {MODALITY_LABELS[guessed]} model, or set "
            f"Modality to {MODALITY_LABELS[model_modality]} if the image really is one.")


# ------------------------------------------------------------------------------------------------ memory
def estimate_inference_memory_gb(plans: Mapping[str, Any], width: float = 1.0, *,
                                 image_shape_zyx: Sequence[int] | None = None,
                                 image_spacing_zyx_mm: Sequence[float] | None = None, batch_size: int = 1,
                                 activation_bytes: int = 2) -> float:
    """About how much GPU memory (GB) the library's sliding-window inference needs, for choosing a device before
    the run.

    Counted: per patch, every stage's feature map kept for the skip connections plus the decoder's, and three
    full-resolution maps in flight, times ``batch_size`` patches per network call, at ``activation_bytes`` each (2:
    the bf16 autocast the library uses on GPUs); the float32 weights; the float32 stitched softmax and its weight map
    over the image resampled to the plans' spacing (when the image is given); and 1 GB of CUDA context and
    workspace. The default ``batch_size=1`` is the least that runs on a GPU: the library starts with 8 patches per
    call (TTA) or 4 and, when memory runs out, retries with one. Calibrated on an H200 with the paper-width network
    (patch 32x224x224): 4 patches per call measured 3.9 GB allocated (this gives 4.0 GB), 8 patches 7.1 GB (6.7 GB).
    """
    topology = plans["topology"]
    patch = [int(v) for v in topology["patch_size_zyx"]]
    strides = [[int(v) for v in s] for s in topology["strides_zyx"]]
    filters = [max(1, int(round(f * width))) for f in topology["filters"]]
    voxels = math.prod(patch)
    per_stage, factor = [], np.ones(3)
    for stride, features in zip(strides, filters):
        factor = factor * np.asarray(stride, dtype=float)
        per_stage.append(features * voxels / float(np.prod(factor)))
    window_values = 2 * sum(per_stage) + 3 * filters[0] * voxels
    weight_values = sum(9 * 27 * f * f for f in filters)  # two 3x3x3 convolutions per stage, both paths
    n_classes = len(plans.get("labels", {})) or 2
    stitch_values = 0.0
    if image_shape_zyx is not None and image_spacing_zyx_mm is not None:
        target = plans["spacing"]["target_spacing_mm_xyz"][::-1]
        resampled = math.prod(max(1.0, n * s / t) for n, s, t in zip(image_shape_zyx, image_spacing_zyx_mm, target))
        stitch_values = (n_classes + 1) * resampled
    total_bytes = activation_bytes * batch_size * window_values + 4 * (weight_values + stitch_values)
    return total_bytes / 1e9 + 1.0
