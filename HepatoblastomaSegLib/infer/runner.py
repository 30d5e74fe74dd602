"""What ``hbseg segment`` does: one image into a folder, or a cohort manifest into a folder per case."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from ..io import read_volume
from ..io.dicom_seg import require_dicom_input
from ..preprocess.checks import check_plausible_scan
from ..progress import NullProgress, Progress
from .cohort import (CohortCase, CohortResult, distributed_context, merge_rank_tables, read_manifest, result_options,
                     run_cohort)
from .outputs import check_output_folder, write_prediction
from .predictor import Predictor, PredictorOptions, guess_modality


def segment_one(image: str | Path, out_dir: str | Path, options: PredictorOptions, *, fmt: str = "nifti",
                progress: Progress | None = None, entropy_fmt: str | None = None, series_uid: str | None = None,
                predictor_for: Callable[[PredictorOptions, str], Predictor] | None = None) -> Path:
    """Read ``image`` (the DICOM series ``series_uid`` when it is a folder), segment it, write the outputs into
    ``out_dir``; returns the summary's path.

    ``predictor_for(options, modality)`` gives the predictor (default: load it, :meth:`Predictor.from_options`);
    ``hbseg serve`` passes one that keeps models loaded between requests."""
    progress = progress or NullProgress()
    require_dicom_input(image, fmt, entropy_fmt)
    check_output_folder(out_dir, fmt, (image,))  # before any work: never write over the input, nor into a file
    t0 = time.perf_counter()
    progress("read", 0.0, str(image))
    volume = read_volume(image, series_uid=series_uid)
    if volume.metadata.get("dicom"):
        info = volume.metadata["dicom"]
        progress.log(f"DICOM series {info['series_uid']} ({info['n_slices']} slices): {info['reason']}")
    read_s = time.perf_counter() - t0
    progress("read", 1.0, str(image))
    modality = options.modality or guess_modality(volume)
    check_plausible_scan(volume, modality)  # what cannot be a scan is refused before the model is loaded
    t0 = time.perf_counter()
    predictor = (predictor_for(options, modality) if predictor_for is not None
                 else Predictor.from_options(options, modality=modality))
    load_s = time.perf_counter() - t0
    prediction = predictor.predict(volume, progress)
    prediction.summary["seconds"] = {"read": round(read_s, 4), "load_model": round(load_s, 4),
                                     **prediction.summary["seconds"]}
    progress("write", 0.0, str(out_dir))
    # the summary cannot time its own writing
    summary_path = write_prediction(prediction, out_dir, fmt=fmt, entropy_fmt=entropy_fmt)
    progress("write", 1.0, str(summary_path))
    return summary_path


def segment_cohort(manifest: str | Path, out_dir: str | Path, options: PredictorOptions, *, fmt: str = "nifti",
                   progress: Progress | None = None, entropy_fmt: str | None = None) -> CohortResult:
    """Segment every case of ``manifest``; models are loaded once per modality. Under torchrun, shard by rank."""
    progress = progress or NullProgress()
    cases = read_manifest(manifest)
    for case in cases:
        require_dicom_input(case.image, fmt, entropy_fmt, case=case.case)
    rank, world_size, local_rank = distributed_context()
    if world_size > 1:
        import torch
        import torch.distributed as dist

        if options.device in ("auto", "cuda") and torch.cuda.is_available():
            options = dataclasses.replace(options, device=f"cuda:{local_rank}")
        if not dist.is_initialized():
            dist.init_process_group("gloo")  # a barrier and nothing else: gloo works with and without GPUs
    predictors: dict[str, Predictor] = {}

    def predict(case: CohortCase, case_progress: Progress):
        volume = read_volume(case.image)
        modality = options.modality or case.modality or guess_modality(volume)
        check_plausible_scan(volume, modality)
        if modality not in predictors:
            predictors[modality] = Predictor.from_options(options, modality=modality)
        return predictors[modality].predict(volume, case_progress)

    result = run_cohort(cases, out_dir, predict, fmt=fmt, progress=progress, rank=rank, world_size=world_size,
                        entropy_fmt=entropy_fmt, options=result_options(options, fmt, entropy_fmt))
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            path = merge_rank_tables(out_dir, world_size, cases)
            result = CohortResult(result.rows, path)
        dist.barrier()
        dist.destroy_process_group()
    return result
