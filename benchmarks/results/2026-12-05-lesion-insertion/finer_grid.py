"""The semi-synthetic cases on a clinical in-plane grid: resampled from 3 mm to 0.75 mm pixels (B-spline; masks
nearest) with white noise of 15 HU added, as a 0.75 mm reconstruction would have. Asks whether the 3 mm test file
(downsampled by its authors) understates the model. Writes a manifest beside the new images.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/results/2026-12-05-lesion-insertion/finer_grid.py IN_DIR OUT_DIR
"""
import csv
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
rows = list(csv.DictReader(open(src / "manifest.csv")))
rng = np.random.default_rng(0)


def finer(path: Path, interpolator, noise_hu: float = 0.0) -> sitk.Image:
    image = sitk.ReadImage(str(path))
    spacing = (0.75, 0.75, image.GetSpacing()[2])
    size = [round(image.GetSize()[0] * image.GetSpacing()[0] / 0.75),
            round(image.GetSize()[1] * image.GetSpacing()[1] / 0.75), image.GetSize()[2]]
    origin = image.TransformContinuousIndexToPhysicalPoint([-0.5 + 0.75 / image.GetSpacing()[0] / 2,
                                                            -0.5 + 0.75 / image.GetSpacing()[1] / 2, 0])
    result = sitk.Resample(image, size, sitk.Transform(), interpolator, origin, spacing, image.GetDirection(),
                           -1024 if noise_hu else 0, image.GetPixelID())
    if noise_hu:
        array = sitk.GetArrayFromImage(result).astype(np.float32)
        array += rng.normal(0, noise_hu, array.shape).astype(np.float32)
        back = sitk.GetImageFromArray(np.clip(np.rint(array), -1024, 3071).astype(np.int16))
        back.CopyInformation(result)
        result = back
    return result


for row in rows:
    sitk.WriteImage(finer(src / row["image"], sitk.sitkBSpline, 15.0), str(out / row["image"]))
    if row["tumor"] != "none":
        sitk.WriteImage(finer(src / row["tumor"], sitk.sitkNearestNeighbor), str(out / row["tumor"]))
    liver = out / f"{row['case']}_liver.nii.gz"
    sitk.WriteImage(finer(Path(row["liver"]), sitk.sitkNearestNeighbor), str(liver))
    row["liver"] = liver.name
    row["note"] = row["note"] + "; 0.75 mm pixels + 15 HU noise"
with open(out / "manifest.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
