"""How varied the phantom is: ``demo`` (the series the bundled demo models were trained on) or ``full``.

``demo`` is the original phantom, byte for byte: a child of 0-14 years, portal venous CT or fat-suppressed T2 MRI,
the abdomen from the domes to below the kidneys, arms up, one reconstruction kernel.

``full`` adds what a model meets on real scans and must not call tumour (hard negatives), and real variety of
acquisition. Per case (probabilities in brackets):

- body: newborn to adult: today's paediatric ages (45 %), 5-18 years (15 %), adults 18-80 years with adult height,
  weight from a BMI of 18-35 and 5-25 mm of subcutaneous fat (40 %);
- coverage: from the lung bases (15-60 mm above the right dome) to below the kidneys, or on through the pelvis
  (CT 65 %, MRI 40 %) with the pelvic bones, gluteal, iliac and psoas muscles, bladder, rectum and iliac vessels
  (:mod:`.trunk`); always the spinal cord and both adrenals; oral contrast in the bowel (CT 30 %);
- CT phase: non-contrast (20 %), late arterial (20 %), portal venous (45 %), delayed (15 %); vessels, kidneys,
  spleen, pancreas, tumour and urine follow the phase (:func:`.ct.apply_phase`); 30 % of the enhanced scans weakly
  enhanced (every enhancing tissue 20-75 % of the way back to its unenhanced level: :func:`.ct.weaken_contrast`);
- CT field of view: the reconstruction circle filled with -1024, -2048 or -3024 (or no circle), table present
  (90 %, -500 to +100 HU), arms down beside the trunk (20 %), the body cut off at the sides (10 %), slices 0.625-7 mm
  (a long scan takes a thicker slice where the thin one would exceed 80 million voxels);
- CT liver enhancement: a smooth regional variation over the liver (SD 3-11 HU by phase, over 20-40 mm), as a
  real liver has (:func:`.ct.add_regional_enhancement`);
- the liver's inner landmarks (CT and MRI): the umbilical and ligamentum venosum fissures, hilar fat, periportal
  sheaths, bile ducts and smaller vessel branches (:mod:`.hilum`); CT portal-venous tumours 12-55 HU below the
  liver (the demo: 25-55), as some real tumours come close to the liver's attenuation;
- a calcified shell (40 %, CT and MRI): a patchy layer of calcification 3-15 mm under the primary tumour's surface
  around its necrotic centre, viable tumour outside it (:func:`.tumour.add_calcified_shell`);
- CT reconstruction kernel: soft (smoother, more correlated noise), standard, sharp (edge enhancement, finer and
  stronger noise); beam-hardening streaks between dense bones (60 % of scans with a pelvis);
- MRI: T2 with (60 %) or without fat suppression, stronger bias fields, slices up to 8 mm (mostly 6-8 mm),
  respiratory motion ghosts along the phase-encoding direction (50 %).

Which to train on: the next demo models should be trained on ``full`` (``hbseg phantom --variety full``), with
the domain randomisation option of ``hbseg train``; ``demo`` stays the default so the bundled models' figures stay
reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConfigError
from .anatomy import Anatomy, Child, sample_child
from .trunk import PELVIS_SHARE, Trunk, sample_trunk

VARIETIES = ("demo", "full")
CT_PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")
MRI_SEQUENCES = ("t2_fs", "t2")
KERNELS = ("soft", "standard", "sharp")
CIRCLE_VALUES = (-1024.0, -2048.0, -3024.0)


@dataclasses.dataclass
class Variety:
    """The choices of one case (``demo``: the original phantom's, fixed)."""

    name: str = "demo"
    phase: str = "portal_venous"       #: CT contrast phase, or the MRI sequence (t2_fs, t2)
    pelvis: bool = False
    arms_down: bool = False
    oral_contrast: bool = False
    table: bool = True
    circle_value: float | None = None  #: CT: value outside the reconstruction circle (None: no circle)
    fov_share: float = 1.0             #: < 1: the field of view is this share of the body's width (cut off)
    kernel: str = "standard"
    streaks_hu: float = 0.0            #: beam-hardening streak strength (HU per cm of bone along a row)
    ghost: float = 0.0                 #: MRI motion-ghost amplitude (share of the signal)
    bias_sd: float | None = None       #: MRI bias field SD (None: the demo range)
    liver_regional_sd_hu: float = 0.0  #: CT: SD of the liver's regional enhancement field (:mod:`.ct`)
    contrast_strength: float = 1.0     #: CT: < 1, a weakly enhanced scan (:func:`.ct.weaken_contrast`)

    @property
    def full(self) -> bool:
        return self.name == "full"

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def check_variety(variety: str) -> None:
    if variety not in VARIETIES:
        raise ConfigError(f"unknown phantom variety {variety!r}; use one of {', '.join(VARIETIES)}")


def sample_variety(rng: np.random.Generator, modality: str, variety: str) -> Variety:
    """The acquisition choices of one case (see module docstring)."""
    check_variety(variety)
    if variety == "demo":
        return Variety()
    v = Variety(name="full")
    if modality == "ct":
        v.phase = str(rng.choice(CT_PHASES, p=[0.2, 0.2, 0.45, 0.15]))
        v.pelvis = bool(rng.random() < 0.65)
        v.arms_down = bool(rng.random() < 0.2)
        v.oral_contrast = bool(rng.random() < 0.3)
        v.table = bool(rng.random() < 0.9)
        circle = int(rng.integers(len(CIRCLE_VALUES) + 1))
        v.circle_value = CIRCLE_VALUES[circle] if circle < len(CIRCLE_VALUES) else None
        v.fov_share = float(rng.uniform(0.82, 0.97)) if rng.random() < 0.1 else 1.0
        v.kernel = str(rng.choice(KERNELS, p=[0.3, 0.45, 0.25]))
        v.streaks_hu = float(rng.uniform(4.0, 12.0)) if v.pelvis and rng.random() < 0.6 else 0.0
    else:
        v.phase = str(rng.choice(MRI_SEQUENCES, p=[0.6, 0.4]))
        v.pelvis = bool(rng.random() < 0.4)
        v.table = False
        v.ghost = float(rng.uniform(0.04, 0.15)) if rng.random() < 0.5 else 0.0
        v.bias_sd = float(rng.uniform(0.1, 0.35))
    return v


def sample_child_full(rng: np.random.Generator) -> Child:
    """Newborn to adult: today's paediatric ages (45 %), 5-18 years (15 %), adults (40 %)."""
    u = rng.random()
    if u < 0.45:
        return sample_child(rng)
    sex = "F" if rng.random() < 0.5 else "M"
    if u < 0.6:
        age = float(rng.uniform(60.0, 216.0))
        height = float(np.interp(age, [60, 120, 168, 216], [110, 138, 163, 170]) * np.exp(rng.normal(0, 0.04)))
        weight = float(np.interp(age, [60, 120, 168, 216], [18.3, 31.2, 50.0, 63.0]) * np.exp(rng.normal(0, 0.12)))
    else:
        age = float(rng.uniform(18.0, 80.0) * 12.0)
        height = float(rng.normal(176.0 if sex == "M" else 163.0, 7.0))
        weight = float(rng.uniform(18.0, 35.0) * (height / 100.0) ** 2)
    return Child(round(age, 1), sex, round(height, 1), round(weight, 2))


def adapt_anatomy(rng: np.random.Generator, an: Anatomy, v: Variety) -> Trunk | None:
    """Fit the sampled anatomy to the variety (fat of adults, coverage, oral contrast, the trunk's additions)."""
    if not v.full:
        return None
    if an.child.age_months >= 216:
        an.fat_mm = float(an.a * rng.uniform(0.04, 0.15))
    an.z_top = float(rng.uniform(15.0, 60.0))
    if v.oral_contrast:
        an.bowel_content = ["contrast" if c == "fluid" else c for c in an.bowel_content]
    trunk = sample_trunk(rng, an, pelvis=v.pelvis, arms_down=v.arms_down)
    if trunk.pelvis is not None:
        an.z_bottom = float(trunk.pelvis.crest_z - trunk.pelvis.depth - rng.uniform(0.0, 20.0))
        an.spine_bottom_z = float(trunk.pelvis.crest_z - 0.1 * PELVIS_SHARE * an.length)
    return trunk
