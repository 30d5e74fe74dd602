"""nnU-Net's preprocessing, as an imported nnU-Net model expects its input (our own implementation of its rules).

An nnU-Net model only gives nnU-Net's result on data prepared exactly as it was trained on; these steps follow nnU-Net
v2's default preprocessor (and v1's, which differs only in the order of the last two steps):

1. axes transposed as the plans say (``transpose_forward``), the spacing with them;
2. **crop to nonzero**: the bounding box of the voxels that are nonzero in any channel, holes filled
   (:func:`scipy.ndimage.binary_fill_holes`); outside that region is "background" and stays so;
3. **normalisation** per channel by the plans' scheme: ``CTNormalization`` (clip to the training foreground's
   0.5/99.5 percentiles, subtract its mean, divide by its standard deviation), ``ZScoreNormalization`` (the image's
   own mean and standard deviation, inside the nonzero region if ``use_mask_for_norm``), ``NoNormalization``,
   ``RescaleTo01Normalization``;
4. **resampling** to the target spacing with :func:`skimage.transform.resize` (``mode="edge"``, no anti-aliasing),
   third order for images; when the spacing is anisotropic (largest / smallest > 3, in the input or the target),
   in-plane slice by slice and then along the coarse axis with ``order_z`` (nearest neighbour by default) via
   :func:`scipy.ndimage.map_coordinates`, as nnU-Net does. nnU-Net v2 normalises before resampling, v1 after.

The network's output goes back with :func:`resample_to_shape` (first order, same anisotropy rule) onto the cropped
grid, and outside the crop box the background has probability 1 (:func:`uncrop_probabilities`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_fill_holes, map_coordinates

from ..errors import ModelError

ANISOTROPY_THRESHOLD = 3.0
NORMALIZATION_SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")


@dataclasses.dataclass(frozen=True)
class ResamplingRule:
    """One of nnU-Net's resampling settings (``resampling_fn_*_kwargs`` in its plans)."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None


@dataclasses.dataclass(frozen=True)
class NnUNetPreprocessing:
    """What nnU-Net's plans say about preparing an image; stored in ``bundle.json`` (``nnunet.preprocessing``).

    Spacings and axes are in nnU-Net's array order after ``transpose_forward`` (our arrays are ``[z, y, x]``, as
    nnU-Net reads them with SimpleITK).
    """

    target_spacing_mm: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: tuple[Mapping[str, float], ...]
    transpose_forward: tuple[int, ...] = (0, 1, 2)
    data_resampling: ResamplingRule = ResamplingRule(3, 0, None)
    probabilities_resampling: ResamplingRule = ResamplingRule(1, 0, None)
    normalize_before_resampling: bool = True  # v2: True; v1: False

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["intensity_properties"] = [dict(p) for p in self.intensity_properties]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NnUNetPreprocessing:
        return cls(target_spacing_mm=tuple(float(s) for s in data["target_spacing_mm"]),
                   normalization_schemes=tuple(data["normalization_schemes"]),
                   use_mask_for_norm=tuple(bool(b) for b in data["use_mask_for_norm"]),
                   intensity_properties=tuple(dict(p) for p in data["intensity_properties"]),
                   transpose_forward=tuple(int(i) for i in data.get("transpose_forward", (0, 1, 2))),
                   data_resampling=ResamplingRule(**data.get("data_resampling", {})),
                   probabilities_resampling=ResamplingRule(**data.get("probabilities_resampling", {"order": 1})),
                   normalize_before_resampling=bool(data.get("normalize_before_resampling", True)))

    def check(self, source: str) -> None:
        """Refuse what this implementation does not do (rather than run it differently from nnU-Net)."""
        unknown = [s for s in self.normalization_schemes if s not in NORMALIZATION_SCHEMES]
        if unknown:
            raise ModelError(f"normalisation scheme(s) {unknown} are not supported (supported: "
                             f"{', '.join(NORMALIZATION_SCHEMES)})", source)
        if sorted(self.transpose_forward) != [0, 1, 2] or len(self.target_spacing_mm) != 3:
            raise ModelError("only 3D nnU-Net configurations can be imported (3d_fullres, 3d_lowres)", source)


