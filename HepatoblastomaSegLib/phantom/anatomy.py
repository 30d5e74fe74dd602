"""The child: age, growth and the placement of every organ, in millimetres.

Coordinates are LPS (x to the patient's left, y to the back, z up) in mm, with the body's centre at x = y = 0 and
z = 0 at the top of the right hemidiaphragm. Sizes scale with the child:

- age: 0-14 years, most 1-4 years (:func:`sample_age_months`), mean about 2.9 years (the paper's cohort: about 2.5);
- height and weight: WHO/CDC median curves with individual spread; body surface area (Mosteller);
- abdominal width grows as weight^0.34 (15-16 cm at 1 year, 26 cm at 14 years), depth/width 0.88 in infants to
  0.72 in teenagers; abdominal length (dome to iliac crest) 0.17 x height;
- normal liver volume 706 x BSA + 2.4 mL (Urata's formula; 320 mL at 1 year, 1060 mL at 14 years), which makes the
  liver large relative to the body as it is in young children;
- kidney length 45 mm at birth to 100 mm at 14 years; vessels, spine and wall thickness in proportion.

Organ shapes are built in :mod:`.organs` and :mod:`.body` from these numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .fields import Ellipsoid, Tube, rotation_x, rotation_y, rotation_z

# Median growth (age in months -> height cm, weight kg), WHO 0-5 years and CDC above.
_AGE_M = np.array([0, 3, 6, 12, 24, 36, 48, 60, 84, 120, 144, 168], dtype=float)
_HEIGHT_CM = np.array([50, 61, 67, 75, 87, 96, 103, 110, 122, 138, 150, 163], dtype=float)
_WEIGHT_KG = np.array([3.3, 6.0, 7.8, 9.6, 12.2, 14.3, 16.3, 18.3, 22.9, 31.2, 40.0, 50.0], dtype=float)
_KIDNEY_MM = np.array([45, 52, 56, 60, 65, 68, 70, 73, 79, 88, 94, 100], dtype=float)

MAX_AGE_MONTHS = 168.0


def sample_age_months(rng: np.random.Generator) -> float:
    """Age at diagnosis (months): 15 % infants under 1 year, 70 % 1-4 years, 15 % 4-14 years (skewed young)."""
    u = rng.random()
    if u < 0.15:
        return float(rng.uniform(1.0, 12.0))
    if u < 0.85:
        return float(rng.uniform(12.0, 48.0))
    return float(48.0 + (MAX_AGE_MONTHS - 48.0) * rng.beta(1.0, 2.5))


@dataclasses.dataclass
class Child:
    age_months: float
    sex: str
    height_cm: float
    weight_kg: float

    @property
    def bsa_m2(self) -> float:
        return float(np.sqrt(self.height_cm * self.weight_kg / 3600.0))

    @property
    def normal_liver_ml(self) -> float:
        return 706.2 * self.bsa_m2 + 2.4


def sample_child(rng: np.random.Generator) -> Child:
    age = sample_age_months(rng)
    height = float(np.interp(age, _AGE_M, _HEIGHT_CM) * np.exp(rng.normal(0.0, 0.04)))
    weight = float(np.interp(age, _AGE_M, _WEIGHT_KG) * np.exp(rng.normal(0.0, 0.10)))
    return Child(round(age, 1), "F" if rng.random() < 0.4 else "M", round(height, 1), round(weight, 2))


@dataclasses.dataclass
class Anatomy:
    """Every anatomical number of one child (mm). ``a``/``b``: half width/depth of the abdomen, ``length``: dome to
    iliac crest. Shapes are :class:`~.fields.Ellipsoid` and :class:`~.fields.Tube` in body coordinates."""

    child: Child
    a: float
    b: float
    length: float
    y_back: float
    fat_mm: float
    muscle_mm: float
    # skeleton
    vb_radius: float
    vb_y: float
    vertebra_pitch: float
    vertebra_phase: float
    rib_radius: float
    rib_pitch: float
    rib_slope: float
    # diaphragm domes: (x, y, z apex)
    dome_right: tuple[float, float, float]
    dome_left: tuple[float, float, float]
    dome_height: float
    # vessels
    aorta: Tube
    ivc: Tube
    ivc_radii_xy: tuple[float, float]
    portal: list[Tube]
    hepatic_veins: list[Tube]
    splenic_vein: Tube
    # organs
    liver_parts: list[Ellipsoid]
    liver_blend: float
    section_angles_deg: tuple[float, float, float]   # RHV, MHV, umbilical fissure (degrees, see sections)
    gallbladder: Ellipsoid
    kidneys: list[Ellipsoid]
    kidney_sinus: list[Ellipsoid]
    spleen: Ellipsoid
    stomach: list[Ellipsoid]
    stomach_wall_mm: float
    stomach_gas_y: float
    pancreas: Tube
    heart: Ellipsoid
    psoas: list[Tube]
    colon: Tube
    small_bowel: list[Tube]
    bowel_content: list[str]    # per loop of [colon] + small_bowel: "gas", "fluid", "mixed", "stool"
    bowel_gas_y: list[float]    # per loop: gas above (anterior to) this y where content is "mixed"
    bowel_wall_mm: float
    z_top: float
    z_bottom: float
    #: Lowest level of the lumbar spine when the scan includes the pelvis (the sacrum takes over); None: no limit.
    spine_bottom_z: float | None = None

    @property
    def ivc_xy(self) -> tuple[float, float]:
        return float(self.ivc.points[0, 0]), float(self.ivc.points[0, 1])

    def dome_z(self, x, y):
        """Height (mm) of the diaphragm at (x, y): the higher of two paraboloid domes."""
        def dome(apex):
            u = (x - np.float32(apex[0])) / np.float32(0.62 * self.a)
            v = (y - np.float32(apex[1])) / np.float32(0.85 * self.b)
            return np.float32(apex[2]) - np.float32(self.dome_height) * (u * u + v * v)
        return np.maximum(dome(self.dome_right), dome(self.dome_left))


def sample_anatomy(rng: np.random.Generator, child: Child) -> Anatomy:
    """Place the organs of ``child`` (all random choices come from ``rng``)."""
    age = child.age_months
    width = 69.0 * child.weight_kg ** 0.34 * np.exp(rng.normal(0.0, 0.04))
    a = width / 2
    b = a * float(np.interp(age, [0, 48, 168], [0.88, 0.82, 0.72])) * np.exp(rng.normal(0.0, 0.03))
    length = 0.17 * child.height_cm * 10.0
    fat = float(np.interp(age, [0, 24, 60, 168], [8.0, 7.0, 5.0, 7.0]) * rng.uniform(0.6, 1.4))
    muscle = 0.045 * a * rng.uniform(0.8, 1.2)
    vb_r = 0.12 * a
    vb_y = 0.42 * b
    u = rng.uniform

    # Vessels: the aorta in front of the spine to the left, the IVC to the right and further forward.
    r_ao = 0.055 * a * u(0.9, 1.1)
    ao_xy = (0.35 * vb_r, vb_y - 0.85 * vb_r - r_ao - 1.5)
    r_ivc = 0.06 * a * u(0.9, 1.1)
    ivc_xy = (-0.9 * vb_r - r_ivc, vb_y - 0.85 * vb_r - 0.9 * r_ivc - 2.5)
    z_lo, z_hi = -1.6 * length, 0.6 * length
    aorta = Tube([(*ao_xy, z_lo), (*ao_xy, z_hi)], r_ao)
    ivc = Tube([(*ivc_xy, z_lo), (*ivc_xy, z_hi)], r_ivc)

    # Liver: right lobe, left lobe and caudate, then scaled to the normal volume for the child (see organs).
    liver_parts = [
        Ellipsoid((-0.40 * a, 0.02 * b, -0.30 * length), (0.52 * a, 0.72 * b, 0.34 * length),
                  rotation_z(np.radians(u(-15, -5)))),
        Ellipsoid((0.12 * a, -0.42 * b, -0.16 * length), (0.44 * a, 0.27 * b, 0.16 * length),
                  rotation_z(np.radians(u(10, 25))) @ rotation_y(np.radians(u(-12, -4)))),
        Ellipsoid((ivc_xy[0] + 0.12 * a, ivc_xy[1] - 0.02 * b, -0.17 * length), (0.16 * a, 0.15 * b, 0.13 * length)),
    ]
    section_angles = (u(140, 152), u(100, 110), u(78, 88))

    # Portal venous tree from the confluence behind the pancreas into both lobes.
    r_pv = 0.045 * a
    conf = np.array([0.02 * a, ivc_xy[1] - r_ivc - r_pv - 2.0, -0.36 * length])
    hilum = np.array([-0.15 * a, conf[1] - 0.12 * b, -0.22 * length])
    portal = [
        Tube([conf, hilum], [r_pv, r_pv]),
        Tube([conf + (0.03 * a, -0.02 * b, 0), (0.08 * a, conf[1] - 0.1 * b, -1.3 * length)],
             [0.85 * r_pv, 0.7 * r_pv]),
        Tube([hilum, (-0.45 * a, hilum[1] + 0.05 * b, -0.20 * length), (-0.50 * a, -0.45 * b, -0.16 * length)],
             [0.75 * r_pv, 0.6 * r_pv, 0.4 * r_pv]),
        Tube([(-0.45 * a, hilum[1] + 0.05 * b, -0.20 * length), (-0.72 * a, 0.22 * b, -0.32 * length)],
             [0.6 * r_pv, 0.4 * r_pv]),
        Tube([hilum, (0.02 * a, -0.35 * b, -0.17 * length), (0.38 * a, -0.40 * b, -0.13 * length)],
             [0.7 * r_pv, 0.55 * r_pv, 0.35 * r_pv]),
        Tube([(0.02 * a, -0.35 * b, -0.17 * length), (-0.02 * a, -0.62 * b, -0.24 * length)],
             [0.5 * r_pv, 0.35 * r_pv]),
    ]
    # Hepatic veins along the section boundaries, into the IVC just below the dome.
    z_hv = -0.07 * length
    hepatic = []
    for angle in section_angles:
        t = np.radians(angle)
        end = (ivc_xy[0] + 0.75 * a * np.cos(t), ivc_xy[1] - 0.75 * b * np.sin(t), z_hv - 0.28 * length)
        mid = (ivc_xy[0] + 0.35 * a * np.cos(t), ivc_xy[1] - 0.35 * b * np.sin(t), z_hv - 0.08 * length)
        hepatic.append(Tube([(*ivc_xy, z_hv + 0.02 * length), mid, end], [0.8 * r_ivc, 0.5 * r_ivc, 0.25 * r_ivc]))

    kidney_len = float(np.interp(age, _AGE_M, _KIDNEY_MM)) * u(0.9, 1.1)
    kidneys, sinus = [], []
    for side, z_c in ((-1, -0.50 * length - 0.5 * kidney_len * 0.25), (1, -0.42 * length - 0.5 * kidney_len * 0.25)):
        centre = (side * (vb_r + 0.25 * a), vb_y - 0.08 * b, z_c)
        rot = rotation_y(np.radians(side * -12)) @ rotation_z(np.radians(side * 25))
        radii = (0.22 * kidney_len, 0.25 * kidney_len, 0.5 * kidney_len)
        kidneys.append(Ellipsoid(centre, radii, rot))
        sinus_centre = (centre[0] - side * 0.12 * kidney_len, centre[1] - 0.05 * kidney_len, centre[2])
        sinus.append(Ellipsoid(sinus_centre, (0.09 * kidney_len, 0.11 * kidney_len, 0.25 * kidney_len), rot))

    spleen = Ellipsoid((0.62 * a, 0.30 * b, -0.20 * length), (0.17 * a, 0.34 * b, 0.22 * length) * np.array(
        [u(0.85, 1.15)] * 3), rotation_z(np.radians(-35)))
    stomach = [
        Ellipsoid((0.33 * a, -0.18 * b, -0.26 * length), (0.26 * a, 0.24 * b, 0.19 * length) * np.array(
            [u(0.8, 1.2)] * 3), rotation_z(np.radians(30)) @ rotation_x(np.radians(15))),
        Ellipsoid((0.45 * a, 0.05 * b, -0.10 * length), (0.17 * a, 0.18 * b, 0.12 * length)),
    ]
    stomach_gas_y = -0.18 * b - 0.24 * b * u(-0.2, 0.9)
    gallbladder = Ellipsoid((-0.12 * a, -0.45 * b, -0.50 * length), (0.08 * a, 0.10 * a, 0.16 * length) * np.array(
        [u(0.7, 1.2)] * 3), rotation_x(np.radians(-30)))
    pancreas = Tube([(-0.14 * a, conf[1] - 0.10 * b, -0.42 * length), (0.12 * a, conf[1] - 0.08 * b, -0.35 * length),
                     (0.45 * a, 0.18 * b, -0.28 * length)], [0.085 * a, 0.065 * a, 0.055 * a])
    splenic_vein = Tube([conf, (0.15 * a, conf[1] - 0.01 * b, -0.34 * length), (0.50 * a, 0.24 * b, -0.27 * length)],
                        [0.6 * r_pv, 0.55 * r_pv, 0.5 * r_pv])
    heart = Ellipsoid((0.12 * a, -0.32 * b, 0.05 * length + 0.3 * a), (0.42 * a, 0.33 * b, 0.32 * a))
    psoas = [Tube([(side * (vb_r + 0.03 * a), vb_y - 0.05 * vb_r, -0.45 * length),
                   (side * (vb_r + 0.12 * a), vb_y - 0.4 * vb_r, -1.2 * length)], [0.03 * a, 0.13 * a])
             for side in (-1, 1)]

    colon, small, content, gas_y = _bowel(rng, a, b, length)
    anatomy = Anatomy(
        child=child, a=a, b=b, length=length, y_back=0.80 * b, fat_mm=fat, muscle_mm=muscle,
        vb_radius=vb_r, vb_y=vb_y, vertebra_pitch=0.105 * length, vertebra_phase=u(0, 1),
        rib_radius=0.026 * a, rib_pitch=0.075 * length, rib_slope=u(0.5, 0.8),
        dome_right=(-0.40 * a, 0.0, 0.0), dome_left=(0.45 * a, 0.05 * b, -u(0.04, 0.10) * length),
        dome_height=0.25 * length,
        aorta=aorta, ivc=ivc, ivc_radii_xy=(1.2 * r_ivc, 0.8 * r_ivc), portal=portal, hepatic_veins=hepatic,
        splenic_vein=splenic_vein, liver_parts=liver_parts, liver_blend=0.12 * a, section_angles_deg=section_angles,
        gallbladder=gallbladder, kidneys=kidneys, kidney_sinus=sinus, spleen=spleen, stomach=stomach,
        stomach_wall_mm=0.03 * a, stomach_gas_y=stomach_gas_y, pancreas=pancreas, heart=heart, psoas=psoas,
        colon=colon, small_bowel=small, bowel_content=content, bowel_gas_y=gas_y, bowel_wall_mm=0.02 * a,
        z_top=u(10.0, 25.0), z_bottom=-length - 10.0)
    # The heart rests on the central part of the diaphragm.
    hx, hy, _ = anatomy.heart.centre
    hz = float(anatomy.dome_z(np.float32(hx), np.float32(hy))) + 0.9 * anatomy.heart.radii[2]
    anatomy.heart = Ellipsoid((hx, hy, hz), anatomy.heart.radii)
    return anatomy


def _bowel(rng: np.random.Generator, a: float, b: float, length: float):
    """Colon frame (ascending, transverse, descending) and a few small-bowel loops as random walks."""
    u = rng.uniform
    z_low = -1.3 * length
    colon_points = [(-0.64 * a, 0.05 * b, z_low), (-0.62 * a, 0.0, -0.72 * length),
                    (-0.55 * a, -0.35 * b, -0.62 * length), (0.0, -0.55 * b * u(0.85, 1.0), -0.66 * length),
                    (0.50 * a, -0.35 * b, -0.50 * length),
                    (0.66 * a, 0.05 * b, -0.48 * length), (0.64 * a, 0.12 * b, -0.75 * length),
                    (0.62 * a, 0.12 * b, z_low)]
    colon = Tube(np.asarray(colon_points) + rng.normal(0.0, 0.03 * a, (len(colon_points), 3)), 0.10 * a)
    loops, content, gas_y = [], ["stool"], [0.0]
    # Small-bowel loops fill the lower abdomen: random walks from a jittered lattice of starting points.
    starts = [(xs, ys, zs) for xs in (-0.3, 0.0, 0.3) for ys in (-0.5, -0.15) for zs in (-1.2, -0.95, -0.7)]
    for xs, ys, zs in starts:
        start = np.array([(xs + u(-0.1, 0.1)) * a, (ys + u(-0.1, 0.1)) * b, (zs + u(-0.1, 0.1)) * length])
        points = [start]
        direction = rng.normal(size=3)
        for _ in range(int(rng.integers(5, 8))):
            direction = direction / np.linalg.norm(direction) + 0.8 * rng.normal(size=3)
            step = 0.2 * a * direction / np.linalg.norm(direction)
            nxt = points[-1] + step
            nxt[0] = np.clip(nxt[0], -0.55 * a, 0.55 * a)
            nxt[1] = np.clip(nxt[1], -0.75 * b, 0.2 * b)
            nxt[2] = np.clip(nxt[2], -1.3 * length, -0.6 * length)
            points.append(nxt)
        loops.append(Tube(points, 0.08 * a * u(0.85, 1.2)))
        kind = rng.choice(["fluid", "gas", "mixed"], p=[0.55, 0.2, 0.25])
        content.append(str(kind))
        gas_y.append(float(np.min(np.asarray(points)[:, 1]) + 0.03 * a))
    return colon, loops, content, gas_y
