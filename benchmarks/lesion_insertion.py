"""Semi-synthetic test cases: a hepatoblastoma-like lesion inserted into the liver of a real CT, whose truth is known.

No real CT with a liver tumour and its mask was available to us (``benchmarks/real_scans.md``). This script makes the
nearest thing from a real CT that has an organ label map (TotalSegmentator's "total" task, version 2 label numbers):

1. **Phase.** ``portal_venous`` gives an unenhanced scan the look of the portal-venous phase the models are meant for:
   each labelled organ is shifted so that its median reaches a typical portal-venous level (liver 105 HU, spleen 115,
   kidneys 160, pancreas 95, aorta 160, portal vein 165, IVC 130; table ``PORTAL_VENOUS_HU``). The shift is smoothed
   over about one voxel so the organ edges keep a partial-volume rim. ``native`` and ``enhanced`` leave the scan as
   it is (``enhanced``: a scan already contrast-enhanced).
2. **Lesion.** Each requested volume (mL) becomes one lobulated lesion inside the liver mask: a sphere whose radius is
   perturbed by a smooth random field, clipped to the liver and grown until it holds the volume asked for. Its
   attenuation is a hepatoblastoma's on that phase relative to the liver (portal-venous or enhanced: 30-45 HU below
   the enhanced liver; native: 8-15 HU below), heterogeneous (a smooth field, +-8 HU), with a necrotic core
   (15-30 HU) in lesions over 50 mL. The scan's own noise and texture are kept: the lesion is added as an offset to
   the real voxels, with a one-voxel partial-volume edge.

What this measures and what it does not: real anatomy, real noise and real adult organs around a lesion we drew. It
tells whether the models find a hypodense liver mass and leave the rest of a real abdomen alone; it is not a real
tumour (no mass effect on its neighbours, no real margin, no calcification), so its Dice is not the "real CT with
liver tumours" figure of the issue. Every output says "semi-synthetic" in its manifest note.

Run by hand (real scans never enter the repository; the inputs are listed in ``benchmarks/real_scans.md``)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/lesion_insertion.py CT.nii.gz LABELS.nii.gz OUT_DIR \
        [--case NAME:PHASE:ML[+ML...]] [--seed 0] [--liver-label N] [--no-necrosis]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/real_scans.py OUT_DIR/manifest.csv --json out.json

Without ``--case`` the default set is written: tumour-free controls in both phases, one 150 mL lesion, two lesions of
60 + 30 mL, one 300 mL lesion (portal-venous) and one 150 mL lesion on the native scan. OUT_DIR must not exist.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from HepatoblastomaSegLib.io import read_volume
from HepatoblastomaSegLib.io.volume import Volume, write_volume

LIVER_LABEL = 5

# TotalSegmentator v2 "total" labels: (name, median attenuation in the portal-venous phase, HU). Typical adult levels
# at 70-80 s after contrast; labels not listed (bone, lung, bowel, fat, muscle) keep their unenhanced values.
PORTAL_VENOUS_HU = {
    1: ("spleen", 115.0), 2: ("kidney_right", 160.0), 3: ("kidney_left", 160.0), 5: ("liver", 105.0),
    7: ("pancreas", 95.0), 8: ("adrenal_gland_right", 60.0), 9: ("adrenal_gland_left", 60.0),
    51: ("heart", 150.0), 52: ("aorta", 160.0), 62: ("superior_vena_cava", 130.0), 63: ("inferior_vena_cava", 130.0),
    64: ("portal_vein_and_splenic_vein", 165.0), 65: ("iliac_artery_left", 150.0), 66: ("iliac_artery_right", 150.0),
    67: ("iliac_vena_left", 125.0), 68: ("iliac_vena_right", 125.0),
}

# Lesion attenuation below the liver on each phase (HU), drawn per lesion.
LESION_DROP_HU = {"portal_venous": (30.0, 45.0), "enhanced": (30.0, 45.0), "native": (8.0, 15.0)}
NECROSIS_HU = (15.0, 30.0)
NECROSIS_MIN_ML = 50.0
PHASES = tuple(LESION_DROP_HU)

DEFAULT_CASES = ("pv_no_lesion:portal_venous:", "native_no_lesion:native:", "pv_150:portal_venous:150",
                 "pv_60_30:portal_venous:60+30", "pv_300:portal_venous:300", "native_150:native:150")


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    name: str
    phase: str
    lesion_volumes_ml: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> CaseSpec:
        parts = text.split(":")
        if len(parts) != 3 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", parts[0]) or parts[1] not in PHASES:
            raise SystemExit(f"--case {text!r}: expected NAME:PHASE:ML[+ML...], NAME letters, digits, '_', '-' or "
                             f"'.', PHASE one of {', '.join(PHASES)}")
        try:
            volumes = tuple(float(v) for v in parts[2].split("+") if v)
        except ValueError:
            raise SystemExit(f"--case {text!r}: lesion volumes must be numbers of mL joined by '+'") from None
        if any(v <= 0 for v in volumes):
            raise SystemExit(f"--case {text!r}: lesion volumes must be positive")
        return cls(parts[0], parts[1], volumes)


def enhancement_offset(image: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Per-voxel HU to add for the portal-venous look: each listed organ's target minus its own median, smoothed."""
    offset = np.zeros(image.shape, dtype=np.float32)
    for label, (_, target_hu) in PORTAL_VENOUS_HU.items():
        organ = labels == label
        if organ.any():
            offset[organ] = target_hu - float(np.median(image[organ]))
    return ndimage.gaussian_filter(offset, sigma=_sigma_voxels(1.0, spacing_zyx))


