"""Hard negatives of the full-variety phantom (:mod:`.variety`): pelvis, its muscles and organs, cord, adrenals, arms.

A model trained on the demo phantom learnt "a soft-tissue blob that is not liver is tumour", because the demo
phantom has no large muscle masses below the kidneys, no pelvis and no bright vessels outside the liver. These
structures give it the soft tissue it must learn to leave alone (shapes in mm, LPS, z = 0 at the right dome, the
iliac crest at z = -length; ``P`` = crest to the bottom of the symphysis, 0.55 x length):

- pelvic bones: the iliac wings (a shell of an ellipsoid, cortex and marrow), the sacrum, the bodies of the ilium,
  the femoral heads and necks, the pubic rami and the ischia;
- muscles: gluteal masses outside the wings (behind and beside them), the iliacus lining the inside of the wings,
  the psoas continued from the lumbar spine over the pelvic brim to the hip;
- pelvic organs: the bladder (urine, thin wall), the rectum (stool or gas) in front of the sacrum, the common and
  external iliac arteries and veins (the aorta and IVC end at the bifurcation);
- the spinal cord in the canal down to the conus, both adrenal glands above the kidneys;
- the arms beside the trunk (fat, muscle, humerus) when they are down.

The adrenals and the muscles are painted before the abdominal organs (the liver, which in an infant reaches down
to the pelvis, covers any overlap: no muscle inside the liver mask); bones, bladder, rectum, iliac vessels, cord
and arms after them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .anatomy import Anatomy
from .body import body_on
from .fields import F32, Block, Ellipsoid, Tube, rotation_x, rotation_z
from .render import Structure
from .tissues import Tissue

#: Depth of the pelvis (iliac crest to the bottom of the symphysis) as a share of the abdominal length.
PELVIS_SHARE = 0.55


@dataclasses.dataclass
class Pelvis:
    crest_z: float
    depth: float
    wings: list[Ellipsoid]          #: per side; the wing is a shell of this ellipsoid, lateral and posterior
    wing_mm: float                  #: thickness of a wing
    cortex_mm: float
    sacrum: Ellipsoid
    bones: list[Tube]               #: ilium bodies, femoral necks and shafts, pubic rami, ischia
    femoral_heads: list[Ellipsoid]
    gluteal: list[Ellipsoid]
    iliacus_mm: float
    psoas: list[Tube]               #: continuation of the psoas to the hip
    bladder: Ellipsoid
    rectum: Tube
    rectum_gas: bool
    arteries: list[Tube]
    veins: list[Tube]


@dataclasses.dataclass
class Arms:
    tubes: list[Tube]               #: upper arm and forearm, per side
    bones: list[Tube]
    fat_mm: float


@dataclasses.dataclass
class Trunk:
    """The additions of one case; ``pelvis``/``arms`` None when the scan stops above the pelvis / arms are up."""

    pelvis: Pelvis | None
    arms: Arms | None
    cord_radius_mm: float
    conus_z: float
    adrenals: list[Ellipsoid]

    def half_width_mm(self, an: Anatomy) -> float:
        """Half the in-plane width (x) of everything in the scan: the body, or the arms beside it."""
        if self.arms is None:
            return an.a
        return max(float(t.points[:, 0].max() + t.radii.max()) for t in self.arms.tubes)


def sample_trunk(rng: np.random.Generator, an: Anatomy, *, pelvis: bool, arms_down: bool) -> Trunk:
    """Draw the additions for ``an`` and, with a pelvis, end the aorta and IVC at the bifurcation."""
    a, b, length, r = an.a, an.b, an.length, an.vb_radius
    u = rng.uniform
    kidney_len = 2 * an.kidneys[0].radii[2]
    adrenals = []
    for side, kidney in zip((-1, 1), an.kidneys, strict=True):
        top = kidney.centre[2] + 0.45 * kidney_len
        adrenals.append(Ellipsoid((kidney.centre[0] - side * 0.05 * a, kidney.centre[1] - 0.06 * b,
                                   top + 0.12 * kidney_len), (0.025 * a + 1.0, 0.09 * a, 0.16 * kidney_len),
                                  rotation_z(np.radians(side * 35))))
    trunk = Trunk(None, None, 0.25 * r, -u(0.65, 0.8) * length, adrenals)
    if pelvis:
        trunk.pelvis = _sample_pelvis(rng, an)
        z_bif = -u(0.85, 1.0) * length
        ao, iv = an.aorta.points[0], an.ivc.points[0]
        z_hi = float(an.aorta.points[-1, 2])
        an.aorta = Tube([(ao[0], ao[1], z_bif), (ao[0], ao[1], z_hi)], an.aorta.radii[0])
        an.ivc = Tube([(iv[0], iv[1], z_bif - 0.03 * length), (iv[0], iv[1], z_hi)], an.ivc.radii[0])
        crest, depth = trunk.pelvis.crest_z, trunk.pelvis.depth
        for side in (-1, 1):
            trunk.pelvis.arteries.append(Tube(
                [(ao[0], ao[1], z_bif), (side * 0.22 * a, 0.12 * b, crest - 0.2 * depth),
                 (side * 0.34 * a, -0.18 * b, crest - 0.75 * depth)],
                [0.75 * an.aorta.radii[0], 0.65 * an.aorta.radii[0], 0.55 * an.aorta.radii[0]]))
            trunk.pelvis.veins.append(Tube(
                [(iv[0], iv[1], z_bif - 0.03 * length), (side * 0.2 * a, 0.2 * b, crest - 0.2 * depth),
                 (side * 0.33 * a, -0.1 * b, crest - 0.75 * depth)],
                [0.8 * an.ivc.radii[0], 0.7 * an.ivc.radii[0], 0.65 * an.ivc.radii[0]]))
    if arms_down:
        r_arm = 0.42 * b * u(0.85, 1.15)
        tubes, bones = [], []
        for side in (-1, 1):
            x = side * (a + u(5.0, 25.0) + r_arm)
            y = an.y_back - r_arm - 2.0
            elbow = -u(0.5, 0.8) * length
            upper = Tube([(x, y, an.z_top + 60.0), (x, y, elbow)], r_arm)
            fore = Tube([(x, y, elbow), (x - side * 0.1 * a, y - 0.4 * b, elbow - 1.2 * length)],
                        [0.85 * r_arm, 0.6 * r_arm])
            tubes += [upper, fore]
            bones += [Tube(upper.points, 0.2 * r_arm), Tube(fore.points, 0.15 * r_arm)]
        trunk.arms = Arms(tubes, bones, 0.25 * r_arm)
    return trunk


def _sample_pelvis(rng: np.random.Generator, an: Anatomy) -> Pelvis:
    a, b, length = an.a, an.b, an.length
    u = rng.uniform
    crest = -length
    depth = PELVIS_SHARE * length * u(0.9, 1.1)
    wings = [Ellipsoid((side * 0.22 * a, 0.30 * b, crest - 0.30 * depth), (0.42 * a, 0.38 * b, 0.42 * depth),
                       rotation_z(np.radians(side * u(-8, 8)))) for side in (-1, 1)]
    sacrum = Ellipsoid((0.0, an.vb_y + 0.10 * b, crest - 0.25 * depth), (0.30 * a, 0.13 * b, 0.38 * depth),
                       rotation_x(np.radians(-u(15, 30))))
    heads, bones, gluteal, psoas = [], [], [], []
    for side in (-1, 1):
        head = np.array([side * 0.40 * a, -0.02 * b, crest - 0.72 * depth])
        r_head = 0.12 * a * u(0.9, 1.1)
        heads.append(Ellipsoid(tuple(head), (r_head, r_head, r_head)))
        neck_end = head + (side * 0.2 * a, 0.02 * b, -0.15 * depth)
        bones += [
            Tube([(side * 0.32 * a, 0.25 * b, crest - 0.35 * depth), head], [0.07 * a, 0.08 * a]),    # ilium body
            Tube([head, neck_end, neck_end + (0.0, 0.0, -0.8 * depth)], [0.07 * a, 0.075 * a, 0.06 * a]),
            Tube([head + (-side * 0.04 * a, -0.08 * b, 0.0), (side * 0.04 * a, -0.55 * b, crest - 0.9 * depth)],
                 0.045 * a),                                                                               # pubis
            Tube([head + (-side * 0.03 * a, 0.12 * b, -0.03 * depth), (side * 0.28 * a, 0.28 * b, crest - depth)],
                 [0.055 * a, 0.05 * a]),                                                                   # ischium
        ]
        gluteal.append(Ellipsoid((side * 0.46 * a, 0.50 * b, crest - 0.45 * depth),
                                 (0.46 * a, 0.42 * b, 0.70 * depth)))
        start = np.array([side * (an.vb_radius + 0.12 * a), an.vb_y - 0.4 * an.vb_radius, -1.2 * length])
        psoas.append(Tube([start, (side * 0.30 * a, 0.05 * b, crest - 0.4 * depth), head + (0.0, -0.18 * a, 0.0)],
                          [0.13 * a, 0.11 * a, 0.08 * a]))
    bladder = Ellipsoid((0.0, -0.35 * b, crest - 0.78 * depth),
                        tuple(np.array([0.22 * a, 0.20 * b, 0.20 * depth]) * u(0.5, 1.2)))
    rectum = Tube([(0.0, 0.22 * b, crest - 0.3 * depth), (0.0, 0.28 * b, crest - 0.65 * depth),
                   (0.0, 0.15 * b, crest - 1.05 * depth)], 0.07 * a * u(0.8, 1.3))
    return Pelvis(crest, depth, wings, 0.03 * a + 3.0, 0.012 * a + 0.8, sacrum, bones, heads, gluteal,
                  0.06 * a, psoas, bladder, rectum, bool(rng.random() < 0.3), [], [])


def before_organs(an: Anatomy, trunk: Trunk) -> list[Structure]:
    """The adrenal glands and the pelvic muscles (painted before the organs, so the liver covers any overlap)."""
    s = [Structure(f"adrenal{i}", Tissue.ADRENAL, *gland.bounds(),
                   lambda block, g=gland: g(block.wx, block.wy, block.wz))
         for i, gland in enumerate(trunk.adrenals)]
    if trunk.pelvis is not None:
        s += _pelvic_muscles(an, trunk.pelvis)
    return s


def _wing_limits(an: Anatomy, p: Pelvis, side: int, x, y, z) -> np.ndarray:
    """Negative in the part of the wing's ellipsoid that holds bone: lateral, posterior, crest to acetabulum."""
    lateral = F32(0.2 * an.a) - F32(side) * x
    behind = F32(-0.15 * an.b) - y
    below_crest = z - F32(p.crest_z)
    above_hip = F32(p.crest_z - 0.72 * p.depth) - z
    return np.maximum(np.maximum(lateral, behind), np.maximum(below_crest, above_hip))


