"""Data augmentation: parameters drawn on the CPU (:func:`draw_params`), applied on the training device
(:func:`augment_batch`, plain torch, so the same code runs on a GPU or the CPU).

The paper lists rotation up to +-30 deg, scaling 0.7-1.4, elastic deformation, gamma, brightness and mirroring on
all axes. We add nnU-Net v1's Gaussian noise, Gaussian blur, contrast and low-resolution simulation (all on by
default; nnU-Net uses them and they are cheap on the device). Order and default probabilities follow nnU-Net v1's
``get_moreDA_augmentation``: spatial -> (our regional field, off by default) -> noise -> blur -> brightness -> contrast -> low resolution -> gamma of the
inverted image -> gamma -> mirroring.

Spatial transform (one resampling per sample, skipped when a sample draws none of rotation / scaling / elastic):
an output voxel at offset ``r`` (voxels, from the patch centre) reads the source at
``centre + s * S^-1 R S r + d(r)``: ``S`` = diag(spacing), so rotations are rigid in millimetres even on
anisotropic grids (nnU-Net rotates voxel coordinates); ``s`` > 1 zooms out (nnU-Net's convention); ``d`` is the
elastic displacement, random values on a coarse control grid (isotropic in mm) interpolated linearly. Images are
interpolated linearly (nnU-Net: cubic spline; 3D cubic is not in ``grid_sample``), labels through their one-hot
channels, linearly, then argmax (nnU-Net's order-1 label interpolation). Outside the source: image 0, background.
For thick-slice plans (``dummy_2d_augmentation`` in the plans, as nnU-Net's dummy-2D mode) rotation is in-plane
only, blur and low-resolution simulation leave the slice axis alone; the rotation range stays the paper's +-30 deg
(nnU-Net would use +-180 deg in-plane).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import AugmentConfig


@dataclasses.dataclass
class SampleParams:
    """Every random choice for one sample (drawn by :func:`draw_params`; ``None`` = that step is off)."""

    matrix: tuple[tuple[float, ...], ...] | None = None     # 3x3 (z, y, x) voxel map, output offset -> source offset
    elastic: np.ndarray | None = None                         # float32 [3, gz, gy, gx] displacement, source voxels
    noise_std: float | None = None
    noise_seed: int = 0
    blur_sigma_vox: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    low_resolution_zoom: float | None = None
    gamma_inverted: float | None = None
    gamma: float | None = None
    mirror_zyx: tuple[bool, bool, bool] = (False, False, False)
    in_plane_only: bool = False
    centre_in_source: tuple[float, float, float] = (0.0, 0.0, 0.0)
    synthetic_seed: int | None = None                         # domain randomisation (see .synthetic)
    regional_field: np.ndarray | None = None                  # float32 [gz, gy, gx] control points, image units

    @property
    def spatial(self) -> bool:
        return self.matrix is not None or self.elastic is not None


def rotation_matrix_zyx(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotation about the z, y and x axes (in that order of application), as a matrix acting on (z, y, x) vectors."""
    az, ay, ax = (float(a) for a in angles_rad)
    cz, sz, cy, sy, cx, sx = math.cos(az), math.sin(az), math.cos(ay), math.sin(ay), math.cos(ax), math.sin(ax)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])   # turns the y-x plane
    about_y = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])   # turns the z-x plane
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])   # turns the z-y plane
    return about_x @ about_y @ about_z


