"""One synthetic case in memory: :func:`generate_case` -> :class:`PhantomCase`.

Reproducibility: every random choice of case ``index`` comes from generators seeded with ``(seed, index, part)``,
so case k is the same whatever the number of cases, and the child (anatomy, tumour) is the same in CT and MRI and
at both sizes; only the acquisition (grid, noise) depends on modality and size.

Grids (identity direction, LPS, body centred in-plane; ``spacing_mm`` is (x, y, z)):

- ``full`` CT: 512 x 512, 0.5-0.9 mm in-plane (field of view 1.2-1.9 x the body), slices 1.25, 2, 2.5, 3 or 5 mm;
- ``full`` MRI: 0.7-1.5 mm in-plane, matrix a multiple of 16 up to 512 (rectangular field of view), 4-8 mm slices;
- ``small`` (fast tests): 128 x 128 in-plane at whatever spacing fits the body (0.9-2.9 mm), at most 48 slices
  (CT 2.5 mm or more, MRI 4 mm or more). Same anatomy, coarser grid. The full variety (:mod:`.variety`) keeps
  small slices at most 7 mm thick, so a long scan of an adult with the pelvis has up to about 90 slices.

The scan covers from 10-25 mm above the right hemidiaphragm to below the kidneys and the tumour.

Speed, measured on the project's 2-core CPU box while other jobs kept it busy (load average 2.3-4.2), with the
default 2 threads:

- small case: 0.3-0.85 s wall (0.3-0.65 s CPU), CT or MRI;
- full-size CT, toddler (11-39 M voxels, 1.25-5 mm slices): 1.5-4.3 s to generate (1.5-3.1 s CPU), plus
  0.6-3.3 s to write the six NIfTI files;
- worst case, a 12-year-old at 1.25 mm (218-233 slices, 57-61 M voxels): 3.3-5.1 s to generate (3.2-3.4 s CPU),
  plus 3.5-5.1 s to write.

The cost is kept down by evaluating the anatomy on the model grid (every other voxel in-plane, 2.5 mm along z),
restricting every structure to its bounding box, and doing image-grid work (upsampling, noise) a few slices at
a time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np

from ..errors import ConfigError
from ..io import Geometry, Volume
from . import ct, mri
from .anatomy import Anatomy, Child, sample_anatomy, sample_child
from .annotators import RATERS, Annotators
from .body import early_structures, late_structures
from .fields import F32, FAR_MM
from .hilum import sample_hilum
from .organs import SECTIONS, calibrate_liver, liver_section, organ_structures
from .render import Displacement, ModelGrid, Renderer
from .tissues import Tissue
from .trunk import after_organs, before_organs
from .tumour import Lesion, add_calcified_shell, coarse_sample, pretext_group, sample_lesions
from .variety import Variety, adapt_anatomy, check_variety, sample_child_full, sample_variety

MODALITIES = ("ct", "mri")
SIZES = ("small", "full")
SMALL_MAX_XYZ = (128, 128, 48)
#: Full variety, small size: slices at most this thick (more than 48 slices for long scans of adults).
SMALL_MAX_THICKNESS_FULL_MM = 7.0
#: Model-grid voxels per slab (memory per slab about 20 bytes each).
_SLAB_VOXELS = 1_500_000
#: Image slices finished at a time (noise, type conversion).
_CHUNK_SLICES = 4
#: A section counts as involved when it holds this share of the tumour volume.
SECTION_THRESHOLD = 0.05


@dataclasses.dataclass
class PhantomCase:
    """A synthetic case. Volumes share one grid; masks are uint8 0/1; ``tissues`` holds :class:`~.tissues.Tissue`
    labels. CT ``image`` is int16 HU, MRI ``image`` is uint16 (arbitrary scanner units)."""

    case_id: str
    modality: str
    size: str
    seed: int
    index: int
    child: Child
    image: Volume
    tumor: Volume
    liver: Volume
    raters: dict[str, Volume]
    tissues: Volume
    info: dict

    @property
    def age_months(self) -> float:
        return self.child.age_months

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return self.image.spacing_mm

    @property
    def tumor_ml(self) -> float:
        return float(self.tumor.array.sum(dtype=np.int64)) * self.tumor.voxel_volume_ml

    @property
    def liver_ml(self) -> float:
        return float(self.liver.array.sum(dtype=np.int64)) * self.liver.voxel_volume_ml


def case_id_for(modality: str, index: int) -> str:
    return f"hb_{modality}_{index:03d}"


def _rng(seed: int, index: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), *parts])


def _check(modality: str, size: str, seed: int, index: int) -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    if size not in SIZES:
        raise ConfigError(f"unknown phantom size {size!r}; use one of {', '.join(SIZES)}")
    if int(seed) < 0 or int(index) < 0:
        raise ConfigError(f"seed and case index must be non-negative integers (got seed {seed}, index {index})")


#: Full variety: CT slice thicknesses (mm) and their probabilities.
_CT_THICKNESS_FULL = ([0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0, 7.0], [0.05, 0.1, 0.15, 0.1, 0.15, 0.1, 0.25, 0.1])
#: Full variety, full-size CT: at most this many voxels (the demo's largest cases have about 61 million).
_FULL_MAX_VOXELS = 80e6


def _acquisition(rng, modality: str, size: str, an: Anatomy, z_lo: float, z_hi: float, variety: Variety,
                 half_width_mm: float):
    """Spacing (x, y, z), size (x, y, z) and origin of the image grid; model grid (factor, sub, zfactor)."""
    y_lo, y_hi = -an.b, an.y_back + (18.0 if modality == "ct" else 0.0)
    extent_x, extent_y = 2 * half_width_mm, y_hi - y_lo
    length = z_hi - z_lo
    share = variety.fov_share  # < 1: the field of view cuts the body off at the sides
    if size == "small":
        nx = ny = SMALL_MAX_XYZ[0]
        spacing_xy = rng.uniform(1.1, 1.3) * max(extent_x, extent_y) / nx
        if share < 1:
            spacing_xy = share * max(extent_x, extent_y) / nx
        min_t = 2.5 if modality == "ct" else 4.0
        thickness = max(np.ceil(length / SMALL_MAX_XYZ[2] * 4) / 4, min_t)
        if variety.full:
            thickness = min(thickness, SMALL_MAX_THICKNESS_FULL_MM)  # adults with a pelvis: more slices
        spacing = (spacing_xy, spacing_xy, thickness)
        model = (1, 1, 1)
    elif modality == "ct":
        nx = ny = 512
        needed = 1.08 * max(extent_x, extent_y) / nx
        if not variety.full:
            spacing_xy = float(np.clip(rng.uniform(1.2, 1.9) * max(extent_x, extent_y) / nx, max(0.5, needed), 0.9))
            thickness = float(rng.choice([1.25, 2.0, 2.5, 3.0, 5.0], p=[0.2, 0.15, 0.3, 0.15, 0.2]))
        else:
            wanted = rng.uniform(1.1, 1.6) * max(extent_x, extent_y) / nx
            spacing_xy = float(min(max(wanted, 0.5, needed), 0.98))
            if share < 1:
                spacing_xy = float(share * max(extent_x, extent_y) / nx)
            thickness = float(rng.choice(_CT_THICKNESS_FULL[0], p=_CT_THICKNESS_FULL[1]))
            # Generation time grows with the voxels: thin slices of a long scan move to the next thickness.
            for option in _CT_THICKNESS_FULL[0]:
                if option >= thickness and length / option * nx * ny <= _FULL_MAX_VOXELS:
                    thickness = float(option)
                    break
        spacing = (spacing_xy, spacing_xy, thickness)
        model = (2, int(np.ceil(thickness / 2.5 - 1e-6)), max(int(round(2.5 / thickness)), 1))
    else:
        spacing_xy = float(rng.uniform(0.7, 1.5))
        fov_x = rng.uniform(1.1, 1.3) * extent_x
        fov_y = max(rng.uniform(1.1, 1.3) * extent_y, 0.7 * fov_x)
        nx = int(min(np.ceil(fov_x / spacing_xy / 16) * 16, 512))
        ny = int(min(np.ceil(fov_y / spacing_xy / 16) * 16, 512))
        spacing_xy = max(spacing_xy, 1.05 * extent_x / nx, 1.05 * extent_y / ny)
        thickness = float(np.round(rng.uniform(4.0, 8.0) * 2) / 2)
        if variety.full and rng.random() < 0.7:
            thickness = float(np.round(rng.uniform(6.0, 8.0) * 2) / 2)
        spacing = (spacing_xy, spacing_xy, thickness)
        model = (2 if spacing_xy < 1.0 else 1, int(np.ceil(thickness / 2.5 - 1e-6)), 1)
    nz = max(int(np.ceil(length / spacing[2] - 1e-6)), 2)
    origin = (-(nx - 1) * spacing[0] / 2, (y_lo + y_hi) / 2 - (ny - 1) * spacing[1] / 2, z_lo)
    return tuple(float(v) for v in spacing), (int(nx), int(ny), nz), origin, model


def generate_case(modality: str, seed: int, index: int = 0, size: str = "small", *,
                  workers: int | None = None, variety: str = "demo") -> PhantomCase:
    """Generate case ``index`` of the phantom series ``seed`` in memory (no files).

    ``modality``: "ct" or "mri"; ``size``: "small" (at most 128x128x48, for tests) or "full". ``workers``: threads
    for the slabs (default: up to 2); the result does not depend on it. ``variety``: "demo" (the original
    phantom, the default) or "full" (hard negatives, contrast phases, adults, acquisition variety; see
    :mod:`.variety`).
    """
    _check(modality, size, seed, index)
    check_variety(variety)
    modality_code, size_code = MODALITIES.index(modality), SIZES.index(size)
    full = variety == "full"
    child = sample_child_full(_rng(seed, index, 1)) if full else sample_child(_rng(seed, index, 1))
    an = sample_anatomy(_rng(seed, index, 2), child)
    vary = sample_variety(_rng(seed, index, 8, modality_code), modality, variety)
    trunk = adapt_anatomy(_rng(seed, index, 9, modality_code), an, vary)
    liver_normal_ml = calibrate_liver(an, child.normal_liver_ml)
    hilum = sample_hilum(_rng(seed, index, 12), an) if full else None
    lesions = sample_lesions(_rng(seed, index, 3), an)
    if full:
        add_calcified_shell(_rng(seed, index, 14), lesions[0])

    lesion_lo = np.min([les.bounds()[0] for les in lesions], axis=0)
    lesion_hi = np.max([les.bounds()[1] for les in lesions], axis=0)
    z_lo = float(min(an.z_bottom, lesion_lo[2] - 10.0))
    z_hi = float(max(an.z_top, lesion_hi[2] + 5.0))
    rng_grid = _rng(seed, index, 4, modality_code, size_code)
    half_width = an.a if trunk is None else trunk.half_width_mm(an)
    spacing, size_xyz, origin, (factor, sub, zfactor) = _acquisition(rng_grid, modality, size, an, z_lo, z_hi,
                                                                     vary, half_width)
    geometry = Geometry(size_xyz, spacing, origin)
    axes = [origin[i] + spacing[i] * np.arange(size_xyz[i]) for i in range(3)]
    grid = ModelGrid(axes[0], axes[1], axes[2], factor, sub, zfactor)
    lo = [float(a[0]) - 10 for a in axes]
    hi = [float(a[-1]) + 10 for a in axes]

    rng_look = _rng(seed, index, 5, modality_code)
    rng_vary = _rng(seed, index, 10, modality_code)
    adult = child.age_months >= 216
    outside = None
    if modality == "ct":
        look = ct.appearance(rng_look, lo, hi)
        background = ct.AIR_HU
        noise_sd = ct.noise_sd_hu(rng_look, spacing[2])
        acquisition = None
        if full:
            ct.apply_phase(look, vary.phase, rng_vary, adult=adult)
            vary.liver_regional_sd_hu = ct.add_regional_enhancement(look, vary.phase,
                                                                    _rng(seed, index, 11, modality_code), lo, hi)
            ct.add_hilum_tissues(look, vary.phase, _rng(seed, index, 13, modality_code))
            vary.contrast_strength = ct.weaken_contrast(look, vary.phase, _rng(seed, index, 15, modality_code))
            look.means[int(Tissue.TABLE)] = float(rng_vary.uniform(-500.0, 100.0))  # carbon fibre to dense foam
            if vary.circle_value is not None:
                outside = _outside_circle(axes[0], axes[1])
    else:
        look = mri.appearance(rng_look, lo, hi, half_fov_x_mm=size_xyz[0] * spacing[0] / 2)
        background = 0.0
        acquisition = mri.Acquisition(rng_look, lo, hi, look.means[int(Tissue.LIVER)], an.b)
        noise_sd = acquisition.noise_sd
        if full:
            mri.apply_sequence(look, vary.phase, rng_vary, adult=adult)
            mri.add_hilum_tissues(look, vary.phase, _rng(seed, index, 13, modality_code))
            acquisition.vary(vary.bias_sd, vary.ghost, rng_vary, size_xyz[1])

    early = early_structures(an)
    if not vary.table:
        early = [st for st in early if st.name != "table"]
    if trunk is None:
        structures = early + organ_structures(an, lesions, hilum) + late_structures(an)
    else:
        structures = (early + before_organs(an, trunk) + organ_structures(an, lesions, hilum)
                      + late_structures(an) + after_organs(an, trunk))
    for i, lesion in enumerate(lesions):
        structures += lesion.structures(record=f"lesion{i}")
    displacement = Displacement([(les.centre, les.displace_radius_mm) for les in lesions], (0.0, an.vb_y),
                                1.6 * an.vb_radius)
    renderer = Renderer(grid, structures, look, background, displacement)

    surface, volume = _surface_and_volume(lesions)
    k_lo = int(np.clip(np.floor((lesion_lo[2] - origin[2]) / spacing[2]), 0, size_xyz[2] - 1))
    k_hi = int(np.clip(np.ceil((lesion_hi[2] - origin[2]) / spacing[2]), 0, size_xyz[2] - 1))
    raters = Annotators.sample(_rng(seed, index, 6), surface / max(volume, 1e-6), lesion_lo - 10, lesion_hi + 10,
                               axes[2], [les.target_diameter_mm for les in lesions], (k_lo, k_hi))

    shape = geometry.shape_zyx
    out = {"image": np.empty(shape, dtype=np.int16 if modality == "ct" else np.uint16),
           "tissues": np.zeros(shape, dtype=np.uint8), "tumor": np.zeros(shape, dtype=np.uint8),
           "liver": np.zeros(shape, dtype=np.uint8), **{r: np.zeros(shape, dtype=np.uint8) for r in RATERS}}
    slab = max(1, _SLAB_VOXELS * zfactor // (grid.x.size * grid.y.size * sub))
    slab = max(zfactor, slab // zfactor * zfactor)
    starts = list(range(0, size_xyz[2], slab))

    def process(k0: int) -> np.ndarray:
        k1 = min(k0 + slab, size_xyz[2])
        res = renderer.render_slab(k0, k1)
        # Image-grid work a few slices at a time (temporaries stay small enough to be recycled).
        for c0 in range(k0, k1, _CHUNK_SLICES):
            c1 = min(c0 + _CHUNK_SLICES, k1)
            out["tissues"][c0:c1] = renderer.inplane(res.labels[c0 - k0:c1 - k0], linear=False)
            image = renderer.inplane(res.image[c0 - k0:c1 - k0])
            rng_noise = _rng(seed, index, 7, modality_code, size_code, c0)
            if modality == "ct" and full:
                out["image"][c0:c1] = ct.finish(image, rng_noise, noise_sd, kernel=vary.kernel,
                                                streaks_hu=vary.streaks_hu, spacing_mm=spacing[0], outside=outside,
                                                outside_hu=vary.circle_value)
            elif modality == "ct":
                out["image"][c0:c1] = ct.finish(image, rng_noise, noise_sd)
            else:
                out["image"][c0:c1] = acquisition.finish(image, rng_noise, axes[0], axes[1], axes[2][c0:c1])
        _masks(res, out, k0, k1, len(lesions), raters, axes)
        return _section_volumes(res, len(lesions), an, displacement, grid)

    n_workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if n_workers > 1 and len(starts) > 1:
        with concurrent.futures.ThreadPoolExecutor(n_workers) as pool:
            per_slab = list(pool.map(process, starts))
    else:
        per_slab = [process(k0) for k0 in starts]
    sections_ml = np.sum(per_slab, axis=0)

    case_id = case_id_for(modality, index)
    path_note = {"case": case_id}
    volumes = {name: Volume(array, geometry, None, dict(path_note)) for name, array in out.items()}
    involved = [bool(v > SECTION_THRESHOLD * max(sections_ml.sum(), 1e-9)) for v in sections_ml]
    info = {
        "sex": child.sex, "height_cm": child.height_cm, "weight_kg": child.weight_kg,
        "expected_liver_ml": round(child.normal_liver_ml, 1), "normal_liver_ml": round(liver_normal_ml, 1),
        "n_lesions": len(lesions),
        "lesion_diameters_mm": [round(les.target_diameter_mm, 1) for les in lesions],
        "calcified": bool(any(les.calcifications or les.shell for les in lesions)),
        "exophytic": bool(lesions[0].bulge_direction is not None),
        "sections": {name: bool(v) for name, v in zip(SECTIONS, involved, strict=True)},
        "sections_involved": int(sum(involved)), "pretext": pretext_group(involved),
        "annotator_sigma_mm": round(raters.sigma_mm, 3), "annotator_target_dice": round(raters.target_dice, 4),
        "r3_includes_vessel": raters.include_vessel_slices is not None, "r3_misses_lesion": bool(raters.r3_skips),
        "noise_sd": round(float(noise_sd), 4), "model_grid": {"factor": factor, "sub": sub, "zfactor": zfactor},
        "variety": vary.describe(),
    }
    return PhantomCase(case_id, modality, size, int(seed), int(index), child, volumes["image"], volumes["tumor"],
                       volumes["liver"], {r: volumes[r] for r in RATERS}, volumes["tissues"], info)


def _outside_circle(x_mm: np.ndarray, y_mm: np.ndarray) -> np.ndarray:
    """(ny, nx) bool: outside the reconstruction circle inscribed in the field of view."""
    cx, cy = (x_mm[0] + x_mm[-1]) / 2, (y_mm[0] + y_mm[-1]) / 2
    radius = min(x_mm[-1] - x_mm[0], y_mm[-1] - y_mm[0]) / 2
    return ((x_mm[None, :] - cx) ** 2 + (y_mm[:, None] - cy) ** 2) > radius ** 2


def _surface_and_volume(lesions: list[Lesion]) -> tuple[float, float]:
    """Surface (mm^2) and volume (mm^3) of the lesions, from a coarse grid (for the annotators' calibration):
    the surface is the volume of the band |field| < h divided by its width 2h."""
    surface = volume = 0.0
    for lesion in lesions:
        vol_ml, f, axes = coarse_sample(lesion)
        step = float(axes[0][1] - axes[0][0])
        band = float((np.abs(f) < step).sum()) * step ** 3
        surface += band / (2 * step)
        volume += vol_ml * 1000.0
    return surface, volume


def _masks(res, out: dict, k0: int, k1: int, n_lesions: int, raters: Annotators, axes) -> None:
    """Ground truth, liver and annotator masks of one slab, from the recorded fields."""
    tumour = out["tumor"][k0:k1]
    boxes = []
    for i in range(n_lesions):
        if f"lesion{i}" in res.fields:
            box, field = res.fields[f"lesion{i}"]
            tumour[box] |= (field < 0)
            boxes.append((i, box, field))
    if "liver" in res.fields:
        box, field = res.fields["liver"]
        out["liver"][k0:k1][box] |= (field < 0)
    out["liver"][k0:k1] |= tumour
    if not boxes:
        return
    # The annotators draw on the union of the lesion boxes, grown by a few mm.
    zyx_lo = [min(b[1][d].start for b in boxes) for d in range(3)]
    zyx_hi = [max(b[1][d].stop for b in boxes) for d in range(3)]
    union = tuple(slice(lo_, hi_) for lo_, hi_ in zip(zyx_lo, zyx_hi, strict=True))
    shape = tuple(hi_ - lo_ for lo_, hi_ in zip(zyx_lo, zyx_hi, strict=True))
    fields = []
    for i in range(n_lesions):
        f = np.full(shape, F32(FAR_MM), dtype=F32)
        for j, box, field in boxes:
            if j == i:
                f[tuple(slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union, strict=True))] = field
        fields.append(f)
    z_idx = np.arange(k0 + union[0].start, k0 + union[0].stop)
    grid_axes = (axes[0][union[2]], axes[1][union[1]], axes[2][z_idx])
    labels = out["tissues"][k0:k1][union]
    for rater in RATERS:
        out[rater][k0:k1][union] |= raters.draw(rater, fields, grid_axes, labels, z_idx)


def _section_volumes(res, n_lesions: int, an: Anatomy, displacement: Displacement, grid: ModelGrid) -> np.ndarray:
    """Tumour volume (mL) per liver section in this slab, by where the tumour's tissue came from."""
    volumes = np.zeros(len(SECTIONS))
    voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    for i in range(n_lesions):
        if f"lesion{i}" not in res.model_fields:
            continue
        block, field = res.model_fields[f"lesion{i}"]
        inside = field < 0
        if not inside.any():
            continue
        sx, sy, _ = displacement.source(block.x, block.y, block.z)
        section = liver_section(an, sx[inside], sy[inside])
        volumes += np.bincount(section, minlength=len(SECTIONS)) * voxel_ml
    return volumes