def _bone_pair(name: str, lo, hi, field, cortex_mm: float, warped: bool = True) -> list[Structure]:
    return [Structure(name, Tissue.BONE_CORTICAL, lo, hi, field, warped=warped),
            Structure(f"{name}_marrow", Tissue.BONE_MARROW, lo, hi,
                      lambda block: field(block) + F32(cortex_mm), warped=warped)]


def after_organs(an: Anatomy, trunk: Trunk) -> list[Structure]:
    """Pelvic bones and organs, cord and arms, painted after the organs and the spine."""
    s: list[Structure] = []
    r = an.vb_radius
    y_canal = an.vb_y + 1.45 * r
    cord_lo = (-trunk.cord_radius_mm, y_canal - trunk.cord_radius_mm, trunk.conus_z)
    cord_hi = (trunk.cord_radius_mm, y_canal + trunk.cord_radius_mm, an.z_top + 20.0)
    s.append(Structure("cord", Tissue.SPINAL_CORD, cord_lo, cord_hi,
                       lambda block: np.sqrt(block.wx * block.wx + (block.wy - F32(y_canal)) ** 2)
                       - F32(trunk.cord_radius_mm) + F32(0.0) * block.wz))
    if trunk.pelvis is not None:
        s += _pelvic_bones_and_organs(an, trunk.pelvis)
    if trunk.arms is not None:
        arms = trunk.arms
        for i, (tube, bone) in enumerate(zip(arms.tubes, arms.bones, strict=True)):
            lo, hi = tube.bounds()
            s += [Structure(f"arm{i}", Tissue.FAT, lo, hi, lambda block, t=tube: t.on(block, False), warped=False),
                  Structure(f"arm{i}_muscle", Tissue.MUSCLE, lo, hi,
                            lambda block, t=tube: t.on(block, False) + F32(arms.fat_mm), warped=False)]
            s += _bone_pair(f"humerus{i}", *bone.bounds(), lambda block, t=bone: t.on(block, False), 1.5,
                            warped=False)
    return s


