"""A series of phantom cases on disk: ``DIR/<case>/*.nii.gz`` (+ DICOM) and ``DIR/manifest.csv``.

Layout::

    DIR/manifest.csv                        one row per case (written last, atomically)
    DIR/<case>/image.nii.gz                 CT: int16 HU; MRI: uint16 scanner units
    DIR/<case>/tumor.nii.gz                 ground-truth tumour, uint8 0/1
    DIR/<case>/liver.nii.gz                 liver including the tumour, uint8 0/1
    DIR/<case>/R1.nii.gz, R2, R3            the three simulated annotators, uint8 0/1
    DIR/<case>/tissues.nii.gz               the tissue label map, uint8 (:class:`~.tissues.Tissue`; domain
                                            randomisation in training renders images from it)
    DIR/<case>/dicom/IM0001.dcm ...         the image as a DICOM series (with ``dicom=True``)

Manifest columns (paths relative to DIR, with "/" separators): ``case, modality, size, age_months, sex,
spacing_mm`` ("x x y x z" in mm, e.g. ``0.703x0.703x2.5``), ``shape_xyz`` (voxels, e.g. ``512x512x96``),
``image, tumor, liver, R1, R2, R3, dicom`` (empty without DICOM), ``tumor_ml, liver_ml`` (from the masks),
``tumor_diameter_cm`` (diameter of the sphere of the tumour's volume), ``n_lesions, sections_involved, pretext``
(PRETEXT group 1-4 from the involved liver sections), ``calcified`` (0/1), ``seed, index``, ``tissues`` and
``variety`` (demo or full, see :mod:`.variety`; both absent from manifests written before them).

Every file is written under a temporary name and renamed when complete; an existing manifest is removed before
the first case is written and the new one is written after the last, so a folder with a manifest is complete.
The same ``seed`` gives byte-identical files; case k does not depend on the number of cases.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..io import write_dicom_series, write_text_atomic, write_volume
from ..progress import NullProgress, Progress
from .annotators import RATERS
from .case import MODALITIES, SIZES, PhantomCase, generate_case
from .variety import check_variety

MANIFEST = "manifest.csv"
COLUMNS = ("case", "modality", "size", "age_months", "sex", "spacing_mm", "shape_xyz", "image", "tumor", "liver",
           *RATERS, "dicom", "tumor_ml", "liver_ml", "tumor_diameter_cm", "n_lesions", "sections_involved", "pretext",
           "calcified", "seed", "index", "tissues", "variety")
#: Columns that manifests written before them lack (read_manifest does not require them).
OPTIONAL_COLUMNS = ("tissues", "variety")
MASKS = ("tumor", "liver", *RATERS)


def format_spacing(spacing_mm) -> str:
    """Spacing as the manifest writes it: ``x x y x z`` in mm, up to 6 significant digits."""
    return "x".join(f"{v:.6g}" for v in spacing_mm)


def parse_spacing(text: str) -> tuple[float, float, float]:
    """Inverse of :func:`format_spacing`."""
    values = tuple(float(v) for v in text.split("x"))
    if len(values) != 3:
        raise ValueError(f"spacing {text!r} is not 'x x y x z'")
    return values


def write_case(case: PhantomCase, out_dir: str | Path, *, dicom: bool = False) -> dict[str, str]:
    """Write one case's volumes (and DICOM series) under ``out_dir/<case_id>``; returns its manifest row."""
    out_dir = Path(out_dir)
    folder = out_dir / case.case_id
    paths = {"image": folder / "image.nii.gz"}
    paths.update({name: folder / f"{name}.nii.gz" for name in MASKS})
    write_volume(case.image, paths["image"])
    for name in MASKS:
        volume = case.tumor if name == "tumor" else case.liver if name == "liver" else case.raters[name]
        write_volume(volume, paths[name])
    paths["tissues"] = folder / "tissues.nii.gz"
    write_volume(case.tissues, paths["tissues"])
    dicom_rel = ""
    if dicom:
        _write_dicom_folder(case, folder / "dicom")
        dicom_rel = f"{case.case_id}/dicom"
    volume_ml = case.tumor_ml
    row = {
        "case": case.case_id, "modality": case.modality, "size": case.size, "age_months": f"{case.age_months:.1f}",
        "sex": case.child.sex, "spacing_mm": format_spacing(case.spacing_mm),
        "shape_xyz": "x".join(str(v) for v in case.image.geometry.size),
        **{key: path.relative_to(out_dir).as_posix() for key, path in paths.items()},
        "dicom": dicom_rel, "tumor_ml": f"{volume_ml:.2f}", "liver_ml": f"{case.liver_ml:.2f}",
        "tumor_diameter_cm": f"{np.cbrt(6.0 * volume_ml / np.pi):.2f}",
        "n_lesions": str(case.info["n_lesions"]), "sections_involved": str(case.info["sections_involved"]),
        "pretext": str(case.info["pretext"]), "calcified": str(int(case.info["calcified"])), "seed": str(case.seed),
        "index": str(case.index), "variety": case.info.get("variety", {}).get("name", "demo"),
    }
    return row


