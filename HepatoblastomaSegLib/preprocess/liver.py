"""The mask Nyul standardisation needs on MRI: from a liver model bundle, or the body as a documented fallback.

**Liver model.** The paper used a separate liver U-Net. Here a liver model is an ordinary bundle (same network code,
labels ``background``/``liver``, planned with ``hbseg plan --target liver``; its own plans skip Nyul since they cannot
depend on a liver mask). :func:`liver_mask_from_model` preprocesses the image with the liver model's plans, runs
MONAI's sliding window (overlap 0.5, Gaussian weights, no mirroring: a mask for landmark statistics does not need
TTA; on a GPU under autocast with 4 windows per call), brings the probabilities back to the original grid, takes the
argmax and keeps the largest connected component. The network is built once per loaded bundle
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

if TYPE_CHECKING:
    from ..bundle import ModelBundle


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (uint8); an empty mask stays empty."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


def body_mask(volume: Volume) -> np.ndarray:
    """Otsu foreground, largest component, holes filled: uint8 [z, y, x] on the volume's grid."""
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    otsu = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1, 200))
    body = largest_component(otsu)
    return ndimage.binary_fill_holes(body).astype(np.uint8)


def liver_mask_from_model(volume: Volume, bundle: ModelBundle, *, device: str | torch.device = "cpu",
                          overlap: float = 0.5, checked: bool = False) -> Volume:
    """Segment the liver (incl. tumour) of ``volume`` with a liver bundle; uint8 0/1 on the volume's grid.

    ``checked``: spacing and modality were checked on the whole image already (a CT cropped to the body holds too
    little air for the modality check)."""
    from monai.inferers import sliding_window_inference

    from .pipeline import labels_on_original, preprocess_image

    if "liver" not in bundle.plans.labels:
        raise ModelError(f"'{bundle.name}' is not a liver model (labels {list(bundle.plans.labels)}); a liver "
                         "model has labels background and liver", bundle.path)
    prep = preprocess_image(volume, bundle.plans, device=device, checked=checked)
    net = bundle.cached_network(device)  # built once per loaded bundle, not once per case
    on_gpu = torch.device(device).type == "cuda"
    half = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float16
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=half, enabled=on_gpu):
        logits = sliding_window_inference(prep.data[None, None], roi_size=list(bundle.plans.patch_size_zyx),
                                          sw_batch_size=4 if on_gpu else 1, predictor=net, overlap=overlap,
                                          mode="gaussian", sigma_scale=0.125)
        probs = torch.softmax(logits.float(), dim=1)[0]
    labels = labels_on_original(probs, prep)
    liver = largest_component(labels == bundle.plans.labels["liver"])
    return volume.with_array(liver, liver_source=f"{bundle.name} {bundle.version}")
