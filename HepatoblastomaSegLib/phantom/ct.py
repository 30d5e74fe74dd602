"""Contrast-enhanced CT in the portal venous phase: attenuation per tissue (HU), noise, int16 storage.

Attenuation (mean, case-to-case SD, texture SD, texture scale mm), from paediatric portal-venous CT:

- air -1000, lung about -830, fat about -100 (visceral -90), muscle about 55;
- liver 100-130 HU (uniform per case) with a faint texture; spleen a little brighter; portal vein 45-70 HU and
  hepatic veins 25-55 HU above the liver (150-200 HU), aorta 150-200, IVC 130-170;
- kidneys: cortex 150-190, medulla 15-40 lower (late corticomedullary phase);
- bone: cortical about 900, cancellous (children's red marrow) about 320, disc about 90;
- tumour: viable tumour 25-55 HU below the liver and heterogeneous, necrotic or cystic areas 10-30 HU,
  haemorrhage 55-80 HU, calcifications 350-900 HU, enhancing septa.

Noise: white noise smoothed in-plane by a [1, 2, 1] / 4 kernel on both axes (a reconstruction kernel's
correlation; uncorrelated between slices), scaled to an SD of 7-12 HU at 5 mm slices and growing as
1/sqrt(thickness) for thinner slices. Values are rounded and clipped to -1024..3071 and stored as int16.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .appearance import Appearance
from .fields import F32, Block, SmoothNoise
from .tissues import Tissue as T

AIR_HU = -1000.0
HU_MIN, HU_MAX = -1024, 3071

TABLE = {
    T.AIR: (AIR_HU, 0, 0, 0), T.FAT: (-100, 6, 6, 8), T.MUSCLE: (55, 4, 5, 6), T.VISCERAL_FAT: (-90, 6, 10, 6),
    T.LUNG: (-830, 25, 35, 6), T.HEART: (150, 12, 10, 10), T.BONE_CORTICAL: (900, 60, 0, 0),
    T.BONE_MARROW: (320, 25, 30, 4), T.DISC: (90, 8, 0, 0), T.CSF: (22, 4, 0, 0), T.CARTILAGE: (110, 8, 0, 0),
    T.LIVER: (115, 0, 4, 6), T.PORTAL_VEIN: (0, 0, 0, 0), T.HEPATIC_VEIN: (0, 0, 0, 0), T.AORTA: (175, 12, 0, 0),
    T.IVC: (150, 10, 6, 15), T.KIDNEY_CORTEX: (170, 10, 5, 5), T.KIDNEY_MEDULLA: (0, 0, 0, 0),
    T.RENAL_SINUS: (-60, 10, 0, 0), T.URINE: (10, 4, 0, 0), T.SPLEEN: (0, 0, 3, 8),
    T.STOMACH_WALL: (100, 8, 0, 0), T.STOMACH_CONTENT: (20, 8, 8, 10), T.GAS: (-990, 5, 0, 0),
    T.BOWEL_WALL: (95, 8, 0, 0), T.BOWEL_FLUID: (15, 6, 4, 8), T.STOOL: (20, 10, 0, 0), T.GALLBLADDER: (10, 4, 0, 0),
    T.PANCREAS: (100, 8, 8, 4), T.TABLE: (-150, 0, 0, 0), T.TUMOUR: (0, 0, 0, 8), T.NECROSIS: (20, 6, 5, 6),
    T.HAEMORRHAGE: (68, 6, 8, 5), T.CALCIFICATION: (600, 150, 0, 0), T.SEPTUM: (0, 0, 0, 0),
}


def appearance(rng: np.random.Generator, lo_mm: Sequence[float], hi_mm: Sequence[float]) -> Appearance:
    """Per-case CT attenuation; the liver sets the level of the tumour, vessels and spleen."""
    liver = float(rng.uniform(100.0, 130.0))
    tumour_drop = float(rng.uniform(25.0, 55.0))
    cortex = float(rng.uniform(150.0, 190.0))
    means = {T.LIVER: liver, T.PORTAL_VEIN: liver + rng.uniform(45, 70), T.HEPATIC_VEIN: liver + rng.uniform(25, 55),
             T.SPLEEN: liver + rng.uniform(0, 15), T.KIDNEY_CORTEX: cortex,
             T.KIDNEY_MEDULLA: cortex - rng.uniform(15, 40), T.TUMOUR: liver - tumour_drop,
             T.SEPTUM: liver - tumour_drop + rng.uniform(10, 30)}
    table = dict(TABLE)
    table[T.TUMOUR] = (0, 0, float(rng.uniform(8.0, 16.0)), 7.0)
    stool_noise = SmoothNoise(rng, lo_mm, hi_mm, 3.0)

    def stool(block: Block, mean: float):
        # Faeces: mottled soft tissue with bubbles of gas where the texture peaks.
        n = stool_noise(*block.axes)
        return np.where(n > 1.0, F32(-850.0) + F32(100.0) * n, F32(mean) + F32(30.0) * n)

    return Appearance(rng, table, lo_mm, hi_mm, means=means, special={T.STOOL: stool})


def noise_sd_hu(rng: np.random.Generator, thickness_mm: float) -> float:
    """Image noise SD (HU) for this case: 7-12 HU at 5 mm, scaling as 1/sqrt(slice thickness)."""
    return float(rng.uniform(7.0, 12.0) * np.sqrt(5.0 / thickness_mm))


def finish(image: np.ndarray, rng: np.random.Generator, noise_sd: float) -> np.ndarray:
    """Add correlated noise to slices (float32 HU, modified in place) and return them as int16.

    The white noise is uniform (four times cheaper to draw than Gaussian); after the 3x3 binomial kernel, a
    weighted sum of 9 samples, its distribution is close to Gaussian (excess kurtosis -0.3).
    """
    noise = rng.random(image.shape, dtype=F32)
    noise -= F32(0.5)
    _binomial_inplane(noise)
    # Unit-variance uniform noise has SD sqrt(1/12); the unnormalised [1, 2, 1] x [1, 2, 1] kernel multiplies
    # the variance by 36: SD sqrt(3).
    noise *= F32(noise_sd / np.sqrt(3.0))
    image += noise
    np.rint(image, out=image)
    np.clip(image, HU_MIN, HU_MAX, out=image)
    return image.astype(np.int16)


def _binomial_inplane(a: np.ndarray) -> None:
    """Filter each slice by the unnormalised kernel [1, 2, 1] along x and y, in place (edges: along one axis)."""
    t = a[:, :, :-2] + a[:, :, 2:]
    a[:, :, 1:-1] *= F32(2.0)
    a[:, :, 1:-1] += t
    t = a[:, :-2, :] + a[:, 2:, :]
    a[:, 1:-1, :] *= F32(2.0)
    a[:, 1:-1, :] += t