def _write_dicom_folder(case: PhantomCase, folder: Path) -> None:
    """Write the series into a fresh temporary folder, then swap it in (a half-written series never shows)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dicom.", suffix=".partial", dir=folder.parent))
    try:
        write_dicom_series(case.image, tmp, modality="CT" if case.modality == "ct" else "MR", patient_id=case.case_id,
                           series_description=f"Synthetic {case.modality.upper()} phantom {case.case_id}",
                           uid_seed=f"hbseg-phantom/{case.seed}/{case.case_id}/{case.size}")
        old = None
        if folder.exists():
            old = folder.with_name(f".dicom.old.{tmp.name}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def manifest_text(rows: list[dict[str, str]]) -> str:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_dataset(out_dir: str | Path, modality: str, n_cases: int, seed: int, size: str = "small",
                  dicom: bool = False, progress: Progress | None = None, *, first_index: int = 0,
                  variety: str = "demo", workers: int = 1) -> Path:
    """Generate cases ``first_index`` .. ``first_index + n_cases - 1`` of series ``seed`` into ``out_dir``;
    returns the manifest's path. See the module docstring for the layout.

    ``workers`` > 1 generates that many cases at a time in separate processes (a cohort on a many-core machine);
    each case draws from its own generators, so the files are the same as with one worker."""
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    if size not in SIZES:
        raise ConfigError(f"unknown phantom size {size!r}; use one of {', '.join(SIZES)}")
    check_variety(variety)
    if int(n_cases) < 1:
        raise ConfigError(f"the number of cases must be at least 1 (got {n_cases})")
    if int(seed) < 0 or int(first_index) < 0:
        raise ConfigError(f"seed and first index must be non-negative (got seed {seed}, first index {first_index})")
    if int(workers) < 1:
        raise ConfigError(f"the number of workers must be at least 1 (got {workers})")
    progress = progress if progress is not None else NullProgress()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output path exists and is not a folder", out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", out_dir) from exc
    manifest = out_dir / MANIFEST
    with contextlib.suppress(FileNotFoundError):
        manifest.unlink()  # an old manifest would make a partial run look complete
    n = int(n_cases)
    indices = [int(first_index) + i for i in range(n)]
    if int(workers) > 1 and n > 1:
        rows = _write_cases_in_processes(out_dir, modality, int(seed), indices, size, variety, dicom, progress,
                                         min(int(workers), n))
    else:
        rows = []
        for i, index in enumerate(indices):
            progress("phantom", i / n, f"case {i + 1}/{n}: generating")
            case = generate_case(modality, int(seed), index, size, variety=variety)
            progress("phantom", (i + 0.7) / n, f"case {i + 1}/{n}: writing {case.case_id}")
            rows.append(write_case(case, out_dir, dicom=dicom))
            del case
    write_text_atomic(manifest, manifest_text(rows))
    progress("phantom", 1.0, f"{n} case(s) in {out_dir}")
    return manifest


def _generate_and_write(out_dir: Path, modality: str, seed: int, index: int, size: str, variety: str,
                        dicom: bool) -> dict[str, str]:
    """One case, generated and written (a worker process's job); its manifest row."""
    return write_case(generate_case(modality, seed, index, size, variety=variety), out_dir, dicom=dicom)


def _write_cases_in_processes(out_dir: Path, modality: str, seed: int, indices: list[int], size: str, variety: str,
                              dicom: bool, progress: Progress, workers: int) -> list[dict[str, str]]:
    """The cases of ``indices`` in ``workers`` fresh processes; the rows in the order of ``indices``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    n = len(indices)
    rows: dict[int, dict[str, str]] = {}
    # "spawn": fresh interpreters, whatever the caller has imported or started (torch, threads).
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_generate_and_write, out_dir, modality, seed, index, size, variety, dicom): index
                   for index in indices}
        for done, future in enumerate(as_completed(futures), start=1):
            rows[futures[future]] = future.result()
            progress("phantom", done / n, f"{done}/{n} cases written ({workers} processes)")
    return [rows[index] for index in indices]


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a manifest written by :func:`write_dataset` (paths still relative to its folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("phantom manifest not found", path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in COLUMNS if rows and c not in rows[0] and c not in OPTIONAL_COLUMNS]
    if missing:
        raise InputError(f"not a phantom manifest: missing column(s) {', '.join(missing)}", path)
    return rows
