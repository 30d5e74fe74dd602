"""Run the default pipeline on real scans and print what a radiologist would care about.

Run by hand (not a test; real scans never enter the repository: ``benchmarks/real_scans.md`` lists the ones we used,
with their source and licence, and how to fetch them)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/real_scans.py MANIFEST.csv [--no-tta] [--json out.json]

``MANIFEST.csv`` columns (paths relative to the CSV's folder):

- ``case``, ``image`` (required): any image ``hbseg segment`` reads;
- ``tumor`` (optional): the true tumour mask; ``none`` for a scan known to hold no tumour;
- ``liver`` (optional): a liver mask, with ``liver_label`` (optional) when it is a label map (e.g. 5 for the liver
  in TotalSegmentator's maps); the tumour outside the liver is measured against it (else against the pipeline's
  own liver mask, from its summary);
- ``modality`` (optional): ``ct`` or ``mri`` (default: guessed as ``hbseg segment`` does);
- ``note`` (optional): printed with the case.

Per case: Dice with the true tumour (when given), the share of the true tumour found and the mL predicted outside it,
predicted and true volume (mL), mL of the predicted tumour outside the liver, the review flag and its reasons,
seconds; a scan the pipeline refuses (e.g. a CT whose values are not Hounsfield units) is listed under ``refused``
with the reason, and the run goes on. Options as ``hbseg segment`` (defaults: 8-flip TTA, CT crop, liver anchor on for CT); ``--no-liver-anchor``
shows what the anchor changes.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from HepatoblastomaSegLib.errors import HepatoblastomaSegError
from HepatoblastomaSegLib.evaluate.metrics import dice
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions, guess_modality
from HepatoblastomaSegLib.io import read_mask, read_volume
from report import write_results  # benchmarks/ (the script's folder) is on sys.path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle)]
    for row in rows:
        if not row.get("case") or not row.get("image"):
            raise SystemExit(f"{path}: every row needs case and image")
    return rows


def resolve(folder: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else folder / path


def label_mask(path: Path, reference, label: str) -> np.ndarray:
    """A mask from ``path`` on ``reference``'s grid: ``label`` selects a value of a label map (else any nonzero)."""
    volume = read_volume(path) if label else read_mask(path, reference=reference)
    if label:
        if not volume.geometry.matches(reference.geometry):
            raise SystemExit(f"{path}: not on the image's grid")
        return volume.array == int(label)
    return volume.array > 0


