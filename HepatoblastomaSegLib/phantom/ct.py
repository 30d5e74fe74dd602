"""Contrast-enhanced CT in the portal venous phase: attenuation per tissue (HU), noise, int16 storage.

Attenuation (mean, case-to-case SD, texture SD, texture scale mm), from paediatric portal-venous CT:

- air -1000, lung about -830, fat about -100 (visceral -90), muscle about 55;
- liver 100-130 HU (one level per case) with a faint texture, and in the full variety a smooth regional variation
  (:func:`add_regional_enhancement`); spleen a little brighter; portal vein 45-70 HU and
  hepatic veins 25-55 HU above the liver (150-200 HU), aorta 150-200, IVC 130-170;
- kidneys: cortex 150-190, medulla 15-40 lower (late corticomedullary phase);
- bone: cortical about 900, cancellous (children's red marrow) about 320, disc about 90;
- tumour: viable tumour 25-55 HU below the liver (full variety: 12-55) and heterogeneous, necrotic or cystic areas 10-30 HU,
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


def unenhanced_means(rng: np.random.Generator) -> dict:
    """Levels (HU) of the tissues contrast changes, without contrast: liver 50-65, blood 35-50 (aorta and heart up to
    5 above), spleen 5-10 below the liver, kidneys 28-38, pancreas 40-50, tumour 5-20 below the liver, walls 35-45,
    muscle 45-55. The non-contrast phase and :func:`weaken_contrast` both draw them here."""
    u = rng.uniform
    liver = u(50, 65)
    blood = u(35, 50)
    kidney = u(28, 38)
    return {T.LIVER: liver, T.PORTAL_VEIN: blood, T.HEPATIC_VEIN: blood, T.AORTA: blood + u(0, 5), T.IVC: blood,
            T.HEART: blood + u(0, 5), T.SPLEEN: liver - u(5, 10), T.KIDNEY_CORTEX: kidney,
            T.KIDNEY_MEDULLA: kidney - u(0, 5), T.PANCREAS: u(40, 50), T.TUMOUR: liver - u(5, 20),
            T.SEPTUM: liver - u(0, 10), T.STOMACH_WALL: u(35, 45), T.BOWEL_WALL: u(35, 45), T.MUSCLE: u(45, 55)}


def apply_phase(look: Appearance, phase: str, rng: np.random.Generator, *, adult: bool) -> None:
    """Full variety: move the drawn portal-venous attenuations to ``phase`` and add the tissues only the full
    variety has (cord, adrenals, oral contrast). Levels (HU) from adult and paediatric multiphase CT:

    - non-contrast: liver 50-65, blood 35-50, spleen 5-10 below the liver, kidneys 28-38, pancreas 40-50,
      tumour 5-20 below the liver, no enhancement of walls;
    - late arterial: aorta 250-400, portal vein 110-170, hepatic veins and IVC barely enhanced, liver 65-85,
      spleen bright and mottled, kidney cortex 180-260 with dark medulla, pancreas 110-140, tumour from 10 below
      to 40 above the liver (hepatoblastoma enhances heterogeneously in the arterial phase);
    - portal venous: as drawn (see the module docstring);
    - delayed: vessels 120-160, liver 85-105, spleen like the liver, kidneys uniform 140-180, excreted contrast in
      the renal pelvis and bladder 300-900, tumour 10-35 below the liver (washout).
    """
    m, means = look.means, {}
    u = rng.uniform
    if phase == "non_contrast":
        means = unenhanced_means(rng)
    elif phase == "arterial":
        liver = u(65, 85)
        cortex = u(180, 260)
        means = {T.LIVER: liver, T.AORTA: u(250, 400), T.HEART: u(200, 320), T.PORTAL_VEIN: u(110, 170),
                 T.HEPATIC_VEIN: u(45, 70), T.IVC: u(60, 100), T.SPLEEN: u(110, 150), T.KIDNEY_CORTEX: cortex,
                 T.KIDNEY_MEDULLA: cortex - u(80, 130), T.PANCREAS: u(110, 140), T.TUMOUR: liver + u(-10, 40),
                 T.SEPTUM: liver + u(20, 60), T.STOMACH_WALL: u(110, 140), T.BOWEL_WALL: u(100, 130)}
        look.textures.pop(int(T.SPLEEN), None)
        noise = look.textures.get(int(T.TUMOUR))
        if noise is not None:
            look.textures[int(T.TUMOUR)] = (noise[0], noise[1] * 1.8)
    elif phase == "delayed":
        liver = u(85, 105)
        kidney = u(140, 180)
        blood = u(120, 160)
        means = {T.LIVER: liver, T.AORTA: blood + u(0, 10), T.HEART: blood, T.PORTAL_VEIN: blood,
                 T.HEPATIC_VEIN: blood, T.IVC: blood, T.SPLEEN: liver + u(-5, 5), T.KIDNEY_CORTEX: kidney,
                 T.KIDNEY_MEDULLA: kidney + u(-5, 10), T.URINE: u(300, 900), T.PANCREAS: u(80, 95),
                 T.TUMOUR: liver - u(10, 35), T.SEPTUM: liver + u(0, 20)}
    elif phase != "portal_venous":
        raise ValueError(f"unknown CT phase {phase!r}")
    m.update({int(k): float(v) for k, v in means.items()})
    if adult:
        m[int(T.BONE_MARROW)] = float(u(150, 250))  # fatty marrow
    m[int(T.SPINAL_CORD)] = float(u(30, 40))
    m[int(T.ADRENAL)] = float(m[int(T.MUSCLE)] + (u(-20, 0) if phase == "non_contrast" else u(0, 40)))
    m[int(T.ORAL_CONTRAST)] = float(u(150, 500))


#: Full variety, contrast-enhanced phases: the share of scans with a weak contrast enhancement, and the range of its
#: strength (1 = the phase as drawn, 0 = no contrast). A low weight-based dose, a slow injection, a poorly timed or
#: extravasated bolus leave every enhancing tissue nearer its unenhanced level; a weak arterial scan, for instance,
#: has a liver near its unenhanced 50-65 HU beside blood around 100 HU, where otherwise a liver that dark comes only
#: with the darker blood of a non-contrast scan.
WEAK_CONTRAST_SHARE = 0.3
WEAK_CONTRAST_STRENGTH = (0.25, 0.8)

#: Tissues whose attenuation comes from the contrast agent in the blood (the rest: fat, air, bone, fluid, necrosis,
#: haemorrhage, calcification, urine and oral contrast keep their levels).
_ENHANCING = (T.LIVER, T.PORTAL_VEIN, T.HEPATIC_VEIN, T.AORTA, T.IVC, T.HEART, T.SPLEEN, T.KIDNEY_CORTEX,
              T.KIDNEY_MEDULLA, T.PANCREAS, T.TUMOUR, T.SEPTUM, T.STOMACH_WALL, T.BOWEL_WALL)


def weaken_contrast(look: Appearance, phase: str, rng: np.random.Generator) -> float:
    """Full variety: in :data:`WEAK_CONTRAST_SHARE` of contrast-enhanced scans, move every enhancing tissue towards
    its unenhanced level by a strength drawn from :data:`WEAK_CONTRAST_STRENGTH`; return the strength (1.0: as
    drawn, nothing changed). ``rng`` is the case's own stream for this, so the other draws stay as they were.

    Unenhanced levels from :func:`unenhanced_means`, as the non-contrast phase draws them; the tumour keeps its
    place relative to the liver in proportion (its unenhanced level 5-20 HU below the unenhanced liver).
    """
    if phase == "non_contrast" or rng.random() >= WEAK_CONTRAST_SHARE:
        return 1.0
    strength = float(rng.uniform(*WEAK_CONTRAST_STRENGTH))
    unenhanced = unenhanced_means(rng)
    m = look.means
    for tissue in _ENHANCING:
        key = int(tissue)
        if key in m:
            m[key] = float(unenhanced[tissue] + strength * (m[key] - unenhanced[tissue]))
    return strength


#: Regional enhancement of the liver (full variety): SD (HU) of a smooth field over the liver per phase, drawn
#: uniformly in this range, with a lattice of ``REGIONAL_SCALE_MM`` (about its correlation length). A real liver is
#: not evenly enhanced (perfusion, portal-venous inflow, fat), and a model that has only seen even livers calls a
#: slightly darker region of a real liver tumour; the range is chosen so that the phantom livers' regional variation
#: is centred on what real livers show and reaches beyond it (measured: README, *Real scans*;
#: ``benchmarks/liver_regional_variation.py``).
REGIONAL_SD_HU = {"non_contrast": (3.0, 7.0), "arterial": (4.0, 11.0), "portal_venous": (3.0, 10.0),
                  "delayed": (3.0, 8.0)}
REGIONAL_SCALE_MM = (20.0, 40.0)


def add_regional_enhancement(look: Appearance, phase: str, rng: np.random.Generator, lo_mm: Sequence[float],
                             hi_mm: Sequence[float]) -> float:
    """Give the liver a smooth regional variation on top of its texture (full variety); returns its SD (HU).

    Drawn from its own generator, so every other draw of the case stays as it was.
    """
    sd = float(rng.uniform(*REGIONAL_SD_HU[phase]))
    regional = SmoothNoise(rng, lo_mm, hi_mm, float(rng.uniform(*REGIONAL_SCALE_MM)))
    liver = int(T.LIVER)
    texture, texture_sd = look.textures.pop(liver)

    def liver_value(block: Block, mean: float):
        def value():
            out = texture(*block.axes)
            out *= F32(texture_sd)
            out += F32(sd) * regional(*block.axes)
            out += F32(mean)
            return out
        return block.cached("liver_regional", value)

    look.special[liver] = liver_value
    return sd


#: Full variety, portal venous phase: how far (HU) the viable tumour lies below the liver. The demo draws 25-55;
#: some real liver tumours, or parts of them, come closer to the liver than that (README, *Real scans*).
PORTAL_VENOUS_TUMOUR_DROP_HU = (12.0, 55.0)


def add_hilum_tissues(look: Appearance, phase: str, rng: np.random.Generator) -> None:
    """Full variety: attenuation of the periportal sheath and the bile ducts (:mod:`.hilum`), and in the portal
    venous phase a tumour drawn from :data:`PORTAL_VENOUS_TUMOUR_DROP_HU` below the liver.

    The sheath is fat and fibrous tissue at a per-case mix (fat -100 HU, fibrous tissue 40 unenhanced, 60-80 after
    contrast), so from about -65 HU (an adult's hilar fat) to near soft tissue (a child's thin sheath); bile 0-25 HU.
    Drawn from its own generator, so every other draw of the case stays as it was.
    """
    m = look.means
    fibrous = 40.0 if phase == "non_contrast" else float(rng.uniform(60.0, 80.0))
    fat_share = float(rng.uniform(0.0, 0.8))
    m[int(T.PERIPORTAL)] = fat_share * -100.0 + (1.0 - fat_share) * fibrous
    m[int(T.BILE_DUCT)] = float(rng.uniform(0.0, 25.0))
    if phase == "portal_venous":
        septum_above = m[int(T.SEPTUM)] - m[int(T.TUMOUR)]
        m[int(T.TUMOUR)] = m[int(T.LIVER)] - float(rng.uniform(*PORTAL_VENOUS_TUMOUR_DROP_HU))
        m[int(T.SEPTUM)] = m[int(T.TUMOUR)] + septum_above


def noise_sd_hu(rng: np.random.Generator, thickness_mm: float) -> float:
    """Image noise SD (HU) for this case: 7-12 HU at 5 mm, scaling as 1/sqrt(slice thickness)."""
    return float(rng.uniform(7.0, 12.0) * np.sqrt(5.0 / thickness_mm))


#: SD of unit-interval uniform noise after the unnormalised [1, 2, 1] x [1, 2, 1] kernel: once (sum of squared
#: weights 6 per axis), twice ([1, 4, 6, 4, 1]: 70 per axis), never.
_KERNEL_SD = {"standard": np.sqrt(36.0 / 12.0), "soft": np.sqrt(4900.0 / 12.0), "sharp": np.sqrt(1 / 12)}
#: Noise SD relative to the standard kernel at the same dose.
_KERNEL_NOISE = {"standard": 1.0, "soft": 0.75, "sharp": 1.6}


def finish(image: np.ndarray, rng: np.random.Generator, noise_sd: float, *, kernel: str = "standard",
           streaks_hu: float = 0.0, spacing_mm: float = 1.0, outside: np.ndarray | None = None,
           outside_hu: float | None = None) -> np.ndarray:
    """Add correlated noise to slices (float32 HU, modified in place) and return them as int16.

    The white noise is uniform (four times cheaper to draw than Gaussian); after the 3x3 binomial kernel, a
    weighted sum of 9 samples, its distribution is close to Gaussian (excess kurtosis -0.3). The full variety
    also has a ``kernel`` (soft: the binomial kernel twice, noise 0.75x; sharp: white noise 1.6x and the image
    edge-enhanced), beam-hardening ``streaks_hu`` (see :func:`_streaks`) and the reconstruction circle
    (``outside``: (ny, nx) bool, set to ``outside_hu``).
    """
    if streaks_hu > 0:
        _streaks(image, streaks_hu, spacing_mm)
    if kernel == "sharp":
        detail = image.copy()
        _binomial_inplane(detail)
        detail *= F32(-1 / 16)
        detail += image
        detail[:, [0, -1], :] = 0.0  # the edge rows and columns were filtered along one axis only
        detail[:, :, [0, -1]] = 0.0
        image += F32(0.5) * detail
    noise = rng.random(image.shape, dtype=F32)
    noise -= F32(0.5)
    if kernel != "sharp":
        _binomial_inplane(noise)
    if kernel == "soft":
        _binomial_inplane(noise)
    # Unit-variance uniform noise has SD sqrt(1/12); the unnormalised [1, 2, 1] x [1, 2, 1] kernel multiplies
    # the variance by 36: SD sqrt(3).
    noise *= F32(noise_sd * _KERNEL_NOISE[kernel] / _KERNEL_SD[kernel])
    image += noise
    np.rint(image, out=image)
    np.clip(image, HU_MIN, HU_MAX, out=image)
    if outside is not None:
        image[:, outside] = F32(outside_hu)
    return image.astype(np.int16)


def _streaks(image: np.ndarray, strength_hu: float, spacing_mm: float) -> None:
    """Beam hardening: dark bands between dense bones along the rows and columns whose rays cross the most bone
    (between the femoral heads, across the iliac wings), ``strength_hu`` per cm of bone beyond 2 cm."""
    bone = image > F32(500.0)
    for axis in (2, 1):
        path_cm = bone.sum(axis=axis, keepdims=True) * F32(spacing_mm / 10.0)
        dark = np.maximum(path_cm - F32(2.0), F32(0.0)) * F32(strength_hu)
        if not dark.any():
            continue
        # Between the first and the last bone voxel of each ray, outside the bone itself.
        seen_before = np.maximum.accumulate(bone, axis=axis)
        seen_after = np.flip(np.maximum.accumulate(np.flip(bone, axis), axis=axis), axis)
        between = seen_before & seen_after & ~bone
        image -= between * dark


def _binomial_inplane(a: np.ndarray) -> None:
    """Filter each slice by the unnormalised kernel [1, 2, 1] along x and y, in place (edges: along one axis)."""
    t = a[:, :, :-2] + a[:, :, 2:]
    a[:, :, 1:-1] *= F32(2.0)
    a[:, :, 1:-1] += t
    t = a[:, :-2, :] + a[:, 2:, :]
    a[:, 1:-1, :] *= F32(2.0)
    a[:, 1:-1, :] += t
