"""``plan_dataset``: from a training folder to a :class:`~.plans.Plans` (what ``hbseg plan`` runs).

Decisions where the paper and nnU-Net v1.7.1 differ (each recorded in the plans so a reader sees both):

- **Target spacing**: the paper says "median spacing of the training set"; nnU-Net replaces the coarse axis by its
  10th percentile when the data are strongly anisotropic (coarse spacing > 3x the others and < 1/3 as many voxels
  along it). Default ``z_spacing_rule="median"`` (the paper's text); ``"percentile10"`` applies nnU-Net's rule (only
  when its condition holds, as nnU-Net does). ``spacing.percentile10_coarse_axis_mm`` and
  ``spacing.nnunet_rule_applies`` are written either way.
- **Median shape** for the patch planner: the median over cases of each case's shape resampled to the target spacing
  (nnU-Net v2.1 plans), measured, as nnU-Net does, on each image cropped to its non-zero region
  (:mod:`.nonzero_crop`). For CT that crop follows the 0-350 HU window, which sets air and fat to 0, so the box is
  the trunk's soft tissue (full-size phantoms: 512x512 slices -> about 250x300); abdominal MRI's noisy air is not
  zero, so MRI is not cropped. ``dataset.crop`` in the plans records the median sizes before and after.
- ``like="nnunet-v1"`` (``hbseg plan --like nnunet-v1``) reproduces nnU-Net 1.7.1's ``3d_fullres`` plans
  (``ExperimentPlanner3D_v21``) for the images as nnU-Net would get them (CT windowed to 0-350 HU, MRI as on disk):
  its target spacing rule (10th percentile for thick slices), its axis order (coarsest axis first), its CT intensity
  properties (every 10th foreground voxel), and the ``nnunet_v1`` record (lowres stage, scheme, nonzero-mask flag).
- **Topology**: :func:`~.topology.plan_topology` (nnU-Net v1 3d_fullres rules, 8 GB default budget).
- **Intensity**: CT window + foreground statistics (:mod:`.intensity`); MRI N4 + Nyul fitted on the training
  livers (:mod:`.n4`, :mod:`.nyul`). A liver model (``label_source="liver"``) on MRI gets no Nyul step, since it
  cannot depend on the liver mask it is meant to produce.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Sequence
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
    MAX_SPACING_MM,
    MIN_SPACING_MM,
    MODALITIES,
    SPACING_RULES,
    CropRecord,
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


LIKE_CHOICES = ("nnunet-v1",)


def target_grid(spacings_mm_xyz: np.ndarray, sizes_xyz: np.ndarray, rule: str,
                given_mm_xyz: Sequence[float] | None = None) -> tuple[SpacingPlan, np.ndarray, np.ndarray]:
    """Target spacing (and its zyx array) and the median case shape resampled onto it (zyx, not rounded).

    ``given_mm_xyz``: this spacing instead of the rule's (the rule's median and 10th percentile stay on record)."""
    spacing = choose_target_spacing(spacings_mm_xyz, sizes_xyz, rule)
    if given_mm_xyz is not None:
        given = tuple(round(float(v), 6) for v in given_mm_xyz)
        if len(given) != 3 or not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in given):
            raise ConfigError(f"target spacing must be 3 numbers from {MIN_SPACING_MM} to {MAX_SPACING_MM} mm "
                              f"(x, y, z), got {tuple(given_mm_xyz)}")
        spacing = dataclasses.replace(spacing, target_spacing_mm_xyz=given, rule="given")
    target_xyz = np.asarray(spacing.target_spacing_mm_xyz)
    shapes_zyx = (np.asarray(spacings_mm_xyz, float) / target_xyz * np.asarray(sizes_xyz, float))[:, ::-1]
    return spacing, target_xyz[::-1].copy(), np.median(shapes_zyx, axis=0)


def plan_dataset(dataset_dir: str | Path, modality: str, *, gpu_memory_gb: float = 8.0,
                 z_spacing_rule: str = "median", label_source: str = "tumor", n4: N4Settings | None = None,
                 progress: Progress | None = None, like: str | None = None, label_map=None,
                 target_spacing_mm_xyz: Sequence[float] | None = None) -> Plans:
    """Read every case of ``dataset_dir`` and derive the plans (spacing, topology, intensity, labels, versions).

    Args:
        modality: "ct" or "mri"; every image is checked to look like it.
        gpu_memory_gb: training memory budget for the patch size (8 = nnU-Net's default plans).
        z_spacing_rule: "median" (paper) or "percentile10" (nnU-Net's thick-slice rule).
        label_source: "tumor" (the tumour model) or "liver" (a liver model for MRI Nyul masks; label = liver + tumour).
        n4: MRI N4 settings (default :class:`N4Settings`).
        like: "nnunet-v1" to plan exactly as nnU-Net 1.7.1's 3d_fullres (see the module docstring); implies
            ``z_spacing_rule="percentile10"`` and an 8 GB budget.
        label_map: for nnU-Net/MSD dataset folders, which label value is the tumour (see :mod:`.dataset`).
        target_spacing_mm_xyz: a target spacing to use instead of ``z_spacing_rule``'s (x, y, z mm; not with
            ``like``); patch and network are planned for it as usual.
    """
    if like is not None and like not in LIKE_CHOICES:
        raise ConfigError(f"--like must be one of {', '.join(LIKE_CHOICES)}, got {like!r}")
    if like == "nnunet-v1":
        if target_spacing_mm_xyz is not None:
            raise ConfigError(f"--like {like} plans with nnU-Net's own spacing rule; leave out the target spacing")
        z_spacing_rule, gpu_memory_gb = "percentile10", 8.0
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if label_source not in LABEL_SOURCES:
        raise ConfigError(f"label source must be one of {', '.join(LABEL_SOURCES)}, got {label_source!r}")
    if not gpu_memory_gb > 0:
        raise ConfigError(f"GPU memory budget must be positive, got {gpu_memory_gb} GB")
    progress = progress or NullProgress()
    entries = read_manifest(dataset_dir, label_map=label_map)
    n4 = n4 or N4Settings()
    use_nyul = modality == "mri" and label_source == "tumor"
    prints = []
    for i, entry in enumerate(entries):
        progress("plan", i / len(entries), f"case {entry.case}")
        prints.append(fingerprint_case(entry, modality, label_source=label_source, window_hu=CT_WINDOW_HU, n4=n4,
                                       nyul=use_nyul, nnunet_sample=like == "nnunet-v1"))
    progress("plan", 1.0, f"{len(entries)} cases read")
    if sum(fp.label_voxels for fp in prints) == 0:
        raise InputError(f"every {label_source} mask in the dataset is empty: nothing to learn or normalise from",
                         Path(dataset_dir))

    spacings = np.array([fp.spacing_mm_xyz for fp in prints])
    sizes = np.array([fp.cropped_size_xyz for fp in prints])
    crop = crop_record(prints, modality)
    spacing, target_zyx, median_shape = target_grid(spacings, sizes, z_spacing_rule, target_spacing_mm_xyz)
    labels = {"background": 0, label_source: 1}
    nnunet_v1 = None
    if like == "nnunet-v1":
        from .nnunet_v1_planning import nnunet_v1_record, plan_topology_transposed

        topology = plan_topology_transposed(target_zyx, median_shape, num_cases=len(prints),
                                            num_classes=len(labels))
        nnunet_v1 = nnunet_v1_record(prints, modality, target_zyx, median_shape, topology, num_classes=len(labels))
    else:
        topology = plan_topology(target_zyx, median_shape, num_cases=len(prints), num_classes=len(labels),
                                 gpu_memory_gb=gpu_memory_gb)

    ct = mri = None
    if modality == "ct" and nnunet_v1 is not None:
        from .nnunet_v1_planning import ct_intensity_from

        ct = ct_intensity_from(nnunet_v1, window_hu=CT_WINDOW_HU, foreground=label_source,
                               voxels=sum(fp.nnunet_foreground.size for fp in prints))
    elif modality == "ct":
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
                 dataset=DatasetInfo(len(prints), str(dataset_dir), tuple(fp.case for fp in prints), crop),
                 versions=library_versions(), nnunet_v1=nnunet_v1,
                 created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def crop_record(prints, modality: str) -> CropRecord:
    """Summarise the per-case non-zero crops (see :class:`~.plans.CropRecord`)."""
    before = np.array([fp.size_xyz for fp in prints], dtype=float)
    after = np.array([fp.cropped_size_xyz for fp in prints], dtype=float)
    kept = np.prod(after, axis=1) / np.prod(before, axis=1)
    return CropRecord(rule="nonzero_after_window" if modality == "ct" else "nonzero",
                      median_size_xyz=tuple(float(v) for v in np.median(before, axis=0)),
                      median_cropped_size_xyz=tuple(float(v) for v in np.median(after, axis=0)),
                      median_fraction_kept=round(float(np.median(kept)), 6),
                      cases_cropped=int(np.sum(kept < 1)))
