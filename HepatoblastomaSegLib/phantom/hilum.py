"""The liver's inner landmarks (full variety only): fissures, hilar fat, periportal sheaths, bile ducts and the
smaller vessel branches.

Without them the phantom liver is even parenchyma crossed by a few smooth vessels, and its only heterogeneous
region is the tumour; a model trained on it calls the porta hepatis of a real liver tumour, where bright portal
branches run in darker fat and connective tissue beside the bile ducts. Per case (probabilities in brackets):

- fissures cut from the liver and left to the abdominal fat under it: the umbilical fissure (ligamentum teres,
  90 %) in the plane between the left medial and left lateral sections, opening at the liver's lower anterior edge;
  the fissure of the ligamentum venosum (70 %) in front of the caudate lobe; hilar fat around the portal vein where
  it enters the liver (80 %);
- a periportal sheath (Glisson's capsule with its fat and lymphatics) around every intrahepatic portal branch,
  thickest at the hilum and thinning towards the periphery;
- bile ducts (60 %) beside the main right and left portal branches;
- 4-8 smaller portal branches and one tributary per hepatic vein.

Geometry here, drawn from its own generator so every other draw of the case stays as it was; attenuation and
signal of the sheath and the ducts in :func:`.ct.add_hilum_tissues` and :func:`.mri.add_hilum_tissues`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .anatomy import Anatomy
from .fields import F32, Block, Ellipsoid, Tube


@dataclasses.dataclass
class Fissure:
    """A slab of half thickness ``half_mm`` about a vertical plane through ``point`` with in-plane direction
    ``direction`` (x, y), from ``near_mm`` along it outwards and below ``top_z``."""

    point: tuple[float, float]
    direction: tuple[float, float]
    half_mm: float
    near_mm: float
    top_z: float

    def __call__(self, x, y, z) -> np.ndarray:
        dx, dy = F32(self.direction[0]), F32(self.direction[1])
        px, py = x - F32(self.point[0]), y - F32(self.point[1])
        across = np.abs(px * -dy + py * dx)
        along = px * dx + py * dy
        return np.maximum(np.maximum(across - F32(self.half_mm), F32(self.near_mm) - along), z - F32(self.top_z))


@dataclasses.dataclass
class Shell:
    """The fissure of the ligamentum venosum: a layer ``gap_mm`` .. ``gap_mm + 2 half_mm`` outside the caudate
    lobe, on the side facing ``facing`` (x, y)."""

    caudate: Ellipsoid
    gap_mm: float
    half_mm: float
    facing: tuple[float, float]

    def __call__(self, x, y, z) -> np.ndarray:
        d = self.caudate(x, y, z)
        layer = np.abs(d - F32(self.gap_mm + self.half_mm)) - F32(self.half_mm)
        cx, cy, _ = self.caudate.centre
        side = (x - F32(cx)) * F32(self.facing[0]) + (y - F32(cy)) * F32(self.facing[1])
        return np.maximum(layer, -side)


@dataclasses.dataclass
class Hilum:
    """The landmarks of one liver, drawn by :func:`sample_hilum` and painted by :func:`.organs.organ_structures`."""

    #: :class:`Fissure`, :class:`Shell` and hilar fat (:class:`~.fields.Ellipsoid`): signed-distance callables (mm)
    fissures: list
    sheaths: list[Tube]            #: periportal sheath around each intrahepatic portal branch (vessel + sheath)
    portal_branches: list[Tube]
    hepatic_branches: list[Tube]
    ducts: list[Tube]

    def fissure_field(self, block: Block) -> np.ndarray:
        """Signed distance (mm) to the union of the fissures on ``block`` (cached per block)."""
        def compute():
            out = None
            for fissure in self.fissures:
                f = fissure(block.wx, block.wy, block.wz)
                out = f if out is None else np.minimum(out, f)
            return out
        return block.cached("liver_fissures", compute)


def sample_hilum(rng: np.random.Generator, an: Anatomy) -> Hilum:
    """Draw the landmarks of one liver (see the module docstring)."""
    u = rng.uniform
    a, b = an.a, an.b
    ix, iy = an.ivc_xy
    r_pv = float(an.portal[0].radii[0])
    hilum = an.portal[0].points[-1]
    liver_lo_z = float(min(p.bounds()[0][2] for p in an.liver_parts))

    fissures: list = []
    if rng.random() < 0.9:
        t = np.radians(an.section_angles_deg[2] + u(-4.0, 4.0))
        fissures.append(Fissure((ix, iy), (float(np.cos(t)), float(-np.sin(t))), u(1.0, 2.5),
                                u(0.35, 0.6) * b, liver_lo_z + u(0.25, 0.55) * (hilum[2] - liver_lo_z)))
    if rng.random() < 0.7:
        t = np.radians(u(45.0, 85.0))   # in front of the caudate, towards the left lateral section
        fissures.append(Shell(an.liver_parts[2], u(0.5, 2.0), u(0.8, 2.0), (float(np.cos(t)), float(-np.sin(t)))))
    if rng.random() < 0.8:
        fissures.append(Ellipsoid(tuple(hilum), tuple(r_pv * np.array([u(1.6, 3.0), u(1.4, 2.5), u(1.2, 2.0)]))))

    portal_branches = _branches(rng, an.portal[2:], hilum, 4 + int(rng.integers(0, 5)), (0.12 * a, 0.28 * a))
    hepatic_branches = _branches(rng, an.hepatic_veins, hilum, len(an.hepatic_veins), (0.10 * a, 0.22 * a),
                                 one_per_parent=True)
    sheath_hilum_mm, sheath_tip_mm, reach_mm = u(1.0, 3.5), u(0.3, 1.0), u(0.15, 0.35) * a
    sheaths = []
    for tube in [*an.portal[2:], *portal_branches]:
        distance = np.linalg.norm(tube.points - hilum, axis=1)
        extra = sheath_tip_mm + (sheath_hilum_mm - sheath_tip_mm) * np.exp(-distance / reach_mm)
        sheaths.append(Tube(tube.points, tube.radii + extra))
    ducts = []
    if rng.random() < 0.6:
        radius = u(0.8, 2.0)
        for tube in (an.portal[2], an.portal[4]):
            # In front of the branch (the ducts run anterior to the portal veins at the hilum).
            offset = np.zeros_like(tube.points)
            offset[:, 1] = -(tube.radii + sheath_tip_mm + radius + u(0.0, 1.5))
            ducts.append(Tube(tube.points + offset, np.linspace(radius, 0.6 * radius, len(tube.points))))
    return Hilum(fissures, sheaths, portal_branches, hepatic_branches, ducts)


def _branches(rng: np.random.Generator, parents: list[Tube], hilum: np.ndarray, count: int,
              length_mm: tuple[float, float], one_per_parent: bool = False) -> list[Tube]:
    """Side branches leaving ``parents`` at random points, heading away from the hilum, bending once."""
    out = []
    for i in range(count):
        parent = parents[i % len(parents)] if one_per_parent else parents[int(rng.integers(len(parents)))]
        seg = int(rng.integers(len(parent.points) - 1))
        h = float(rng.uniform(0.3, 0.9))
        start = parent.points[seg] + h * (parent.points[seg + 1] - parent.points[seg])
        r_parent = float(parent.radii[seg] + h * (parent.radii[seg + 1] - parent.radii[seg]))
        away = start - hilum
        direction = rng.normal(size=3) + 0.8 * away / max(float(np.linalg.norm(away)), 1e-6)
        direction /= np.linalg.norm(direction)
        length = float(rng.uniform(*length_mm))
        mid = start + 0.5 * length * direction
        bend = rng.normal(size=3)
        bend -= bend.dot(direction) * direction
        end = mid + 0.5 * length * (direction + 0.4 * bend / max(float(np.linalg.norm(bend)), 1e-6))
        r0 = max(0.5 * r_parent, 0.7)
        out.append(Tube([start, mid, end], [r0, max(0.7 * r0, 0.6), max(0.4 * r0, 0.5)]))
    return out
