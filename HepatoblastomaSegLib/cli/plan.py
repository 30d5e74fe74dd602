"""``hbseg plan``: derive the preprocessing and network plans from a training dataset."""

from __future__ import annotations

import argparse
import textwrap

from .planning_args import add_planning_arguments, parse_target_spacing

EPILOG = textwrap.dedent("""\
    DATASET_DIR holds manifest.csv with the columns case,image,tumor[,liver] (paths relative to the
    folder), as 'hbseg phantom' writes it, or is an nnU-Net v1/v2 or Medical Segmentation Decathlon
    folder (dataset.json, imagesTr/, labelsTr/; --label tumor=VALUE says which label is the tumour).

    Shapes are measured, as nnU-Net does, on each image cropped to its non-zero region (CT after the
    0-350 HU window, which zeroes air and fat); the plans' dataset.crop says what was cropped.
    --like nnunet-v1 plans exactly as nnU-Net 1.7.1's 3d_fullres (ExperimentPlanner3D_v21) would on the
    same images (CT windowed, MRI as on disk): its spacing rule, 8 GB budget, axis order, its CT
    intensity properties, and an nnunet_v1 record (3d_lowres stage or not, scheme, nonzero mask).

    The plan (plain JSON, readable and editable, validated when loaded) holds:
      target spacing      median of the training spacings (or nnU-Net's 10th-percentile rule for thick slices,
                          or --target-spacing-mm)
      patch and network   nnU-Net 3d_fullres rules for that spacing and the GPU memory budget
      intensity           CT: 0-350 HU window, then z-score with the training tumour statistics
                          MRI: N4, then Nyul standardisation learned on the training livers
      labels, modality, library versions

    examples:
      hbseg plan phantoms/ --modality ct -o plans.json
      hbseg plan mri_cases/ --modality mri --gpu-memory-gb 11 -o mri_plans.json
      hbseg plan mri_cases/ --modality mri --target liver -o liver_plans.json     plans for a liver model
      hbseg plan ct_cases/ --modality ct --z-spacing-rule percentile10 -o plans.json
      hbseg plan ct_cases/ --modality ct --like nnunet-v1 -o plans_v1.json
      hbseg plan ct_cases/ --modality ct --target liver --target-spacing-mm 3,3,5 -o coarse.json   a coarse grid
      hbseg plan Task03_Liver/ --modality ct --label tumor=2 -o liver_plans.json    an MSD folder""")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="derive preprocessing and network plans from a training dataset",
        description="Read every case of a training dataset and write the plans: target spacing, patch size and "
                    "network topology, intensity normalisation, labels.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", metavar="DATASET_DIR",
                        help="folder with manifest.csv, or an nnU-Net/MSD folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--modality", required=True, choices=("ct", "mri"), help="imaging modality of the dataset")
    parser.add_argument("-o", "--output", required=True, metavar="PLANS_JSON", help="plans file to write (JSON)")
    parser.add_argument("--target", choices=("tumor", "liver"), default="tumor",
                        help="what the model segments: the tumour (default) or the liver incl. tumour (a liver "
                             "model that provides the MRI Nyul mask)")
    add_planning_arguments(parser)
    parser.add_argument("--like", choices=("nnunet-v1",),
                        help="plan exactly as nnU-Net 1.7.1's 3d_fullres would (implies --z-spacing-rule percentile10 "
                             "and an 8 GB budget)")
    parser.add_argument("--label", action="append", metavar="ROLE=VALUE", dest="labels",
                        help="which value of multi-label masks is the tumour (e.g. tumor=2; liver=1 for the liver)")
    parser.add_argument("--n4-shrink", type=int, default=4, metavar="N",
                        help="MRI: in-plane shrink factor for fitting the N4 bias field (default 4; 1 = full "
                             "resolution, several times slower)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display on stderr (bar), as JSON lines on stdout (json), or none")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..preprocess.nnunet_dataset import parse_label_options
    from ..preprocess.planning import plan_dataset
    from ..preprocess.plans import N4Settings
    from ..progress import JsonLinesProgress, NullProgress, TqdmProgress

    progress = {"bar": TqdmProgress, "json": JsonLinesProgress, "none": NullProgress}[args.progress]()
    if args.n4_shrink < 1:
        from ..errors import ConfigError

        raise ConfigError(f"--n4-shrink must be at least 1, got {args.n4_shrink}")
    if args.like and (args.gpu_memory_gb != 8.0 or args.z_spacing_rule != "median" or args.target_spacing_mm):
        from ..errors import ConfigError

        raise ConfigError(f"--like {args.like} plans with nnU-Net's own spacing rule and 8 GB budget; leave out "
                          "--gpu-memory-gb, --z-spacing-rule and --target-spacing-mm")
    try:
        plans = plan_dataset(args.dataset_dir, args.modality, gpu_memory_gb=args.gpu_memory_gb,
                             z_spacing_rule=args.z_spacing_rule, label_source=args.target,
                             target_spacing_mm_xyz=parse_target_spacing(args.target_spacing_mm),
                             n4=N4Settings(shrink_inplane=args.n4_shrink), progress=progress, like=args.like,
                             label_map=parse_label_options(args.labels))
    finally:
        progress.close()
    path = plans.save(args.output)
    if args.progress == "json":
        progress.done(str(path))
        return 0
    topo = plans.topology
    sp = plans.spacing
    lines = [
        f"wrote {path}",
        f"  cases            {plans.dataset.num_cases} ({plans.modality.upper()}, label: {plans.label_source})",
        f"  target spacing   {_fmt(sp.target_spacing_mm_xyz)} mm (x, y, z; rule: {sp.rule}; nnU-Net 10th-percentile "
        f"rule {'applies' if sp.nnunet_rule_applies else 'does not apply'})",
        f"  median shape     {_fmt(topo.median_shape_zyx)} voxels (z, y, x) on the target grid",
        *_crop_lines(plans),
        f"  patch            {_fmt(topo.patch_size_zyx)} (z, y, x), batch {topo.batch_size}, "
        f"{topo.gpu_memory_gb:g} GB budget",
        f"  strides          {' '.join(''.join(map(str, s)) for s in topo.strides_zyx)} (z, y, x per stage)",
        f"  kernels          {' '.join(''.join(map(str, k)) for k in topo.kernel_sizes_zyx)}",
        f"  filters          {' '.join(map(str, topo.filters))}",
    ]
    if plans.ct is not None:
        ct = plans.ct
        lines.append(f"  intensity        window {_range(ct.window_hu)} HU, clip {_range(ct.clip_hu)} HU, mean "
                     f"{ct.mean_hu:.1f}, SD {ct.std_hu:.1f} ({ct.foreground_voxels} {ct.foreground} voxels)")
    else:
        nyul = plans.mri.nyul
        nyul_text = "none (liver model)" if nyul is None else \
            f"{len(nyul.percentiles)} landmarks in the {nyul.mask_source}"
        lines.append(f"  intensity        N4 (shrink {plans.mri.n4.shrink_inplane}), Nyul {nyul_text}, z-score per "
                     "image")
    print("\n".join(lines))
    return 0


def _crop_lines(plans) -> list[str]:
    crop = plans.dataset.crop
    lines = []
    if crop is not None:
        lines.append(f"  cropped          {crop.cases_cropped} of {plans.dataset.num_cases} cases to the non-zero "
                     "region"
                     f"{' after the window' if crop.rule == 'nonzero_after_window' else ''}: median "
                     f"{_fmt(crop.median_size_xyz)} -> {_fmt(crop.median_cropped_size_xyz)} voxels (x, y, z)")
    if plans.nnunet_v1 is not None:
        v1 = plans.nnunet_v1
        lines.append(f"  nnU-Net v1       {v1.planner}: {v1.plans_num_stages} plan stage(s), scheme "
                     f"{v1.normalization_scheme}, nonzero mask {'yes' if v1.use_mask_for_norm else 'no'}, "
                     f"{len(plans.topology.strides_zyx)} network stages")
    return lines


def _fmt(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _range(pair) -> str:
    return f"{pair[0]:.4g} to {pair[1]:.4g}"
