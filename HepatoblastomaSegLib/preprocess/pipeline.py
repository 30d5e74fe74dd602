"""Preprocess one image for a given plan, and bring predictions back onto its original grid.

CT: refuse bad input (spacing, modality) -> window 0-350 HU (original grid) -> cubic B-spline to the target grid
(nearest along a thick-slice axis) -> clip to the training foreground percentiles -> z-score with their mean/SD.

MRI: refuse bad input -> N4 (original grid) -> liver mask (given; else from a liver model bundle; else the body
mask, with a warning) -> Nyul inside that mask, applied to the whole volume -> resample -> z-score per image.

:func:`resample_to_original` maps probabilities [C, z, y, x] on the target grid back to exactly the original grid
(size, origin, spacing, direction), linearly (nearest along a thick-slice axis, as nnU-Net exports); the argmax of the
result is the label map (:func:`labels_on_original`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io import Geometry, Volume, require_binary, require_same_geometry
from ..progress import NullProgress, Progress
from .checks import check_modality, check_spacing
from .intensity import normalize_ct, window_ct, zscore_per_image
from .plans import Plans
from .resample import axis_orders, choose_backend, resample_array, target_geometry

if TYPE_CHECKING:
    from ..bundle import ModelBundle


@dataclasses.dataclass
class PreprocessedImage:
    """One image ready for the network, plus what is needed to undo the resampling.

    Attributes:
        data: normalised image on the target grid, float32 torch tensor [z, y, x] on the requested device.
        original: the input's grid (outputs must land exactly here).
        target: the target grid (same physical extent and direction, the plan's spacing).
        plans: the plans used.
        warnings: things a person should know (e.g. "no liver mask ..."), for the output summary.
        liver_mask: MRI only: the mask Nyul landmarks were taken in (uint8, original grid), else None.
        seconds: time per step.
        path: where the image came from.
    """

    data: torch.Tensor
    original: Geometry
    target: Geometry
    plans: Plans
    warnings: list[str] = dataclasses.field(default_factory=list)
    liver_mask: Volume | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    path: Path | None = None

    def numpy(self) -> np.ndarray:
        """``data`` as a float32 numpy array [z, y, x] (on the CPU)."""
        return self.data.detach().cpu().numpy()

    def orders_back(self) -> tuple[int, int, int]:
        """Interpolation order per axis (z, y, x) for probabilities going back to the original grid."""
        r = self.plans.resampling
        return axis_orders(self.target, self.original, r.probabilities_order,
                           separate_z_threshold=r.separate_z_anisotropy_threshold,
                           separate_z_order=r.separate_z_order)


def _image_orders(original: Geometry, target: Geometry, plans: Plans) -> tuple[int, int, int]:
    r = plans.resampling
    return axis_orders(original, target, r.image_order, separate_z_threshold=r.separate_z_anisotropy_threshold,
                       separate_z_order=r.separate_z_order)


def preprocess_image(volume: Volume, plans: Plans, *, liver_mask: Volume | None = None,
                     liver_model: ModelBundle | None = None, device: str | torch.device = "cpu",
                     backend: str = "auto", progress: Progress | None = None, checked: bool = False
                     ) -> PreprocessedImage:
    """Normalise and resample ``volume`` as ``plans`` say (see module docstring).

    Args:
        volume: the image as read (CT in HU, or MRI).
        plans: the model's plans (``bundle.plans``).
        liver_mask: MRI: binary liver (+ tumour) mask on the image's grid for Nyul; ignored for CT.
        liver_model: MRI without ``liver_mask``: a liver bundle (labels background/liver) to segment it.
        device: where ``data`` ends up (and where the torch resampler runs).
        backend: resampler: "auto" (= "torch", on ``device``), "torch", or "sitk" (the CPU reference); see
            :mod:`.resample`.
        checked: the caller has already run :func:`~.checks.check_spacing` and :func:`~.checks.check_modality` on
            the whole image (the predictor does, before cropping a CT to the body, whose crop holds less air).

    Raises:
        InputError: implausible spacing, or an image that does not look like ``plans.modality``.
        GeometryError: ``liver_mask`` not on the image's grid.
    """
    progress = progress or NullProgress()
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    start = time.perf_counter()
    if not checked:
        check_spacing(volume)
        check_modality(volume, plans.modality)
    original = volume.geometry
    target = target_geometry(original, plans.target_spacing_mm_xyz)
    orders = _image_orders(original, target, plans)
    kind = choose_backend(None, backend, device)
    used_liver: Volume | None = None
    seconds["checks"] = time.perf_counter() - start

    if plans.modality == "ct":
        progress("preprocess", 0.1, "CT window")
        array = window_ct(volume.array, plans.ct.window_hu)
    else:
        array, used_liver = _mri_before_resampling(volume, plans, liver_mask, liver_model, device, warnings,
                                                   seconds, progress)

    progress("preprocess", 0.6, "resampling")
    t0 = time.perf_counter()
    data = torch.from_numpy(np.ascontiguousarray(array))
    if kind == "torch":
        data = data.to(device)
    data = resample_array(data, original, target, orders, backend=kind)
    seconds["resample"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    data = normalize_ct(data, plans.ct) if plans.modality == "ct" else zscore_per_image(data)
    data = data.to(device=device, dtype=torch.float32).contiguous()
    seconds["normalise"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    progress("preprocess", 1.0, "done")
    return PreprocessedImage(data=data, original=original, target=target, plans=plans, warnings=warnings,
                             liver_mask=used_liver, seconds=seconds, path=volume.path)


def _mri_before_resampling(volume: Volume, plans: Plans, liver_mask: Volume | None,
                           liver_model: ModelBundle | None, device, warnings: list[str], seconds: dict[str, float],
                           progress: Progress) -> tuple[np.ndarray, Volume | None]:
    from .liver import body_mask, liver_mask_from_model
    from .n4 import n4_correct
    from .nyul import apply_landmarks

    mri = plans.mri
    progress("preprocess", 0.05, "N4 bias-field correction")
    t0 = time.perf_counter()
    corrected = n4_correct(volume, mri.n4).corrected
    seconds["n4"] = time.perf_counter() - t0
    if mri.nyul is None:
        return corrected.array, None
    t0 = time.perf_counter()
    if liver_mask is not None:
        require_binary(liver_mask, what="liver mask")
        require_same_geometry(volume, liver_mask, what_b="liver mask")
        mask = liver_mask.with_array(np.asarray(liver_mask.array, dtype=np.uint8))
    elif liver_model is not None:
        progress("preprocess", 0.2, "liver mask from the liver model")
        liver_model.require_modality(plans.modality)
        mask = liver_mask_from_model(volume, liver_model, device=device)
    else:
        mask = volume.with_array(body_mask(corrected))
        if mri.nyul.mask_source == "liver":
            warnings.append("no liver mask and no liver model given: Nyul standardisation used landmarks from the "
                            "whole body (Otsu foreground) instead of the liver, unlike training; intensities and "
                            "the segmentation may be less accurate")
    if int(mask.array.sum()) == 0:
        mask = volume.with_array(body_mask(corrected))
        warnings.append("the liver mask is empty: Nyul landmarks were taken from the whole body instead")
    seconds["liver_mask"] = time.perf_counter() - t0
    progress("preprocess", 0.4, "Nyul standardisation")
    t0 = time.perf_counter()
    standardised = apply_landmarks(corrected.array, mask.array, mri.nyul)
    seconds["nyul"] = time.perf_counter() - t0
    return standardised, mask


def resample_mask_to_target(mask: np.ndarray | Volume, prep: PreprocessedImage) -> np.ndarray:
    """A label/mask array on the original grid -> the target grid, nearest neighbour, dtype kept (training labels)."""
    array = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    order = prep.plans.resampling.mask_order
    return resample_array(array, prep.original, prep.target, (order, order, order), backend="torch")


def resample_to_original(probs: torch.Tensor | np.ndarray, prep: PreprocessedImage, *, backend: str = "auto"
                         ) -> torch.Tensor | np.ndarray:
    """Probabilities [C, z, y, x] on ``prep.target`` -> float32 [C, z, y, x] on exactly ``prep.original``.

    A tensor stays a tensor on its device (torch resampler on CUDA), a numpy array stays numpy. Inference that
    padded the image to the patch size must crop first (:func:`~.padding.crop_padding`).
    """
    shape = tuple(probs.shape[-3:])
    if shape != prep.target.shape_zyx:
        raise ValueError(f"probabilities [.., z, y, x] = {shape} are not on the target grid {prep.target.shape_zyx} "
                         "(crop any padding first)")
    if isinstance(probs, torch.Tensor) and not probs.dtype.is_floating_point:
        probs = probs.float()
    out = resample_array(probs, prep.target, prep.original, prep.orders_back(), backend=backend)
    if isinstance(out, torch.Tensor):
        return out.to(torch.float32)
    return np.asarray(out, dtype=np.float32)


def labels_on_original(probs: torch.Tensor | np.ndarray, prep: PreprocessedImage, *, backend: str = "auto"
                       ) -> np.ndarray:
    """Argmax of :func:`resample_to_original`: a uint8 label map [z, y, x] on the original grid."""
    back = resample_to_original(probs, prep, backend=backend)
    if isinstance(back, torch.Tensor):
        return back.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.argmax(back, axis=0).astype(np.uint8)
