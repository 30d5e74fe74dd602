"""Segment a cohort from a manifest: model loaded once, resumable, a bad case never stops the others.

Manifest: a CSV with columns ``case,image`` and optionally ``modality`` (``ct``/``mri``); image paths are relative to
the CSV's folder (absolute paths work too). Outputs go to ``OUT/<case>/`` (see :mod:`.outputs`) and a table of every
case to ``OUT/cohort_summary.csv``. A case whose folder is already finished (verified checksums) from the same input
bytes (SHA256) and the same result-shaping options is skipped; otherwise it is recomputed and the log says why.
One run at a time may use an output folder (a lock; a second run is refused), and what a killed run left half-written
is removed. The table is rewritten at most every :data:`TABLE_EVERY_S` seconds (and at the end), so a cohort of
10 000 cases costs linear time; a progress line goes to the log as often.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the cases are dealt out round-robin to the ranks; each rank writes its own
cases and its part of the table, and rank 0 merges the parts after all ranks are done.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ..errors import HepatoblastomaSegError, InputError
from ..io import write_text_atomic
from ..io.atomic import folder_lock, remove_stale_partials
from ..io.tables import neutralise_formula, read_csv_rows
from ..progress import NullProgress, Progress
from .outputs import (SUMMARY_NAME, check_output_folder, input_sha256, resume_key, why_recompute,
                      write_prediction)
from .options import RESULT_OPTIONS
from .result import Prediction

log = logging.getLogger(__name__)

TABLE_NAME = "cohort_summary.csv"
#: The cohort table and the progress line are refreshed at most this often (seconds), and after the last case.
TABLE_EVERY_S = 2.0
#: The table's status of a case whose folder already held its finished result ("ok": computed, "failed").
SKIPPED = "skipped (finished earlier)"

SUMMARY_COLUMNS = ("case", "status", "modality", "tumor_volume_ml", "largest_diameter_mm", "mean_entropy_nats",
                   "core_entropy_nats", "boundary_entropy_nats", "device", "seconds_total", "output", "error",
                   "review_needed", "review_reasons")


@dataclasses.dataclass(frozen=True)
class CohortCase:
    case: str
    image: Path
    modality: str | None

    def input_sha256(self) -> str:
        """What a rerun checks of this case's input before skipping it: the SHA256 of its file or folder."""
        return input_sha256(self.image)


def read_manifest(path: str | Path) -> list[CohortCase]:
    """Parse a cohort manifest; errors name the file, the row and the problem."""
    path = Path(path)
    columns, rows = read_csv_rows(path, "manifest")
    missing = [c for c in ("case", "image") if c not in columns]
    if missing:
        raise InputError(f"manifest lacks the column(s) {', '.join(missing)}; it has {', '.join(columns) or 'none'}",
                         path)
    cases, seen = [], set()
    for row_number, row in rows:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        case, image = row.get("case", ""), row.get("image", "")
        if not case or not image:
            raise InputError(f"row {row_number}: empty case or image", path)
        if case in seen:
            raise InputError(f"row {row_number}: case id {case!r} appears twice", path)
        if "/" in case or "\\" in case or case in (".", ".."):
            raise InputError(f"row {row_number}: case id {case!r} must not contain path separators", path)
        if case.startswith(".") or case.lower() == TABLE_NAME:
            raise InputError(f"row {row_number}: case id {case!r} is reserved (the cohort table, or a hidden name); "
                             "rename the case", path)
        seen.add(case)
        modality = row.get("modality", "").lower() or None
        if modality not in (None, "ct", "mri"):
            raise InputError(f"row {row_number}: modality {modality!r} is not ct or mri", path)
        image_path = Path(image)
        cases.append(CohortCase(case, image_path if image_path.is_absolute() else path.parent / image_path, modality))
    if not cases:
        raise InputError("manifest has no cases", path)
    return cases


@dataclasses.dataclass
class CohortResult:
    rows: list[dict]
    summary_path: Path

    @property
    def n_failed(self) -> int:
        return sum(row["status"] == "failed" for row in self.rows)

    @property
    def n_flagged(self) -> int:
        """Cases whose summary says a person should review the result (:mod:`.review`)."""
        return sum(str(row.get("review_needed")) == "True" for row in self.rows)