def _uniform_around_one(rng: np.random.Generator, low: float, high: float) -> float:
    """nnU-Net's draw for scale and gamma: half the time below 1, half above (when the range straddles 1)."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(max(low, 1.0), high))


def draw_params(rng: np.random.Generator, cfg: AugmentConfig, patch_size_zyx: Sequence[int],
                spacing_mm_zyx: Sequence[float], *, in_plane_rotation_only: bool = False,
                hu_per_unit: float | None = None) -> SampleParams:
    """All random choices for one sample (see module docstring); identity when ``cfg.enabled`` is False.
    ``hu_per_unit``: HU per unit of the normalised image (the CT plans' ``std_hu``), for the regional field."""
    params = SampleParams(in_plane_only=bool(in_plane_rotation_only))
    if not cfg.enabled:
        return params
    if cfg.p_synthetic > 0 and rng.random() < cfg.p_synthetic:
        # Drawn only when the option is on, so runs without it see exactly the samples they saw before it existed.
        params.synthetic_seed = int(rng.integers(2 ** 31 - 1))
    spacing = np.asarray(spacing_mm_zyx, dtype=float)
    matrix = np.eye(3)
    if rng.random() < cfg.p_rotation:
        limit = math.radians(cfg.rotation_deg)
        angles = rng.uniform(-limit, limit, size=3)
        if in_plane_rotation_only:
            angles[1:] = 0.0
        matrix = np.diag(1 / spacing) @ rotation_matrix_zyx(angles) @ np.diag(spacing)
    if rng.random() < cfg.p_scale:
        matrix = matrix * _uniform_around_one(rng, *cfg.scale_range)
    if not np.allclose(matrix, np.eye(3)):
        params.matrix = tuple(tuple(float(v) for v in row) for row in matrix)
    if rng.random() < cfg.p_elastic:
        magnitude_vox = rng.uniform(0.0, cfg.elastic_max_vox)
        finest = spacing.min()
        grid = [max(2, int(math.ceil(p * s / (cfg.elastic_grid_vox * finest))) + 1)
                for p, s in zip(patch_size_zyx, spacing)]
        field = rng.uniform(-1.0, 1.0, size=(3, *grid)) * (magnitude_vox * finest / spacing)[:, None, None, None]
        if in_plane_rotation_only:
            field[0] = 0.0  # thick slices: no through-plane deformation
        params.elastic = field.astype(np.float32)
    params.noise_seed = int(rng.integers(2 ** 31 - 1))
    if rng.random() < cfg.p_noise:
        params.noise_std = float(rng.uniform(*cfg.noise_variance))
    if rng.random() < cfg.p_blur:
        params.blur_sigma_vox = float(rng.uniform(*cfg.blur_sigma_vox))
    if rng.random() < cfg.p_brightness:
        params.brightness = float(rng.uniform(*cfg.brightness_range))
    if rng.random() < cfg.p_contrast:
        params.contrast = _uniform_around_one(rng, *cfg.contrast_range)
    if rng.random() < cfg.p_low_resolution:
        params.low_resolution_zoom = float(rng.uniform(*cfg.low_resolution_zoom))
    if rng.random() < cfg.p_gamma_inverted:
        params.gamma_inverted = _uniform_around_one(rng, *cfg.gamma_range)
    if rng.random() < cfg.p_gamma:
        params.gamma = _uniform_around_one(rng, *cfg.gamma_range)
    params.mirror_zyx = tuple(bool(rng.random() < cfg.p_mirror) for _ in range(3))
    if cfg.regional_field_hu > 0:  # drawn last and only when on: runs without it see the samples they always saw
        if not hu_per_unit:
            raise ValueError("the regional field needs hu_per_unit (CT plans' std_hu)")
        grid = [max(2, int(math.ceil(p * s / cfg.regional_field_grid_mm)) + 1)
                for p, s in zip(patch_size_zyx, spacing)]
        sd_units = rng.uniform(0.0, cfg.regional_field_hu) / hu_per_unit
        params.regional_field = (rng.standard_normal(grid) * sd_units).astype(np.float32)
    return params


def regional_field(control_points: np.ndarray, shape_zyx: Sequence[int], device: torch.device | str
                   ) -> torch.Tensor:
    """The smooth field [1, z, y, x] through ``control_points`` (spread evenly over the patch, its corners on the
    patch's corners), trilinear."""
    points = torch.from_numpy(np.ascontiguousarray(control_points, dtype=np.float32)).to(device)[None, None]
    return F.interpolate(points, size=tuple(int(v) for v in shape_zyx), mode="trilinear", align_corners=True)[0]


def source_box(params: SampleParams, centre_zyx: np.ndarray, patch_size_zyx: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Integer (lo, hi) (end exclusive) of the source region the patch reads, for a patch centred at ``centre_zyx``
    (voxels, may be half-integer). Without a spatial transform it is exactly the patch."""
    patch = np.asarray(patch_size_zyx, dtype=float)
    centre = np.asarray(centre_zyx, dtype=float)
    if not params.spatial:
        lo = np.round(centre - (patch - 1) / 2).astype(np.int64)
        return lo, lo + patch.astype(np.int64)
    half = (patch - 1) / 2
    corners = np.array([[sz * half[0], sy * half[1], sx * half[2]]
                        for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)])
    matrix = np.asarray(params.matrix) if params.matrix is not None else np.eye(3)
    extent = np.abs(corners @ matrix.T).max(axis=0)
    if params.elastic is not None:
        extent = extent + np.abs(params.elastic).reshape(3, -1).max(axis=1)
    lo = np.floor(centre - extent - 1).astype(np.int64)
    hi = np.ceil(centre + extent + 1).astype(np.int64) + 1
    return lo, hi


# ------------------------------------------------------------------------------------------------ device side
def _sampling_grid(params: SampleParams, patch: Sequence[int], source_shape: Sequence[int], device: torch.device,
                   elastic: torch.Tensor | None = None) -> torch.Tensor:
    """grid_sample grid [1, pz, py, px, 3] (x, y, z order, align_corners=True) for one sample.

    Built from Python scalars and device-side ``arange`` only: no small host-to-device copies, which would make the
    host wait for the GPU every iteration (only the pinned elastic field travels, asynchronously)."""
    axes = [torch.arange(p, device=device, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    offsets = torch.meshgrid(*axes, indexing="ij")                                  # 3 x [pz, py, px]
    matrix = params.matrix if params.matrix is not None else ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    if elastic is None and params.elastic is not None:
        elastic = torch.from_numpy(params.elastic)
    field = None
    if elastic is not None:
        field = F.interpolate(elastic.to(device, non_blocking=True)[None], size=tuple(patch), mode="trilinear",
                              align_corners=True)[0]
    normalised = []
    for axis in range(3):
        row = matrix[axis]
        coord = offsets[0] * row[0] + offsets[1] * row[1] + offsets[2] * row[2] + params.centre_in_source[axis]
        if field is not None:
            coord = coord + field[axis]
        normalised.append(coord * (2.0 / max(int(source_shape[axis]) - 1, 1)) - 1.0)
    return torch.stack(normalised[::-1], dim=-1)[None]                              # (z, y, x) -> (x, y, z)


def spatial_transform(image: torch.Tensor, label: torch.Tensor, params: SampleParams, patch: Sequence[int],
                      num_classes: int, elastic: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample one sample's source crop (image float [1, ...], label uint8 [1, ...]) onto the patch.
    ``elastic`` is ``params.elastic`` as a (pinned) tensor, when the caller has one."""
    if not params.spatial:
        return image, label
    grid = _sampling_grid(params, patch, image.shape[1:], image.device, elastic)
    out_image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    classes = torch.arange(1, num_classes, device=label.device, dtype=label.dtype).view(-1, 1, 1, 1)
    onehot = (label == classes).to(torch.float32)                                   # [C-1, sz, sy, sx]
    fg = F.grid_sample(onehot[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    background = 1.0 - fg.sum(dim=0, keepdim=True)
    out_label = torch.cat([background, fg], dim=0).argmax(dim=0, keepdim=True).to(torch.uint8)
    return out_image, out_label


def gaussian_blur(x: torch.Tensor, sigma_vox: float, axes: Sequence[int] = (0, 1, 2)) -> torch.Tensor:
    """Separable Gaussian blur of [1, z, y, x] along ``axes`` (0 = z), kernel radius 4 sigma, edges replicated."""
    radius = max(1, int(4 * sigma_vox + 0.5))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    kernel = kernel / kernel.sum()
    out = x[None]
    for axis in axes:
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0]


def _gamma(x: torch.Tensor, gamma: float, eps: float = 1e-7) -> torch.Tensor:
    """nnU-Net's gamma with ``retain_stats``: gamma on the [min, max]-scaled intensities, mean and SD restored."""
    mean, std = x.mean(), x.std()
    low = x.min()
    span = x.max() - low
    out = ((x - low) / (span + eps)) ** gamma * span + low
    return (out - out.mean()) / (out.std() + 1e-8) * std + mean


def intensity_transforms(x: torch.Tensor, params: SampleParams) -> torch.Tensor:
    """Noise, blur, brightness, contrast, low resolution, gamma (inverted, then plain) on one image [1, z, y, x]."""
    axes = (1, 2) if params.in_plane_only else (0, 1, 2)
    if params.noise_std is not None and params.noise_std > 0:
        generator = torch.Generator(device=x.device).manual_seed(params.noise_seed)
        x = x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * params.noise_std
    if params.blur_sigma_vox is not None:
        x = gaussian_blur(x, params.blur_sigma_vox, axes)
    if params.brightness is not None:
        x = x * params.brightness
    if params.contrast is not None:
        mean, low, high = x.mean(), x.min(), x.max()
        x = ((x - mean) * params.contrast + mean).clamp(low, high)
    if params.low_resolution_zoom is not None:
        shape = list(x.shape[1:])
        small = [max(1, int(round(s * params.low_resolution_zoom))) if a in axes else s
                 for a, s in enumerate(shape)]
        down = F.interpolate(x[None], size=small, mode="nearest")
        x = F.interpolate(down, size=shape, mode="trilinear", align_corners=False)[0]
    if params.gamma_inverted is not None:
        x = -_gamma(-x, params.gamma_inverted)
    if params.gamma is not None:
        x = _gamma(x, params.gamma)
    return x


def augment_sample(image: torch.Tensor, label: torch.Tensor, params: SampleParams, patch: Sequence[int],
                   num_classes: int, elastic: torch.Tensor | None = None, tissues: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample, already on the device: (domain randomisation,) spatial, intensity, mirroring. Returns image
    float32 and label uint8, both [1, pz, py, px]. ``tissues``: the tissue labels of the source crop, needed when
    ``params.synthetic_seed`` is set (the image is then rendered from them, :func:`.synthetic.synthesise`)."""
    if params.synthetic_seed is not None:
        if tissues is None:
            raise ValueError("domain randomisation needs the tissue label map of the sample")
        from .synthetic import synthesise

        image = synthesise(tissues, params.synthetic_seed)
    image, label = spatial_transform(image.float(), label, params, patch, num_classes, elastic)
    if params.regional_field is not None:
        image = image + regional_field(params.regional_field, image.shape[1:], image.device)
    image = intensity_transforms(image, params)
    dims = [1 + a for a, flip in enumerate(params.mirror_zyx) if flip]
    if dims:
        image, label = torch.flip(image, dims), torch.flip(label, dims)
    return image, label


def augment_batch(samples: Sequence, patch: Sequence[int], num_classes: int, device: torch.device | str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a list of :class:`~.data.Sample` to ``device`` and augment them: image float32 [B, 1, pz, py, px],
    label int64 [B, 1, pz, py, px]."""
    images, labels = [], []
    for sample in samples:
        image = sample.image.to(device, non_blocking=True)
        label = sample.label.to(device, non_blocking=True)
        elastic = sample.elastic.to(device, non_blocking=True) if sample.elastic is not None else None
        tissues = getattr(sample, "tissues", None)
        tissues = tissues.to(device, non_blocking=True) if tissues is not None else None
        image, label = augment_sample(image, label, sample.params, patch, num_classes, elastic, tissues)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels).long()
