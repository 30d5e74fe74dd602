"""Body wall, thorax and skeleton of the phantom as signed-distance fields (mm; see :mod:`.anatomy`).

Layers from the outside in: skin line and subcutaneous fat, the muscle wall (with the ribs in it above the costal
margin), the abdominal cavity filled with visceral fat, and behind it the spine with the paraspinal muscles. Above
the diaphragm domes the cavity holds the lung bases and the heart.
"""

from __future__ import annotations

import numpy as np

from .anatomy import Anatomy
from .fields import F32, Block, ellipse2d, smooth_max, smooth_min
from .render import Structure
from .tissues import Tissue


def body_field(an: Anatomy, x, y, z) -> np.ndarray:
    """Skin surface: an ellipse flattened at the back (the child lies supine on the table)."""
    outline = ellipse2d(x, y, (an.a, an.b))
    return smooth_max(outline, y - F32(an.y_back), 0.3 * an.b) + F32(0.0) * z


def costal_margin_z(an: Anatomy, x, y) -> np.ndarray:
    """Lowest level of the ribs: low at the sides and back, rising towards the xiphoid."""
    front = np.clip(-y / F32(an.b), 0, 1) * np.clip(F32(1.2) - np.abs(x) / F32(an.a), 0, 1)
    return F32(-0.55 * an.length) + F32(0.35 * an.length) * front


def _rib_zone(an: Anatomy, x, y, z) -> np.ndarray:
    """1 where the wall holds ribs (above the costal margin), 0 below, a 10 mm ramp between."""
    return np.clip((z - costal_margin_z(an, x, y) + F32(10.0)) / F32(10.0), 0, 1)


def inner_wall_depth(an: Anatomy, x, y, z) -> np.ndarray:
    """Depth (mm) of the cavity below the skin: fat + muscle, thicker where ribs are, fatter in front."""
    fat = F32(an.fat_mm) * (F32(1.0) + F32(0.35) * np.clip(-y / F32(an.b), -1, 1))
    extra = max(2 * an.rib_radius + 1.5 - an.muscle_mm, 0.0)
    return fat + F32(an.muscle_mm) + F32(extra) * _rib_zone(an, x, y, z)


def spine_zone(an: Anatomy, x, y, z) -> np.ndarray:
    """Vertebrae and paraspinal muscles: the part of the trunk behind the abdominal cavity."""
    r = an.vb_radius
    body = ellipse2d(x, y - F32(an.vb_y + 0.2 * r), (1.55 * r, 1.35 * r))
    back = ellipse2d(x, y - F32(an.y_back), (3.3 * r, max(an.y_back - an.vb_y, r)))
    return smooth_min(body, back, 0.6 * r) + F32(0.0) * z


def cavity_field(an: Anatomy, x, y, z) -> np.ndarray:
    """The abdominal and thoracic cavity (inside the muscle wall, in front of the spine)."""
    inner = body_field(an, x, y, z) + inner_wall_depth(an, x, y, z)
    return smooth_max(inner, -spine_zone(an, x, y, z), 3.0)


def above_dome(an: Anatomy, x, y, z) -> np.ndarray:
    """Negative above the diaphragm (in the thorax), positive below (mm along z)."""
    return an.dome_z(x, y) - z


def body_on(an: Anatomy, block: Block) -> np.ndarray:
    """:func:`body_field` on a block (computed once per slab)."""
    return block.slab_cached("body", lambda w: body_field(an, w.wx, w.wy, w.wz))


def cavity_on(an: Anatomy, block: Block) -> np.ndarray:
    """:func:`cavity_field` on a block (computed once per slab)."""
    def compute(w: Block):
        inner = body_on(an, w) + inner_wall_depth(an, w.wx, w.wy, w.wz)
        return smooth_max(inner, -spine_zone(an, w.wx, w.wy, w.wz), 3.0)
    return block.slab_cached("cavity", compute)


def dome_on(an: Anatomy, block: Block) -> np.ndarray:
    """:func:`above_dome` on a block (computed once per slab)."""
    return block.slab_cached("dome", lambda w: above_dome(an, w.wx, w.wy, w.wz))


def _vertebral_phase(an: Anatomy, z) -> np.ndarray:
    """Distance (mm) along z from the middle of the nearest vertebral body."""
    p = an.vertebra_pitch
    t = (z / F32(p) + F32(an.vertebra_phase)) % F32(1.0)
    return np.abs(t - F32(0.5)) * F32(p)


