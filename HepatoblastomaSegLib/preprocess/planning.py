"""``plan_dataset``: from a training folder to a :class:`~.plans.Plans` (what ``hbseg plan`` runs).

Decisions where the paper and nnU-Net v1.7.1 differ (each recorded in the plans so a reader sees both):

- **Target spacing**: the paper says "median spacing of the training set"; nnU-Net replaces the coarse axis by its
  10th percentile when the data are strongly anisotropic (coarse spacing > 3x the others and < 1/3 as many voxels
  along it). Default ``z_spacing_rule="median"`` (the paper's text); ``"percentile10"`` applies nnU-Net's rule (only
  when its condition holds, as nnU-Net does). ``spacing.percentile10_coarse_axis_mm`` and
  ``spacing.nnunet_rule_applies`` are written either way.
- **Median shape** for the patch planner: the median over cases of each case's shape resampled to the target spacing
  (nnU-Net v2.1 plans). No cropping to the non-zero region first: CT has no zero background, and abdominal MRI's
  noisy air is not zero either, so nnU-Net's crop would not shrink them.
- **Topology**: :func:`~.topology.plan_topology` (nnU-Net v1 3d_fullres rules, 8 GB default budget).
- **Intensity**: CT window + foreground statistics (:mod:`.intensity`); MRI N4 + Nyul fitted on the training
  livers (:mod:`.n4`, :mod:`.nyul`). A liver model (``label_source="liver"``) on MRI gets no Nyul step, since it
  cannot depend on the liver mask it is meant to produce.
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, InputError
from ..progress import NullProgress, Progress
from .dataset import fingerprint_case, read_manifest
from .intensity import CT_WINDOW_HU, ct_foreground_statistics
from .nyul import fit_landmarks
from .plans import (
    LABEL_SOURCES,
    MODALITIES,
    SPACING_RULES,
    DatasetInfo,
    MRIIntensity,
    N4Settings,
    Plans,
    SpacingPlan,
)
from .topology import ANISOTROPY_THRESHOLD, plan_topology


def library_versions() -> dict[str, str]:
    """Versions of this library and the packages that shape its numbers."""
    versions = {"HepatoblastomaSeg": __version__}
    for package in ("monai", "torch", "SimpleITK", "numpy", "scipy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def choose_target_spacing(spacings_mm_xyz: np.ndarray, sizes_xyz: np.ndarray, rule: str = "median") -> SpacingPlan:
    """Target spacing from per-case spacings and sizes (both N x 3, x-y-z order); see module docstring."""
    if rule not in SPACING_RULES:
        raise ConfigError(f"z spacing rule must be one of {', '.join(SPACING_RULES)}, got {rule!r}")
    spacings = np.asarray(spacings_mm_xyz, dtype=float).reshape(-1, 3)
    sizes = np.asarray(sizes_xyz, dtype=float).reshape(-1, 3)
    median = np.median(spacings, axis=0)
    median_size = np.median(sizes, axis=0)
    coarse = int(np.argmax(median))
    others = [a for a in range(3) if a != coarse]
    aniso_spacing = median[coarse] > ANISOTROPY_THRESHOLD * max(median[a] for a in others)
    aniso_voxels = median_size[coarse] * ANISOTROPY_THRESHOLD < min(median_size[a] for a in others)
    p10 = float(np.percentile(spacings[:, coarse], 10))
    finest_other = max(median[a] for a in others)
    if p10 < finest_other:  # never let the coarse axis become finer than the others (nnU-Net's guard)
        p10 = max(finest_other, p10) + 1e-5
    applies = bool(aniso_spacing and aniso_voxels)
    target = median.copy()
    if rule == "percentile10" and applies:
        target[coarse] = p10
    return SpacingPlan(target_spacing_mm_xyz=tuple(round(float(v), 6) for v in target), rule=rule,
                       median_spacing_mm_xyz=tuple(round(float(v), 6) for v in median),
                       percentile10_coarse_axis_mm=round(p10, 6), nnunet_rule_applies=applies)


def plan_dataset(dataset_dir: str | Path, modality: str, *, gpu_memory_gb: float = 8.0,
                 z_spacing_rule: str = "median", label_source: str = "tumor", n4: N4Settings | None = None,
                 progress: Progress | None = None) -> Plans:
    """Read every case of ``dataset_dir`` and derive the plans (spacing, topology, intensity, labels, versions).

    Args:
        modality: "ct" or "mri"; every image is checked to look like it.
        gpu_memory_gb: training memory budget for the patch size (8 = nnU-Net's default plans).
        z_spacing_rule: "median" (paper) or "percentile10" (nnU-Net's thick-slice rule).
        label_source: "tumor" (the tumour model) or "liver" (a liver model for MRI Nyul masks; label = liver + tumour).
        n4: MRI N4 settings (default :class:`N4Settings`).
    """
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if label_source not in LABEL_SOURCES:
        raise ConfigError(f"label source must be one of {', '.join(LABEL_SOURCES)}, got {label_source!r}")
    if not gpu_memory_gb > 0:
        raise ConfigError(f"GPU memory budget must be positive, got {gpu_memory_gb} GB")
    progress = progress or NullProgress()
    entries = read_manifest(dataset_dir)
    n4 = n4 or N4Settings()
    use_nyul = modality == "mri" and label_source == "tumor"
    prints = []
    for i, entry in enumerate(entries):
        progress("plan", i / len(entries), f"case {entry.case}")
        prints.append(fingerprint_case(entry, modality, label_source=label_source, window_hu=CT_WINDOW_HU, n4=n4,
                                       nyul=use_nyul))
    progress("plan", 1.0, f"{len(entries)} cases read")
    if sum(fp.label_voxels for fp in prints) == 0:
        raise InputError(f"every {label_source} mask in the dataset is empty: nothing to learn or normalise from",
                         Path(dataset_dir))

    spacings = np.array([fp.spacing_mm_xyz for fp in prints])
    sizes = np.array([fp.size_xyz for fp in prints])
    spacing = choose_target_spacing(spacings, sizes, z_spacing_rule)
    target_zyx = np.asarray(spacing.target_spacing_mm_xyz[::-1])
    shapes_zyx = (spacings / np.asarray(spacing.target_spacing_mm_xyz) * sizes)[:, ::-1]
    median_shape = np.median(shapes_zyx, axis=0)
    labels = {"background": 0, label_source: 1}
    topology = plan_topology(target_zyx, median_shape, num_cases=len(prints), num_classes=len(labels),
                             gpu_memory_gb=gpu_memory_gb)

    ct = mri = None
    if modality == "ct":
        ct = ct_foreground_statistics([fp.foreground for fp in prints if fp.foreground is not None],
                                      window_hu=CT_WINDOW_HU, foreground=label_source)
    else:
        nyul = None
        if use_nyul:
            without = [fp.case for fp in prints if fp.mask_source != "liver"]
            if without and len(without) < len(prints):
                raise InputError(f"{len(without)} of {len(prints)} cases have no liver mask (e.g. "
                                 f"{', '.join(without[:5])}); Nyul landmarks must come from the same region in every "
                                 "case: give a liver mask for all cases or for none", Path(dataset_dir))
            nyul = fit_landmarks([fp.landmarks for fp in prints], mask_source="body" if without else "liver")
        mri = MRIIntensity(n4=n4, nyul=nyul)
    return Plans(modality=modality, labels=labels, label_source=label_source, spacing=spacing, topology=topology,
                 ct=ct, mri=mri,
                 dataset=DatasetInfo(len(prints), str(dataset_dir), tuple(fp.case for fp in prints)),
                 versions=library_versions(),
                 created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
