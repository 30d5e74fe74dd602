"""``hbseg segment --dicomweb``: pull a series from a PACS, segment it, optionally push the DICOM results back.

The transfer itself (QIDO-RS, WADO-RS, STOW-RS, credentials, one-line errors) is :mod:`..io.dicomweb`; this module
strings it together with :func:`.runner.segment_one`. Nothing reaches the output folder before the whole series is
downloaded and checked; the download folder is removed afterwards, whatever happens.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, InputError
from ..io import write_text_atomic
from ..io.dicomweb import DicomwebClient, downloaded_series
from ..progress import Progress
from .predictor import PredictorOptions
from .runner import segment_one


def segment_from_dicomweb(url: str, study_uid: str, series_uid: str | None, out_dir: str | Path,
                          options: PredictorOptions, *,
                          fmt: str = "dicom-seg", entropy_fmt: str | None = None, push: bool = False,
                          progress: Progress | None = None) -> Path:
    """Pull a series, segment it into ``out_dir`` (as :func:`.runner.segment_one`), optionally push the DICOM
    outputs back into the study; returns the summary's path. The summary records where the series came from."""
    out_dir = Path(out_dir)
    if push and fmt != "dicom-seg":
        raise ConfigError(f"--push stores a DICOM SEG in the study; it needs --format dicom-seg, not {fmt}")
    client = DicomwebClient(url)
    try:
        with downloaded_series(client, study_uid, series_uid, progress) as download:
            if progress is not None:
                progress.log(f"DICOMweb: series {download.series.uid} ({download.series.modality}, "
                             f"{download.n_instances} instances) in {download.seconds:.1f} s")
            summary_path = segment_one(download.folder, out_dir, options, fmt=fmt, entropy_fmt=entropy_fmt,
                                       progress=progress)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["input"] = f"{client.url}/studies/{study_uid}/series/{download.series.uid}"
        summary["dicomweb"] = {"url": client.url, "study_uid": study_uid, "series_uid": download.series.uid,
                               "instances": download.n_instances, "download_s": round(download.seconds, 3),
                               "pushed": []}
        write_text_atomic(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
        if push:
            files = [out_dir / item["file"] for item in summary["outputs"].values()
                     if item["file"].endswith(".dcm")]
            try:
                summary["dicomweb"]["pushed"] = client.store(study_uid, files)
            except InputError as exc:
                raise InputError(f"the result is complete in {out_dir}, but {exc.problem}", exc.path) from exc
            write_text_atomic(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
        return summary_path
    finally:
        client.close()
