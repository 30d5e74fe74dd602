"""Small synthetic CT/MRI cases, datasets on disk and tiny plans for the preprocessing, bundle, network, predictor,
training and Slicer tests (``Testing/test_preprocess_synthetic.py`` checks that the cases look like what they imitate,
so the tests built on them rest on something real)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from HepatoblastomaSegLib.io import Geometry, Volume, write_volume
from HepatoblastomaSegLib.preprocess import Plans, plan_topology
from HepatoblastomaSegLib.preprocess.plans import CTIntensity, SpacingPlan


def synthetic_case(modality: str = "ct", *, shape_zyx=(10, 40, 44), spacing_mm_xyz=(1.6, 1.5, 4.0), seed: int = 0,
                   direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), origin_mm=(-30.0, 20.0, 5.0), bias: bool = True
                   ) -> tuple[Volume, Volume, Volume]:
    """(image, tumour, liver) on one grid: an elliptic body in air with a liver holding a round tumour.

    CT: int16 HU (air -1000, fat -80, liver 110, tumour 70, Gaussian noise 12 HU). MRI: float32 T2-like magnitudes
    (air ~5, body 250, liver 180, tumour 420) times a smooth bias field (when ``bias``), Rician-ish noise.
    """
    rng = np.random.default_rng(seed)
    geometry = Geometry(shape_zyx[::-1], spacing_mm_xyz, origin_mm, direction)
    z, y, x = np.indices(shape_zyx, dtype=float)
    nz, ny, nx = shape_zyx
    cy, cx = ny / 2 + rng.uniform(-1, 1), nx / 2 + rng.uniform(-1, 1)
    body = ((y - cy) / (0.45 * ny)) ** 2 + ((x - cx) / (0.45 * nx)) ** 2 < 1
    liver = body & (((y - cy + 0.08 * ny) / (0.3 * ny)) ** 2 + ((x - cx - 0.06 * nx) / (0.3 * nx)) ** 2
                    + ((z - nz / 2) / (0.45 * nz)) ** 2 < 1)
    radius = 0.12 * min(ny, nx) * rng.uniform(0.9, 1.2)
    tumor = liver & (((y - cy + 0.1 * ny) ** 2 + (x - cx - 0.08 * nx) ** 2) / radius ** 2
                     + ((z - nz / 2) / (0.3 * nz)) ** 2 < 1)
    if modality == "ct":
        image = np.full(shape_zyx, -1000.0)
        image[body], image[liver], image[tumor] = -80.0, 110.0, 70.0
        image += rng.normal(0, 12, shape_zyx)
        image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    else:
        image = np.full(shape_zyx, 5.0)
        image[body], image[liver], image[tumor] = 250.0, 180.0, 420.0
        if bias:
            image *= np.exp(0.35 * (x - nx / 2) / nx + 0.25 * (y - ny / 2) / ny)
        image = np.abs(image + rng.normal(0, 6, shape_zyx)).astype(np.float32)
    tumor_v = Volume(tumor.astype(np.uint8), geometry)
    liver_v = Volume((liver | tumor).astype(np.uint8), geometry)
    return Volume(image, geometry), tumor_v, liver_v


def write_dataset(folder: Path, modality: str = "ct", *, n_cases: int = 3, with_liver: bool = True,
                  spacings=None, shapes=None, seed: int = 0) -> Path:
    """A dataset folder with ``manifest.csv`` (case,image,tumor[,liver]) and NIfTI files; returns the folder."""
    folder = Path(folder)
    rows = []
    for i in range(n_cases):
        kw = {}
        if spacings is not None:
            kw["spacing_mm_xyz"] = spacings[i]
        if shapes is not None:
            kw["shape_zyx"] = shapes[i]
        image, tumor, liver = synthetic_case(modality, seed=seed + i, **kw)
        case = f"case{i:02d}"
        write_volume(image, folder / case / "image.nii.gz")
        write_volume(tumor, folder / case / "tumor.nii.gz")
        row = {"case": case, "image": f"{case}/image.nii.gz", "tumor": f"{case}/tumor.nii.gz"}
        if with_liver:
            write_volume(liver, folder / case / "liver.nii.gz")
            row["liver"] = f"{case}/liver.nii.gz"
        rows.append(row)
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def make_plans(spacing_zyx=(4.0, 1.5, 1.5), median_zyx=(8, 32, 32), labels=None) -> Plans:
    topo = plan_topology(spacing_zyx, median_zyx, num_cases=10)
    return Plans(modality="ct", labels=labels or {"background": 0, "tumor": 1},
                 spacing=SpacingPlan(tuple(spacing_zyx[::-1])), topology=topo,
                 ct=CTIntensity((0.0, 350.0), (0.5, 99.5), (20.0, 200.0), 100.0, 30.0))
