"""Resampling to the planned target grid and back, exactly, with a torch path and a SimpleITK reference.

**The target grid** (:func:`target_geometry`) keeps the image's physical extent and direction: along each axis
``n_target = round(n * spacing / target_spacing)`` voxels spread over the same extent, so the effective spacing is
``spacing * n / n_target`` (within half a voxel over the whole image of the plan's target; nnU-Net does the same with
``skimage.transform.resize``). Target voxel j lies at source continuous index ``(j + 0.5) * n / n_target - 0.5``.

**Interpolation orders** (decisions where the paper and nnU-Net v1.7.1 differ):

- Images: cubic B-spline (order 3), as both say.
- Masks: nearest neighbour (order 0), as the paper says. nnU-Net interpolates each label linearly and thresholds at
  0.5 (``resize_segmentation``, order 1); we follow the paper (and the issue) because masks here are only training
  targets and liver masks, where the smoother border buys little.
- Thick slices: when the coarsest spacing of the source or target exceeds ``separate_z_anisotropy_threshold`` (3)
  times the finest, and exactly one axis is that coarse, that axis (z for axial scans) is resampled **separately with
  nearest neighbour** (order 0) while the in-plane axes get the order above: nnU-Net's ``do_separate_z`` behaviour,
  which is what the paper's software actually did (a cubic spline across 5 mm slices rings at organ edges).
- Back to the original grid (:func:`~.pipeline.resample_to_original`): probabilities are interpolated linearly (order 1; in-plane
  only, nearest along a thick-slice axis, as nnU-Net's export), then the caller takes the argmax. Samples up to half a
  voxel outside the outermost centres take the edge value (no extrapolation, so probabilities stay in [0, 1]).

**Two implementations.** ``backend="sitk"`` (the reference, CPU): ``sitk.Resample`` with ``sitkBSpline`` (3rd order,
mirror boundary), ``sitkLinear`` or ``sitkNearestNeighbor``; a separate-z resampling is two passes (in-plane pass that
samples z exactly at its nodes, where a B-spline reproduces the data, then a nearest-neighbour pass along z).
``backend="torch"``: because the two grids differ only by a per-axis scale and shift, resampling is separable, and
along each axis it is a matrix product with an ``n_target x n_source`` weight matrix; for order 3 that matrix is the
B-spline kernel times the inverse of the (mirror-boundary) B-spline prefilter, so the result is the exact cubic
B-spline interpolant, same as ITK's, in three GEMMs (dense GEMMs beat gathers on CPU even for orders 0 and 1).
``Testing/test_preprocess_resample.py`` checks the two agree (to ~1e-5 of the value range, borders included).

``backend="auto"`` uses the torch path on every device (:data:`AUTO_TORCH_ON_CPU`): on CUDA it is the GPU path, and
on the CPU it is also 5-9x faster than ITK's B-spline (2 threads, 512x512x100 CT to 0.78 mm in-plane: 0.8-1.2 s vs
7.5-9.5 s on the shared build box, ITK 4.7 s when the box was idle; ``benchmarks/bench_preprocess.py``), which is
what keeps preprocessing a full CT within its 6 s budget. SimpleITK stays the reference the torch path is tested
against. (On CUDA the GEMMs run with ``torch.set_float32_matmul_precision("highest")`` for their duration, so a
caller's TF32 setting cannot cost resampling accuracy; the setting is process-wide and restored afterwards.)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import GeometryError
from ..io import Geometry

#: ``backend="auto"`` on the CPU: True = torch path (5-8x faster), False = SimpleITK (the tested reference).
AUTO_TORCH_ON_CPU = True

_NEGLIGIBLE_WEIGHT = 1e-12
_SITK_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


# --------------------------------------------------------------------------------------------------- geometry
def target_geometry(original: Geometry, target_spacing_mm_xyz: Sequence[float]) -> Geometry:
    """The grid with ``target_spacing_mm_xyz`` (approximately) covering exactly the extent of ``original``."""
    spacing = np.asarray(original.spacing_mm, dtype=float)
    size = np.asarray(original.size, dtype=float)
    wanted = np.asarray(target_spacing_mm_xyz, dtype=float)
    new_size = np.maximum(np.round(size * spacing / wanted), 1).astype(int)
    new_spacing = spacing * size / new_size
    origin = np.asarray(original.origin_mm) + original.direction_matrix @ ((new_spacing - spacing) / 2.0)
    return Geometry(tuple(int(v) for v in new_size), tuple(new_spacing), tuple(origin), original.direction)


def lowres_axis_zyx(original: Geometry, target: Geometry, threshold: float) -> int | None:
    """Array axis (0 = z, 1 = y, 2 = x) to resample separately with nearest neighbour, or None (nnU-Net's rule)."""
    for spacing_xyz in (original.spacing_mm, target.spacing_mm):
        spacing = np.asarray(spacing_xyz[::-1], dtype=float)
        if spacing.max() / spacing.min() > threshold:
            coarse = np.flatnonzero(np.isclose(spacing, spacing.max(), rtol=1e-6))
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


def axis_orders(original: Geometry, target: Geometry, order: int, *, separate_z_threshold: float = 3.0,
                separate_z_order: int = 0) -> tuple[int, int, int]:
    """Interpolation order per array axis (z, y, x) for resampling between ``original`` and ``target``."""
    orders = [order] * 3
    axis = lowres_axis_zyx(original, target, separate_z_threshold)
    if axis is not None:
        orders[axis] = min(order, separate_z_order)
    return tuple(orders)


def _axis_maps(source: Geometry, target: Geometry) -> list[tuple[int, int, float, float]]:
    """Per array axis (z, y, x): (n_source, n_target, offset, scale), source index = offset + scale * target index."""
    if not np.allclose(source.direction, target.direction, atol=1e-6):
        raise GeometryError("resampling only changes spacing: the target grid must have the source's direction "
                            f"({source.direction} vs {target.direction})")
    delta = source.direction_matrix.T @ (np.asarray(target.origin_mm) - np.asarray(source.origin_mm))
    maps = []
    for a in (2, 1, 0):  # array axis z, y, x = geometry axis 2, 1, 0
        offset = float(delta[a] / source.spacing_mm[a])
        scale = float(target.spacing_mm[a] / source.spacing_mm[a])
        maps.append((int(source.size[a]), int(target.size[a]), offset, scale))
    return maps


def _is_identity(n_in: int, n_out: int, offset: float, scale: float) -> bool:
    return n_in == n_out and abs(offset) < 1e-6 and abs(scale - 1.0) < 1e-9


# --------------------------------------------------------------------------------------------------- weights
def _bspline3(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return np.where(ax < 1, 2.0 / 3.0 - ax ** 2 + ax ** 3 / 2.0, np.where(ax < 2, (2.0 - ax) ** 3 / 6.0, 0.0))


def _mirror(k: np.ndarray, n: int) -> np.ndarray:
    """Whole-sample symmetric extension (... 2 1 | 0 1 2 ... n-1 | n-2 ...), as ITK and scipy's 'mirror'."""
    if n == 1:
        return np.zeros_like(k)
    period = 2 * n - 2
    k = np.mod(k, period)
    return np.where(k > n - 1, period - k, k)


@functools.lru_cache(maxsize=64)
def _prefilter(n: int) -> np.ndarray:
    """Inverse of the cubic B-spline interpolation system (mirror boundary): coefficients = P @ samples."""
    if n == 1:
        return np.ones((1, 1))
    system = np.zeros((n, n))
    idx = np.arange(n)
    system[idx, idx] = 4.0 / 6.0
    system[idx[1:], idx[:-1]] = 1.0 / 6.0
    system[idx[:-1], idx[1:]] = 1.0 / 6.0
    system[0, 1] = 2.0 / 6.0  # c[-1] = c[1]
    system[n - 1, n - 2] = 2.0 / 6.0  # c[n] = c[n-2]
    return np.linalg.solve(system, np.eye(n))


@functools.lru_cache(maxsize=64)
def axis_weights(n_in: int, n_out: int, offset: float, scale: float, order: int) -> np.ndarray:
    """The ``n_out x n_in`` matrix that resamples one axis: ``out[j] = sum_i W[j, i] * in[i]`` (float64).

    Output sample j lies at source continuous index ``offset + scale * j``. Order 0: nearest (ties round up, as
    ITK); 1: linear, clamped to the edge values; 3: exact cubic B-spline interpolation with mirror boundaries.
    """
    t = offset + scale * np.arange(n_out, dtype=float)
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if order == 0:
        weights[rows, np.clip(np.floor(t + 0.5).astype(int), 0, n_in - 1)] = 1.0
    elif order == 1:
        if n_in == 1:
            weights[:, 0] = 1.0
        else:
            tc = np.clip(t, 0.0, n_in - 1.0)
            k0 = np.minimum(np.floor(tc).astype(int), n_in - 2)
            frac = tc - k0
            np.add.at(weights, (rows, k0), 1.0 - frac)
            np.add.at(weights, (rows, k0 + 1), frac)
    elif order == 3:
        start = np.floor(t).astype(int) - 1
        for o in range(4):
            k = start + o
            np.add.at(weights, (rows, _mirror(k, n_in)), _bspline3(t - k))
        weights = weights @ _prefilter(n_in)
        # The prefilter decays as 0.268^distance: far entries underflow to float32 denormals, which make GEMMs on
        # x86 CPUs ~50x slower. Below 1e-12 of the peak weight they change nothing measurable; drop them.
        weights[np.abs(weights) < _NEGLIGIBLE_WEIGHT] = 0.0
    else:
        raise ValueError(f"interpolation order must be 0, 1 or 3, got {order}")
    return weights


# --------------------------------------------------------------------------------------------------- torch path
@contextlib.contextmanager
def _full_fp32() -> Any:
    """Resampling GEMMs in true fp32, even where a caller enabled TF32 for the network."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _apply_axis(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Resample array axis ``axis`` (-3, -2 or -1) of ``x`` [..., z, y, x] with ``matrix`` [n_out, n_in]."""
    if axis == -1:
        return x @ matrix.T
    if axis == -2:
        return matrix @ x
    shape = x.shape
    flat = x.reshape(*shape[:-3], shape[-3], shape[-2] * shape[-1])
    return (matrix @ flat).reshape(*shape[:-3], matrix.shape[0], shape[-2], shape[-1])


def resample_torch(data: torch.Tensor, source: Geometry, target: Geometry, orders_zyx: Sequence[int]
                   ) -> torch.Tensor:
    """Separable resampling of ``data`` [..., z, y, x] on its own device; float32 out (float64 stays float64)."""
    maps = _axis_maps(source, target)
    if tuple(data.shape[-3:]) != tuple(m[0] for m in maps):
        raise GeometryError(f"data shape {tuple(data.shape)} does not end with the source grid's [z, y, x] "
                            f"{tuple(m[0] for m in maps)}")
    dtype = torch.float64 if data.dtype == torch.float64 else torch.float32
    x = data.to(dtype)
    if x.device.type == "cpu" and any(not _is_identity(*m) for m in maps):
        # Denormal inputs (e.g. softmax outputs ~1e-40) slow CPU GEMMs down ~50x; they are zero for our purposes.
        x = x.masked_fill(x.abs() < torch.finfo(dtype).tiny, 0.0)
    todo = [(a, m) for a, m in enumerate(maps) if not _is_identity(*m)]
    # Shrinking axes first keeps the intermediate arrays (and the work of the later GEMMs) small.
    todo.sort(key=lambda item: item[1][1] / item[1][0])
    with _full_fp32():
        for a, (n_in, n_out, offset, scale) in todo:
            matrix = torch.from_numpy(axis_weights(n_in, n_out, offset, scale, int(orders_zyx[a])))
            x = _apply_axis(x, matrix.to(device=x.device, dtype=dtype), a - 3)
    return x.contiguous() if todo else x.clone()


# --------------------------------------------------------------------------------------------------- sitk path
def _partial_geometry(source: Geometry, target: Geometry, axes_zyx: Sequence[int]) -> Geometry:
    """``target`` along the array axes ``axes_zyx``, ``source`` along the others."""
    size, spacing = list(source.size), list(source.spacing_mm)
    delta = source.direction_matrix.T @ (np.asarray(target.origin_mm) - np.asarray(source.origin_mm))
    shift = np.zeros(3)
    for a in axes_zyx:
        g = 2 - a
        size[g], spacing[g], shift[g] = target.size[g], target.spacing_mm[g], delta[g]
    origin = np.asarray(source.origin_mm) + source.direction_matrix @ shift
    return Geometry(size, spacing, tuple(origin), source.direction)


def _sitk_one(array: np.ndarray, source: Geometry, target: Geometry, order: int) -> np.ndarray:
    image = source.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    pixel = image.GetPixelID() if order == 0 else sitk.sitkFloat32
    if order != 0 and array.dtype == np.float64:
        pixel = sitk.sitkFloat64
    out = sitk.Resample(image, target.size, sitk.Transform(), _SITK_INTERPOLATORS[order], target.origin_mm,
                        target.spacing_mm, target.direction, 0.0, pixel)
    return sitk.GetArrayFromImage(out)


def resample_sitk(array: np.ndarray, source: Geometry, target: Geometry, orders_zyx: Sequence[int]) -> np.ndarray:
    """Reference resampling with SimpleITK of ``array`` [..., z, y, x] (leading axes looped over)."""
    array = np.asarray(array)
    if array.ndim > 3:
        lead = array.shape[:-3]
        parts = [resample_sitk(a, source, target, orders_zyx) for a in array.reshape(-1, *array.shape[-3:])]
        return np.stack(parts).reshape(*lead, *parts[0].shape)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    maps = _axis_maps(source, target)
    changed = [a for a, m in enumerate(maps) if not _is_identity(*m)]
    orders = [int(o) for o in orders_zyx]
    if not changed:
        return array.copy() if orders[0] == 0 else array.astype(np.float32)
    high = [a for a in changed if orders[a] == max(orders[b] for b in changed)]
    low = [a for a in changed if a not in high]
    if not low:
        return _sitk_one(array, source, target, orders[high[0]])
    # Two passes: the higher-order axes first (sampling the others exactly at their nodes), then the rest.
    middle = _partial_geometry(source, target, high)
    first = _sitk_one(array, source, middle, orders[high[0]])
    return _sitk_one(first, middle, target, orders[low[0]])


# --------------------------------------------------------------------------------------------------- front door
def choose_backend(data: Any, backend: str = "auto", device: str | torch.device | None = None) -> str:
    if backend not in ("auto", "torch", "sitk"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'sitk', got {backend!r}")
    if backend != "auto":
        return backend
    on_cuda = (isinstance(data, torch.Tensor) and data.is_cuda) or (
        device is not None and torch.device(device).type == "cuda")
    return "torch" if on_cuda or AUTO_TORCH_ON_CPU else "sitk"


def resample_array(data: np.ndarray | torch.Tensor, source: Geometry, target: Geometry, orders_zyx: Sequence[int],
                   *, backend: str = "auto", device: str | torch.device | None = None) -> np.ndarray | torch.Tensor:
    """Resample ``data`` [..., z, y, x] from grid ``source`` to grid ``target`` (same direction).

    Returns the same kind as given: a numpy array stays numpy, a tensor stays a tensor (on ``device`` if given, else
    on its own). Order 0 keeps the dtype; other orders give float32 (float64 input stays float64).
    """
    kind = choose_backend(data, backend, device)
    is_tensor = isinstance(data, torch.Tensor)
    if kind == "sitk":
        array = data.detach().cpu().numpy() if is_tensor else np.asarray(data)
        out = resample_sitk(array, source, target, orders_zyx)
        if is_tensor:
            return torch.from_numpy(out).to(device if device is not None else data.device)
        return out
    tensor = data if is_tensor else torch.from_numpy(np.ascontiguousarray(data))
    if device is not None:
        tensor = tensor.to(device)
    dtype = tensor.dtype
    out = resample_torch(tensor, source, target, orders_zyx)
    if all(int(o) == 0 for o in orders_zyx) and not dtype.is_floating_point:
        out = out.round().to(dtype)  # a one-hot matrix copies values; integer labels stay integers
    if not is_tensor:
        return out.cpu().numpy()
    return out
