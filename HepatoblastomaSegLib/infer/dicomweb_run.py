"""``hbseg segment --dicomweb``: pull a series (or a cohort of them) from a PACS, segment, optionally push the DICOM
results back.

The transfer itself (QIDO-RS, WADO-RS, STOW-RS, credentials, one-line errors) is :mod:`..io.dicomweb`; this module
strings it together with :func:`.runner.segment_one` and :func:`.cohort.run_cohort`. Nothing reaches a case's output
folder before its whole series is downloaded and checked; each download folder is removed as soon as the case's
outputs are written, whatever happens.

A cohort manifest for ``--dicomweb`` names studies instead of files: columns ``case,study_uid`` and optionally
``series_uid`` and ``modality``. As for local cohorts, a finished case is skipped on a re-run (without downloading
it), a failing case is recorded and the run goes on; with ``--push`` every finished case whose summary does not yet
record a push is stored back after the cohort, so a re-run also completes interrupted pushes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

from ..errors import ConfigError, HepatoblastomaSegError, InputError
from ..io import read_volume, write_text_atomic
from ..io.dicomweb import DicomwebClient, Download, downloaded_series
from ..io.tables import read_csv_rows
from ..progress import NullProgress, Progress
from .cohort import CohortCase, CohortResult, _write_table, run_cohort
from .outputs import SUMMARY_NAME, is_finished
from .predictor import Predictor, PredictorOptions, guess_modality
from .runner import segment_one


def segment_from_dicomweb(url: str, study_uid: str, series_uid: str | None, out_dir: str | Path,
                          options: PredictorOptions, *, fmt: str = "dicom-seg", entropy_fmt: str | None = None,
                          push: bool = False, progress: Progress | None = None) -> Path:
    """Pull a series, segment it into ``out_dir`` (as :func:`.runner.segment_one`), optionally push the DICOM
    outputs back into the study; returns the summary's path. The summary records where the series came from."""
    out_dir = Path(out_dir)
    _check_push(push, fmt)
    progress = progress or NullProgress()
    client = DicomwebClient(url)
    try:
        with downloaded_series(client, study_uid, series_uid, progress) as download:
            _log_download(progress, download)
            summary_path = segment_one(download.folder, out_dir, options, fmt=fmt, entropy_fmt=entropy_fmt,
                                       progress=progress)
            record_provenance(summary_path, client, study_uid, download)
        if push:
            push_case(client, out_dir)
        return summary_path
    finally:
        client.close()


@dataclasses.dataclass(frozen=True)
class RemoteCase(CohortCase):
    """A cohort case on a DICOMweb server (``image`` says where, for messages; it is never opened)."""

    study_uid: str = ""
    series_uid: str | None = None

    def input_sha256(self) -> str:
        """A server's series is not downloaded to be checked before a rerun skips it: its address is the key (DICOM
        gives one content one UID for good)."""
        return hashlib.sha256(str(self.image).encode("utf-8")).hexdigest()


def read_dicomweb_manifest(path: str | Path, url: str) -> list[RemoteCase]:
    """Parse a ``case,study_uid[,series_uid][,modality]`` manifest; errors name the file, the row and the problem."""
    path = Path(path)
    columns, rows = read_csv_rows(path, "manifest")
    missing = [c for c in ("case", "study_uid") if c not in columns]
    if missing:
        raise InputError(f"a --dicomweb manifest needs the columns case,study_uid[,series_uid][,modality]; it lacks "
                         f"{', '.join(missing)}", path)
    cases, seen = [], set()
    for row_number, row in rows:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        case, study = row.get("case", ""), row.get("study_uid", "")
        if not case or not study:
            raise InputError(f"row {row_number}: empty case or study_uid", path)
        if case in seen or "/" in case or "\\" in case or case in (".", ".."):
            raise InputError(f"row {row_number}: case id {case!r} appears twice or contains a path separator", path)
        seen.add(case)
        modality = row.get("modality", "").lower() or None
        if modality not in (None, "ct", "mri"):
            raise InputError(f"row {row_number}: modality {modality!r} is not ct or mri", path)
        series = row.get("series_uid") or None
        where = Path(f"{url.rstrip('/')}/studies/{study}" + (f"/series/{series}" if series else ""))
        cases.append(RemoteCase(case, where, modality, study, series))
    if not cases:
        raise InputError("manifest has no cases", path)
    return cases