def _row(case: CohortCase, status: str, summary: dict | None = None, error: str = "", output: str = "") -> dict:
    summary = summary or {}
    seconds = summary.get("seconds") or {}
    return {
        "case": case.case, "status": status, "modality": summary.get("modality", case.modality or ""),
        "tumor_volume_ml": summary.get("tumor_volume_ml", ""),
        "largest_diameter_mm": summary.get("largest_diameter_mm", ""),
        "mean_entropy_nats": summary.get("mean_entropy_nats", ""),
        "core_entropy_nats": summary.get("core_entropy_nats", ""),
        "boundary_entropy_nats": summary.get("boundary_entropy_nats", ""),
        "device": summary.get("device", ""),
        "seconds_total": round(sum(seconds.values()), 3) if seconds else "",
        "output": output, "error": error,
        **_review_columns(summary),
    }


def _review_columns(summary: dict) -> dict:
    """``review_needed`` (True/False; empty for a summary without the flag) and the reasons' codes, ';'-joined."""
    flag = summary.get("review")
    if not isinstance(flag, dict):
        return {"review_needed": "", "review_reasons": ""}
    return {"review_needed": bool(flag.get("needed")),
            "review_reasons": ";".join(r.get("code", "") for r in flag.get("reasons", []))}


def _write_table(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: neutralise_formula("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})
    write_text_atomic(path, buffer.getvalue())


def result_options(options: object, fmt: str, entropy_fmt: str | None = None) -> dict:
    """The resume key's options: :data:`RESULT_OPTIONS` of a ``PredictorOptions`` (or a dict) and the formats."""
    values = options if isinstance(options, dict) else dataclasses.asdict(options)
    return {**{name: values.get(name) for name in RESULT_OPTIONS}, "format": fmt, "entropy_format": entropy_fmt}


class CaseOutputs:
    """What a case's folder holds and when it counts as finished: by default ``hbseg segment``'s files
    (:func:`.outputs.write_prediction`: mask, entropy map and ``summary.json`` with the resume key).

    Another front end with other files per case (the 3D Slicer batch script: MRML storage, annotators' consensus)
    subclasses it and keeps the rest of the cohort run: resume, lock, failures, table, ranks.
    """

    def __init__(self, fmt: str = "nifti", entropy_fmt: str | None = None):
        self.fmt, self.entropy_fmt = fmt, entropy_fmt

    def why_recompute(self, case: CohortCase, case_dir: Path, key: dict) -> str | None:
        """None when ``case_dir`` holds this case's finished result of ``key`` (:func:`.outputs.resume_key`);
        otherwise why it must be computed."""
        return why_recompute(case_dir, key)

    def finished_summary(self, case: CohortCase, case_dir: Path) -> dict:
        """The summary of a finished case (for the table), when :meth:`why_recompute` said it is finished."""
        return json.loads((case_dir / SUMMARY_NAME).read_text(encoding="utf-8"))

    def check(self, case: CohortCase, case_dir: Path) -> None:
        """Refuse, before the network runs, a folder whose outputs would overwrite the case's input."""
        check_output_folder(case_dir, self.fmt, (case.image,))

    def write(self, case: CohortCase, prediction: Prediction, case_dir: Path, key: dict) -> dict:
        """Write the case's files, the one recording ``key`` last; return the summary for the table."""
        write_prediction(prediction, case_dir, fmt=self.fmt, entropy_fmt=self.entropy_fmt, resume_key=key)
        return prediction.summary


def run_cohort(cases: list[CohortCase], out_dir: str | Path, predict: Callable[[CohortCase, Progress], Prediction],
               *, fmt: str = "nifti", progress: Progress | None = None, rank: int = 0, world_size: int = 1,
               on_case_done: Callable[[dict], None] | None = None, entropy_fmt: str | None = None,
               options: dict | None = None, outputs: CaseOutputs | None = None) -> CohortResult:
    """Segment ``cases`` (this rank's share of them) into ``out_dir``.

    ``predict(case, progress)`` returns the case's :class:`Prediction`; it may raise for a bad case, which is then
    recorded with its error while the run goes on. ``options`` (see :func:`result_options`) are the result-shaping
    options of the resume key (with the case's modality and image checksum). ``outputs`` writes each case's folder
    (default: :class:`CaseOutputs` in ``fmt``/``entropy_fmt``); ``on_case_done(row)`` is called after every case,
    finished, skipped or failed. Returns every row of this rank's table.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    progress = progress or NullProgress()
    mine = cases[rank::world_size]
    table = out_dir / (TABLE_NAME if world_size == 1 else f".cohort_summary.rank{rank}.csv")
    # Ranks of one torchrun share the folder and deal out its cases; a second, separate run must not join them.
    lock = folder_lock(out_dir, wait=False) if world_size == 1 else contextlib.nullcontext()
    with lock:
        if world_size == 1:
            remove_stale_partials(out_dir)
        rows = _run_cases(mine, out_dir, predict, table, outputs=outputs or CaseOutputs(fmt, entropy_fmt),
                          progress=progress, on_case_done=on_case_done,
                          options=options or {"format": fmt, "entropy_format": entropy_fmt}, clean=world_size == 1)
    return CohortResult(rows, table)


def _run_cases(mine: list[CohortCase], out_dir: Path, predict: Callable[[CohortCase, Progress], Prediction],
               table: Path, *, outputs: CaseOutputs, progress: Progress,
               on_case_done: Callable[[dict], None] | None, options: dict, clean: bool) -> list[dict]:
    rows: list[dict] = []
    start = last_table = time.monotonic()
    n_failed = 0
    for done, case in enumerate(mine):
        case_dir = out_dir / case.case
        progress("cohort", done / len(mine), f"case {done + 1}/{len(mine)}: {case.case}")
        if clean and case_dir.is_dir():
            remove_stale_partials(case_dir)
        try:
            key = resume_key(case.input_sha256(), {**options, "case_modality": case.modality})
            reason = outputs.why_recompute(case, case_dir, key)
            if reason is None:
                summary = outputs.finished_summary(case, case_dir)
                row = _row(case, SKIPPED, summary, output=str(case_dir))
            else:
                if reason != "no earlier result":
                    progress.log(f"{case.case}: recomputing: {reason}")
                outputs.check(case, case_dir)
                prediction = predict(case, progress)
                summary = outputs.write(case, prediction, case_dir, key)
                row = _row(case, "ok", summary, output=str(case_dir))
        except FileNotFoundError as exc:
            row = _row(case, "failed", error=str(InputError("file or folder not found", exc.filename or case.image)))
            progress.log(f"{case.case}: FAILED: {row['error']}")
        except HepatoblastomaSegError as exc:
            row = _row(case, "failed", error=str(exc))
            progress.log(f"{case.case}: FAILED: {exc}")
        except Exception as exc:  # noqa: BLE001 - a cohort must survive one broken case; the error is kept
            row = _row(case, "failed", error=f"{type(exc).__name__}: {exc}")
            log.debug("case %s failed:\n%s", case.case, traceback.format_exc())
            progress.log(f"{case.case}: FAILED ({type(exc).__name__}): {exc}")
        rows.append(row)
        n_failed += row["status"] == "failed"
        now = time.monotonic()
        if done in (0, len(mine) - 1) or now - last_table >= TABLE_EVERY_S:
            _write_table(table, rows)  # a killed run still tells what it did (up to TABLE_EVERY_S ago)
            if done < len(mine) - 1:
                progress.log(f"cohort: {done + 1}/{len(mine)} case(s) done, {n_failed} failed, "
                             f"{now - start:.0f} s")
            last_table = now
        if on_case_done is not None:
            on_case_done(row)
    progress("cohort", 1.0, f"{len(mine)} case(s) in {time.monotonic() - start:.1f} s")
    if not mine:
        _write_table(table, rows)
    return rows


def merge_rank_tables(out_dir: str | Path, world_size: int, cases: list[CohortCase]) -> Path:
    """Rank 0, after a barrier: merge the ranks' tables into ``cohort_summary.csv`` in manifest order."""
    out_dir = Path(out_dir)
    rows: dict[str, dict] = {}
    for rank in range(world_size):
        part = out_dir / f".cohort_summary.rank{rank}.csv"
        with open(part, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows[row["case"]] = row
        part.unlink()
    ordered = [rows[c.case] for c in cases if c.case in rows]
    path = out_dir / "cohort_summary.csv"
    _write_table(path, ordered)
    return path


def distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