def run_case(predictors: dict, row: dict, folder: Path, options: PredictorOptions) -> dict:
    image = read_volume(resolve(folder, row["image"]))
    modality = row.get("modality") or guess_modality(image)
    if modality not in predictors:
        predictors[modality] = Predictor.from_options(options, modality=modality)
    predictor = predictors[modality]
    truth = None
    if row.get("tumor"):
        truth = (np.zeros(image.array.shape, dtype=bool) if row["tumor"].lower() == "none"
                 else label_mask(resolve(folder, row["tumor"]), image, ""))
    liver = label_mask(resolve(folder, row["liver"]), image, row.get("liver_label", "")) if row.get("liver") else None
    start = time.perf_counter()
    prediction = predictor.predict(image)
    seconds = time.perf_counter() - start
    mask = prediction.mask.array > 0
    s = prediction.summary
    voxel_ml = image.voxel_volume_ml
    result = {
        "case": row["case"], "modality": modality, "note": row.get("note", ""),
        "model": s["model_name"], "liver_model": s.get("liver_model") if modality == "mri" else s.get("liver_source"),
        "shape_xyz": list(image.geometry.size), "spacing_mm": [round(v, 3) for v in image.spacing_mm],
        "tumor_ml": round(s["tumor_volume_ml"], 1),
        "truth_ml": None if truth is None else round(float(truth.sum()) * voxel_ml, 1),
        "dice": None if truth is None or not truth.any() else round(float(dice(mask, truth)[0]), 3),
        "truth_found": None if truth is None or not truth.any() else
        round(float((mask & truth).sum() / truth.sum()), 3),
        "outside_truth_ml": None if truth is None else round(float((mask & ~truth).sum()) * voxel_ml, 1),
        "outside_true_liver_ml": None if liver is None else round(float((mask & ~liver).sum()) * voxel_ml, 1),
        "outside_predicted_liver_ml": None if s.get("tumor_outside_liver_ml") is None
        else round(float(s["tumor_outside_liver_ml"]), 1),
        "predicted_liver_ml": s.get("liver_volume_ml"),
        "true_liver_ml": None if liver is None else round(float(liver.sum()) * voxel_ml, 1),
        "liver_anchor": s["postprocessing"].get("liver_anchor"),
        "mean_entropy_nats": s["mean_entropy_nats"],
        "review_needed": s["review"]["needed"], "reasons": [r["code"] for r in s["review"]["reasons"]],
        "messages": [r["message"] for r in s["review"]["reasons"]],
        "measurements": s.get("review_measurements"), "warnings": s.get("warnings"),
        "short_scan_padding": s.get("short_scan_padding"),
        "seconds": round(seconds, 1),
    }
    print(f"{result['case']} ({modality}{', ' + result['note'] if result['note'] else ''}): "
          f"{result['tumor_ml']} mL predicted (truth {result['truth_ml']}), Dice {result['dice']}, found "
          f"{result['truth_found']} of the truth, {result['outside_truth_ml']} mL outside it, outside the liver "
          f"{result['outside_true_liver_ml']} mL (true liver) / {result['outside_predicted_liver_ml']} mL (predicted), "
          f"review {'NEEDED ' + ','.join(result['reasons']) if result['review_needed'] else 'not needed'}, "
          f"{result['seconds']} s", flush=True)
    for message in result["messages"]:
        print(f"    - {message}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, nargs="?", help="the cases (not with --rereview)")
    parser.add_argument("--model", help="tumour model (default: the bundled demo model of each modality)")
    parser.add_argument("--liver-model", help="liver model for the CT anchor and review, or MRI's Nyul mask "
                                              "(default: as hbseg segment)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--liver-anchor", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--short-scan-padding", choices=("mirror", "zero"), default="mirror")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rereview", type=Path, metavar="JSON",
                        help="no network: judge an earlier run's cases (its --json) again with the bundles' current "
                             "review settings (the flag is a pure function of the measurements and the settings)")
    args = parser.parse_args()
    if args.rereview is not None:
        return rereview(args.rereview, args.json)
    if args.manifest is None:
        parser.error("a manifest is needed (or --rereview JSON)")
    torch.set_num_threads(args.threads)
    options = PredictorOptions(model=args.model, liver_model=args.liver_model, device=args.device, tta=args.tta,
                               liver_anchor=args.liver_anchor, short_scan_padding=args.short_scan_padding)
    folder = args.manifest.resolve().parent
    predictors: dict = {}
    cases, refused = [], []
    for row in read_rows(args.manifest):
        try:
            cases.append(run_case(predictors, row, folder, options))
        except HepatoblastomaSegError as error:  # a bad scan is reported, and the run goes on
            print(f"{row['case']}: refused: {error}", flush=True)
            refused.append({"case": row["case"], "error": str(error)})
    badly_wrong = [c["case"] for c in cases if _badly_wrong(c)]
    return write_results({"tta": args.tta, "liver_anchor": args.liver_anchor, "liver_model": args.liver_model,
                          "short_scan_padding": args.short_scan_padding,
                          "cases": cases, "refused": refused,
                          "badly_wrong": badly_wrong,
                          "badly_wrong_without_review": [c["case"] for c in cases
                                                         if c["case"] in badly_wrong and not c["review_needed"]]},
                         args.json)


def rereview(path: Path, json_path: Path | None) -> int:
    import json

    from HepatoblastomaSegLib.bundle import find_bundle
    from HepatoblastomaSegLib.infer.review import ImageFacts, review, review_settings

    earlier = json.loads(path.read_text(encoding="utf-8"))
    for case in earlier["cases"]:
        settings = review_settings(find_bundle(case["model"]))
        facts = ImageFacts(**case["measurements"])
        anchor = case.get("liver_anchor") or {}
        if facts.anchor_removed_ml is None and anchor.get("applied"):  # a run from before the anchor was reviewed
            facts.anchor_removed_ml = anchor.get("ml_dropped")
        flag = review(facts, tumor_volume_ml=case["tumor_ml"], mean_entropy_nats=case["mean_entropy_nats"],
                      modality=case["modality"], settings=settings, liver_source=case["liver_model"])
        case.update(review_needed=flag["needed"], reasons=[r["code"] for r in flag["reasons"]],
                    messages=[r["message"] for r in flag["reasons"]], rereviewed=True)
        verdict = "NEEDED " + ",".join(case["reasons"]) if case["review_needed"] else "not needed"
        print(f"{case['case']}: review {verdict}")
        for message in case["messages"]:
            print(f"    - {message}")
    earlier["badly_wrong_without_review"] = [c["case"] for c in earlier["cases"]
                                             if c["case"] in earlier["badly_wrong"] and not c["review_needed"]]
    return write_results(earlier, json_path)


def _badly_wrong(case: dict) -> bool:
    """The issue's test: volume off by more than 2x (or over 20 mL on a tumour-free scan), or > 50 mL outside the
    liver."""
    truth, predicted = case["truth_ml"], case["tumor_ml"]
    outside = case["outside_true_liver_ml"] if case["outside_true_liver_ml"] is not None else \
        case["outside_predicted_liver_ml"]
    if outside is not None and outside > 50:
        return True
    if truth is None:
        return False
    if truth == 0:
        return predicted > 20
    return not 0.5 <= predicted / truth <= 2.0


if __name__ == "__main__":
    raise SystemExit(main())
