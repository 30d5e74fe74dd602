"""Where inside a tumour a segmentation misses: attenuation and share found by depth under the true surface.

    python benchmarks/depth_profile.py IMAGE TRUTH [PREDICTION ...] [--bands-mm 0,2,4,6,10,15,25,80]

For each connected component of the truth mask (5 mL or more), the depth of every voxel under its surface (scipy's
Euclidean distance transform, in mm, with the image's spacing) is binned into bands; each band gets the median,
10th and 90th percentile of the image and the share above 150 HU (calcification on CT), and, per prediction, the
share of the band it covers. The liver's median (if ``--liver`` is given) sets the tumour's contrast. A model that
stops at a calcified ring shows the ring's band found and the bands outside it missed; one that misses faint
viable tumour shows the outer bands missed.

Predictions are resampled onto the image's grid (nearest neighbour), so any segmentation written by ``hbseg
segment`` can be passed as it is; the truth and liver masks must be on the image's grid, and an empty truth is
refused (exit 2, the file named).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

MIN_COMPONENT_ML = 5.0


class UnreadableFile(Exception):
    """A file that cannot be read or cannot be measured against the image (named in the message)."""


def _read(path: str) -> sitk.Image:
    try:
        return sitk.ReadImage(path)
    except RuntimeError as exc:
        raise UnreadableFile(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from exc


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4) \
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3) \
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


def _read_on(path: str, reference: sitk.Image, *, resample: bool) -> np.ndarray:
    """The mask at ``path`` on the image's grid: a prediction is resampled (nearest neighbour); a truth or liver
    mask on another grid is refused (depths would be measured on a mask moved from where it was drawn)."""
    image = _read(path)
    if not _same_grid(image, reference):
        if not resample:
            raise UnreadableFile(f"{path} is not on the image's grid (size, spacing, origin or direction differ)")
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(image) > 0


def profile(image_path: str, truth_path: str, predictions: list[str], bands_mm: list[float],
            liver_path: str | None = None) -> list[str]:
    """The report's lines (see the module docstring)."""
    reference = _read(image_path)
    values = sitk.GetArrayFromImage(reference).astype(np.float32)
    spacing_zyx = reference.GetSpacing()[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    truth = _read_on(truth_path, reference, resample=False)
    if not truth.any():
        raise UnreadableFile(f"{truth_path} holds no tumour")
    found = [_read_on(p, reference, resample=True) for p in predictions]
    lines = []
    if liver_path:
        liver = _read_on(liver_path, reference, resample=False) & ~ndimage.binary_dilation(truth, iterations=3)
        lines.append(f"liver outside the tumour: median {np.median(values[liver]):.0f}")
    labels, n = ndimage.label(truth)
    for component in range(1, n + 1):
        mask = labels == component
        volume_ml = float(mask.sum()) * voxel_ml
        if volume_ml < MIN_COMPONENT_ML:
            continue
        depth_mm = ndimage.distance_transform_edt(mask, sampling=spacing_zyx)
        lines.append(f"component {component}: {volume_ml:.0f} mL")
        for lo, hi in zip(bands_mm[:-1], bands_mm[1:], strict=True):
            band = mask & (depth_mm > lo) & (depth_mm <= hi)
            if not band.any():
                continue
            v = values[band]
            shares = " ".join(f"found {(f & band).sum() / band.sum():.2f}" for f in found)
            lines.append(f"  depth {lo:g}-{hi:g} mm: {band.sum()} voxels, median {np.median(v):.0f} "
                         f"(p10 {np.percentile(v, 10):.0f}, p90 {np.percentile(v, 90):.0f}), "
                         f"above 150: {np.mean(v > 150):.3f} {shares}".rstrip())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("truth")
    parser.add_argument("predictions", nargs="*")
    parser.add_argument("--liver", help="liver mask (for the liver's median)")
    parser.add_argument("--bands-mm", default="0,2,4,6,10,15,25,80", help="band edges in mm, comma-separated")
    args = parser.parse_args(argv)
    try:
        bands = [float(b) for b in args.bands_mm.split(",")]
    except ValueError:
        parser.error(f"--bands-mm: not a list of numbers: {args.bands_mm!r}")
    if len(bands) < 2 or any(b >= a for a, b in zip(bands[1:], bands[:-1], strict=True)):
        parser.error("--bands-mm: at least two increasing edges")
    try:
        lines = profile(args.image, args.truth, args.predictions, bands, args.liver)
    except UnreadableFile as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
