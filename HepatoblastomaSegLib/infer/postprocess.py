"""Optional clean-up of a binary tumour mask (off by default, as nnU-Net enables it only when validation gains)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..preprocess.liver import bounding_box, largest_component

#: 26-connectivity: voxels touching by a corner are one component, as in nnU-Net's connected-component analysis.
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected component of a binary [z, y, x] mask (uint8 0/1)."""
    return largest_component(mask)


def remove_small_components(mask: np.ndarray, min_volume_ml: float, voxel_volume_ml: float) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_volume_ml`` millilitres."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE)
    if n == 0:
        return mask.astype(np.uint8)
    sizes_ml = np.bincount(labels.ravel()) * voxel_volume_ml
    keep = sizes_ml >= min_volume_ml
    keep[0] = False
    return keep[labels].astype(np.uint8)


def keep_components_in_liver(mask: np.ndarray, liver: np.ndarray, *, min_fraction_inside: float = 0.0
                             ) -> tuple[np.ndarray, int]:
    """The liver-anchored tumour step: keep the 26-connected components of ``mask`` that lie in the liver; return
    the kept mask (uint8) and the number of components dropped.

    Hepatoblastoma arises in the liver, so a component that is not in the liver is not a hepatoblastoma. With
    ``min_fraction_inside`` 0, a component is kept when it overlaps ``liver`` or touches it (shares a face, edge or
    corner with it). Above 0, at least that fraction of the component's voxels must lie inside ``liver``: a
    neighbouring organ pressed against the liver (a kidney, an adrenal mass, the heart on the dome, the stomach)
    touches it but lies almost wholly outside it, while a tumour that bulges out of the liver keeps most of its
    volume inside a liver mask that includes tumour, as the bundled liver models' masks do. Either way a kept
    component is kept whole, its part outside the liver included.

    Only the mask's bounding box is labelled, and the liver dilated within that box grown by one voxel (every
    component lies in the box, and a touch is at most one voxel away): the same result as on the whole image, for a
    fraction of its voxels.
    """
    if not 0.0 <= min_fraction_inside <= 1.0:
        raise ValueError(f"min_fraction_inside must be in [0, 1], got {min_fraction_inside}")
    mask = np.asarray(mask)
    out = np.zeros(mask.shape, dtype=np.uint8)
    box = bounding_box(mask)
    if box is None:
        return out, 0
    labels, n = ndimage.label(mask[box], structure=_STRUCTURE)
    if min_fraction_inside > 0.0:
        inside = np.asarray(liver[box], dtype=bool)
        voxels = np.bincount(labels.ravel(), minlength=n + 1)
        voxels_inside = np.bincount(labels[inside], minlength=n + 1)
        keep = voxels_inside >= min_fraction_inside * voxels
    else:
        grown = tuple(slice(max(0, b.start - 1), min(size, b.stop + 1)) for b, size in zip(box, mask.shape))
        near = ndimage.binary_dilation(np.asarray(liver[grown], dtype=bool), structure=_STRUCTURE)
        near = near[tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))]
        keep = np.zeros(n + 1, dtype=bool)
        keep[np.unique(labels[near & (labels > 0)])] = True
    keep[0] = False
    out[box] = keep[labels]
    return out, int(n - np.count_nonzero(keep))


def clean_up(mask: np.ndarray, *, keep_largest: bool, min_component_ml: float, voxel_volume_ml: float) -> np.ndarray:
    """The optional clean-up the options ask for (``--keep-largest``, ``--min-component-ml``), in that order."""
    if keep_largest:
        mask = keep_largest_component(mask)
    if min_component_ml > 0:
        mask = remove_small_components(mask, min_component_ml, voxel_volume_ml)
    return mask


def two_class_entropy(tumor_probability: np.ndarray) -> np.ndarray:
    """Entropy in nats of tumour vs everything else, float32, rounded as every map we write (models with more
    classes, e.g. an imported liver + tumour model, are scored on the tumour's own question)."""
    from .uncertainty import entropy_nats, round_to_step

    tumor = torch.from_numpy(np.asarray(tumor_probability, dtype=np.float32)).clamp(0.0, 1.0)
    return round_to_step(entropy_nats(torch.stack((1.0 - tumor, tumor)))).numpy().astype(np.float32, copy=False)
