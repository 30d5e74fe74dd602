"""Painting implicit structures onto a voxel grid, slab by slab, with partial-volume averaging.

The image grid (what is written to disk) is not where the anatomy is evaluated. The *model grid* takes every
``factor``-th image voxel in-plane (a full-size 512x512 CT is modelled at 257x257) and, along z, either ``sub``
thin sub-slices per thick image slice or every ``zfactor``-th thin slice (about 2.5 mm apart either way).
Structures are painted on the model grid in order (later ones cover earlier ones), each with a partial-volume
occupancy ``clip(0.5 - field / width, 0, 1)``; then sub-slices are averaged (the slice profile of a thick slice),
skipped slices interpolated, and the result is interpolated linearly to the image grid in-plane (the blur of a
reconstruction kernel). Fields that masks are made of (liver, each tumour lesion) are carried along the same way
and thresholded at 0 on the image grid, so masks and image agree to within the blur.

Each structure is evaluated only inside its bounding box, grown by how far the tumour can have pushed it
(:class:`Displacement`). Work proceeds in slabs of image slices, so temporaries stay small (fresh allocations of
hundreds of MB cost more than the arithmetic on this kind of machine) and slabs can run in parallel threads
(numpy releases the GIL); the result does not depend on the number of threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from .fields import F32, Block, index_range, occupancy, upsample_linear, upsample_nearest


@dataclasses.dataclass
class Structure:
    """One anatomical structure: a tissue, a bounding box and a signed-distance field.

    ``lo_mm``/``hi_mm`` bound the structure in anatomical coordinates (x, y, z), ``field(block)`` returns the signed
    distance (mm) on a block. ``warped``: evaluated on the displaced coordinates (pushed aside by the tumour);
    the tumour itself and the table are not. ``record``: keep the field under this name for masks.
    """

    name: str
    tissue: int
    lo_mm: Sequence[float]
    hi_mm: Sequence[float]
    field: Callable[[Block], np.ndarray]
    warped: bool = True
    record: str | None = None


class Displacement:
    """Organs pushed aside by expanding lesions: a tapered, radial, volume-preserving inflation.

    A lesion of displacing radius R centred at c inserts a ball of radius R; tissue at distance r from c came from
    distance (r^3 - R^3)^(1/3) (incompressible tissue), tapered to no displacement beyond ``taper`` x R and near the
    spine (the skeleton does not move). :meth:`source` maps image positions to anatomical positions.
    """

    def __init__(self, lesions: Sequence[tuple[Sequence[float], float]], spine_xy_mm: Sequence[float],
                 spine_radius_mm: float, taper: float = 3.0):
        self.lesions = [(np.asarray(c, dtype=float), float(r)) for c, r in lesions if r > 0]
        self.spine_xy = np.asarray(spine_xy_mm, dtype=float)
        self.spine_radius = float(spine_radius_mm)
        self.taper = taper

    def box(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Image-space box outside which nothing moves."""
        if not self.lesions:
            return None
        lo = np.min([c - self.taper * r for c, r in self.lesions], axis=0)
        hi = np.max([c + self.taper * r for c, r in self.lesions], axis=0)
        return lo, hi

    def margins_mm(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How far tissue from the anatomical box lo..hi can have moved, towards lower and higher coordinates
        (mm per axis). Tissue at distance d from a lesion's centre moves outwards by at most
        (d^3 + R^3)^(1/3) - d (less where the displacement is tapered), so a box only grows away from the centre."""
        grow_lo, grow_hi = np.zeros(3), np.zeros(3)
        for c, r in self.lesions:
            distance = float(np.linalg.norm(np.maximum(np.maximum(lo - c, c - hi), 0.0)))
            if distance >= self.taper * r:
                continue
            shift = float(np.cbrt(distance ** 3 + r ** 3)) - distance
            grow_hi += np.where(hi > c, shift, 0.0)
            grow_lo += np.where(lo < c, shift, 0.0)
        return grow_lo, grow_hi

    def source(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomical coordinates of image positions (broadcast arrays in, full 3D float32 arrays out)."""
        shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
        px = np.broadcast_to(x, shape).astype(F32)
        py = np.broadcast_to(y, shape).astype(F32)
        pz = np.broadcast_to(z, shape).astype(F32)
        ds = np.sqrt((px - F32(self.spine_xy[0])) ** 2 + (py - F32(self.spine_xy[1])) ** 2)
        # Tissue within one spine radius does not move; full movement from 2.5 radii out.
        spine_weight = np.clip((ds - F32(self.spine_radius)) / F32(1.5 * self.spine_radius), 0, 1)
        spine_weight = spine_weight * spine_weight * (F32(3) - F32(2) * spine_weight)
        for c, radius in self.lesions:
            dx, dy, dz = px - F32(c[0]), py - F32(c[1]), pz - F32(c[2])
            r = np.sqrt(dx * dx + dy * dy + dz * dz) + F32(1e-3)
            r0 = np.cbrt(np.maximum(r * r * r - F32(radius ** 3), F32(0)))
            reach = F32(self.taper * radius)
            taper = np.clip((reach - r) / (reach - F32(radius)), F32(0), F32(1))
            # scale < 1 moves the sample point towards the lesion centre: tissue found here came from closer in.
            scale = F32(1) + (r0 / r - F32(1)) * taper * taper * spine_weight
            px = F32(c[0]) + dx * scale
            py = F32(c[1]) + dy * scale
            pz = F32(c[2]) + dz * scale
        return px, py, pz


@dataclasses.dataclass
class ModelGrid:
    """The image grid's axes and the coarser model grid derived from them (see module docstring).

    In-plane the model grid takes every ``factor``-th image voxel. Along z it takes every ``zfactor``-th image slice
    (thin slices; the image is then interpolated) or ``sub`` sub-slices per image slice (thick slices; the image is
    their average). One of ``zfactor``, ``sub`` is 1.
    """

    x_img: np.ndarray
    y_img: np.ndarray
    z_img: np.ndarray
    factor: int
    sub: int = 1
    zfactor: int = 1

    def __post_init__(self):
        if self.sub > 1 and self.zfactor > 1:
            raise ValueError("a model grid has sub-slices or skips slices, not both")
        f = self.factor
        step_x = float(self.x_img[1] - self.x_img[0])
        step_y = float(self.y_img[1] - self.y_img[0])
        nx_m = int(np.ceil((self.x_img.size - 1) / f)) + 1
        ny_m = int(np.ceil((self.y_img.size - 1) / f)) + 1
        self.x = self.x_img[0] + f * step_x * np.arange(nx_m)
        self.y = self.y_img[0] + f * step_y * np.arange(ny_m)
        thickness = float(self.z_img[1] - self.z_img[0]) if self.z_img.size > 1 else 1.0
        if self.sub > 1:
            offsets = ((np.arange(self.sub) + 0.5) / self.sub - 0.5) * thickness
            self.z = (self.z_img[:, None] + offsets[None, :]).ravel()
            step_z = thickness / self.sub
        else:
            n_rows = int(np.ceil((self.z_img.size - 1) / self.zfactor)) + 1
            self.z = self.z_img[0] + self.zfactor * thickness * np.arange(n_rows)
            step_z = thickness * self.zfactor
        self.spacing_mm = (f * step_x, f * step_y, step_z)

    @property
    def pv_width_mm(self) -> float:
        """Width of the partial-volume ramp: the model grid's in-plane spacing."""
        return float(max(self.spacing_mm[0], self.spacing_mm[1]))

    def rows(self, k_first: int, k_last: int) -> tuple[int, int]:
        """Model rows needed for image slices ``k_first`` .. ``k_last - 1`` (k_first a multiple of zfactor)."""
        if self.sub > 1:
            return k_first * self.sub, k_last * self.sub
        return k_first // self.zfactor, -(-(k_last - 1) // self.zfactor) + 1

    def rows_to_slices(self, r0: int, r1: int) -> tuple[int, int]:
        """Image slices (relative to the slab) covered by the slab's model rows r0 .. r1 - 1."""
        if self.sub > 1:
            return r0 // self.sub, r1 // self.sub
        return r0 * self.zfactor, (r1 - 1) * self.zfactor + 1


@dataclasses.dataclass
class SlabResult:
    """One slab rendered: image slices at the model grid's in-plane resolution, fields on the image grid."""

    image: np.ndarray                  #: (nk, ny_m, nx_m) float32 intensity before noise (see Renderer.inplane)
    labels: np.ndarray                 #: (nk, ny_m, nx_m) uint8 tissue labels
    fields: dict                       #: record name -> (image box (slice z, y, x) within the slab, field array)
    model_fields: dict                 #: record name -> (Block on the model grid, field array)


class _Slab:
    """The context of one slab: its coordinates, displaced coordinates, caches and box arithmetic."""

    def __init__(self, renderer: Renderer, z0: int, z1: int):
        """Model rows z0 .. z1 - 1."""
        g = renderer.grid
        self.renderer = renderer
        self.z0, self.z1 = z0, z1
        self.x = g.x.astype(F32)[None, None, :]
        self.y = g.y.astype(F32)[None, :, None]
        self.z = g.z[z0:z1].astype(F32)[:, None, None]
        self.shape = (z1 - z0, g.y.size, g.x.size)
        self.cache: dict = {}
        self.warp_box = None
        self.warped = None
        if renderer.warp_box is not None:
            lo, hi = renderer.warp_box
            box = self._index_box(lo, hi, align=False)
            if box is not None:
                self.warp_box = box
                full = [np.empty(self.shape, dtype=F32) for _ in range(3)]
                for array, axis in zip(full, (self.x, self.y, self.z), strict=True):
                    array[...] = axis
                inner = renderer.displacement.source(self.x[:, :, box[2]], self.y[:, box[1], :], self.z[box[0], :, :])
                for array, part in zip(full, inner, strict=True):
                    array[box] = part
                self.warped = full

    def _index_box(self, lo, hi, align: bool = True):
        g = self.renderer.grid
        x0, x1 = index_range(g.x, lo[0], hi[0])
        y0, y1 = index_range(g.y, lo[1], hi[1])
        k0, k1 = index_range(g.z[self.z0:self.z1], lo[2], hi[2])
        if x1 <= x0 or y1 <= y0 or k1 <= k0:
            return None
        if align:
            # Whole groups of sub-slices, so that every image slice of a recorded field is a complete average.
            k0 = (k0 // g.sub) * g.sub
            k1 = min(-(-k1 // g.sub) * g.sub, self.z1 - self.z0)
        return slice(k0, k1), slice(y0, y1), slice(x0, x1)

    def locate(self, lo_mm, hi_mm, warped: bool = True):
        """Index box (within the slab) where tissue from the anatomical box lo..hi can lie, or None."""
        lo, hi = np.asarray(lo_mm, dtype=float), np.asarray(hi_mm, dtype=float)
        pad = self.renderer.grid.pv_width_mm
        if warped and self.renderer.displacement is not None:
            grow_lo, grow_hi = self.renderer.displacement.margins_mm(lo, hi)
            return self._index_box(lo - pad - grow_lo, hi + pad + grow_hi)
        return self._index_box(lo - pad, hi + pad)

    def block(self, box, warped: bool = True) -> Block:
        bx, by, bz = self.x[:, :, box[2]], self.y[:, box[1], :], self.z[box[0], :, :]
        if warped and self.warped is not None and _overlaps(box, self.warp_box):
            wx, wy, wz = (w[box] for w in self.warped)
        else:
            wx, wy, wz = bx, by, bz
        return Block(bx, by, bz, wx, wy, wz, box, self)

    def whole_block(self) -> Block:
        return self.block((slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2])))


def _overlaps(a, b) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b, strict=True))


