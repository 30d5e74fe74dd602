"""Shapes as signed-distance fields, smooth random fields, and the grid blocks they are evaluated on.

Every anatomical structure of the phantom is an implicit surface: a function of position (mm, LPS) that is negative
inside, positive outside and close to the signed distance to the surface near it, so that

- a mask is ``field < 0``, the same test on every grid (the generator and the annotators agree by construction);
- partial-volume anti-aliasing is ``clip(0.5 - field / width, 0, 1)`` (box filter along the surface normal);
- an annotator who draws the boundary ``d`` mm further out marks ``field < d``.

Arrays follow the library's ``[z, y, x]`` order; coordinates passed to the primitives are arrays that broadcast to a
block's shape (1D axes reshaped, or full 3D arrays of displaced coordinates). All arithmetic is float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

F32 = np.float32
#: A field value that means "far outside" (mm).
FAR_MM = 1.0e4


def ellipsoid(px, py, pz, radii: Sequence[float]) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid centred at the origin of (px, py, pz).

    Exact on the surface and along the axes, within a few percent elsewhere near the surface (the quotient of the
    normalised radius and its gradient). Finite at the centre (about minus the smallest radius).
    """
    rx, ry, rz = (float(r) for r in radii)
    qx, qy, qz = px / F32(rx), py / F32(ry), pz / F32(rz)
    k0 = np.sqrt(qx * qx + qy * qy + qz * qz)
    k1 = np.sqrt((qx / F32(rx)) ** 2 + (qy / F32(ry)) ** 2 + (qz / F32(rz)) ** 2)
    eps = F32(1e-6)
    return ((k0 - F32(1.0)) * (k0 + eps) / (k1 + eps / F32(min(radii)))).astype(F32, copy=False)


def ellipse2d(px, py, radii: Sequence[float]) -> np.ndarray:
    """The 2D version of :func:`ellipsoid`: an elliptic cylinder along z."""
    rx, ry = (float(r) for r in radii)
    qx, qy = px / F32(rx), py / F32(ry)
    k0 = np.sqrt(qx * qx + qy * qy)
    k1 = np.sqrt((qx / F32(rx)) ** 2 + (qy / F32(ry)) ** 2)
    eps = F32(1e-6)
    return ((k0 - F32(1.0)) * (k0 + eps) / (k1 + eps / F32(min(radii)))).astype(F32, copy=False)


def capsule(px, py, pz, a: Sequence[float], b: Sequence[float], radius_a: float, radius_b: float) -> np.ndarray:
    """Signed distance (mm) to a tube from point ``a`` to ``b`` whose radius changes linearly from a to b."""
    ax, ay, az = (F32(v) for v in a)
    bax, bay, baz = (F32(float(v) - float(w)) for v, w in zip(b, a, strict=True))
    length2 = F32(max(float(bax * bax + bay * bay + baz * baz), 1e-9))
    pax, pay, paz = px - ax, py - ay, pz - az
    h = np.clip((pax * bax + pay * bay + paz * baz) / length2, F32(0.0), F32(1.0))
    dx, dy, dz = pax - bax * h, pay - bay * h, paz - baz * h
    radius = F32(radius_a) + F32(radius_b - radius_a) * h
    return np.sqrt(dx * dx + dy * dy + dz * dz) - radius


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two shapes with a fillet of about ``k`` mm (polynomial smooth minimum)."""
    if k <= 0:
        return np.minimum(a, b)
    k = F32(k)
    h = np.clip(F32(0.5) + F32(0.5) * (b - a) / k, F32(0.0), F32(1.0))
    return b + (a - b) * h - k * h * (F32(1.0) - h)


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Intersection of two shapes with rounded edges of about ``k`` mm."""
    return -smooth_min(-a, -b, k)