def _inside_wall(an: Anatomy, block: Block):
    """Negative inside the body beneath the subcutaneous fat."""
    return body_on(an, block) + F32(an.fat_mm)


def _pelvic_muscles(an: Anatomy, p: Pelvis) -> list[Structure]:
    s: list[Structure] = []
    a = an.a

    def inside_wall(block: Block):
        return _inside_wall(an, block)

    for i, (glute, wing) in enumerate(zip(p.gluteal, p.wings, strict=True)):
        side = -1 if i == 0 else 1

        def gluteal(block: Block, g=glute, w=wing, side=side):
            f = np.maximum(g(block.wx, block.wy, block.wz), inside_wall(block))
            f = np.maximum(f, -w(block.wx, block.wy, block.wz))           # outside the wing's bowl
            return np.maximum(f, F32(0.12 * a) - F32(side) * block.wx)

        s.append(Structure(f"gluteal{i}", Tissue.MUSCLE, *glute.bounds(), gluteal))

        def iliacus(block: Block, w=wing, side=side):
            e = w(block.wx, block.wy, block.wz)
            layer = np.maximum(e + F32(0.5 * p.wing_mm + p.iliacus_mm), -(e + F32(0.5 * p.wing_mm)))
            return np.maximum(layer, _wing_limits(an, p, side, block.wx, block.wy, block.wz))

        s.append(Structure(f"iliacus{i}", Tissue.MUSCLE, *wing.bounds(), iliacus))
    for i, tube in enumerate(p.psoas):
        s.append(Structure(f"pelvic_psoas{i}", Tissue.MUSCLE, *tube.bounds(),
                           lambda block, t=tube: np.maximum(t.on(block), inside_wall(block))))
    return s


