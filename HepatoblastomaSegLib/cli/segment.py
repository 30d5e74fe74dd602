"""``hbseg segment``: tumour mask, entropy map and summary for one image or a whole cohort."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from ..errors import ConfigError
from ..infer.options import PredictorOptions, add_arguments
from ..progress import JsonLinesProgress, NullProgress, Progress, TqdmProgress

EPILOG = textwrap.dedent("""\
    outputs (in OUT/, or OUT/<case>/ for a cohort):
      segmentation.nii.gz   tumour mask, uint8 0/1, exactly the input's grid  (--format nrrd: segmentation.seg.nrrd,
                            a 3D Slicer segmentation with one segment "Hepatoblastoma"; --format dicom-seg:
                            segmentation.dcm, a DICOM Segmentation in the source study, DICOM input only)
      entropy.nii.gz        voxelwise softmax entropy in nats, float32, 0 (certain) .. ln 2 = 0.693 (--format nrrd: entropy.nrrd)
      summary.json          volume (mL), largest diameter (mm), mean/core/boundary entropy, model, device, seconds per stage
                            and "review" ({"needed", "reasons"}): whether a person should check this result, and why
      cohort_summary.csv    (cohort only) one row per case, with the error of any case that failed

    examples:
      hbseg segment scan.nii.gz -o result/                   CT, bundled demo model, 8-flip TTA
      hbseg segment dicom_folder/ --no-tta -o result/        a DICOM series (the one with the most slices)
      hbseg segment dicom_folder/ --format dicom-seg --entropy-format dicom-pm -o result/   DICOM SEG + Parametric Map
      hbseg segment t2.nrrd --modality mri -o result/        MRI: N4 + liver mask + Nyul, then the MRI model
      hbseg segment --dicomweb http://pacs:8042/dicom-web --study 1.2.3 --push -o result/   from a PACS and back
      hbseg segment --manifest cohort.csv -o results/        a cohort (CSV: case,image[,modality]); re-run to resume
      hbseg segment --manifest cohort.csv --compile -o results/   a long cohort on a GPU: compiled once, then faster
      torchrun --nproc_per_node 4 -m HepatoblastomaSegLib.cli segment --manifest cohort.csv -o results/

    A cohort run skips cases whose outputs are complete and verified, logs a failing case and goes on, and exits 1
    if any case failed. Nothing half-written is ever left behind: kill it at any moment and run it again.
    A case is redone when its image or the options changed. Images of more than 2^29 voxels are refused; set the
    environment variable HBSEG_MAX_VOXELS to raise the limit.""")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment the tumour in an image or a cohort (mask, entropy map, summary)",
        description="Segment hepatoblastoma on a CT or T2-weighted MRI volume with a model bundle, and report the "
                    "model's voxelwise uncertainty (softmax entropy).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path,
                        help="image file (.nii, .nii.gz, .nrrd, .mha, .mhd) or a DICOM series folder")
    parser.add_argument("--manifest", type=Path, help="cohort CSV with columns case,image[,modality] (instead of IMAGE); "
                                                      "with --dicomweb: case,study_uid[,series_uid][,modality]")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--dicomweb", metavar="URL",
                        help="segment a series of a PACS instead of IMAGE: the server's DICOMweb root (e.g. "
                             "http://pacs:8042/dicom-web), with --study; basic auth from HBSEG_DICOMWEB_USER/"
                             "HBSEG_DICOMWEB_PASSWORD or ~/.netrc, never the command line (--format defaults to "
                             "dicom-seg)")
    parser.add_argument("--study", metavar="UID", help="with --dicomweb: the StudyInstanceUID to segment")
    parser.add_argument("--series", metavar="UID",
                        help="the SeriesInstanceUID to segment (in a DICOM folder, or on the --dicomweb server); "
                             "default: the CT/MR series with the most slices")
    parser.add_argument("--push", action="store_true",
                        help="with --dicomweb: store the DICOM SEG (and a dicom-pm entropy map) back in the study "
                             "with STOW-RS")
    add_arguments(parser)  # the options of PredictorOptions, defined once in infer/options.py
    parser.add_argument("--format", choices=("nifti", "nrrd", "dicom-seg"),
                        help="nifti: .nii.gz files; nrrd: Slicer .seg.nrrd + .nrrd; dicom-seg: a DICOM Segmentation "
                             "segmentation.dcm in the source study (DICOM input only) (default: nifti; dicom-seg "
                             "with --dicomweb)")
    parser.add_argument("--entropy-format", choices=("nifti", "nrrd", "dicom-pm"),
                        help="the entropy map's format when it should differ from --format's (nifti for dicom-seg); "
                             "dicom-pm: a DICOM Parametric Map entropy.dcm in the source study (DICOM input only)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="bar: progress bars on stderr; json: one JSON object per line on stdout for programs "
                             "(stage, fraction, eta_s); none: quiet (default: %(default)s)")
    parser.set_defaults(func=run)


def make_progress(kind: str) -> Progress:
    if kind == "json":
        return JsonLinesProgress(sys.stdout)
    if kind == "bar":
        return TqdmProgress(sys.stderr)
    return NullProgress()


def run(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.manifest is None and args.dicomweb is None):
        raise ConfigError("give exactly one of IMAGE, --manifest CSV or --dicomweb URL (with --study, or with a "
                          "--manifest of study_uid columns)")
    if args.dicomweb is None and (args.study or args.push):
        raise ConfigError("--study and --push go with --dicomweb URL")
    if args.dicomweb is not None and (args.study is None) == (args.manifest is None):
        raise ConfigError("--dicomweb needs either --study STUDY_UID or a --manifest with study_uid columns")
    if args.series and (args.manifest is not None or (args.image is not None and not args.image.is_dir())):
        raise ConfigError("--series picks a series in a DICOM folder or on a --dicomweb server")
    fmt = args.format or ("dicom-seg" if args.dicomweb else "nifti")
    if args.image is not None:
        from ..io.headers import check_header

        check_header(args.image)  # a header bomb or broken header is refused in milliseconds, before torch loads
    from ..allocator import retain_freed_memory
    from ..infer.runner import segment_cohort, segment_one

    retain_freed_memory()  # every case allocates the same large arrays again: reuse mapped memory
    options = predictor_options(args)
    progress = make_progress(args.progress)
    try:
        if args.dicomweb is not None and args.manifest is not None:
            from ..infer.dicomweb_run import segment_cohort_from_dicomweb

            result = segment_cohort_from_dicomweb(args.manifest, args.dicomweb, args.output, options, fmt=fmt,
                                                  entropy_fmt=args.entropy_format, push=args.push,
                                                  progress=progress)
            _finish(progress, f"{len(result.rows)} case(s), {result.n_failed} failed; table: {result.summary_path}",
                    args.progress)
            return 1 if result.n_failed else 0
        if args.dicomweb is not None:
            from ..infer.dicomweb_run import segment_from_dicomweb

            summary_path = segment_from_dicomweb(args.dicomweb, args.study, args.series, args.output, options,
                                                 fmt=fmt, entropy_fmt=args.entropy_format, push=args.push,
                                                 progress=progress)
            _finish(progress, str(summary_path), args.progress)
            return 0
        if args.manifest is not None:
            result = segment_cohort(args.manifest, args.output, options, fmt=fmt, progress=progress,
                                    entropy_fmt=args.entropy_format)
            failed = result.n_failed
            message = (f"{len(result.rows)} case(s), {failed} failed, {result.n_flagged} flagged for review; table: "
                       f"{result.summary_path}" if result.rows
                       else f"nothing to do; table: {result.summary_path}")
            _finish(progress, message, args.progress)
            return 1 if failed else 0
        summary_path = segment_one(args.image, args.output, options, fmt=fmt, progress=progress,
                                   entropy_fmt=args.entropy_format, series_uid=args.series)
        _finish(progress, str(summary_path), args.progress)
        return 0
    except Exception as exc:
        if isinstance(progress, JsonLinesProgress):
            progress.error(str(exc))
        raise
    finally:
        progress.close()


def predictor_options(args: argparse.Namespace) -> PredictorOptions:
    """The parsed ``hbseg segment`` options, checked (also what ``hbseg serve`` uses for each request's options)."""
    return PredictorOptions.from_namespace(args)


def _finish(progress: Progress, message: str, kind: str) -> None:
    progress.close()
    if isinstance(progress, JsonLinesProgress):
        progress.done(message)
    elif kind == "bar":
        print(message, file=sys.stderr)