def _w(fn):
    """Wrap a field of (anatomy, x, y, z) for the renderer (displaced coordinates)."""
    return lambda an: (lambda block: fn(an, block.wx, block.wy, block.wz))


def early_structures(an: Anatomy) -> list[Structure]:
    """Table, body, wall, cavity, diaphragm, lungs, heart and psoas: painted before the organs."""
    a, b = an.a, an.b
    z_lo, z_hi = an.z_bottom - 20.0, an.z_top + 20.0
    body_lo, body_hi = (-1.05 * a, -1.05 * b, z_lo), (1.05 * a, an.y_back + 1.0, z_hi)
    table_y = an.y_back + 1.5

    def table(block: Block):
        return np.maximum(np.abs(block.y - F32(table_y + 4.0)) - F32(4.0), np.abs(block.x) - F32(1.4 * a)) + \
            F32(0.0) * block.z

    def body(block: Block):
        return body_on(an, block)

    def wall(block: Block):
        return body(block) + F32(an.fat_mm) * (F32(1.0) + F32(0.35) * np.clip(-block.wy / F32(b), -1, 1))

    def cavity(block: Block):
        return cavity_on(an, block)

    thorax_lo = (-a, -b, float(-0.45 * an.length))

    def diaphragm(block: Block):
        return np.maximum(cavity(block), dome_on(an, block))

    def mediastinum(block: Block):
        return ellipse2d(block.wx - F32(0.05 * a), block.wy + F32(0.2 * b), (0.22 * a, 0.62 * b))

    def thorax_inside(block: Block):
        """The thoracic cavity above the diaphragm's 3 mm of muscle."""
        return np.maximum(cavity(block) + F32(1.0), dome_on(an, block) + F32(3.0))

    def mediastinal_fat(block: Block):
        return np.maximum(thorax_inside(block), mediastinum(block))

    def lungs(block: Block):
        return np.maximum(thorax_inside(block), -mediastinum(block))

    def heart(block: Block):
        return np.maximum(an.heart(block.wx, block.wy, block.wz), dome_on(an, block) + F32(1.0))

    structures = [
        Structure("table", Tissue.TABLE, (-1.4 * a, table_y, z_lo), (1.4 * a, table_y + 8.0, z_hi), table,
                  warped=False),
        Structure("body", Tissue.FAT, body_lo, body_hi, body),
        Structure("wall", Tissue.MUSCLE, body_lo, body_hi, wall),
        Structure("cavity", Tissue.VISCERAL_FAT, body_lo, body_hi, cavity),
        Structure("diaphragm", Tissue.MUSCLE, thorax_lo, body_hi, diaphragm),
        Structure("mediastinum", Tissue.VISCERAL_FAT, thorax_lo, body_hi, mediastinal_fat),
        Structure("lungs", Tissue.LUNG, thorax_lo, body_hi, lungs),
        Structure("heart", Tissue.HEART, *an.heart.bounds(), heart),
    ]
    for i, tube in enumerate(an.psoas):
        structures.append(Structure(f"psoas{i}", Tissue.MUSCLE, *tube.bounds(),
                                    lambda block, t=tube: t(block.wx, block.wy, block.wz)))
    return structures


