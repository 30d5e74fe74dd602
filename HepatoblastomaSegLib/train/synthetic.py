"""Domain randomisation (SynthSeg-style): a training image rendered from the phantom's tissue label map with random
per-tissue intensities and textures, instead of the realistic rendering, for a share of the patches.

A model trained only on the phantom's realistic images can learn its cartoon intensities ("a blob brighter than
fat and darker than the liver is tumour"). Rendering the same anatomy with intensities that carry no meaning
leaves shape and context as the only cues, so what the model learns transfers to intensities it has never seen
(Billot et al., SynthSeg, Medical Image Analysis 2023). The steps, per patch (all random choices from the sample's
seed, so a run is reproducible):

1. a mean per tissue label, uniform in [0, 1], and a noise SD per label, uniform in [0, 0.06]; the tumour
   labels keep a contrast of at least 0.08 to the liver (the tumour must stay visible, in either direction);
2. a texture per label: one smooth random field (correlation about 8 voxels) times a per-label amplitude in
   [0, 0.08], plus white noise of the label's SD;
3. a multiplicative bias field (exp of a smooth field of SD 0-0.3) and a gamma of exp(N(0, 0.25));
4. a Gaussian blur of 0-1 voxel (resolution);
5. normalisation to mean 0, SD 1 over the body (labels other than air), as the realistic images are normalised.

The label is untouched: only the image changes. The rest of the augmentation (spatial, intensity, mirroring)
follows as for a realistic patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..phantom.tissues import TUMOUR_TISSUES, Tissue

#: Labels with a random intensity (more than the phantom has: room for new tissues).
N_LABELS = 64
MIN_TUMOUR_CONTRAST = 0.08


def _smooth_field(shape, cells: int, generator: torch.Generator, device) -> torch.Tensor:
    """A smooth random field of about unit SD on ``shape`` (z, y, x): random values on a coarse lattice, upsampled."""
    coarse = [max(2, int(round(s / cells)) + 1) for s in shape]
    values = torch.randn(coarse, generator=generator).to(device)
    field = F.interpolate(values[None, None], size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]
    return field / field.std().clamp_min(1e-3)


def label_intensities(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, noise SD, texture amplitude) per label, float32 [N_LABELS] each, for ``seed`` (step 1)."""
    generator = torch.Generator().manual_seed(int(seed))
    means = torch.rand(N_LABELS, generator=generator)
    sds = torch.rand(N_LABELS, generator=generator) * 0.06
    texture = torch.rand(N_LABELS, generator=generator) * 0.08
    liver = means[int(Tissue.LIVER)]
    for tissue in TUMOUR_TISSUES:
        gap = means[int(tissue)] - liver
        if gap.abs() < MIN_TUMOUR_CONTRAST:
            sign = 1.0 if float(gap) >= 0 else -1.0
            if not 0.0 <= float(liver) + sign * MIN_TUMOUR_CONTRAST <= 1.0:
                sign = -sign
            means[int(tissue)] = liver + sign * MIN_TUMOUR_CONTRAST
    return means, sds, texture


def synthesise(tissues: torch.Tensor, seed: int) -> torch.Tensor:
    """A random rendering (float32, same shape) of a tissue label map ``tissues`` ([1, z, y, x], integer labels)."""
    device = tissues.device
    labels = tissues.long().clamp(0, N_LABELS - 1)[0]
    means, sds, texture = (t.to(device) for t in label_intensities(seed))
    generator = torch.Generator().manual_seed(int(seed) + 1)
    shape = tuple(labels.shape)
    image = means[labels]
    image = image + texture[labels] * _smooth_field(shape, 8, generator, device)
    noise = torch.randn(shape, generator=generator).to(device)
    image = image + sds[labels] * noise
    bias_sd = float(torch.rand((), generator=generator)) * 0.3
    image = image.clamp_min(1e-3) * torch.exp(bias_sd * _smooth_field(shape, 24, generator, device))
    gamma = float(torch.exp(torch.randn((), generator=generator) * 0.25))
    peak = image.max().clamp_min(1e-6)
    image = (image / peak) ** gamma * peak
    sigma = float(torch.rand((), generator=generator))
    if sigma > 0.2:
        from .augment import gaussian_blur

        image = gaussian_blur(image[None], sigma)[0]
    body = labels != int(Tissue.AIR)
    ref = image[body] if int(body.sum()) > 10 else image.reshape(-1)
    return ((image - ref.mean()) / ref.std().clamp_min(1e-6))[None].to(torch.float32)
