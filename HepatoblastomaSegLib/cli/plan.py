"""``hbseg plan``: derive the preprocessing and network plans from a training dataset."""

from __future__ import annotations

import argparse
import textwrap

EPILOG = textwrap.dedent("""\
    DATASET_DIR holds manifest.csv with the columns case,image,tumor[,liver] (paths relative to the
    folder), as 'hbseg phantom' writes it.

    The plan (plain JSON, readable and editable, validated when loaded) holds:
      target spacing      median of the training spacings (or nnU-Net's 10th-percentile rule for thick slices)
      patch and network   nnU-Net 3d_fullres rules for that spacing and the GPU memory budget
      intensity           CT: 0-350 HU window, then z-score with the training tumour statistics
                          MRI: N4, then Nyul standardisation learned on the training livers
      labels, modality, library versions

    examples:
      hbseg plan phantoms/ --modality ct -o plans.json
      hbseg plan mri_cases/ --modality mri --gpu-memory-gb 11 -o mri_plans.json
      hbseg plan mri_cases/ --modality mri --target liver -o liver_plans.json     plans for a liver model
      hbseg plan ct_cases/ --modality ct --z-spacing-rule percentile10 -o plans.json""")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="derive preprocessing and network plans from a training dataset",
        description="Read every case of a training dataset and write the plans: target spacing, patch size and "
                    "network topology, intensity normalisation, labels.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="folder with manifest.csv")
    parser.add_argument("--modality", required=True, choices=("ct", "mri"), help="imaging modality of the dataset")
    parser.add_argument("-o", "--output", required=True, metavar="PLANS_JSON", help="plans file to write (JSON)")
    parser.add_argument("--target", choices=("tumor", "liver"), default="tumor",
                        help="what the model segments: the tumour (default) or the liver incl. tumour (a liver "
                             "model that provides the MRI Nyul mask)")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0, metavar="GB",
                        help="training GPU memory budget in GB that the patch size is fitted to (default 8, "
                             "nnU-Net's default plans)")
    parser.add_argument("--z-spacing-rule", choices=("median", "percentile10"), default="median",
                        help="target spacing of the coarse (slice) axis: the median, as the paper says (default), "
                             "or nnU-Net's 10th percentile for strongly anisotropic data")
    parser.add_argument("--n4-shrink", type=int, default=4, metavar="N",
                        help="MRI: in-plane shrink factor for fitting the N4 bias field (default 4; 1 = full "
                             "resolution, several times slower)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display on stderr (bar), as JSON lines on stdout (json), or none")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..preprocess.planning import plan_dataset
    from ..preprocess.plans import N4Settings
    from ..progress import JsonLinesProgress, NullProgress, TqdmProgress

    progress = {"bar": TqdmProgress, "json": JsonLinesProgress, "none": NullProgress}[args.progress]()
    if args.n4_shrink < 1:
        from ..errors import ConfigError

        raise ConfigError(f"--n4-shrink must be at least 1, got {args.n4_shrink}")
    try:
        plans = plan_dataset(args.dataset_dir, args.modality, gpu_memory_gb=args.gpu_memory_gb,
                             z_spacing_rule=args.z_spacing_rule, label_source=args.target,
                             n4=N4Settings(shrink_inplane=args.n4_shrink), progress=progress)
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


def _fmt(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _range(pair) -> str:
    return f"{pair[0]:.4g} to {pair[1]:.4g}"