def late_structures(an: Anatomy) -> list[Structure]:
    """Spine and ribs: painted after the organs (they never overlap the cavity)."""
    a, b, r = an.a, an.b, an.vb_radius
    z_lo, z_hi = an.z_bottom - 20.0, an.z_top + 20.0
    y_canal = an.vb_y + 0.85 * r + 0.6 * r
    r_canal = 0.5 * r

    def vertebral_body(block: Block):
        return ellipse2d(block.wx, block.wy - F32(an.vb_y), (r, 0.85 * r)) + F32(0.0) * block.wz

    half_body = 0.36 * an.vertebra_pitch  # half the height of a vertebral body; discs fill the rest

    def marrow(block: Block):
        endplates = _vertebral_phase(an, block.wz) - F32(half_body - 1.2)
        return np.maximum(vertebral_body(block) + F32(1.2), endplates)

    def disc(block: Block):
        return np.maximum(vertebral_body(block) - F32(0.3), F32(half_body) - _vertebral_phase(an, block.wz))

    def arch(block: Block):
        x, y, z = block.wx, block.wy, block.wz
        ring = np.abs(np.sqrt(x * x + (y - F32(y_canal)) ** 2) - F32(r_canal + 0.2 * r)) - F32(0.28 * r)
        spinous = _segment_2d(x, y, (0.0, y_canal + r_canal), (0.0, y_canal + r_canal + 1.3 * r)) - F32(0.22 * r)
        transverse = np.minimum(
            _segment_2d(x, y, (-0.3 * r, y_canal - 0.3 * r), (-1.7 * r, y_canal - 0.4 * r)),
            _segment_2d(x, y, (0.3 * r, y_canal - 0.3 * r), (1.7 * r, y_canal - 0.4 * r))) - F32(0.15 * r)
        # Pedicles and laminae occupy the upper part of each vertebra's height, the processes less of it.
        phase = _vertebral_phase(an, z + F32(0.15 * an.vertebra_pitch))
        ring = np.maximum(ring, phase - F32(0.3 * an.vertebra_pitch))
        processes = np.maximum(np.minimum(spinous, transverse), phase - F32(0.15 * an.vertebra_pitch))
        return np.minimum(ring, processes)

    def canal(block: Block):
        return np.sqrt(block.wx * block.wx + (block.wy - F32(y_canal)) ** 2) - F32(r_canal) + F32(0.0) * block.wz

    def rib_distance(block: Block):
        """Distance (mm) to the nearest rib's centre line, where ribs exist (FAR elsewhere)."""
        def compute():
            x, y, z = block.wx, block.wy, block.wz
            # Radial position relative to the ribs' ring (in the wall) and height above the nearest rib: ribs
            # descend by rib_slope mm per mm as they run forward from the back.
            ring = (body_on(an, block) + F32(an.fat_mm + an.rib_radius + 0.5)) * F32(1.3)
            along = (z + F32(an.rib_slope) * (F32(an.y_back) - y)) % F32(an.rib_pitch) - F32(0.5 * an.rib_pitch)
            d = np.sqrt(ring * ring + (along * F32(0.8)) ** 2)
            d = np.maximum(d, costal_margin_z(an, x, y) - z)
            # No ribs over the sternum, nor behind the paraspinal muscles (they meet the spine deep to them).
            keep_out = np.where(y < an.vb_y, F32(0.15 * a), F32(3.4 * r))
            d = np.maximum(d, keep_out - np.abs(x))
            return np.maximum(d, y - F32(an.y_back - 0.3 * (an.y_back - an.vb_y)))
        return block.cached("ribs", compute)

    def ribs(block: Block, cartilage: bool, core_mm: float = 0.0):
        d = rib_distance(block) - F32(an.rib_radius - core_mm)
        front = block.wy + F32(0.35 * b)
        return np.maximum(d, front if cartilage else -front)

    spine_z_lo = z_lo if an.spine_bottom_z is None else max(z_lo, an.spine_bottom_z)
    spine_lo, spine_hi = (-2.2 * r, an.vb_y - r, spine_z_lo), (2.2 * r, y_canal + 3 * r, z_hi)
    wall_lo, wall_hi = (-1.05 * a, -1.05 * b, -0.62 * an.length), (1.05 * a, an.y_back + 1.0, z_hi)
    return [
        Structure("vertebral_cortex", Tissue.BONE_CORTICAL, spine_lo, spine_hi, vertebral_body),
        Structure("vertebral_marrow", Tissue.BONE_MARROW, spine_lo, spine_hi, marrow),
        Structure("disc", Tissue.DISC, spine_lo, spine_hi, disc),
        Structure("arch", Tissue.BONE_CORTICAL, spine_lo, spine_hi, arch),
        Structure("canal", Tissue.CSF, spine_lo, spine_hi, canal),
        Structure("ribs", Tissue.BONE_CORTICAL, wall_lo, wall_hi, lambda block: ribs(block, False)),
        Structure("rib_marrow", Tissue.BONE_MARROW, wall_lo, wall_hi, lambda block: ribs(block, False, 0.8)),
        Structure("costal_cartilage", Tissue.CARTILAGE, wall_lo, wall_hi, lambda block: ribs(block, True)),
    ]


def _segment_2d(x, y, p, q) -> np.ndarray:
    """In-plane distance (mm) to the segment p-q."""
    px, py = F32(p[0]), F32(p[1])
    qx, qy = F32(q[0] - p[0]), F32(q[1] - p[1])
    h = np.clip(((x - px) * qx + (y - py) * qy) / F32(qx * qx + qy * qy), 0, 1)
    dx, dy = x - px - qx * h, y - py - qy * h
    return np.sqrt(dx * dx + dy * dy)