@dataclasses.dataclass
class PreparedCase:
    """An image prepared for the network, with what is needed to map the output back."""

    data: np.ndarray  # [C, *shape] float32 on the target grid
    shape_before_cropping: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    shape_after_cropping: tuple[int, ...]
    spacing_mm: tuple[float, ...]  # input spacing, transposed


def prepare_case(channels_zyx: np.ndarray, spacing_mm_zyx: Sequence[float], spec: NnUNetPreprocessing) -> PreparedCase:
    """nnU-Net's preprocessing of ``channels_zyx`` ([C, z, y, x]) with spacing ``spacing_mm_zyx``."""
    data = np.asarray(channels_zyx, dtype=np.float32).transpose((0, *[i + 1 for i in spec.transpose_forward]))
    spacing = tuple(float(spacing_mm_zyx[i]) for i in spec.transpose_forward)
    shape_before = tuple(data.shape[1:])
    data, nonzero, bbox = crop_to_nonzero(data)
    shape_after = tuple(data.shape[1:])
    new_shape = compute_new_shape(shape_after, spacing, spec.target_spacing_mm)
    if spec.normalize_before_resampling:
        data = normalize(data, nonzero, spec)
        data = resample_to_shape(data, new_shape, spacing, spec.target_spacing_mm, spec.data_resampling)
    else:  # nnU-Net v1: resample, then normalise with the resampled nonzero mask
        data = resample_to_shape(data, new_shape, spacing, spec.target_spacing_mm, spec.data_resampling)
        mask = resample_mask(nonzero, new_shape, spacing, spec.target_spacing_mm)
        data = normalize(data, mask, spec, zero_outside_mask=True)
    return PreparedCase(data.astype(np.float32, copy=False), shape_before, bbox, shape_after, spacing)


