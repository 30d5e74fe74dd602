"""Abdominal organs and vessels of the phantom as signed-distance fields (mm; see :mod:`.anatomy`).

The liver is the union of a right lobe, a left lobe and the caudate lobe, trimmed by the right hemidiaphragm and the
abdominal wall, indented by the right kidney and the stomach, with the gallbladder and the intrahepatic IVC cut out;
:func:`calibrate_liver` scales it to the child's normal liver volume. Its four sections (PRETEXT's right posterior,
right anterior, left medial and left lateral) are sectors around the IVC bounded by the planes of the right and
middle hepatic veins and the umbilical fissure (:func:`liver_section`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .anatomy import Anatomy
from .body import above_dome, cavity_field, cavity_on, dome_on
from .fields import F32, Block, Ellipsoid, ellipse2d, field_in_parts, smooth_min
from .render import Structure
from .tissues import Tissue

#: PRETEXT sections in anatomical order (right to left): a tumour-free run of them decides the PRETEXT group.
SECTIONS = ("right_posterior", "right_anterior", "left_medial", "left_lateral")


def ivc_field(an: Anatomy, x, y, z) -> np.ndarray:
    ix, iy = an.ivc_xy
    return ellipse2d(x - F32(ix), y - F32(iy), an.ivc_radii_xy) + F32(0.0) * z


def stomach_field(an: Anatomy, x, y, z) -> np.ndarray:
    f = an.stomach[0](x, y, z)
    for part in an.stomach[1:]:
        f = smooth_min(f, part(x, y, z), 0.08 * an.a)
    return np.maximum(f, F32(4.0) - above_dome(an, x, y, z))


def liver_parts_field(an: Anatomy, x, y, z) -> np.ndarray:
    f = an.liver_parts[0](x, y, z)
    for part in an.liver_parts[1:]:
        f = smooth_min(f, part(x, y, z), an.liver_blend)
    return f


def liver_field(an: Anatomy, x, y, z) -> np.ndarray:
    """The normal liver (mm, negative inside), trimmed by its neighbours."""
    f = liver_parts_field(an, x, y, z)
    f = np.maximum(f, F32(3.0) - above_dome(an, x, y, z))
    f = np.maximum(f, cavity_field(an, x, y, z) + F32(1.5))
    f = np.maximum(f, F32(1.5) - an.kidneys[0](x, y, z))
    f = np.maximum(f, F32(2.0) - stomach_field(an, x, y, z))
    f = np.maximum(f, -ivc_field(an, x, y, z))
    return np.maximum(f, F32(0.5) - an.gallbladder(x, y, z))


def liver_on(an: Anatomy, block: Block) -> np.ndarray:
    """:func:`liver_field` on a block: the shared fields come from the slab's cache and the neighbours that
    indent the liver are evaluated only where they are."""
    def compute():
        f = liver_parts_field(an, block.wx, block.wy, block.wz)
        f = np.maximum(f, F32(3.0) - dome_on(an, block))
        f = np.maximum(f, cavity_on(an, block) + F32(1.5))
        cutters = [(*an.kidneys[0].bounds(1.5), lambda x, y, z: an.kidneys[0](x, y, z) - F32(1.5)),
                   (*_stomach_bounds(an, 2.0), lambda x, y, z: stomach_field(an, x, y, z) - F32(2.0)),
                   (*an.ivc.bounds(pad_mm=an.ivc_radii_xy[0]), lambda x, y, z: ivc_field(an, x, y, z)),
                   (*an.gallbladder.bounds(0.5), lambda x, y, z: an.gallbladder(x, y, z) - F32(0.5))]
        for lo, hi, fn in cutters:
            found = block.sub(lo, hi)
            if found is not None:
                local, sub = found
                np.maximum(f[local], -fn(sub.wx, sub.wy, sub.wz), out=f[local])
        return f
    return block.cached("liver_normal", compute)


def _stomach_bounds(an: Anatomy, pad_mm: float = 0.0):
    bounds = [p.bounds(pad_mm) for p in an.stomach]
    return np.min([b[0] for b in bounds], axis=0), np.max([b[1] for b in bounds], axis=0)


def liver_bounds(an: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    bounds = [part.bounds() for part in an.liver_parts]
    return np.min([b[0] for b in bounds], axis=0), np.max([b[1] for b in bounds], axis=0)


def liver_volume_ml(an: Anatomy, step_mm: float = 3.0) -> float:
    """Volume of the normal liver, counted on a grid of ``step_mm``."""
    lo, hi = liver_bounds(an)
    x, y, z = (np.arange(lo[i], hi[i] + step_mm, step_mm, dtype=F32) for i in range(3))
    f = liver_field(an, x[None, None, :], y[None, :, None], z[:, None, None])
    return float((f < 0).sum()) * step_mm ** 3 / 1000.0


def calibrate_liver(an: Anatomy, target_ml: float) -> float:
    """Scale the liver lobes about the top of the liver so that its volume is near ``target_ml``; returns the
    volume reached (mL). At most five steps of x0.8-1.25 (the cavity bounds the liver)."""
    anchor = (-0.25 * an.a, -0.1 * an.b, 0.0)
    volume = liver_volume_ml(an)
    for _ in range(5):
        factor = float(np.clip((target_ml / max(volume, 1.0)) ** (1 / 3), 0.8, 1.25))
        an.liver_parts = [part.scaled(factor, anchor) for part in an.liver_parts]
        an.liver_blend *= factor
        volume = liver_volume_ml(an)
        if abs(volume / target_ml - 1) < 0.03:
            break
    return volume


def liver_section(an: Anatomy, x, y) -> np.ndarray:
    """Index into :data:`SECTIONS` of each position, by its angle around the IVC (degrees, 90 = straight ahead)."""
    ix, iy = an.ivc_xy
    angle = np.degrees(np.arctan2(-(y - F32(iy)), x - F32(ix)))
    angle = np.where(angle < -90, angle + 360, angle)  # -90 (straight back) .. 270
    rhv, mhv, uf = an.section_angles_deg
    return np.where(angle > rhv, 0, np.where(angle > mhv, 1, np.where(angle > uf, 2, 3))).astype(np.int8)


def _on(fn):
    return lambda block: fn(block.wx, block.wy, block.wz)


def _tube(tube):
    return lambda block: tube.on(block)


def organ_structures(an: Anatomy, lesions: Sequence = (), hilum: Hilum | None = None) -> list[Structure]:
    """Kidneys, spleen, stomach, bowel, pancreas, vessels, liver and gallbladder, in painting order.

    The liver (recorded as "liver": the liver mask) is the normal liver, pushed aside by the ``lesions``, united
    with each lesion grown by its rim of compressed liver (:meth:`~.tumour.Lesion.rim_field`). ``hilum`` (full
    variety): fissures cut from the liver, periportal sheaths, bile ducts and smaller branches (:mod:`.hilum`).
    """
    s: list[Structure] = []
    a = an.a

    # Kidneys: cortex, medulla, sinus fat, pelvis.
    for i, (kidney, sinus) in enumerate(zip(an.kidneys, an.kidney_sinus, strict=True)):
        cortex_mm = 0.28 * min(kidney.radii)
        pelvis = Ellipsoid(sinus.centre, tuple(0.55 * np.asarray(sinus.radii)), sinus.rotation)
        lo, hi = kidney.bounds()
        s += [Structure(f"kidney{i}", Tissue.KIDNEY_CORTEX, lo, hi, _on(kidney)),
              Structure(f"medulla{i}", Tissue.KIDNEY_MEDULLA, lo, hi,
                        lambda block, k=kidney, c=cortex_mm: k(block.wx, block.wy, block.wz) + F32(c)),
              Structure(f"sinus{i}", Tissue.RENAL_SINUS, *sinus.bounds(), _on(sinus)),
              Structure(f"pelvis{i}", Tissue.URINE, *pelvis.bounds(), _on(pelvis))]

    def spleen(block: Block):
        f = an.spleen(block.wx, block.wy, block.wz)
        return np.maximum(f, F32(4.0) - dome_on(an, block))

    s.append(Structure("spleen", Tissue.SPLEEN, *an.spleen.bounds(), spleen))

    # Stomach: wall, contents, gas in front (the child is supine).
    st_lo, st_hi = _stomach_bounds(an)

    def stomach(block: Block):
        def compute():
            f = an.stomach[0](block.wx, block.wy, block.wz)
            for part in an.stomach[1:]:
                f = smooth_min(f, part(block.wx, block.wy, block.wz), 0.08 * an.a)
            return np.maximum(f, F32(4.0) - dome_on(an, block))
        return block.cached("stomach", compute)

    s += [Structure("stomach_wall", Tissue.STOMACH_WALL, st_lo, st_hi, stomach),
          Structure("stomach_content", Tissue.STOMACH_CONTENT, st_lo, st_hi,
                    lambda block: stomach(block) + F32(an.stomach_wall_mm)),
          Structure("stomach_gas", Tissue.GAS, st_lo, st_hi,
                    lambda block: np.maximum(stomach(block) + F32(an.stomach_wall_mm),
                                             block.wy - F32(an.stomach_gas_y)))]

    # Bowel: colon with stool, small-bowel loops with fluid, gas or both (gas in front).
    for i, (tube, content, gas_y) in enumerate(zip([an.colon, *an.small_bowel], an.bowel_content, an.bowel_gas_y,
                                                   strict=True)):
        lo, hi = tube.bounds()
        key = f"bowel{i}"

        def loop(block: Block, t=tube, k=key):
            return block.cached(k, lambda: t.on(block))

        def lumen(block: Block, loop=loop):
            return loop(block) + F32(an.bowel_wall_mm)

        s.append(Structure(f"{key}_wall", Tissue.BOWEL_WALL, lo, hi, loop))
        tissue = {"stool": Tissue.STOOL, "gas": Tissue.GAS, "contrast": Tissue.ORAL_CONTRAST}.get(
            content, Tissue.BOWEL_FLUID)
        s.append(Structure(f"{key}_lumen", tissue, lo, hi, lumen))
        if content == "mixed":
            s.append(Structure(f"{key}_gas", Tissue.GAS, lo, hi,
                               lambda block, lumen=lumen, g=gas_y: np.maximum(lumen(block), block.wy - F32(g))))

    s.append(Structure("pancreas", Tissue.PANCREAS, *an.pancreas.bounds(), _tube(an.pancreas)))
    s.append(Structure("splenic_vein", Tissue.PORTAL_VEIN, *an.splenic_vein.bounds(), _tube(an.splenic_vein)))
    for i, tube in enumerate(an.portal[:2]):
        s.append(Structure(f"portal{i}", Tissue.PORTAL_VEIN, *tube.bounds(), _tube(tube)))
    s.append(Structure("aorta", Tissue.AORTA, *an.aorta.bounds(), _on(an.aorta)))
    ivc_lo, ivc_hi = an.ivc.bounds(pad_mm=0.3 * a)
    s.append(Structure("ivc", Tissue.IVC, ivc_lo, ivc_hi, lambda block: ivc_field(an, block.wx, block.wy, block.wz)))

    # Liver, then its vessels (clipped to it) and the gallbladder in its fossa.
    lv_lo, lv_hi = liver_bounds(an)

    def liver(block: Block):
        f = liver_on(an, block)
        if hilum is not None and hilum.fissures:
            f = np.maximum(f, -hilum.fissure_field(block))
        for lesion in lesions:
            f = np.minimum(f, lesion.rim_field(block))
        return f

    envelope_lo = np.min([lv_lo, *(lesion.bounds(pad_mm=lesion.rim_mm)[0] for lesion in lesions)], axis=0)
    envelope_hi = np.max([lv_hi, *(lesion.bounds(pad_mm=lesion.rim_mm)[1] for lesion in lesions)], axis=0)
    s.append(Structure("liver", Tissue.LIVER, envelope_lo, envelope_hi, liver, record="liver"))
    # Intrahepatic vessels share the liver's box, so the normal liver's field is computed once for all of them.
    portal, hepatic, inner = an.portal[2:], an.hepatic_veins, []
    if hilum is not None:
        portal, hepatic = [*portal, *hilum.portal_branches], [*hepatic, *hilum.hepatic_branches]
        inner = [("liver_periportal", Tissue.PERIPORTAL, hilum.sheaths)]
    for name, tissue, tubes in (*inner, ("liver_portal", Tissue.PORTAL_VEIN, portal),
                                ("liver_hepatic", Tissue.HEPATIC_VEIN, hepatic)):
        parts = [part for tube in tubes for part in tube.segments()]
        s.append(Structure(name, tissue, envelope_lo, envelope_hi,
                           lambda block, parts=parts: np.maximum(field_in_parts(block, parts), liver_on(an, block))))

    def gallbladder(block: Block):
        return np.maximum(an.gallbladder(block.wx, block.wy, block.wz), cavity_on(an, block) + F32(1.0))

    if hilum is not None and hilum.ducts:
        parts = [part for tube in hilum.ducts for part in tube.segments()]
        s.append(Structure("bile_ducts", Tissue.BILE_DUCT, envelope_lo, envelope_hi,
                           lambda block: np.maximum(field_in_parts(block, parts), liver_on(an, block))))
    s.append(Structure("gallbladder", Tissue.GALLBLADDER, *an.gallbladder.bounds(), gallbladder))
    return s