def _pelvic_bones_and_organs(an: Anatomy, p: Pelvis) -> list[Structure]:
    s: list[Structure] = []
    # Bladder and rectum.
    s += [Structure("bladder_wall", Tissue.BOWEL_WALL, *p.bladder.bounds(pad_mm=2.0),
                    lambda block: p.bladder(block.wx, block.wy, block.wz) - F32(2.0)),
          Structure("bladder", Tissue.URINE, *p.bladder.bounds(), lambda block: p.bladder(block.wx, block.wy,
                                                                                            block.wz))]
    wall = an.bowel_wall_mm
    s += [Structure("rectum_wall", Tissue.BOWEL_WALL, *p.rectum.bounds(), lambda block: p.rectum.on(block)),
          Structure("rectum", Tissue.GAS if p.rectum_gas else Tissue.STOOL, *p.rectum.bounds(),
                    lambda block: p.rectum.on(block) + F32(wall))]

    # Bones.
    for i, wing in enumerate(p.wings):
        side = -1 if i == 0 else 1

        def wing_field(block: Block, w=wing, side=side):
            shell = np.abs(w(block.wx, block.wy, block.wz)) - F32(0.5 * p.wing_mm)
            return np.maximum(shell, _wing_limits(an, p, side, block.wx, block.wy, block.wz))

        s += _bone_pair(f"iliac_wing{i}", *wing.bounds(), wing_field, p.cortex_mm)
    s += _bone_pair("sacrum", *p.sacrum.bounds(), lambda block: p.sacrum(block.wx, block.wy, block.wz), p.cortex_mm)
    for i, tube in enumerate(p.bones):
        s += _bone_pair(f"pelvic_bone{i}", *tube.bounds(), lambda block, t=tube: t.on(block), p.cortex_mm)
    for i, head in enumerate(p.femoral_heads):
        s += _bone_pair(f"femoral_head{i}", *head.bounds(), lambda block, h=head: h(block.wx, block.wy, block.wz),
                        p.cortex_mm)

    # Iliac vessels over everything (they run along the pelvic brim).
    for i, tube in enumerate(p.arteries):
        s.append(Structure(f"iliac_artery{i}", Tissue.AORTA, *tube.bounds(), lambda block, t=tube: t.on(block)))
    for i, tube in enumerate(p.veins):
        s.append(Structure(f"iliac_vein{i}", Tissue.IVC, *tube.bounds(), lambda block, t=tube: t.on(block)))
    return s