def crop_to_nonzero(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """(data cropped to the filled nonzero region's bounding box, that region's mask, the box as (start, stop))."""
    nonzero = np.any(data != 0, axis=0)
    nonzero = binary_fill_holes(nonzero)
    if not nonzero.any():  # an all-zero image: nothing to crop to
        bbox = tuple((0, n) for n in nonzero.shape)
    else:
        bbox = tuple((int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(nonzero))
    box = tuple(slice(a, b) for a, b in bbox)
    return data[(slice(None), *box)], nonzero[box], bbox


def normalize(data: np.ndarray, nonzero: np.ndarray, spec: NnUNetPreprocessing, *, zero_outside_mask: bool = False
              ) -> np.ndarray:
    """Each channel by its scheme (see the module docstring); ``data`` is changed in place and returned."""
    for c, scheme in enumerate(spec.normalization_schemes):
        image = data[c]
        props = spec.intensity_properties[c] if c < len(spec.intensity_properties) else {}
        use_mask = spec.use_mask_for_norm[c] if c < len(spec.use_mask_for_norm) else False
        if scheme == "CTNormalization":
            np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
            image -= props["mean"]
            image /= max(props["std"], 1e-8)
            if use_mask and zero_outside_mask:  # nnU-Net v1
                image[~nonzero] = 0
        elif scheme == "ZScoreNormalization":
            if use_mask:
                values = image[nonzero]
                mean, std = values.mean(), values.std()
                image[nonzero] = (values - mean) / max(std, 1e-8)
                if zero_outside_mask:
                    image[~nonzero] = 0
            else:
                mean, std = image.mean(), image.std()
                image -= mean
                image /= max(std, 1e-8)
        elif scheme == "RescaleTo01Normalization":
            image -= image.min()
            image /= max(float(image.max()), 1e-8)
        # NoNormalization: as is
    return data


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's rule: ``round(spacing / new_spacing * shape)`` per axis."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, new_spacing, shape))


def separate_z_axis(current_mm: Sequence[float], new_mm: Sequence[float], rule: ResamplingRule) -> int | None:
    """The coarse axis to resample on its own (nearest neighbour by default), or None: nnU-Net's anisotropy rule."""
    def coarse(spacing: Sequence[float]) -> list[int]:
        spacing = np.asarray(spacing, dtype=float)
        return list(np.where(spacing.max() / spacing == 1)[0])

    if rule.force_separate_z is not None:
        axes = coarse(current_mm) if rule.force_separate_z else []
    elif max(current_mm) / min(current_mm) > ANISOTROPY_THRESHOLD:
        axes = coarse(current_mm)
    elif max(new_mm) / min(new_mm) > ANISOTROPY_THRESHOLD:
        axes = coarse(new_mm)
    else:
        axes = []
    return int(axes[0]) if len(axes) == 1 else None


def resample_to_shape(data: np.ndarray, new_shape: Sequence[int], current_mm: Sequence[float],
                      new_mm: Sequence[float], rule: ResamplingRule) -> np.ndarray:
    """Resample every channel of ``data`` ([C, ...]) to ``new_shape`` the way nnU-Net does (see module docstring).

    Computed in float64 like nnU-Net, returned in ``data``'s dtype.
    """
    from skimage.transform import resize

    new_shape = tuple(int(n) for n in new_shape)
    shape = tuple(data.shape[1:])
    if shape == new_shape:
        return data
    axis = separate_z_axis(current_mm, new_mm, rule)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        channel = data[c].astype(float)
        if axis is None:
            out[c] = resize(channel, new_shape, rule.order, mode="edge", anti_aliasing=False)
            continue
        inplane = tuple(n for i, n in enumerate(new_shape) if i != axis)
        staged_shape = tuple(shape[axis] if i == axis else n for i, n in enumerate(new_shape))
        staged = np.zeros(staged_shape)
        for k in range(shape[axis]):
            index = tuple(k if i == axis else slice(None) for i in range(3))
            staged[index] = resize(channel[index], inplane, rule.order, mode="edge", anti_aliasing=False)
        if shape[axis] == new_shape[axis]:
            out[c] = staged
        elif rule.order_z == 0:
            out[c] = _nearest_along(staged, axis, new_shape[axis])
        else:
            out[c] = _resample_grid(staged, new_shape, rule.order_z)
    return out


def _nearest_along(volume: np.ndarray, axis: int, size: int) -> np.ndarray:
    """What :func:`_resample_grid` with ``order=0`` gives when only ``axis`` changes size: whole slices picked by
    nearest neighbour. The picks come from :func:`map_coordinates` itself (on the slice indices), so rounding of
    half-way positions is scipy's; memory is that of the output instead of three float64 coordinate grids."""
    old = volume.shape[axis]
    positions = (old / size) * (np.arange(size, dtype=float) + 0.5) - 0.5
    picks = map_coordinates(np.arange(old, dtype=float), positions[None], order=0, mode="nearest")
    return np.take(volume, picks.astype(np.intp), axis=axis)


def _resample_grid(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """``volume`` onto ``new_shape`` by :func:`map_coordinates` at pixel centres (align_corners=False)."""
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in new_shape], indexing="ij")
    coords = np.stack([(old / new) * (g + 0.5) - 0.5 for g, old, new in zip(grids, volume.shape, new_shape)])
    return map_coordinates(volume, coords, order=order, mode="nearest")


def resample_mask(mask: np.ndarray, new_shape: Sequence[int], current_mm: Sequence[float], new_mm: Sequence[float]
                  ) -> np.ndarray:
    """The nonzero mask onto ``new_shape`` as nnU-Net v1 resamples its segmentation: each label's indicator first
    order (nearest neighbour along a thick-slice axis), the larger one wins (for two labels: inside > 0.5)."""
    if tuple(mask.shape) == tuple(new_shape):
        return mask
    resampled = resample_to_shape(mask[None].astype(np.float32), new_shape, current_mm, new_mm, ResamplingRule(1, 0))
    return resampled[0] > 0.5


def uncrop_probabilities(probs: np.ndarray, bbox: Sequence[tuple[int, int]], shape: Sequence[int]) -> np.ndarray:
    """Probabilities of the crop box put back into the full ``shape``: outside it, background (channel 0) is 1."""
    full = np.zeros((probs.shape[0], *shape), dtype=probs.dtype)
    full[0] = 1
    full[(slice(None), *(slice(a, b) for a, b in bbox))] = probs
    return full
