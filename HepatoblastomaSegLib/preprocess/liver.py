"""The mask Nyul standardisation needs on MRI: from a liver model bundle, or the body as a documented fallback.

**Liver model.** The paper used a separate liver U-Net. Here a liver model is an ordinary bundle (same network code,
labels ``background``/``liver``, planned with ``hbseg plan --target liver``; its own plans skip Nyul since they cannot
depend on a liver mask). :func:`liver_mask_from_model` preprocesses the image with the liver model's plans, runs
the one sliding-window engine (:class:`~..sliding_window.SlidingWindowEngine`: overlap 0.5, Gaussian weights, the
windows' logits stitched, then the softmax; no mirroring: a mask for landmark statistics and the liver anchor does
not need TTA; 4 windows per network call, on a GPU under autocast), brings the liver probability back to the
original grid and keeps the largest connected component of p > 0.5 (for the CT liver anchor, also the sizeable
pieces beside it: :func:`pieces_beside_largest`). Two classes: only the liver channel is resampled, since linear and
nearest interpolation weights sum to 1, so the background on the original grid is exactly 1 - p and the argmax (ties
to background) is p > 0.5. The network is built once per loaded bundle
(:meth:`~..bundle.ModelBundle.cached_network`), not once per case.

**Fallback.** Without a liver mask or model, the body: Otsu threshold (bright body vs dark air), the largest
connected component, holes filled. The landmarks then describe the whole abdomen rather than the liver, so the
pipeline adds a warning to ``PreprocessedImage.warnings`` (and so to the output summary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..errors import ModelError
from ..io import Volume
from ..sliding_window import SlidingWindowEngine, autocast_dtype_for

if TYPE_CHECKING:
    from ..bundle import ModelBundle

#: Windows per network call of a liver model, CPU and GPU: a liver patch is small (the demo's 32x96x96 is 0.3 M
#: voxels), and on the CPU a call of several windows costs far less per window than one each.
LIVER_WINDOWS_PER_CALL = 4


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (uint8); an empty mask stays empty.

    Labelled inside the mask's bounding box only (every component lies in it): a liver fills a few percent of a CT."""
    return _keep_components(mask, lambda labels, sizes, largest: np.arange(len(sizes)) == largest)


def pieces_beside_largest(mask: np.ndarray, min_ml: float, voxel_ml: float) -> np.ndarray:
    """The largest 26-connected component of a binary [z, y, x] mask and every other component of at least
    ``min_ml`` mL that shares at least one slice (z) with it (uint8); an empty mask stays empty.

    A liver split in pieces (the pieces lie side by side on the same slices) is kept whole; a piece wholly above or
    below the largest one is another organ, e.g. a muscle in the pelvis."""
    def beside_largest(labels, sizes, largest):
        z_ranges = [slices[0] for slices in ndimage.find_objects(labels)]
        top, bottom = z_ranges[largest - 1].start, z_ranges[largest - 1].stop
        keep = np.zeros(len(sizes), dtype=bool)
        for index, z in enumerate(z_ranges, start=1):
            keep[index] = index == largest or (z.start < bottom and z.stop > top and sizes[index] * voxel_ml >= min_ml)
        return keep

    return _keep_components(mask, beside_largest)


def _keep_components(mask: np.ndarray, choose) -> np.ndarray:
    """``mask``'s 26-connected components that ``choose(labels, sizes, largest)`` keeps (a bool per label, 0 the
    background), labelled inside the mask's bounding box only; uint8."""
    mask = np.asarray(mask) > 0
    out = np.zeros(mask.shape, dtype=np.uint8)
    box = bounding_box(mask)
    if box is None:
        return out
    labels, _ = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.asarray(choose(labels, sizes, int(np.argmax(sizes))), dtype=bool)
    keep[0] = False
    out[box] = keep[labels]
    return out


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (slices) holding every nonzero voxel of ``mask``; None when it is empty."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def body_mask(volume: Volume) -> np.ndarray:
    """Otsu foreground, largest component, holes filled: uint8 [z, y, x] on the volume's grid."""
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    otsu = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1, 200))
    body = largest_component(otsu)
    return ndimage.binary_fill_holes(body).astype(np.uint8)


def liver_mask_from_model(volume: Volume, bundle: ModelBundle, *, device: str | torch.device = "cpu",
                          overlap: float = 0.5, checked: bool = False, min_piece_ml: float | None = None,
                          pad_mode: str = "zero") -> Volume:
    """Segment the liver (incl. tumour) of ``volume`` with a liver bundle; uint8 0/1 on the volume's grid.

    ``checked``: spacing and modality were checked on the whole image already (a CT cropped to the body holds too
    little air for the modality check). ``min_piece_ml``: None keeps the largest connected component (one organ for
    Nyul's landmarks); a number keeps the largest and every piece beside it of at least that many mL
    (:func:`pieces_beside_largest`). ``pad_mode``: how an image smaller than the liver model's patch is padded
    (:class:`~..sliding_window.SlidingWindowEngine`); zero, as in training, for the MRI Nyul mask, whose landmarks
    the training images were standardised with."""
    from .pipeline import preprocess_image, resample_to_original

    if "liver" not in bundle.plans.labels:
        raise ModelError(f"'{bundle.name}' is not a liver model (labels {list(bundle.plans.labels)}); a liver "
                         "model has labels background and liver", bundle.path)
    device = torch.device(device)
    prep = preprocess_image(volume, bundle.plans, device=device, checked=checked)
    net = bundle.cached_network(device)  # built once per loaded bundle, not once per case
    engine = SlidingWindowEngine(bundle.plans.patch_size_zyx, overlap=overlap,
                                 windows_per_call=LIVER_WINDOWS_PER_CALL, autocast_dtype=autocast_dtype_for(device),
                                 stitch="logits", pad_mode=pad_mode)
    probs = engine.probabilities(net, prep.data)
    channel = bundle.plans.labels["liver"]
    if len(bundle.plans.labels) == 2:
        liver_p = resample_to_original(probs[channel:channel + 1], prep)[0]
        liver = liver_p > 0.5
    else:  # more classes than background and liver: the argmax over all of them
        back = resample_to_original(probs, prep)
        liver = back.argmax(0) == channel if isinstance(back, torch.Tensor) else np.argmax(back, axis=0) == channel
    del probs
    if isinstance(liver, torch.Tensor):
        liver = liver.cpu().numpy()
    kept = largest_component(liver) if min_piece_ml is None else \
        pieces_beside_largest(liver, min_piece_ml, volume.voxel_volume_ml)
    return volume.with_array(kept, liver_source=f"{bundle.name} {bundle.version}")