def _sigma_voxels(sigma_mm: float, spacing_zyx) -> tuple[float, ...]:
    return tuple(sigma_mm / s for s in spacing_zyx)


def _smooth_field(shape, spacing_zyx, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma_mm``."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), _sigma_voxels(sigma_mm, spacing_zyx))
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def draw_lesion(liver: np.ndarray, taken: np.ndarray, volume_ml: float, spacing_zyx, rng: np.random.Generator
                ) -> np.ndarray:
    """A lobulated lesion of about ``volume_ml`` inside ``liver``, not overlapping ``taken``; raises if none fits."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    free = liver & ~ndimage.binary_dilation(taken, iterations=2)
    depth_mm = ndimage.distance_transform_edt(free, sampling=spacing_zyx)
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    candidates = np.argwhere(depth_mm >= min(0.7 * radius_mm, 0.8 * float(depth_mm.max())))
    if free.sum() * voxel_ml < volume_ml or not len(candidates):
        raise SystemExit(f"no room for a {volume_ml:g} mL lesion in the liver ({free.sum() * voxel_ml:.0f} mL free)")
    centre = candidates[rng.integers(len(candidates))]
    grid = np.indices(liver.shape, dtype=np.float32)
    distance_mm = np.sqrt(sum(((grid[a] - centre[a]) * spacing_zyx[a]) ** 2 for a in range(3)))
    lobulation = 0.15 * _smooth_field(liver.shape, spacing_zyx, max(radius_mm / 2.0, 3.0), rng)
    low, high = 0.2 * radius_mm, 3.0 * radius_mm
    for _ in range(30):  # grow the radius until the clipped lesion holds the volume asked for
        scale = (low + high) / 2.0
        lesion = (distance_mm / scale + lobulation < 1.0) & free
        low, high = (scale, high) if lesion.sum() * voxel_ml < volume_ml else (low, scale)
    lesion = ndimage.binary_opening(lesion) & free
    labelled, count = ndimage.label(lesion)
    if count > 1:  # keep the piece holding most of it
        lesion = labelled == 1 + int(np.argmax(ndimage.sum(lesion, labelled, range(1, count + 1))))
    return lesion


def lesion_offset(image: np.ndarray, liver: np.ndarray, lesion: np.ndarray, phase: str, liver_level_hu: float,
                  spacing_zyx, rng: np.random.Generator, *, necrosis: bool = True) -> np.ndarray:
    """HU to add inside ``lesion`` so it reads as a hepatoblastoma on ``phase``: its level minus the liver's present
    level (so the real noise stays), heterogeneous, with a necrotic core when large."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    level = liver_level_hu - rng.uniform(*LESION_DROP_HU[phase])
    target = level + 8.0 * _smooth_field(image.shape, spacing_zyx, 4.0, rng)
    if necrosis and lesion.sum() * voxel_ml > NECROSIS_MIN_ML:
        depth = ndimage.distance_transform_edt(lesion, sampling=spacing_zyx)
        core = (depth > 0.5 * depth.max()) & (_smooth_field(image.shape, spacing_zyx, 6.0, rng) > -0.3)
        target = np.where(core, rng.uniform(*NECROSIS_HU), target)
    present = float(np.median(image[liver & ~lesion]))
    return np.where(lesion, target - present, 0.0).astype(np.float32)


def make_case(image: Volume, labels: np.ndarray, spec: CaseSpec, rng: np.random.Generator, *, necrosis: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
    """The semi-synthetic image (float HU) and its tumour mask for ``spec``."""
    spacing_zyx = tuple(reversed(image.spacing_mm))
    original = image.array.astype(np.float32)
    liver = labels == LIVER_LABEL
    if not liver.any():
        raise SystemExit(f"the label map has no liver (label {LIVER_LABEL})")
    enhanced = original + (enhancement_offset(original, labels, spacing_zyx) if spec.phase == "portal_venous" else 0)
    liver_level = float(np.median(enhanced[liver]))
    tumour = np.zeros(liver.shape, dtype=bool)
    offset = np.zeros(liver.shape, dtype=np.float32)
    for volume_ml in spec.lesion_volumes_ml:
        lesion = draw_lesion(liver, tumour, volume_ml, spacing_zyx, rng)
        offset += lesion_offset(enhanced, liver, lesion, spec.phase, liver_level, spacing_zyx, rng,
                                necrosis=necrosis)
        tumour |= lesion
    edge = ndimage.gaussian_filter(tumour.astype(np.float32), _sigma_voxels(0.5 * min(spacing_zyx), spacing_zyx))
    with np.errstate(invalid="ignore", divide="ignore"):  # spread each lesion's offset over its partial-volume rim
        spread = ndimage.gaussian_filter(offset, _sigma_voxels(0.5 * min(spacing_zyx), spacing_zyx))
        rim_offset = np.where(edge > 1e-3, spread / np.maximum(edge, 1e-3), 0.0)
    result = enhanced + np.where(tumour, offset, edge * rim_offset)
    return result, tumour


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="a real CT (any format hbseg reads)")
    parser.add_argument("labels", type=Path, help="its organ label map (TotalSegmentator v2 'total' numbers)")
    parser.add_argument("out_dir", type=Path, help="a new folder for the cases and their manifest.csv")
    parser.add_argument("--case", action="append", dest="cases", metavar="NAME:PHASE:ML[+ML...]",
                        help=f"a case to write (repeatable; PHASE: {', '.join(PHASES)}; no ML: no lesion)")
    parser.add_argument("--liver-label", type=int, default=LIVER_LABEL,
                        help=f"the liver's label in LABELS (default {LIVER_LABEL}); with any other value the map is "
                             "taken as a liver mask only (no other organ is shifted to the portal-venous phase)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--necrosis", action=argparse.BooleanOptionalAction, default=True,
                        help=f"a necrotic core in lesions over {NECROSIS_MIN_ML:g} mL (default: on)")
    args = parser.parse_args()
    specs = [CaseSpec.parse(text) for text in (args.cases or DEFAULT_CASES)]
    if len({spec.name for spec in specs}) < len(specs):
        raise SystemExit("--case: every case needs its own name (its files are named after it)")
    if args.out_dir.exists():
        raise SystemExit(f"{args.out_dir}: already exists; choose a new folder")
    image = read_volume(args.image)
    labels = read_volume(args.labels)
    if not labels.geometry.matches(image.geometry):
        raise SystemExit(f"{args.labels}: not on the grid of {args.image}")
    label_map = labels.array.astype(np.int32)
    if args.liver_label != LIVER_LABEL:  # another numbering: keep only its liver, as TotalSegmentator's label
        label_map = np.where(label_map == args.liver_label, LIVER_LABEL, 0).astype(np.int32)
    if not (label_map == LIVER_LABEL).any():
        raise SystemExit(f"{args.labels}: no voxel has the liver's label {args.liver_label}")
    args.out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A new folder of our own beside the target (never a user's), renamed into place only when complete.
    partial = Path(tempfile.mkdtemp(prefix=f".{args.out_dir.name}.partial-", dir=args.out_dir.parent))
    try:
        write_cases(partial, image, label_map, specs, args)
        partial.rename(args.out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return 0


def write_cases(folder: Path, image: Volume, label_map: np.ndarray, specs: list[CaseSpec], args) -> None:
    """Each case's image and tumour mask, and the ``real_scans.py`` manifest, into ``folder``."""
    rows = []
    for index, spec in enumerate(specs):
        rng = np.random.default_rng([args.seed, index])
        array, tumour = make_case(image, label_map, spec, rng, necrosis=args.necrosis)
        write_volume(image.with_array(np.clip(np.rint(array), -1024, 3071).astype(np.int16)),
                     folder / f"{spec.name}.nii.gz")
        write_volume(image.with_array(tumour.astype(np.uint8)), folder / f"{spec.name}_tumor.nii.gz")
        truth_ml = float(tumour.sum()) * image.voxel_volume_ml
        rows.append({"case": spec.name, "image": f"{spec.name}.nii.gz",
                     "tumor": f"{spec.name}_tumor.nii.gz" if tumour.any() else "none",
                     "liver": str(args.labels.resolve()), "liver_label": str(args.liver_label), "modality": "ct",
                     "note": f"semi-synthetic: {args.image.name}, {spec.phase}, "
                             f"{'' if args.necrosis else 'no necrosis, '}lesion(s) "
                             f"{'+'.join(f'{v:g}' for v in spec.lesion_volumes_ml) or 'none'} mL "
                             f"(drawn {truth_ml:.1f} mL)"})
        print(rows[-1]["case"], rows[-1]["note"], flush=True)
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    raise SystemExit(main())
