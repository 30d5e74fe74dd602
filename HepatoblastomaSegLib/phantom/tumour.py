"""Hepatoblastoma: a large lobulated lesion in the liver (sometimes a second one), with its internal structure.

- Size: equivalent-sphere diameter 3-12 cm (triangular, mode 8 cm; at most 70 % of the body's width), so that one
  to four liver sections are involved (PRETEXT I-IV).
- Place: its centre inside the normal liver, in a section drawn with weights right posterior 0.3, right anterior 0.3,
  left medial 0.2, left lateral 0.2. It pushes the organs aside (:class:`~.render.Displacement`: 60-85 % of its
  volume displaces, the rest replaces liver), is wrapped in a thin rim of compressed liver, and in a third of the
  cases bulges out of the liver's contour on one side.
- Shape: the smooth union of 3-7 spheres, with smooth bumps of about 6 % of its radius; kept inside the abdominal
  cavity.
- Inside: heterogeneous viable tumour; necrotic or cystic areas (5-40 % of the volume, mostly central);
  haemorrhage (60 % of cases, up to 12 %); fibrous septa (60 %); calcifications (50 %, clusters of 1-3.5 mm foci).
- A second, smaller lesion (1.5-3.5 cm) in 20 % of the cases.
- Full variety only (:func:`add_calcified_shell`): in 40 % of the cases the primary tumour also has a patchy shell
  of calcification a few millimetres under its surface, around a necrotic centre, with viable tumour outside it.
  Real calcified liver tumours look like this (coarse calcification along the border of the necrotic core), and a
  model that has only seen scattered foci takes the bright ring for the tumour's edge and leaves the viable tumour
  outside it.
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np

from .anatomy import Anatomy
from .body import cavity_field
from .fields import F32, FAR_MM, Block, SmoothNoise, index_range, smooth_min
from .organs import SECTIONS, liver_bounds, liver_field, liver_section
from .render import Structure
from .tissues import Tissue

MIN_DIAMETER_MM, MODE_DIAMETER_MM, MAX_DIAMETER_MM = 30.0, 80.0, 120.0


@dataclasses.dataclass
class Lesion:
    """One tumour nodule; ``field_on(x, y, z)`` (1D axes in mm) is its signed distance on that grid."""

    name: str
    anatomy: Anatomy
    centre: np.ndarray
    lobes: list[tuple[np.ndarray, float]]     # (offset from centre, radius) in mm, before ``scale``
    blend_mm: float
    bumps: SmoothNoise
    bump_mm: float
    scale: float = 1.0
    displace_radius_mm: float = 0.0
    rim_mm: float = 3.0
    bulge_direction: np.ndarray | None = None
    bulge_mm: float = 0.0
    necrosis: tuple[SmoothNoise, float, float] | None = None      # noise, threshold, central weight
    haemorrhage: tuple[SmoothNoise, float] | None = None
    septa: tuple[SmoothNoise, float] | None = None
    calcifications: list[tuple[np.ndarray, float]] = dataclasses.field(default_factory=list)
    shell: CalcifiedShell | None = None
    target_diameter_mm: float = 0.0

    @property
    def radius_mm(self) -> float:
        return float(max(np.linalg.norm(o) * self.scale + r * self.scale for o, r in self.lobes))

    def bounds(self, pad_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius_mm + 2.5 * self.bump_mm + pad_mm
        return self.centre - r, self.centre + r

    def field_on(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm) on the grid of 1D axes (x, y, z), shape (nz, ny, nx)."""
        X, Y, Z = (np.asarray(v, dtype=F32).reshape(s) for v, s in ((x, (1, 1, -1)), (y, (1, -1, 1)), (z, (-1, 1, 1))))
        f = None
        for offset, radius in self.lobes:
            c = self.centre + offset * self.scale
            d = np.sqrt((X - F32(c[0])) ** 2 + (Y - F32(c[1])) ** 2 + (Z - F32(c[2])) ** 2) - F32(radius * self.scale)
            f = d if f is None else smooth_min(f, d, self.blend_mm * self.scale)
        f = f + F32(self.bump_mm * self.scale) * self.bumps(x, y, z)
        # Never outside the abdominal cavity (and so never in the spine or the wall).
        return np.maximum(f, cavity_field(self.anatomy, X, Y, Z) + F32(1.0))

    def field(self, block: Block) -> np.ndarray:
        """Signed distance on a block's plain grid, evaluated only inside the lesion's box (FAR_MM elsewhere)."""
        def compute():
            x, y, z = block.axes
            lo, hi = self.bounds()
            (i0, i1), (j0, j1), (k0, k1) = (index_range(v, lo[n], hi[n]) for n, v in enumerate((x, y, z)))
            out = np.full(block.shape, F32(FAR_MM), dtype=F32)
            if i1 > i0 and j1 > j0 and k1 > k0:
                out[k0:k1, j0:j1, i0:i1] = self.field_on(x[i0:i1], y[j0:j1], z[k0:k1])
            return out
        return block.cached(self.name, compute)

    def rim_field(self, block: Block) -> np.ndarray:
        """The lesion grown by its rim of compressed liver, shrunk where it bulges out of the liver."""
        f = self.field(block)
        out = f - F32(self.rim_mm)
        if self.bulge_direction is None:
            return out
        found = block.sub(*self.bounds(), warped=False)
        if found is None:
            return out
        local, sub = found
        dx, dy, dz = (sub.x - F32(self.centre[0]), sub.y - F32(self.centre[1]), sub.z - F32(self.centre[2]))
        r = np.sqrt(dx * dx + dy * dy + dz * dz) + F32(1e-3)
        u = self.bulge_direction
        cosine = (dx * F32(u[0]) + dy * F32(u[1]) + dz * F32(u[2])) / r
        cap = np.clip((cosine - F32(0.55)) / F32(0.35), 0, 1)
        out[local] += F32(self.bulge_mm + self.rim_mm) * cap
        return out

    def necrosis_field(self, block: Block) -> np.ndarray:
        noise, threshold, central = self.necrosis
        f = self.field(block)
        g = noise(*block.axes) - F32(central) * f / F32(self.radius_mm)
        # Inside a calcified shell only (viable tumour stays outside it); elsewhere up to 2.5 mm from the edge.
        inset = F32(2.5) if self.shell is None else F32(self.shell.depth_mm)
        return np.maximum(f + inset, (F32(threshold) - g) * F32(0.3 * noise.spacing_mm[0]))

    def haemorrhage_field(self, block: Block) -> np.ndarray:
        noise, threshold = self.haemorrhage
        g = noise(*block.axes)
        return np.maximum(self.field(block) + F32(2.0), (F32(threshold) - g) * F32(0.3 * noise.spacing_mm[0]))

    def septa_field(self, block: Block) -> np.ndarray:
        noise, threshold = self.septa
        g = np.abs(noise(*block.axes))
        return np.maximum(self.field(block) + F32(1.5), (g - F32(threshold)) * F32(0.3 * noise.spacing_mm[0]))

    def structures(self, record: str) -> list[Structure]:
        lo, hi = self.bounds()
        out = [Structure(self.name, Tissue.TUMOUR, lo, hi, self.field, warped=False, record=record)]
        if self.septa is not None:
            out.append(Structure(f"{self.name}_septa", Tissue.SEPTUM, lo, hi, self.septa_field, warped=False))
        if self.haemorrhage is not None:
            out.append(Structure(f"{self.name}_haemorrhage", Tissue.HAEMORRHAGE, lo, hi, self.haemorrhage_field,
                                 warped=False))
        if self.necrosis is not None:
            out.append(Structure(f"{self.name}_necrosis", Tissue.NECROSIS, lo, hi, self.necrosis_field, warped=False))
        if self.shell is not None:
            out.append(Structure(f"{self.name}_shell", Tissue.CALCIFICATION, lo, hi,
                                 lambda block: self.shell.field(self.field(block), block), warped=False))
        for i, (centre, radius) in enumerate(self.calcifications):
            out.append(Structure(f"{self.name}_calc{i}", Tissue.CALCIFICATION, centre - radius, centre + radius,
                                 lambda block, c=centre, r=radius: np.sqrt(
                                     (block.x - F32(c[0])) ** 2 + (block.y - F32(c[1])) ** 2 +
                                     (block.z - F32(c[2])) ** 2) - F32(r), warped=False))
        return out