def rotation_z(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_y(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_x(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def to_local(px, py, pz, centre: Sequence[float], rotation: np.ndarray | None = None):
    """Coordinates relative to ``centre`` in the frame whose axes are the columns of ``rotation`` (body -> local)."""
    dx, dy, dz = px - F32(centre[0]), py - F32(centre[1]), pz - F32(centre[2])
    if rotation is None:
        return dx, dy, dz
    r = np.asarray(rotation, dtype=float)
    # local = R^T d
    return (F32(r[0, 0]) * dx + F32(r[1, 0]) * dy + F32(r[2, 0]) * dz,
            F32(r[0, 1]) * dx + F32(r[1, 1]) * dy + F32(r[2, 1]) * dz,
            F32(r[0, 2]) * dx + F32(r[1, 2]) * dy + F32(r[2, 2]) * dz)


# ---------------------------------------------------------------------------------------------------------------
# Smooth random fields
# ---------------------------------------------------------------------------------------------------------------

def _bspline_taps(coords_mm: np.ndarray, origin_mm: float, spacing_mm: float, n_nodes: int):
    """First node index (n,) and the 4 cubic B-spline weights (n, 4) of each coordinate."""
    t = (np.asarray(coords_mm, dtype=float) - origin_mm) / spacing_mm
    i = np.floor(t).astype(int)
    f = t - i
    weights = np.stack(((1 - f) ** 3 / 6, (3 * f ** 3 - 6 * f ** 2 + 4) / 6, (-3 * f ** 3 + 3 * f ** 2 + 3 * f + 1) / 6,
                        f ** 3 / 6), axis=1).astype(F32)
    return np.clip(i - 1, 0, n_nodes - 4), weights


def _contract(values: np.ndarray, axis: int, first: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Apply the 4-tap interpolation along ``axis`` (explicit gathers: no BLAS, same result on any machine)."""
    lo = int(first.min())
    hi = int(first.max()) + 4
    values = np.take(values, np.arange(lo, hi), axis=axis)
    first = first - lo
    shape = [1] * values.ndim
    shape[axis] = -1
    out = np.take(values, first, axis=axis)
    out *= weights[:, 0].reshape(shape)
    for m in range(1, 4):
        term = np.take(values, first + m, axis=axis)
        term *= weights[:, m].reshape(shape)
        out += term
    return out


class SmoothNoise:
    """A stationary, smooth Gaussian random field with unit variance: cubic B-splines over a random lattice.

    The lattice (node spacing ``spacing_mm`` = roughly the correlation length) covers the box ``lo_mm``..``hi_mm``
    (x, y, z). Evaluation is separable on axis-aligned grids (four-tap interpolation along z, x, then y), so a
    texture over a million voxels costs about ten milliseconds. With ``per_slice_z`` the z axis is not
    interpolated: the field is an independent 2D field on each of the given z positions (an annotator drawing
    slice by slice).
    """

    #: Variance of a 1D cubic B-spline interpolant of unit-variance white lattice values (0.46-0.50); a 3D
    #: tensor-product interpolant has this to the power 3.
    _BSPLINE_VARIANCE = 0.48

    def __init__(self, rng: np.random.Generator, lo_mm: Sequence[float], hi_mm: Sequence[float],
                 spacing_mm: float | Sequence[float], *, per_slice_z: Sequence[float] | None = None):
        spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)).copy()
        self.spacing_mm = spacing
        self.origin_mm = np.asarray(lo_mm, dtype=float) - 2 * spacing
        counts = np.ceil((np.asarray(hi_mm, dtype=float) - self.origin_mm) / spacing).astype(int) + 4
        self.per_slice_z = None if per_slice_z is None else np.asarray(per_slice_z, dtype=float)
        if self.per_slice_z is not None:
            counts[2] = self.per_slice_z.size
        dims = 3 if self.per_slice_z is None else 2
        self.values = (rng.standard_normal((counts[2], counts[1], counts[0])) /
                       np.sqrt(self._BSPLINE_VARIANCE ** dims)).astype(F32)

    def __call__(self, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """The field on the grid of 1D axes ``x_mm``, ``y_mm``, ``z_mm``, as a (nz, ny, nx) float32 array."""
        nz_n, ny_n, nx_n = self.values.shape
        # Smallest intermediate arrays first: z, then x, then y (the full-size result).
        if self.per_slice_z is None:
            out = _contract(self.values, 0, *_bspline_taps(z_mm, self.origin_mm[2], self.spacing_mm[2], nz_n))
        else:
            nearest = np.abs(np.asarray(z_mm, dtype=float)[:, None] - self.per_slice_z[None, :]).argmin(axis=1)
            out = self.values[nearest]
        out = _contract(out, 2, *_bspline_taps(x_mm, self.origin_mm[0], self.spacing_mm[0], nx_n))
        out = _contract(out, 1, *_bspline_taps(y_mm, self.origin_mm[1], self.spacing_mm[1], ny_n))
        return np.ascontiguousarray(out, dtype=F32)


# ---------------------------------------------------------------------------------------------------------------
# Grid blocks
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Block:
    """A box of a regular grid on which fields are evaluated.

    ``x``, ``y``, ``z`` are the 1D voxel-centre coordinates (mm) of the box, reshaped to broadcast as
    (1, 1, nx), (1, ny, 1), (nz, 1, 1). ``wx``, ``wy``, ``wz`` are the *anatomical* coordinates of the same voxels:
    where the tumour pushed the organs aside, the position the organ tissue at that voxel came from (full 3D arrays,
    or the plain axes where nothing moved). ``box`` is the block's place in its slab, ``slab`` the context that
    renders the slab (shared caches, sub-blocks); ``None`` for a stand-alone block.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    wx: np.ndarray
    wy: np.ndarray
    wz: np.ndarray
    box: tuple[slice, slice, slice]
    slab: object = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The plain 1D axes (x, y, z) in mm."""
        return self.x.ravel(), self.y.ravel(), self.z.ravel()

    def cached(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """``compute()`` once per name for this very box of this slab."""
        if self.slab is None:
            return compute()
        key = (name, tuple((b.start, b.stop) for b in self.box))
        cache = self.slab.cache
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def slab_cached(self, name: str, compute: Callable[[Block], np.ndarray]) -> np.ndarray:
        """``compute(whole-slab block)`` once per slab, returned for this block's box (fields shared by many
        structures: the body outline, the cavity, the diaphragm)."""
        if self.slab is None:
            return compute(self)
        whole = self.slab.whole_block()
        full = whole.cached(name, lambda: np.broadcast_to(compute(whole), whole.shape))
        return full[tuple(slice(b.start, b.stop) for b in self.box)]

    def sub(self, lo_mm: Sequence[float], hi_mm: Sequence[float], warped: bool = True):
        """``(local slices, sub-block)`` of this block where tissue from the anatomical box lo..hi can lie
        (grown by the displacement when ``warped``), or None when it cannot lie in this block."""
        if self.slab is None:
            return (slice(None),) * 3, self
        box = self.slab.locate(lo_mm, hi_mm, warped)
        if box is None:
            return None
        local = []
        for mine, theirs in zip(self.box, box, strict=True):
            start, stop = max(mine.start, theirs.start), min(mine.stop, theirs.stop)
            if stop <= start:
                return None
            local.append(slice(start - mine.start, stop - mine.start))
        local = tuple(local)
        return local, self.slab.block(tuple(slice(m.start + sl.start, m.start + sl.stop)
                                            for m, sl in zip(self.box, local, strict=True)), warped)


def field_in_parts(block: Block, parts: Sequence[tuple[Sequence[float], Sequence[float], Callable]],
                   warped: bool = True) -> np.ndarray:
    """Minimum of several fields, each evaluated only on the part of ``block`` its box ``(lo, hi, fn)`` covers
    (``fn(px, py, pz)`` on that part's anatomical coordinates); FAR_MM where none reaches."""
    out = np.full(block.shape, F32(FAR_MM), dtype=F32)
    for lo, hi, fn in parts:
        found = block.sub(lo, hi, warped)
        if found is None:
            continue
        local, sub = found
        if warped:
            value = fn(sub.wx, sub.wy, sub.wz)
        else:
            value = fn(sub.x, sub.y, sub.z)
        np.minimum(out[local], value, out=out[local])
    return out


def index_range(axis_mm: np.ndarray, lo_mm: float, hi_mm: float) -> tuple[int, int]:
    """Indices [i0, i1) of the ascending, uniform ``axis_mm`` whose coordinates fall within [lo_mm, hi_mm]."""
    start, step = float(axis_mm[0]), float(axis_mm[1] - axis_mm[0]) if axis_mm.size > 1 else 1.0
    i0 = int(np.ceil((lo_mm - start) / step - 1e-9))
    i1 = int(np.floor((hi_mm - start) / step + 1e-9)) + 1
    return max(i0, 0), min(i1, axis_mm.size)


def occupancy(field_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction of a voxel inside the surface (box-filtered along the normal over ``width_mm``)."""
    return np.clip(F32(0.5) - field_mm * F32(1.0 / width_mm), F32(0.0), F32(1.0))


def upsample_nearest(array: np.ndarray, factor: int, axis: int, length: int) -> np.ndarray:
    """Nearest-neighbour counterpart of :func:`upsample_linear` (labels)."""
    if factor == 1 and array.shape[axis] == length:
        return array
    index = np.minimum(np.floor(np.arange(length) / factor + 0.5).astype(int), array.shape[axis] - 1)
    return np.take(array, index, axis=axis)


def upsample_linear(array: np.ndarray, factor: int, axis: int, length: int) -> np.ndarray:
    """Linear interpolation by an integer ``factor`` along ``axis``, cropped or edge-padded to ``length`` samples.

    Sample i of the input lies at output position ``factor * i`` (the model grid is every factor-th image voxel).
    """
    if factor == 1:
        out = array
    else:
        n = array.shape[axis]
        shape = list(array.shape)
        shape[axis] = factor * (n - 1) + 1
        out = np.empty(shape, dtype=array.dtype)
        src = np.moveaxis(array, axis, 0)
        dst = np.moveaxis(out, axis, 0)
        dst[::factor] = src
        if n > 1:
            step = (src[1:] - src[:-1]) * F32(1.0 / factor)
            for k in range(1, factor):
                dst[k::factor] = src[:-1] + step * F32(k)
    current = out.shape[axis]
    if current >= length:
        index = [slice(None)] * out.ndim
        index[axis] = slice(0, length)
        return out[tuple(index)]
    pad = [(0, 0)] * out.ndim
    pad[axis] = (0, length - current)
    return np.pad(out, pad, mode="edge")


# ---------------------------------------------------------------------------------------------------------------
# Parametric shapes with bounding boxes
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Ellipsoid:
    """An ellipsoid: ``centre`` (mm), ``radii`` along its own axes (mm), ``rotation`` local -> body (3x3)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: np.ndarray | None = None

    def __call__(self, px, py, pz) -> np.ndarray:
        return ellipsoid(*to_local(px, py, pz, self.centre, self.rotation), self.radii)

    def bounds(self, pad_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        radii = np.asarray(self.radii, dtype=float)
        if self.rotation is not None:
            radii = np.sqrt((np.asarray(self.rotation) ** 2) @ radii ** 2)  # extent of the rotated ellipsoid
        c = np.asarray(self.centre, dtype=float)
        return c - radii - pad_mm, c + radii + pad_mm

    def scaled(self, factor: float, about: Sequence[float]) -> Ellipsoid:
        about = np.asarray(about, dtype=float)
        centre = about + (np.asarray(self.centre) - about) * factor
        return Ellipsoid(tuple(centre), tuple(np.asarray(self.radii) * factor), self.rotation)


@dataclasses.dataclass
class Tube:
    """A chain of capsules through ``points`` (mm) with a radius per point (mm): vessels, bowel loops."""

    points: np.ndarray   # (n, 3)
    radii: np.ndarray    # (n,)

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=float).reshape(-1, 3)
        self.radii = np.broadcast_to(np.asarray(self.radii, dtype=float), (len(self.points),)).copy()

    def __call__(self, px, py, pz) -> np.ndarray:
        out = None
        for i in range(len(self.points) - 1):
            d = capsule(px, py, pz, self.points[i], self.points[i + 1], self.radii[i], self.radii[i + 1])
            out = d if out is None else np.minimum(out, d)
        return out

    def segments(self) -> list[tuple[np.ndarray, np.ndarray, Callable]]:
        """Each capsule as ``(lo, hi, field)`` for :func:`field_in_parts`."""
        parts = []
        for i in range(len(self.points) - 1):
            a, b, ra, rb = self.points[i], self.points[i + 1], self.radii[i], self.radii[i + 1]
            r = max(ra, rb)
            parts.append((np.minimum(a, b) - r, np.maximum(a, b) + r,
                          lambda px, py, pz, a=a, b=b, ra=ra, rb=rb: capsule(px, py, pz, a, b, ra, rb)))
        return parts

    def on(self, block: Block, warped: bool = True) -> np.ndarray:
        """The tube's field on ``block``, each capsule evaluated only near itself."""
        return field_in_parts(block, self.segments(), warped)

    def bounds(self, pad_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = self.radii.max() + pad_mm
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r
