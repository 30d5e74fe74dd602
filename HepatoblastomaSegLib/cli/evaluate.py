"""``hbseg evaluate``: the paper's agreement, volume and uncertainty tables for a cohort."""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap

DESCRIPTION = textwrap.dedent("""\
    Score raters and models against the raters' consensus (Rc) over a cohort and write the paper's tables
    (agreement matrix, volume errors, PV/TV, entropy) as CSV files, report.md and a self-contained report.html.

    COHORT.csv has a 'case' column and one column of mask paths per rater and model (entropy maps optional);
    relative paths are relative to the CSV's folder. Name a source by its column (R1) or as NAME=COLUMN.
    Rc is the majority vote of the raters (more than half of them, 2 of 3). Cases are read one at a time.

    Per case and rater/model against Rc: Dice, volumes (mL), volume error e = |PV-TV|/TV*100, PV/TV, HD95 (mm)
    and surface Dice. Per pair of Rc/raters/models: Dice, summarised as mean with 95 % CI (normal
    approximation). Per model with an entropy map: mean entropy in the tumour core (mask eroded slice by slice
    by a 2D disc of radius 10 pixels) and boundary.""")

EPILOG = textwrap.dedent("""\
    example COHORT.csv:
      case,R1,R2,R3,MPCT,MACT,MPCT_entropy
      ct001,ct001/R1.nii.gz,ct001/R2.nii.gz,ct001/R3.nii.gz,pred/ct001.nii.gz,adult/ct001.nii.gz,pred/ct001_H.nii.gz

    examples:
      hbseg evaluate cohort.csv --raters R1,R2,R3 -o report/
      hbseg evaluate cohort.csv --raters R1,R2,R3 --models MPCT,MACT --entropy MPCT=MPCT_entropy -o report/
      hbseg evaluate cohort.csv --raters R1=expert1,R2=expert2,R3=novice --models MPCT=pred -o report/

    outputs in REPORT: per_case.csv, pairwise_dice.csv, agreement.csv, agreement_matrix.csv, vpe.csv, pvtv.csv,
    entropy.csv, entropy_per_case.csv, model_comparison.csv, surface.csv, summary.json, report.md (+ figures/),
    report.html; review.csv when a model's masks have hbseg segment's summary.json beside them (the cases its review
    flag marked, and why).""")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="agreement, volume and entropy tables for a cohort",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cohort", metavar="COHORT.csv", help="cohort table: case column + one path column per source")
    parser.add_argument("--raters", required=True, metavar="R1,R2,R3",
                        help="comma-separated rater columns (at least 2), NAME or NAME=COLUMN")
    parser.add_argument("--models", default="", metavar="MPCT,MACT", help="comma-separated model mask columns")
    parser.add_argument("--entropy", action="append", default=[], metavar="MODEL=COLUMN",
                        help="entropy-map column of a model (repeatable or comma-separated)")
    parser.add_argument("-o", "--output", required=True, metavar="REPORT", help="report folder (created)")
    group = parser.add_argument_group("consensus")
    group.add_argument("--consensus", choices=("majority", "staple"), default="majority",
                       help="how Rc is built (default: majority vote)")
    group.add_argument("--min-votes", type=int, metavar="K", help="votes a voxel needs (default: more than half)")
    group.add_argument("--staple-threshold", type=float, default=0.5, metavar="P",
                       help="STAPLE probability threshold (default 0.5)")
    group = parser.add_argument_group("metrics")
    group.add_argument("--tolerance-mm", type=float, default=2.0, metavar="MM",
                       help="surface Dice tolerance in mm (default 2.0)")
    group.add_argument("--both-empty-dice", choices=("nan", "1"), default="nan",
                       help="Dice when both masks are empty: nan (left out of means, default) or 1")
    group.add_argument("--no-surface", action="store_true", help="skip HD95 and surface Dice")
    group.add_argument("--entropy-radius-px", type=int, default=10, metavar="PX",
                       help="radius of the 2D erosion disc that defines the core, in pixels (default 10)")
    group.add_argument("--entropy-mask", choices=("model", "Rc"), default="model",
                       help="mask whose core/boundary the entropy is averaged over (default: the model's own)")
    group.add_argument("--bootstrap", type=int, default=0, metavar="N",
                       help="also a percentile bootstrap CI of each mean Dice with N resamples (default 0: off)")
    group.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    group = parser.add_argument_group("input handling")
    group.add_argument("--skip-missing", action="store_true",
                       help="leave out cases with a missing file or empty cell (listed in the report)")
    group.add_argument("--resample-to-reference", action="store_true",
                       help="resample masks on another grid onto the first rater's grid (nearest neighbour; "
                            "entropy maps linear) instead of refusing them")
    group.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                       help="cases evaluated at once, in threads (default: min(2, CPUs)); memory grows with N")
    group.add_argument("--no-figures", action="store_true", help="skip the figures (faster)")
    group.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                       help="progress display on stderr (bar), as JSON lines on stdout (json), or none")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..evaluate.cohort import EvaluationOptions, evaluate_cohort, read_cohort
    from ..evaluate.report import write_report
    from ..progress import JsonLinesProgress, NullProgress, TqdmProgress

    cohort = read_cohort(args.cohort, args.raters, args.models, args.entropy or None)
    options = EvaluationOptions(
        consensus_method=args.consensus, min_votes=args.min_votes, staple_threshold=args.staple_threshold,
        tolerance_mm=args.tolerance_mm, empty_dice=math.nan if args.both_empty_dice == "nan" else 1.0,
        surface=not args.no_surface, entropy_radius_px=args.entropy_radius_px, entropy_mask=args.entropy_mask,
        skip_missing=args.skip_missing, resample_to_reference=args.resample_to_reference, workers=args.workers)
    progress = {"bar": lambda: TqdmProgress(), "json": JsonLinesProgress, "none": NullProgress}[args.progress]()
    try:
        result = evaluate_cohort(cohort, options, progress)
    finally:
        progress.close()
    written = write_report(result, args.output, bootstrap_resamples=args.bootstrap, seed=args.seed,
                           figures=not args.no_figures)
    if isinstance(progress, JsonLinesProgress):
        progress.done(str(written["report.html"]))
        return 0
    out = sys.stdout
    print(f"evaluated {len(result.cases)} cases in {result.elapsed_s:.1f} s"
          + (f" ({len(result.skipped)} skipped: {', '.join(c for c, _ in result.skipped)})" if result.skipped
             else ""), file=out)
    for name in result.members:
        dice = result.member_values(name, "dice_vs_Rc")
        defined = dice[~(dice != dice)]
        mean = f"{defined.mean():.3f}" if defined.size else "NA"
        print(f"  {name:>8s} vs Rc: mean Dice {mean}", file=out)
    _report_review_flags(cohort, args.output, out)
    print(f"report: {written['report.html']}", file=out)
    return 0


def _report_review_flags(cohort, report_dir, out) -> None:
    """Models' masks written by ``hbseg segment`` have a summary.json beside them: list the cases it flagged for
    review (REPORT/review.csv and a line per model)."""
    import csv
    import io
    from pathlib import Path

    from ..infer.review import flagged_table
    from ..io import write_text_atomic

    triples = [(m.name, c.case, c.masks.get(m.name)) for m in cohort.models for c in cohort.cases]
    rows = flagged_table(triples)
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(report_dir) / "review.csv", buffer.getvalue())
    for model in cohort.models:
        mine = [r for r in rows if r["model"] == model.name]
        flagged = [f"{r['case']} ({r['reasons'].replace(';', ', ')})" for r in mine if r["review_needed"] == "True"]
        if mine:
            print(f"  {model.name:>8s}: {len(flagged)} of {len(mine)} case(s) flagged for review"
                  + (f": {'; '.join(flagged)}" if flagged else ""), file=out)