@dataclasses.dataclass
class CalcifiedShell:
    """Calcification in a layer ``depth_mm`` under the lesion's surface, ``half_mm`` thick on either side, kept
    where the smooth noise ``patches`` exceeds ``threshold`` (so it covers part of the surface, in arcs)."""

    depth_mm: float
    half_mm: float
    patches: SmoothNoise
    threshold: float

    def field(self, lesion_field: np.ndarray, block: Block) -> np.ndarray:
        band = np.abs(lesion_field + F32(self.depth_mm)) - F32(self.half_mm)
        patchy = (F32(self.threshold) - self.patches(*block.axes)) * F32(0.3 * self.patches.spacing_mm[0])
        return np.maximum(band, patchy)


#: Full variety: share of primary tumours with a calcified shell.
SHELL_PROBABILITY = 0.4


def add_calcified_shell(rng: np.random.Generator, lesion: Lesion) -> None:
    """Full variety: give ``lesion`` a calcified shell (with :data:`SHELL_PROBABILITY`) 3-15 mm under its surface
    (10-35 % of its radius), 1-3 mm thick, over 30-80 % of it; the necrosis then grows and stays inside the
    shell, as in a calcified, necrotic tumour with viable tumour around it. Draws only from ``rng``."""
    if rng.random() >= SHELL_PROBABILITY:
        return
    r = lesion.radius_mm
    lo, hi = lesion.bounds()
    depth = float(np.clip(rng.uniform(0.10, 0.35) * r, 3.0, 15.0))
    patches = SmoothNoise(rng, lo, hi, max(0.3 * r, 6.0))
    coverage = float(rng.uniform(0.3, 0.8))
    lesion.shell = CalcifiedShell(depth, float(rng.uniform(0.5, 1.5)), patches,
                                  NormalDist().inv_cdf(1.0 - coverage))  # the noise has unit variance
    if lesion.necrosis is not None:
        noise, threshold, central = lesion.necrosis
        lesion.necrosis = (noise, threshold - float(rng.uniform(0.3, 1.0)), central)


