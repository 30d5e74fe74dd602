"""T2-weighted fat-suppressed MRI: signal per tissue, coil bias field, Rician noise, uint16 storage.

Relative signal (free fluid about 1.0), from T2-weighted fat-suppressed abdominal MRI in children:

- dark: air and gas, lung, cortical bone, flowing blood (aorta, portal and hepatic veins: flow voids), fat
  (suppressed to about 0.08, less well at the edges of the field of view where the suppression fails);
- intermediate: muscle 0.16, liver 0.24-0.32, pancreas, red marrow (children) 0.35, bowel wall;
- bright: spleen 0.5-0.65, kidneys (medulla brighter than cortex), young discs, stomach and bowel fluid, bile,
  urine, CSF;
- tumour: viable tumour 0.5-0.72, always brighter than the liver, heterogeneous; necrosis and cysts 0.8-1.0;
  haemorrhage dark (0.25-0.4, blood products) or bright (0.7-0.85) per case; calcifications dark; septa dark.

Acquisition: the signal is multiplied by a smooth bias field (surface coils: about +-15 % over 12 cm plus a
front-back gradient), Rician noise is added (magnitude of complex Gaussian noise, liver SNR 15-30), and everything
is multiplied by an arbitrary scanner scale (log-uniform 400-4000). Stored as **uint16** (rounded, clipped at
65535), as MR scanners store magnitude images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .appearance import Appearance
from .fields import F32, Block, SmoothNoise
from .tissues import Tissue as T

TABLE = {
    T.AIR: (0.0, 0, 0, 0), T.FAT: (0.08, 0.01, 0.01, 10), T.MUSCLE: (0.16, 0.015, 0.01, 6),
    T.VISCERAL_FAT: (0.09, 0.01, 0.015, 6), T.LUNG: (0.03, 0.005, 0.01, 6), T.HEART: (0.10, 0.02, 0.03, 10),
    T.BONE_CORTICAL: (0.03, 0.005, 0, 0), T.BONE_MARROW: (0.35, 0.04, 0.03, 4), T.DISC: (0.65, 0.05, 0, 0),
    T.CSF: (1.0, 0.03, 0, 0), T.CARTILAGE: (0.30, 0.03, 0, 0), T.LIVER: (0.0, 0, 0.012, 6),
    T.PORTAL_VEIN: (0.08, 0.02, 0, 0), T.HEPATIC_VEIN: (0.10, 0.02, 0, 0), T.AORTA: (0.04, 0.01, 0, 0),
    T.IVC: (0.12, 0.03, 0.02, 15), T.KIDNEY_CORTEX: (0.50, 0.04, 0.02, 5), T.KIDNEY_MEDULLA: (0.66, 0.04, 0, 0),
    T.RENAL_SINUS: (0.09, 0.01, 0, 0), T.URINE: (0.95, 0.03, 0, 0), T.SPLEEN: (0.0, 0, 0.015, 8),
    T.STOMACH_WALL: (0.30, 0.03, 0, 0), T.STOMACH_CONTENT: (0.85, 0.05, 0.04, 10), T.GAS: (0.01, 0.003, 0, 0),
    T.BOWEL_WALL: (0.30, 0.03, 0, 0), T.BOWEL_FLUID: (0.80, 0.05, 0.03, 8), T.STOOL: (0.35, 0.05, 0, 0),
    T.GALLBLADDER: (0.95, 0.03, 0, 0), T.PANCREAS: (0.35, 0.03, 0.02, 4), T.TABLE: (0.0, 0, 0, 0),
    T.TUMOUR: (0.0, 0, 0, 8), T.NECROSIS: (0.0, 0, 0.04, 6), T.HAEMORRHAGE: (0.0, 0, 0.05, 5),
    T.CALCIFICATION: (0.05, 0.01, 0, 0), T.SEPTUM: (0.28, 0.03, 0, 0),
}


def appearance(rng: np.random.Generator, lo_mm: Sequence[float], hi_mm: Sequence[float],
               half_fov_x_mm: float) -> Appearance:
    """Per-case T2 FS signal (relative units)."""
    liver = float(rng.uniform(0.24, 0.32))
    tumour = float(rng.uniform(0.50, 0.72))
    dark_blood = rng.random() < 0.5
    means = {T.LIVER: liver, T.SPLEEN: float(rng.uniform(0.50, 0.65)), T.TUMOUR: tumour,
             T.NECROSIS: float(rng.uniform(0.80, 1.0)),
             T.HAEMORRHAGE: float(rng.uniform(0.25, 0.40) if dark_blood else rng.uniform(0.70, 0.85))}
    table = dict(TABLE)
    table[T.TUMOUR] = (0, 0, float(rng.uniform(0.04, 0.08)), 7.0)
    stool_noise = SmoothNoise(rng, lo_mm, hi_mm, 3.0)
    fat_failure = float(rng.uniform(0.05, 0.20))

    def fat(block: Block, mean: float):
        # Fat suppression degrades towards the edges of the field of view (B0 inhomogeneity).
        edge = (np.abs(block.x) / F32(half_fov_x_mm)) ** 4 + F32(0.0) * block.y + F32(0.0) * block.z
        return F32(mean) + F32(fat_failure) * edge

    def stool(block: Block, mean: float):
        n = stool_noise(*block.axes)
        return np.where(n > 1.0, F32(0.02), F32(mean) + F32(0.08) * n)

    return Appearance(rng, table, lo_mm, hi_mm, means=means,
                      special={T.FAT: fat, T.VISCERAL_FAT: fat, T.STOOL: stool})


def apply_sequence(look: Appearance, sequence: str, rng: np.random.Generator, *, adult: bool) -> None:
    """Full variety: T2 without fat suppression (fat 0.7-0.9, fatty marrow in adults) or with it (as drawn), and
    the tissues only the full variety has (cord like muscle, adrenals intermediate, oral contrast like fluid)."""
    m = look.means
    if sequence == "t2":
        fat = float(rng.uniform(0.7, 0.9))
        for tissue in (T.FAT, T.VISCERAL_FAT, T.RENAL_SINUS):
            m[int(tissue)] = fat
            look.special.pop(int(tissue), None)
        if adult:
            m[int(T.BONE_MARROW)] = float(rng.uniform(0.45, 0.65))
    elif sequence != "t2_fs":
        raise ValueError(f"unknown MRI sequence {sequence!r}")
    m[int(T.SPINAL_CORD)] = float(rng.uniform(0.25, 0.35))
    m[int(T.ADRENAL)] = float(rng.uniform(0.2, 0.3))
    m[int(T.ORAL_CONTRAST)] = m[int(T.BOWEL_FLUID)]


def add_hilum_tissues(look: Appearance, sequence: str, rng: np.random.Generator) -> None:
    """Full variety: signal of the periportal sheath (fat and fibrous tissue: dark with fat suppression, bright
    without) and of the bile ducts (fluid) of :mod:`.hilum`, from its own generator."""
    sheath = rng.uniform(0.12, 0.35) if sequence == "t2_fs" else rng.uniform(0.4, 0.75)
    look.means[int(T.PERIPORTAL)] = float(sheath)
    look.means[int(T.BILE_DUCT)] = float(rng.uniform(0.85, 1.0))


class Acquisition:
    """Bias field, noise level and scanner scale of one MRI case."""

    def __init__(self, rng: np.random.Generator, lo_mm: Sequence[float], hi_mm: Sequence[float],
                 liver_signal: float, body_half_depth_mm: float):
        self.bias = SmoothNoise(rng, lo_mm, hi_mm, 120.0)
        self.bias_sd = float(rng.uniform(0.08, 0.18))
        self.front_back = float(rng.uniform(-0.15, 0.15)) / body_half_depth_mm
        self.noise_sd = liver_signal / float(rng.uniform(15.0, 30.0))
        self.scale = float(np.exp(rng.uniform(np.log(400.0), np.log(4000.0))))
        self.ghost = 0.0
        self.ghost_shift = 0

    def vary(self, bias_sd: float | None, ghost: float, rng: np.random.Generator, ny: int) -> None:
        """Full variety: another bias field strength, and respiratory motion ghosts of amplitude ``ghost`` (share
        of the signal) repeating every 1/8-1/3 of the field of view along the phase-encoding axis (y)."""
        if bias_sd is not None:
            self.bias_sd = float(bias_sd)
        self.ghost = float(ghost)
        self.ghost_shift = int(ny / rng.uniform(3.0, 8.0))

    def finish(self, image: np.ndarray, rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
               z: np.ndarray) -> np.ndarray:
        """Bias, Rician noise and scaling of a slab (float32 relative signal on axes x, y, z) -> uint16."""
        log_bias = F32(self.bias_sd) * self.bias(x, y, z) + F32(self.front_back) * y.astype(F32)[None, :, None]
        image *= np.exp(log_bias)
        if self.ghost > 0 and self.ghost_shift > 0:
            ghosts = np.roll(image, self.ghost_shift, axis=1) + np.roll(image, -self.ghost_shift, axis=1)
            image += F32(0.5 * self.ghost) * ghosts
        real = rng.standard_normal(image.shape, dtype=F32)
        real *= F32(self.noise_sd)
        real += image
        imag = rng.standard_normal(image.shape, dtype=F32)
        imag *= F32(self.noise_sd)
        magnitude = np.sqrt(real * real + imag * imag)
        magnitude *= F32(self.scale)
        np.rint(magnitude, out=magnitude)
        np.clip(magnitude, 0, 65535, out=magnitude)
        return magnitude.astype(np.uint16)
