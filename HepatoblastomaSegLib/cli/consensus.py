"""``hbseg consensus``: one consensus mask from several raters' masks."""

from __future__ import annotations

import argparse
import textwrap

DESCRIPTION = textwrap.dedent("""\
    Combine two or more raters' binary tumour masks of one case into a consensus mask.

    majority (default, the paper's Rc): a voxel is tumour when more than half of the N raters marked it
      (2 of 3, 3 of 4, 3 of 5); with an even N a tie goes to background. --min-votes K sets another rule
      (K of N).
    staple: SimpleITK's STAPLE, a different estimator. It weights each rater by an estimated sensitivity and
      specificity and thresholds the resulting tumour probability (--staple-threshold); it can differ from the
      vote and is not what the paper used.

    All masks must hold only 0 and 1 and lie on the same voxel grid (size, spacing, origin, direction); the
    output keeps that grid.""")

EPILOG = textwrap.dedent("""\
    examples:
      hbseg consensus R1.nii.gz R2.nii.gz R3.nii.gz -o consensus.nii.gz
      hbseg consensus R1.nrrd R2.nrrd R3.nrrd R4.nrrd --min-votes 2 -o rc.nii.gz   # 2 of 4, ties to tumour
      hbseg consensus R1.nii.gz R2.nii.gz R3.nii.gz --method staple -o staple.nii.gz""")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("consensus", help="consensus mask of several raters (majority vote or STAPLE)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("masks", nargs="+", metavar="MASK", help="rater masks (NIfTI, NRRD, MetaImage), 0/1 values")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="consensus mask to write (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--method", choices=("majority", "staple"), default="majority",
                        help="majority vote (default) or STAPLE")
    parser.add_argument("--min-votes", type=int, metavar="K",
                        help="majority only: votes a voxel needs (1..N; default: more than half of N)")
    parser.add_argument("--staple-threshold", type=float, default=0.5, metavar="P",
                        help="STAPLE only: tumour probability at or above which a voxel is tumour (default 0.5)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import ConfigError
    from ..evaluate.consensus import consensus_volume, default_min_votes
    from ..io import read_mask, write_volume

    if len(args.masks) < 2:
        raise ConfigError(f"a consensus needs at least 2 masks, got {len(args.masks)}")
    if args.method == "staple" and args.min_votes is not None:
        raise ConfigError("--min-votes applies to --method majority only")
    _refuse_overwriting_an_input(args.output, args.masks)
    volumes = [read_mask(path, what="rater mask") for path in args.masks]
    result = consensus_volume(volumes, method=args.method, min_votes=args.min_votes,
                              staple_threshold=args.staple_threshold)
    write_volume(result, args.output)
    n_voxels = int(np.count_nonzero(result.array))
    rule = (f"STAPLE >= {args.staple_threshold}" if args.method == "staple"
            else f">= {args.min_votes or default_min_votes(len(volumes))} of {len(volumes)} votes")
    print(f"{args.output}: {n_voxels} voxels, {n_voxels * result.voxel_volume_ml:.2f} mL ({rule})")
    return 0


def _refuse_overwriting_an_input(output: str, inputs: list[str]) -> None:
    """Never write the consensus over one of the raters' masks (``-o R1.nii.gz``), nor into a folder."""
    from pathlib import Path

    from ..errors import ConfigError

    target = Path(output)
    if target.is_dir():
        raise ConfigError("-o must name the consensus mask file to write, but this is a folder", target)
    for source in map(Path, inputs):
        same = target.resolve() == source.resolve()
        if not same and target.exists() and source.exists():
            same = target.samefile(source)
        if same:
            raise ConfigError(f"-o {output} is one of the input masks; writing there would overwrite a rater's "
                              "mask. Choose another output file", target)
