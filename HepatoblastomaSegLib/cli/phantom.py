"""``hbseg phantom``: write synthetic paediatric abdominal CT or T2 MRI cases with a hepatoblastoma."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from ..progress import JsonLinesProgress, NullProgress, TqdmProgress

DESCRIPTION = """\
Write synthetic paediatric abdominal CT (portal venous phase) or T2-weighted fat-suppressed MRI cases, each with a
hepatoblastoma, the liver, and three simulated annotators (R1 and R2 experts, R3 novice).

The child is 0-14 years old (mostly 1-4); the tumour is 3-12 cm, lobulated and heterogeneous (necrosis,
haemorrhage, calcifications in about half the cases, sometimes a second lesion), and involves one to four liver
sections (PRETEXT I-IV). The same --seed gives byte-identical files, and case k is the same whatever --cases is.
Phantoms are not patients: they exercise the software, they do not validate it clinically."""

EPILOG = textwrap.dedent("""\
    output (paths in the manifest are relative to DIR):
      DIR/manifest.csv                  one row per case: age, spacing (mm, "x x y x z"), volumes (mL), PRETEXT ...
      DIR/<case>/image.nii.gz           CT: int16 HU; MRI: uint16 arbitrary scanner units
      DIR/<case>/tumor.nii.gz           ground-truth tumour (uint8 0/1)
      DIR/<case>/liver.nii.gz           liver including the tumour (uint8 0/1)
      DIR/<case>/R1.nii.gz R2 R3        the three annotators (uint8 0/1)
      DIR/<case>/tissues.nii.gz         tissue label map (uint8; for 'hbseg train --domain-randomisation')
      DIR/<case>/dicom/                 the image as a DICOM series (with --dicom)
    The manifest is written last: a folder without one is incomplete.

    sizes:
      full    CT 512x512, 0.5-0.9 mm in-plane, 1.25-5 mm slices; MRI 0.7-1.5 mm in-plane, 4-8 mm slices
              (a few seconds per case)
      small   at most 128x128x48 voxels on a coarser grid, same anatomy (well under a second; for tests)

    varieties:
      demo    the original phantom (default; the bundled demo models were trained on it): a child of
              0-14 years, portal venous CT or fat-suppressed T2, domes to below the kidneys
      full    hard negatives and real variety: newborn to adult bodies, lung bases to the pelvis (pelvic
              bones, gluteal, iliac and psoas muscles, bladder, rectum, iliac vessels, cord, adrenals, oral
              contrast), CT non-contrast/arterial/portal/delayed phases, reconstruction circle, table, arms
              down, cut-off bodies, kernels, 0.6-7 mm slices, beam-hardening streaks; T2 with and without fat
              suppression, strong bias fields, 6-8 mm slices, motion ghosts. Train new models on this.

    examples:
      hbseg phantom --modality ct --cases 3 --seed 7 -o phantoms/ct
      hbseg phantom --modality ct --cases 200 --seed 1 --variety full --workers 8 -o phantoms/ct_full
      hbseg phantom --modality mri --cases 20 --seed 1 --size small -o phantoms/mri_small
      hbseg phantom --modality ct --cases 1 --seed 7 --dicom -o phantoms/ct_dicom""")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(subparsers) -> None:
    from ..phantom.case import MODALITIES, SIZES
    from ..phantom.variety import VARIETIES

    parser = subparsers.add_parser(
        "phantom", help="write synthetic CT/MRI cases with tumour, liver and three annotators",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", required=True, choices=MODALITIES,
                        help="ct: contrast-enhanced portal venous CT (HU); mri: T2-weighted fat-suppressed MRI")
    parser.add_argument("--cases", type=_positive_int, default=3, metavar="N", help="number of cases (default 3)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                        help="series seed; the same seed gives the same files (default 0)")
    parser.add_argument("--first-index", type=_non_negative_int, default=0, metavar="K",
                        help="index of the first case, to extend a series (default 0)")
    parser.add_argument("--size", choices=SIZES, default="full",
                        help="full: clinical grids; small: at most 128x128x48 voxels, for tests (default full)")
    parser.add_argument("--variety", choices=VARIETIES, default="demo",
                        help="demo: the original phantom (default); full: hard negatives (pelvis, muscles, bowel), "
                             "contrast phases, adults, acquisition variety")
    parser.add_argument("--dicom", action="store_true", help="also write each image as a DICOM series")
    parser.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                        help="cases generated at a time, each in its own process (default 1); the files do not "
                             "depend on it")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display on stderr (bar), as JSON lines on stdout (json), or none")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..phantom.dataset import read_manifest, write_dataset

    if args.progress == "json":
        progress = JsonLinesProgress()
    elif args.progress == "bar" and sys.stderr.isatty():
        # A bar on a terminal only: redirected output (logs, CI) gets the summary lines without bar redraws.
        progress = TqdmProgress(disable=False)
    else:
        progress = NullProgress()
    try:
        manifest = write_dataset(args.output, args.modality, args.cases, args.seed, args.size, args.dicom, progress,
                                 first_index=args.first_index, variety=args.variety,
                                 workers=args.workers)
    finally:
        progress.close()
    if isinstance(progress, JsonLinesProgress):
        progress.done(str(manifest))
        return 0
    rows = read_manifest(manifest)
    for row in rows:
        print(f"{row['case']}: age {float(row['age_months']) / 12:.1f} y, spacing {row['spacing_mm']} mm, "
              f"tumour {float(row['tumor_ml']):.0f} mL ({row['tumor_diameter_cm']} cm, PRETEXT {row['pretext']}), "
              f"liver {float(row['liver_ml']):.0f} mL")
    print(f"wrote {len(rows)} case(s); manifest: {manifest}")
    return 0