def _coarse_axes(lo, hi, step):
    return tuple(np.arange(lo[i], hi[i] + step, step) for i in range(3))


def _pick_point(rng, an: Anatomy, section: int | None, depth_mm: float, step: float = 4.0,
                avoid: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """A random point of the normal liver at least ``depth_mm`` inside it (in ``section`` when given)."""
    lo, hi = liver_bounds(an)
    x, y, z = _coarse_axes(lo, hi, step)
    f = liver_field(an, x[None, None, :].astype(F32), y[None, :, None].astype(F32), z[:, None, None].astype(F32))
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    for depth in (depth_mm, 0.5 * depth_mm, 3.0):
        ok = f < -depth
        if section is not None:
            ok &= liver_section(an, X.astype(F32), Y.astype(F32)) == section
        if avoid is not None:
            ok &= np.sqrt((X - avoid[0][0]) ** 2 + (Y - avoid[0][1]) ** 2 + (Z - avoid[0][2]) ** 2) > avoid[1]
        idx = np.flatnonzero(ok)
        if idx.size:
            k = idx[rng.integers(idx.size)]
            return np.array([X.flat[k], Y.flat[k], Z.flat[k]]) + rng.uniform(-step / 2, step / 2, 3)
    ok = f < 0
    idx = np.flatnonzero(ok)
    k = idx[rng.integers(idx.size)]
    return np.array([X.flat[k], Y.flat[k], Z.flat[k]])


def coarse_sample(lesion: Lesion) -> tuple[float, np.ndarray, tuple]:
    """The lesion on a coarse grid (1-3 mm, a tenth of its radius): (volume in mL, field, axes (x, y, z))."""
    step = float(np.clip(lesion.radius_mm / 10.0, 1.0, 3.0))
    lo, hi = lesion.bounds()
    axes = _coarse_axes(lo, hi, step)
    f = lesion.field_on(*axes)
    return float((f < 0).sum()) * step ** 3 / 1000.0, f, axes


def _make_lesion(rng, an: Anatomy, name: str, centre: np.ndarray, diameter_mm: float, n_lobes: int) -> Lesion:
    r0 = diameter_mm / 2.0
    lobes = [(np.zeros(3), r0)]
    for _ in range(n_lobes - 1):
        direction = rng.normal(size=3)
        direction[2] *= 0.8
        direction /= np.linalg.norm(direction)
        lobes.append((direction * r0 * rng.uniform(0.35, 0.7), r0 * rng.uniform(0.35, 0.7)))
    bumps = SmoothNoise(rng, centre - 2.5 * r0, centre + 2.5 * r0, max(0.45 * r0, 4.0))
    lesion = Lesion(name, an, centre, lobes, 0.25 * r0, bumps, 0.06 * r0, target_diameter_mm=diameter_mm)
    # Scale to the intended volume (lobes overlap and the cavity trims, so measure).
    target_ml = np.pi / 6.0 * diameter_mm ** 3 / 1000.0
    for _ in range(3):
        volume, _, _ = coarse_sample(lesion)
        factor = float(np.clip((target_ml / max(volume, 1e-3)) ** (1 / 3), 0.8, 1.25))
        lesion.scale *= factor
        if abs(factor - 1.0) < 0.02:
            break
    return lesion


def _add_texture(rng, lesion: Lesion, calcified: bool) -> None:
    r = lesion.radius_mm
    lo, hi = lesion.bounds()
    volume, f, axes = coarse_sample(lesion)
    inside = f < 0
    if not inside.any():
        return
    x, y, z = axes

    def threshold(noise: SmoothNoise, fraction: float, central: float = 0.0, absolute: bool = False) -> float:
        g = noise(x, y, z)
        g = np.abs(g) if absolute else g - F32(central) * f / F32(r)
        return float(np.quantile(g[inside], fraction if absolute else 1.0 - fraction))

    nec = SmoothNoise(rng, lo, hi, max(0.35 * r, 5.0))
    central = float(rng.uniform(0.8, 2.0))
    lesion.necrosis = (nec, threshold(nec, rng.uniform(0.05, 0.40), central), central)
    if rng.random() < 0.6:
        hae = SmoothNoise(rng, lo, hi, max(0.25 * r, 4.0))
        lesion.haemorrhage = (hae, threshold(hae, rng.uniform(0.02, 0.12)))
    if rng.random() < 0.6:
        sep = SmoothNoise(rng, lo, hi, max(0.3 * r, 6.0))
        lesion.septa = (sep, threshold(sep, rng.uniform(0.03, 0.06), absolute=True))
    if calcified:
        Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
        deep = np.flatnonzero(f < -min(0.2 * r, 8.0))
        deep = deep if deep.size else np.flatnonzero(inside)
        for _ in range(int(rng.integers(1, 4))):
            k = deep[rng.integers(deep.size)]
            cluster = np.array([X.flat[k], Y.flat[k], Z.flat[k]])
            for _ in range(int(rng.integers(2, 9))):
                lesion.calcifications.append((cluster + rng.normal(0, 4.0, 3), float(rng.uniform(1.0, 3.5))))


def sample_lesions(rng: np.random.Generator, an: Anatomy) -> list[Lesion]:
    """The primary tumour and, in 20 % of cases, a satellite; they are placed in the normal liver."""
    width = 2 * an.a
    diameter = float(rng.triangular(MIN_DIAMETER_MM, MODE_DIAMETER_MM, MAX_DIAMETER_MM))
    diameter = float(np.clip(diameter, MIN_DIAMETER_MM, max(0.7 * width, MIN_DIAMETER_MM)))
    section = int(rng.choice(len(SECTIONS), p=[0.3, 0.3, 0.2, 0.2]))
    centre = _pick_point(rng, an, section, depth_mm=min(0.25 * diameter, 15.0))
    primary = _make_lesion(rng, an, "lesion0", centre, diameter, int(rng.integers(3, 8)))
    primary.displace_radius_mm = diameter / 2 * float(rng.uniform(0.6, 0.85)) ** (1 / 3)
    primary.rim_mm = float(rng.uniform(1.5, 4.0))
    if rng.random() < 0.33:
        direction = rng.normal(size=3)
        primary.bulge_direction = direction / np.linalg.norm(direction)
        primary.bulge_mm = float(rng.uniform(0.1, 0.25) * diameter / 2)
    _add_texture(rng, primary, calcified=rng.random() < 0.5)
    lesions = [primary]
    if rng.random() < 0.2:
        d2 = float(rng.uniform(15.0, 35.0))
        anat = _pick_point(rng, an, None, depth_mm=d2 / 2 + 3.0, avoid=(centre, primary.radius_mm + d2 / 2 + 10.0))
        # Where that liver tissue ends up once the primary has pushed it (inverse of the radial inflation).
        d = anat - centre
        r0 = float(np.linalg.norm(d))
        r = np.cbrt(r0 ** 3 + primary.displace_radius_mm ** 3)
        satellite = _make_lesion(rng, an, "lesion1", centre + d * (r / max(r0, 1e-6)), d2, int(rng.integers(1, 4)))
        satellite.displace_radius_mm = d2 / 2 * 0.6 ** (1 / 3)
        satellite.rim_mm = 2.0
        _add_texture(rng, satellite, calcified=False)
        lesions.append(satellite)
    return lesions


def pretext_group(involved: list[bool]) -> int:
    """PRETEXT group (1-4) from the involvement of the four sections, ordered as :data:`~.organs.SECTIONS`:
    the longest run of adjacent tumour-free sections is 3 (I), 2 (II), 1 (III) or 0 (IV)."""
    longest = run = 0
    for hit in involved:
        run = 0 if hit else run + 1
        longest = max(longest, run)
    return {3: 1, 2: 2, 1: 3, 0: 4}[min(longest, 3)]
