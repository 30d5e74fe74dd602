"""How much a model's mask depends on where the sliding windows fall: the CT crop against a plain shift.

Run by hand (not a test)::

    .venv/bin/python benchmarks/tiling_sensitivity.py [--model ct-demo] [--seeds 2816,11,12] [--json out.json]

``hbseg segment`` crops a CT to the child's trunk (``--crop-to-body``, the default), which moves the window grid.
For each full-size phantom CT this runs the model (no TTA, CPU) three ways: on the whole image, cropped to the trunk,
and on the whole image less 24 rows and 40 columns of air at its edge (the same voxels for the child, another window
grid, no crop logic involved). If the crop's Dice with the whole-image mask is about the shifted image's, what the
crop changes is the model's sensitivity to its tiling, not something the crop does wrong. Dice with the phantom's
truth says which mask is closer.

``--cohort DIR`` (a phantom folder with ``manifest.csv``, e.g. ct-demo's held-out cohort: ``hbseg phantom --modality
ct --cases 8 --seed 1001 --size full -o DIR``) adds Dice with the truth and seconds per case, whole against cropped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from HepatoblastomaSegLib.evaluate.metrics import dice
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.phantom import generate_case
from HepatoblastomaSegLib.io import read_mask, read_volume
from HepatoblastomaSegLib.preprocess import read_manifest
from HepatoblastomaSegLib.preprocess.body_crop import CropBox, crop_volume, paste
from report import write_results  # benchmarks/ (the script's folder) is on sys.path

#: Air cut off the image's top rows and left columns for the shifted run (voxels).
SHIFT_ROWS, SHIFT_COLUMNS = 24, 40


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-demo")
    parser.add_argument("--seeds", default="2816,11,12",
                        help="phantom seeds of the full-size CTs (default %(default)s)")
    parser.add_argument("--cohort", type=Path, help="phantom folder (manifest.csv): Dice with the truth, whole vs "
                                                    "cropped, per case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    whole = Predictor.from_options(PredictorOptions(model=args.model, device="cpu", tta=False, crop_to_body=False))
    cropped = Predictor.from_options(PredictorOptions(model=args.model, device="cpu", tta=False, crop_to_body=True))
    results: dict = {"model": f"{whole.bundle.name} {whole.bundle.version}", "threads": args.threads,
                     "shift_rows_columns": [SHIFT_ROWS, SHIFT_COLUMNS], "cases": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        case = generate_case("ct", seed=seed, index=0, size="full")
        image, truth = case.image, case.tumor.array
        start = time.perf_counter()
        on_whole = whole.predict(image)
        whole_s = time.perf_counter() - start
        start = time.perf_counter()
        on_crop = cropped.predict(image)
        crop_s = time.perf_counter() - start
        shift = CropBox((0, SHIFT_ROWS, SHIFT_COLUMNS), image.array.shape)
        on_shifted = paste(whole.predict(crop_volume(image, shift)).mask.array, shift, image.array.shape)
        row = {"seed": seed, "shape_zyx": list(image.array.shape), "spacing_mm": list(image.spacing_mm),
               "windows_whole": on_whole.summary["sliding_windows"], "windows_crop": on_crop.summary["sliding_windows"],
               "body_crop": on_crop.summary["body_crop"],
               "dice_whole_vs_crop": round(dice(on_whole.mask.array, on_crop.mask.array)[0], 4),
               "dice_whole_vs_shifted": round(dice(on_whole.mask.array, on_shifted)[0], 4),
               "dice_truth": {"whole": round(dice(on_whole.mask.array, truth)[0], 4),
                              "crop": round(dice(on_crop.mask.array, truth)[0], 4),
                              "shifted": round(dice(on_shifted, truth)[0], 4)},
               "tumor_ml": {"truth": round(float(np.sum(truth)) * image.voxel_volume_ml, 1),
                            "whole": round(on_whole.summary["tumor_volume_ml"], 1),
                            "crop": round(on_crop.summary["tumor_volume_ml"], 1)},
               "seconds": {"whole": round(whole_s, 2), "crop": round(crop_s, 2)}}
        print(row, flush=True)
        results["cases"].append(row)
    if args.cohort is not None:
        results["cohort"] = {"folder": args.cohort.name, **cohort_dice(args.cohort, whole, cropped)}
    return write_results(results, args.json)


def cohort_dice(folder: Path, whole: Predictor, cropped: Predictor) -> dict:
    """Per case of ``folder``'s manifest: Dice with the truth and seconds, on the whole image and cropped."""
    cases, means = {}, {}
    for entry in read_manifest(folder):
        image = read_volume(entry.image)
        truth = read_mask(entry.tumor, reference=image).array
        row = {}
        for name, predictor in (("whole", whole), ("crop", cropped)):
            start = time.perf_counter()
            prediction = predictor.predict(image)
            row[name] = {"dice_truth": round(dice(prediction.mask.array, truth)[0], 4),
                         "seconds": round(time.perf_counter() - start, 2),
                         "windows": prediction.summary["sliding_windows"]}
        cases[entry.case] = row
        print(entry.case, row, flush=True)
    for name in ("whole", "crop"):
        means[name] = {"mean_dice_truth": round(float(np.mean([c[name]["dice_truth"] for c in cases.values()])), 4),
                       "total_seconds": round(sum(c[name]["seconds"] for c in cases.values()), 1)}
    return {"cases": cases, "summary": means}


if __name__ == "__main__":
    raise SystemExit(main())