def segment_cohort_from_dicomweb(manifest: str | Path, url: str, out_dir: str | Path, options: PredictorOptions, *,
                                 fmt: str = "dicom-seg", entropy_fmt: str | None = None, push: bool = False,
                                 progress: Progress | None = None) -> CohortResult:
    """Segment every study of a ``--dicomweb`` manifest into ``out_dir/<case>/``; see the module's docstring."""
    _check_push(push, fmt)
    out_dir = Path(out_dir)
    progress = progress or NullProgress()
    cases = read_dicomweb_manifest(manifest, url)
    client = DicomwebClient(url)
    predictors: dict[str, Predictor] = {}
    open_downloads: dict[str, tuple[contextlib.ExitStack, Download]] = {}

    def predict(case: RemoteCase, case_progress: Progress):
        stack = contextlib.ExitStack()
        try:
            download = stack.enter_context(downloaded_series(client, case.study_uid, case.series_uid, case_progress))
        except BaseException:
            stack.close()
            raise
        open_downloads[case.case] = (stack, download)  # kept until the outputs are written (SEG references it)
        _log_download(case_progress, download)
        volume = read_volume(download.folder)
        modality = options.modality or case.modality or guess_modality(volume)
        if modality not in predictors:
            predictors[modality] = Predictor.from_options(options, modality=modality)
        return predictors[modality].predict(volume, case_progress)

    def case_done(row: dict) -> None:
        stack, download = open_downloads.pop(row["case"], (None, None))
        if stack is None:
            return
        with stack:
            if row["status"] == "ok":
                case = next(c for c in cases if c.case == row["case"])
                record_provenance(out_dir / case.case / SUMMARY_NAME, client, case.study_uid, download)

    try:
        result = run_cohort(cases, out_dir, predict, fmt=fmt, entropy_fmt=entropy_fmt, progress=progress,
                            on_case_done=case_done)
        if push:
            _push_finished_cases(client, cases, out_dir, result, progress)
        return result
    finally:
        for stack, _ in open_downloads.values():
            stack.close()
        client.close()


def _push_finished_cases(client: DicomwebClient, cases: list[RemoteCase], out_dir: Path, result: CohortResult,
                         progress: Progress) -> None:
    """Push every finished case not pushed yet; a failed push marks the case failed in the cohort table."""
    failed = {}
    for done, case in enumerate(cases):
        progress("push", done / len(cases), case.case)
        if is_finished(out_dir / case.case):
            try:
                push_case(client, out_dir / case.case)
            except HepatoblastomaSegError as exc:
                progress.log(f"{case.case}: push FAILED: {exc}")
                failed[case.case] = str(exc)
    progress("push", 1.0, f"{len(cases) - len(failed)} case(s) stored")
    if failed:
        result.rows[:] = [dict(r, status="failed", error=failed[r["case"]]) if r["case"] in failed else r
                          for r in result.rows]
        _write_table(result.summary_path, result.rows)


def record_provenance(summary_path: Path, client: DicomwebClient, study_uid: str, download: Download) -> None:
    """Replace the summary's ``input`` (a temporary folder) by the series' address and record the download."""
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["input"] = f"{client.url}/studies/{study_uid}/series/{download.series.uid}"
    summary["dicomweb"] = {"url": client.url, "study_uid": study_uid, "series_uid": download.series.uid,
                           "instances": download.n_instances, "download_s": round(download.seconds, 3), "pushed": []}
    write_text_atomic(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def push_case(client: DicomwebClient, case_dir: Path) -> list[str]:
    """STOW-RS the case's DICOM outputs into its study, unless its summary says they were stored already."""
    summary_path = case_dir / SUMMARY_NAME
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    record = summary.get("dicomweb") or {}
    if not record.get("study_uid"):
        raise InputError("its summary records no DICOMweb study to push to (segmented from local files?)", case_dir)
    if record.get("pushed"):
        return record["pushed"]
    files = [case_dir / item["file"] for item in summary["outputs"].values() if item["file"].endswith(".dcm")]
    try:
        record["pushed"] = client.store(record["study_uid"], files)
    except InputError as exc:
        raise InputError(f"the result is complete in {case_dir}, but {exc.problem}", exc.path) from exc
    summary["dicomweb"] = record
    write_text_atomic(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return record["pushed"]


def _check_push(push: bool, fmt: str) -> None:
    if push and fmt != "dicom-seg":
        raise ConfigError(f"--push stores a DICOM SEG in the study; it needs --format dicom-seg, not {fmt}")


def _log_download(progress: Progress, download: Download) -> None:
    progress.log(f"DICOMweb: series {download.series.uid} ({download.series.modality}, {download.n_instances} "
                 f"instances) in {download.seconds:.1f} s")
