"""``hbseg demo``: the whole pipeline on one synthetic case, with nothing but this repository (``make demo``)."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import textwrap
from pathlib import Path

from ..io import read_mask, write_text_atomic, write_volume

DEMO_SEED = 2026  # the demo case's series; the tests and the bundled models' training never use it

EPILOG = textwrap.dedent("""\
    It writes into OUT/:
      phantom/manifest.csv, phantom/<case>/image.nii.gz    a synthetic paediatric abdominal CT (int16 HU)
      phantom/<case>/{tumor,liver,R1,R2,R3}.nii.gz         ground truth, liver, three simulated annotators
      consensus.nii.gz                                     majority vote of R1-R3 (2 of 3)
      agreement.txt                                        pairwise Dice of annotators and consensus
      segmentation/                                        the demo model's mask, entropy map, summary.json
                                                           (when the bundled ct-demo model is installed)""")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the pipeline on a bundled synthetic CT case (what 'make demo' runs)",
        description="Generate a synthetic paediatric CT case with three simulated annotators, build their consensus, "
                    "and segment it with the bundled demo model. Synthetic data only: not a clinical result.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--size", choices=("small", "full"), default="full",
                        help="phantom size: full = 512x512 slices like a real CT (default), small = a quick look")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                        help="8-flip test-time augmentation (8x slower on a CPU; default: off for the demo)")
    parser.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=True,
                        help="keep only the largest tumour component (default: on for the demo, whose small CPU-trained "
                             "model leaves scattered false positives; hbseg segment leaves it off by default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.consensus import consensus_volume
    from ..evaluate.metrics import dice
    from ..phantom import RATERS, read_manifest, write_dataset
    from ..progress import TqdmProgress

    out = Path(args.output)
    progress = TqdmProgress(sys.stderr)
    manifest = write_dataset(out / "phantom", "ct", 1, DEMO_SEED, args.size, progress=progress)
    progress.close()
    row = read_manifest(manifest)[0]
    case_dir = manifest.parent
    image_path = case_dir / row["image"]
    raters = {name: read_mask(case_dir / row[name]) for name in RATERS}
    consensus = consensus_volume(list(raters.values()))
    write_volume(consensus, out / "consensus.nii.gz")
    masks = {**{name: v.array for name, v in raters.items()}, "Rc": consensus.array}
    lines = [f"case {row['case']}: pairwise Dice (voxel counts, same grid)"]
    for a, b in itertools.combinations(masks, 2):
        value, _ = dice(masks[a], masks[b])
        lines.append(f"  {a:>2} vs {b:<2}  {value:.3f}")
    write_text_atomic(out / "agreement.txt", "\n".join(lines) + "\n")

    print(f"synthetic CT case:      {image_path}")
    print(f"annotators R1, R2, R3:  {case_dir / row['case']}/R*.nii.gz")
    print(f"consensus (2 of 3):     {out / 'consensus.nii.gz'}")
    print(f"agreement:              {out / 'agreement.txt'}")
    print("\n".join(lines[1:]))

    from ..bundle import list_bundles

    if "ct-demo" not in list_bundles("ct"):
        print("\nno bundled ct-demo model is installed yet, so the demo stops before segmentation "
              "(train one with 'hbseg train', then 'hbseg segment IMAGE --model DIR').")
        return 0
    from ..infer.predictor import PredictorOptions
    from ..infer.runner import segment_one

    summary_path = segment_one(image_path, out / "segmentation", PredictorOptions(model="ct-demo", tta=args.tta,
                                                                                   keep_largest=args.keep_largest),
                               progress=TqdmProgress(sys.stderr))
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    predicted = read_mask(out / "segmentation" / "segmentation.nii.gz", reference=consensus)
    value, _ = dice(predicted.array, consensus.array)
    clean_up = ", largest component kept" if args.keep_largest else ""
    print(f"\nsegmentation (ct-demo {summary['model_version']}{clean_up}): {out / 'segmentation'}")
    print(f"  tumour volume {summary['tumor_volume_ml']:.1f} mL, largest diameter "
          f"{summary['largest_diameter_mm']:.1f} mm, Dice vs consensus {value:.3f}")
    print(f"  mean entropy in the tumour {summary['mean_entropy_nats']:.3f} nats (max ln 2 = 0.693); "
          f"{sum(v for v in summary['seconds'].values() if v):.1f} s on {summary['device']}")
    print("  synthetic phantom and demo model: for demonstration and testing only, not for clinical use")
    return 0
