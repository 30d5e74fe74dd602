"""Calibrate a tumour model's review flag on phantoms, write it into the bundle, and measure how often it fires.

Run by hand (not a test), from the repository root::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/calibrate_review.py --model ct-demo \\
        --reference demo_models_work/ct-train-s1000-n24,demo_models_work/ct-ref-full-s1000-n8 \\
        --calibration demo_models_work/ct-calib-full-s1005-n10 \\
        --heldout demo_models_work/ct-heldout-full-s1001-n8 --write --json out.json

Three phantom cohorts (folders with ``manifest.csv``), none of them the held-out one of another step:

1. ``--reference``: phantoms of the domain the model is meant for, normally its training seeds (small and full-size
   grids); for a model also trained on wider data (the full-variety phantoms), the contrast-enhanced children's
   phantoms only, so that an unenhanced or adult CT is still called out of domain. Their images give the reference
   ranges of :class:`~HepatoblastomaSegLib.infer.review.ImageFacts` (slice thickness, body width, scan length,
   liver and fat HU on CT, the fat/liver signal ratio on MRI), measured with the phantom's own liver and tumour
   masks, widened by a margin (a quarter of the observed span, at least :data:`MIN_MARGIN` of each unit).
2. ``--calibration``: another seed. The model segments each case as ``hbseg segment`` does by default (8-flip TTA,
   CT crop, liver model, liver anchor); the entropy threshold is the largest mean entropy inside the mask of the
   cases it segments well (Dice >= :data:`GOOD_DICE`) times :data:`ENTROPY_MARGIN`, so a new well-segmented phantom
   exceeds it rarely (the issue allows 5 %) while a badly segmented one may not.
3. ``--heldout``: the model's held-out cohort. With the new settings: Dice with the truth, the review flag per case,
   the share flagged; then deliberately bad versions of the first held-out cases (CT: no contrast, 7 mm slices, an
   adult-sized body; MRI: no fat suppression, a tumour mask pasted outside the liver) and whether the flag fires.

``--write`` stores the settings under ``"review"`` in the bundle's ``bundle.json`` (weights untouched). With
``--reference`` alone (no ``--calibration``, ``--heldout``) only the reference ranges are measured again, the rest of
the stored settings kept.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from HepatoblastomaSegLib.bundle import find_bundle, refresh_bundle_checksums
from HepatoblastomaSegLib.evaluate.metrics import dice
from HepatoblastomaSegLib.infer.predictor import Predictor, PredictorOptions
from HepatoblastomaSegLib.evaluate.domain_shift import (adult_sized, thick_slices, without_contrast,
                                                       without_fat_suppression)
from HepatoblastomaSegLib.infer.review import measure_image, review_settings, write_review_settings
from HepatoblastomaSegLib.io import Volume, read_mask, read_volume
from HepatoblastomaSegLib.preprocess import read_manifest
from report import write_results  # benchmarks/ (the script's folder) is on sys.path

#: Smallest margin added on each side of a reference range, per measurement (its unit).
MIN_MARGIN = {"slice_thickness_mm": 0.5, "body_width_mm": 10.0, "scan_length_mm": 20.0, "liver_hu": 10.0,
              "fat_hu": 10.0, "fat_to_liver_ratio": 0.05}
#: Share of the observed span added on each side (slice thickness: none, the phantoms' 1.25-6.25 mm would grow to
#: 0-7.5 mm and a 7 mm CT would pass).
MARGIN_FRACTION = {"slice_thickness_mm": 0.0}


#: A calibration case counts as segmented well from this Dice on: the threshold is set on those (a badly segmented
#: phantom is one the flag should catch).
GOOD_DICE = 0.8
#: The threshold is this multiple of the largest mean entropy of the well-segmented calibration cases. Mean entropy
#: inside the mask grows as the tumour shrinks (more boundary per volume), and a calibration cohort of 5 cases holds
#: few small tumours: the first rule (largest + 0.5 SD) flagged a well-segmented 52 mL held-out tumour (0.112 nats
#: against 0.109). The real failures the flag is for had 0.31-0.42 nats.
ENTROPY_MARGIN = 1.5
ENTROPY_RULE = (f"{ENTROPY_MARGIN:g} x the largest mean entropy inside the mask of the calibration cases segmented "
                f"well (Dice >= {GOOD_DICE})")


def entropy_threshold(values: list[float]) -> float:
    return round(ENTROPY_MARGIN * max(values), 4)


def truth_masks(entry, image: Volume) -> tuple[np.ndarray, np.ndarray | None]:
    tumor = read_mask(entry.tumor, reference=image).array > 0
    liver = None if entry.liver is None else (read_mask(entry.liver, reference=image).array > 0) | tumor
    return tumor, liver


def reference_ranges(folders: list[Path], modality: str) -> tuple[dict, dict]:
    values: dict[str, list[float]] = {k: [] for k in MIN_MARGIN}
    for folder in folders:
        for entry in read_manifest(folder):
            image = read_volume(entry.image)
            tumor, liver = truth_masks(entry, image)
            facts = measure_image(image, modality, tumor, liver)
            for key in values:
                value = getattr(facts, key)
                if value is not None:
                    values[key].append(value)
    ranges, observed = {}, {}
    for key, vals in values.items():
        if not vals:
            continue
        lo, hi = min(vals), max(vals)
        margin = max(MARGIN_FRACTION.get(key, 0.25) * (hi - lo), MIN_MARGIN[key])
        ranges[key] = (lo - margin, hi + margin)
        observed[key] = [round(lo, 3), round(hi, 3), len(vals)]
    return ranges, observed


def run_cohort(predictor: Predictor, folder: Path, *, limit: int | None = None) -> list[dict]:
    rows = []
    for entry in read_manifest(folder)[:limit]:
        image = read_volume(entry.image)
        truth, _ = truth_masks(entry, image)
        rows.append(run_case(predictor, entry.case, image, truth))
    return rows


def run_case(predictor: Predictor, name: str, image: Volume, truth: np.ndarray | None) -> dict:
    start = time.perf_counter()
    prediction = predictor.predict(image)
    s = prediction.summary
    row = {"case": name, "seconds": round(time.perf_counter() - start, 1),
           "dice": None if truth is None else round(float(dice(prediction.mask.array, truth)[0]), 4),
           "tumor_ml": round(s["tumor_volume_ml"], 1),
           "truth_ml": None if truth is None else round(float(truth.sum()) * image.voxel_volume_ml, 1),
           "outside_liver_ml": s.get("tumor_outside_liver_ml"), "mean_entropy_nats": s["mean_entropy_nats"],
           "liver_anchor": s["postprocessing"].get("liver_anchor"),
           "measurements": s.get("review_measurements"),
           "review_needed": s["review"]["needed"], "reasons": [r["code"] for r in s["review"]["reasons"]],
           "messages": [r["message"] for r in s["review"]["reasons"]]}
    print(f"  {name}: Dice {row['dice']}, {row['tumor_ml']} mL (truth {row['truth_ml']}), entropy "
          f"{row['mean_entropy_nats']}, flagged {row['review_needed']} {row['reasons']} ({row['seconds']} s)",
          flush=True)
    return row


# ------------------------------------------------------------------------------------------------ bad cases
def bad_cases(predictor: Predictor, folder: Path, modality: str, count: int) -> list[dict]:
    rows = []
    for entry in read_manifest(folder)[:count]:
        image = read_volume(entry.image)
        if modality == "ct":
            variants = {"no contrast": without_contrast(image), "7 mm slices": thick_slices(image),
                        "adult-sized body (in-plane x1.8)": adult_sized(image)}
        else:
            variants = {"no fat suppression": without_fat_suppression(image),
                        "adult-sized body (in-plane x1.8)": adult_sized(image)}
        for what, bad in variants.items():
            print(f" {entry.case} {what}:", flush=True)
            rows.append({"variant": what, **run_case(predictor, entry.case, bad, None)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-demo")
    parser.add_argument("--reference", required=True,
                        help="comma-separated phantom folders of the model's intended domain (normally its training "
                             "seeds)")
    parser.add_argument("--calibration", type=Path, help="phantom folder for the entropy threshold")
    parser.add_argument("--heldout", type=Path, help="the model's held-out phantom folder")
    parser.add_argument("--calibration-cases", type=int, help="use only the first N calibration cases")
    parser.add_argument("--entropy-values", help="instead of --calibration: the mean entropies of the well-segmented "
                                                 "calibration cases of an earlier (interrupted) run, comma-separated")
    parser.add_argument("--entropy-values-from", default="", help="where --entropy-values come from (for the card)")
    parser.add_argument("--bad-cases", type=int, default=2, help="held-out cases made bad, each in every way")
    parser.add_argument("--bad-cases-only", action="store_true",
                        help="only the bad cases, with the bundle's stored settings (e.g. after a --write run)")
    parser.add_argument("--no-tta", action="store_true", help="calibrate without TTA (not hbseg segment's default)")
    parser.add_argument("--write", action="store_true", help="store the settings in the bundle's bundle.json")
    parser.add_argument("--rejudge", type=Path, metavar="JSON",
                        help="no network: judge the cases of an earlier run (its --json) again with the bundle's "
                             "current settings and rules (the flag is a pure function of the measurements)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle_dir = find_bundle(args.model)
    if args.rejudge is not None:
        return rejudge(args.rejudge, bundle_dir, args.json, write=args.write)
    # By name when given one, so a bundled model gets its default liver model as in hbseg segment (a path would not).
    options = PredictorOptions(model=args.model if Path(args.model).name == args.model else str(bundle_dir),
                               device="cpu", tta=not args.no_tta)
    predictor = Predictor.from_options(options)
    modality = predictor.bundle.modality
    results: dict = {"model": f"{predictor.bundle.name} {predictor.bundle.version}", "tta": not args.no_tta,
                     "liver_model": None if predictor.liver_bundle is None else predictor.liver_bundle.name}
    settings = review_settings(bundle_dir)
    if args.bad_cases_only:
        bad = bad_cases(predictor, args.heldout, modality, args.bad_cases)
        results.update(settings=settings.to_dict(), bad_cases=bad,
                       bad_cases_flagged=f"{sum(r['review_needed'] for r in bad)} of {len(bad)}")
        return write_results(results, args.json)
    print("reference ranges ...", flush=True)
    ranges, observed = reference_ranges([Path(p) for p in args.reference.split(",")], modality)
    settings.reference = ranges
    settings.calibration["reference"] = {"cohorts": args.reference.split(","), "observed_min_max_n": observed,
                                         "margin": "a quarter of the observed span on each side (slice thickness: none), at least "
                                                   + ", ".join(f"{k} {v:g}" for k, v in MIN_MARGIN.items())}
    results["reference"] = {k: [round(v[0], 3), round(v[1], 3)] for k, v in ranges.items()}
    if args.calibration is not None:
        print(f"entropy threshold from {args.calibration} ...", flush=True)
        predictor.review_settings = settings
        rows = run_cohort(predictor, args.calibration, limit=args.calibration_cases)
        good = [r for r in rows if r["mean_entropy_nats"] is not None and r["dice"] >= GOOD_DICE]
        values = [r["mean_entropy_nats"] for r in good]
        settings.max_mean_entropy_nats = entropy_threshold(values)
        settings.calibration["entropy"] = {
            "cohort": str(args.calibration), "cases": len(values), "tta": not args.no_tta,
            "mean_entropy_nats_min_median_max": [round(min(values), 4), round(statistics.median(values), 4),
                                                 round(max(values), 4)],
            "left_out": {r["case"]: r["dice"] for r in rows if r not in good},
            "rule": ENTROPY_RULE}
        results["calibration_cases"] = rows
        results["max_mean_entropy_nats"] = settings.max_mean_entropy_nats
    if args.entropy_values:
        values = [float(v) for v in args.entropy_values.split(",")]
        settings.max_mean_entropy_nats = entropy_threshold(values)
        settings.calibration["entropy"] = {
            "cohort": args.entropy_values_from, "cases": len(values), "tta": not args.no_tta,
            "mean_entropy_nats_min_median_max": [round(min(values), 4), round(statistics.median(values), 4),
                                                 round(max(values), 4)],
            "rule": ENTROPY_RULE}
        results["max_mean_entropy_nats"] = settings.max_mean_entropy_nats
    predictor.review_settings = settings
    results["settings"] = settings.to_dict()
    if args.heldout is not None:
        print(f"held-out cohort {args.heldout} ...", flush=True)
        rows = run_cohort(predictor, args.heldout)
        flagged = [r["case"] for r in rows if r["review_needed"]]
        results["heldout_cases"] = rows
        results["heldout_cohort"] = str(args.heldout)
        results["heldout_mean_dice"] = round(float(np.mean([r["dice"] for r in rows])), 4)
        results["heldout_flagged"] = f"{len(flagged)} of {len(rows)}"
        results["heldout_flag_rate"] = round(len(flagged) / len(rows), 4)
        if args.bad_cases:
            print("deliberately bad cases ...", flush=True)
            bad = bad_cases(predictor, args.heldout, modality, args.bad_cases)
            results["bad_cases"] = bad
            results["bad_cases_flagged"] = f"{sum(r['review_needed'] for r in bad)} of {len(bad)}"
    if args.write:
        write_review_settings(bundle_dir, settings)
        write_card_section(bundle_dir, settings, results)
        print(f"wrote the review settings into {bundle_dir / 'bundle.json'} and its model card", flush=True)
    return write_results(results, args.json)


def rejudge(path: Path, bundle_dir: Path, json_path: Path | None, *, write: bool) -> int:
    import json

    from HepatoblastomaSegLib.infer.review import ImageFacts, review

    results = json.loads(path.read_text(encoding="utf-8"))
    settings = review_settings(bundle_dir)
    good = [r["mean_entropy_nats"] for r in results.get("calibration_cases", [])
            if r["mean_entropy_nats"] is not None and r["dice"] >= GOOD_DICE]
    if good:  # the threshold again, by the current rule
        settings.max_mean_entropy_nats = entropy_threshold(good)
        settings.calibration.setdefault("entropy", {})["rule"] = ENTROPY_RULE
        results["max_mean_entropy_nats"] = settings.max_mean_entropy_nats
        if write:
            write_review_settings(bundle_dir, settings)
    modality = "mri" if results["model"].startswith("mri") else "ct"
    for key in ("calibration_cases", "heldout_cases", "bad_cases"):
        for row in results.get(key, []):
            flag = review(ImageFacts(**row["measurements"]), tumor_volume_ml=row["tumor_ml"],
                          mean_entropy_nats=row["mean_entropy_nats"], modality=modality, settings=settings,
                          liver_source=results.get("liver_model"))
            row.update(review_needed=flag["needed"], reasons=[r["code"] for r in flag["reasons"]],
                       messages=[r["message"] for r in flag["reasons"]], rejudged=True)
    if "heldout_cases" in results:
        rows = results["heldout_cases"]
        results["heldout_flagged"] = f"{sum(r['review_needed'] for r in rows)} of {len(rows)}"
        results["heldout_flag_rate"] = round(sum(r["review_needed"] for r in rows) / len(rows), 4)
    if results.get("bad_cases"):
        bad = results["bad_cases"]
        results["bad_cases_flagged"] = f"{sum(r['review_needed'] for r in bad)} of {len(bad)}"
    results["settings"] = settings.to_dict()
    if write:
        write_card_section(bundle_dir, settings, results)
    return write_results(results, json_path)


CARD_HEADING = "## Review flag"


def write_card_section(bundle_dir: Path, settings, results: dict) -> None:
    """Replace (or add) the model card's review-flag section with the calibrated figures. A run that does not
    measure the held-out cohort or the bad cases again (``--reference`` alone) keeps the card's earlier lines on them,
    which stay true as long as the new reference ranges still hold those cohorts."""
    card_path = bundle_dir / "model_card.md"
    card, _, old_section = card_path.read_text(encoding="utf-8").partition("\n" + CARD_HEADING)
    card = card.rstrip("\n")
    entropy = settings.calibration.get("entropy", {})
    lines = ["", CARD_HEADING,
             "`hbseg segment` marks a result for review (`summary.json` `review`) by the rules of "
             "`HepatoblastomaSegLib/infer/review.py`, with these settings (also in `bundle.json` under `review`; "
             "measured by `benchmarks/calibrate_review.py`):",
             f"- high_uncertainty: mean entropy inside the mask above **{settings.max_mean_entropy_nats} nats** "
             f"({entropy.get('rule', '')}; calibration cohort {entropy.get('cohort', '?')}, "
             f"{entropy.get('cases', '?')} cases, min/median/max {entropy.get('mean_entropy_nats_min_median_max')}, "
             f"{'8-flip TTA' if entropy.get('tta') else 'no TTA'}).",
             f"- outside_liver: more than {settings.max_outside_liver_ml:g} mL and more than "
             f"{settings.max_outside_liver_fraction:.0%} of the tumour outside the liver mask, or more than "
             f"{settings.max_outside_liver_ml_any_share:g} mL whatever the share; anchor_removed: more "
             f"than {settings.max_outside_liver_ml:g} mL removed by the liver anchor.",
             f"- implausible: a tumour larger than the liver, over {settings.max_tumor_ml:g} mL, or in more than "
             f"{settings.max_pieces} pieces of 1 mL or more.",
             f"- at_scan_edge: more than {settings.max_tumor_edge_area_mm2:g} mm2 of the tumour mask on one face of "
             "the scanned volume.",
             "- out_of_domain, reference ranges (with a margin) of the phantoms of the domain the model is meant for "
             f"({', '.join(settings.calibration.get('reference', {}).get('cohorts', [])) or '?'}): "
             + ", ".join(f"{k} {v[0]:.3g} to {v[1]:.3g}" for k, v in settings.reference.items())
             + " (scan_length_mm: the low end only)."]
    kept, keeping = [], False
    for line in old_section.splitlines():  # a kept bullet with its wrapped continuation lines
        if line.startswith("- ") or not line.startswith("  "):
            keeping = line.startswith(("- Held-out phantoms", "- Deliberately bad"))
        if keeping:
            kept.append(line)
    if "heldout_flagged" in results:
        lines.append(f"- Held-out phantoms ({results.get('heldout_cohort', '')}): {results['heldout_flagged']} "
                     f"flagged, mean Dice {results['heldout_mean_dice']} with the flag's default pipeline.")
    else:
        lines += _bullets(kept, "- Held-out phantoms")
    if "bad_cases_flagged" in results:
        variants = ", ".join(sorted({r["variant"] for r in results["bad_cases"]}))
        lines.append(f"- Deliberately bad versions of held-out cases ({variants}): {results['bad_cases_flagged']} "
                     "flagged.")
    else:
        lines += _bullets(kept, "- Deliberately bad")
    card_path.write_text(card + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    refresh_bundle_checksums(bundle_dir)  # a deliberate change of the card: the bundle must still load


def _bullets(lines: list[str], start: str) -> list[str]:
    """The bullets of ``lines`` that begin with ``start``, with their continuation lines."""
    out, keeping = [], False
    for line in lines:
        if line.startswith("- "):
            keeping = line.startswith(start)
        if keeping:
            out.append(line)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