class Renderer:
    """Paints ``structures`` in order with intensities from ``value(tissue, block)``."""

    def __init__(self, grid: ModelGrid, structures: Sequence[Structure],
                 value: Callable[[int, Block], float | np.ndarray], background: float,
                 displacement: Displacement | None):
        self.grid = grid
        self.structures = list(structures)
        self.value = value
        self.background = float(background)
        self.displacement = displacement
        self.warp_box = displacement.box() if displacement is not None else None

    def render_slab(self, k_first: int, k_last: int) -> SlabResult:
        """Render image slices ``k_first`` .. ``k_last - 1``."""
        g = self.grid
        slab = _Slab(self, *g.rows(k_first, k_last))
        image = np.full(slab.shape, self.background, dtype=F32)
        labels = np.zeros(slab.shape, dtype=np.uint8)
        model_fields = {}
        for structure in self.structures:
            box = slab.locate(structure.lo_mm, structure.hi_mm, structure.warped)
            if box is None:
                continue
            block = slab.block(box, structure.warped)
            field = np.broadcast_to(structure.field(block), block.shape)
            target = image[box]
            value = self.value(structure.tissue, block)
            target += occupancy(field, g.pv_width_mm) * (value - target)
            np.putmask(labels[box], field < 0, np.uint8(structure.tissue))
            if structure.record:
                model_fields[structure.record] = (block, field)
        return self._to_image_grid(image, labels, model_fields, k_last - k_first)

    def inplane(self, array: np.ndarray, linear: bool = True) -> np.ndarray:
        """Model-grid slices (nk, ny_m, nx_m) -> image-grid slices (nk, ny, nx): linear (intensities) or nearest
        (labels). Call it on a few slices at a time: full-size slabs would make temporaries of hundreds of MB."""
        g = self.grid
        nx, ny = g.x_img.size, g.y_img.size
        if not linear:
            return upsample_nearest(upsample_nearest(array, g.factor, 2, nx), g.factor, 1, ny)
        if g.factor == 2:
            return _upsample2_inplane(array, ny, nx)
        return upsample_linear(upsample_linear(array, g.factor, 2, nx), g.factor, 1, ny)

    def _to_image_grid(self, image, labels, model_fields, n_slices) -> SlabResult:
        g = self.grid
        nx, ny = g.x_img.size, g.y_img.size
        image = self._to_slices(image, n_slices, linear=True)
        labels = self._to_slices(labels, n_slices, linear=False)
        fields = {}
        for name, (block, field) in model_fields.items():
            bz, by, bx = block.box
            k0, k1 = g.rows_to_slices(bz.start, bz.stop)
            k1 = min(k1, n_slices)
            lx = min(nx - g.factor * bx.start, g.factor * (bx.stop - bx.start - 1) + 1)
            ly = min(ny - g.factor * by.start, g.factor * (by.stop - by.start - 1) + 1)
            if k1 <= k0 or lx <= 0 or ly <= 0:
                # The field's rows lie past this slab's last image slice (or its columns past the image's edge):
                # nothing of it reaches the image here, and an empty box would break the masks drawn on it.
                continue
            reduced = self._to_slices(np.ascontiguousarray(field), k1 - k0, linear=True)
            up = upsample_linear(upsample_linear(reduced, g.factor, 2, lx), g.factor, 1, ly)
            box = (slice(k0, k1), slice(g.factor * by.start, g.factor * by.start + ly),
                   slice(g.factor * bx.start, g.factor * bx.start + lx))
            fields[name] = (box, up)
        return SlabResult(np.ascontiguousarray(image), np.ascontiguousarray(labels), fields, model_fields)

    def _to_slices(self, array: np.ndarray, n_slices: int, linear: bool) -> np.ndarray:
        """Model rows -> image slices: average sub-slices, or interpolate skipped slices."""
        g = self.grid
        if g.sub > 1:
            if not linear:
                return array[g.sub // 2::g.sub]
            nk = array.shape[0] // g.sub
            return array.reshape(nk, g.sub, *array.shape[1:]).mean(axis=1, dtype=F32)
        if linear:
            return upsample_linear(array, g.zfactor, 0, n_slices)
        return upsample_nearest(array, g.zfactor, 0, n_slices)


def _upsample2_inplane(a: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Bilinear upsampling by 2 in y and x in one pass over four interleaved quarters."""
    nk, my, mx = a.shape
    out = np.empty((nk, 2 * my - 1, 2 * mx - 1), dtype=F32)
    out[:, 0::2, 0::2] = a
    horizontal = a[:, :, :-1] + a[:, :, 1:]
    out[:, 0::2, 1::2] = horizontal * F32(0.5)
    out[:, 1::2, 0::2] = (a[:, :-1, :] + a[:, 1:, :]) * F32(0.5)
    out[:, 1::2, 1::2] = (horizontal[:, :-1, :] + horizontal[:, 1:, :]) * F32(0.25)
    if out.shape[1] >= ny and out.shape[2] >= nx:
        return out[:, :ny, :nx]
    return np.pad(out, ((0, 0), (0, max(ny - out.shape[1], 0)), (0, max(nx - out.shape[2], 0))),
                  mode="edge")[:, :ny, :nx]
