"""Training / validation split, written to disk as two ordinary dataset manifests so a run can be resumed and audited.

``OUTPUT/training/train_set/manifest.csv`` and ``.../val_set/manifest.csv`` hold ``case,image,tumor[,liver]`` with
absolute paths (the format :func:`~HepatoblastomaSegLib.preprocess.read_manifest` reads), so planning runs on the
training cases only (``plan_dataset(train_set)``) and a resumed run uses exactly the same cases.

Validation cases come from one of:

- ``val_fraction`` F: ``round(F x N)`` cases of the training manifest (at least 1 when F > 0 and N >= 2), chosen
  by a generator seeded with the run's seed, held out from training;
- ``val_manifest`` PATH: a dataset folder (with manifest.csv) or a CSV file with ``case,image,tumor[,liver]`` (paths
  relative to the CSV's folder): a separate validation cohort; or a CSV with only a ``case`` column: those cases of
  the training manifest are held out.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import write_text_atomic
from ..preprocess import CaseEntry, read_manifest

TRAIN_SET, VAL_SET, MANIFEST = "train_set", "val_set", "manifest.csv"


@dataclasses.dataclass
class Split:
    """Training and validation cases, and a sentence saying where the validation cases came from."""

    train: list[CaseEntry]
    val: list[CaseEntry]
    source: str


def _manifest_text(entries: list[CaseEntry]) -> str:
    buffer = io.StringIO()
    with_liver = any(e.liver is not None for e in entries)
    with_values = any(e.tumor_values for e in entries)
    with_tissues = any(e.tissues is not None for e in entries)
    fields = ["case", "image", "tumor"] + (["liver"] if with_liver else []) + \
        (["tumor_values", "liver_values"] if with_values else []) + (["tissues"] if with_tissues else [])
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        row = {"case": e.case, "image": str(Path(e.image).resolve()), "tumor": str(Path(e.tumor).resolve())}
        if with_liver:
            row["liver"] = "" if e.liver is None else str(Path(e.liver).resolve())
        if with_values:
            row["tumor_values"] = "+".join(map(str, e.tumor_values or ()))
            row["liver_values"] = "+".join(map(str, e.liver_values))
        if with_tissues:
            row["tissues"] = "" if e.tissues is None else str(Path(e.tissues).resolve())
        writer.writerow(row)
    return buffer.getvalue()


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
            return [(c or "").strip() for c in (reader.fieldnames or [])], rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"unreadable validation CSV ({exc})", path) from exc


def _val_from_manifest(val_manifest: Path, entries: list[CaseEntry], staging: Path, label_map=None
                       ) -> tuple[list[CaseEntry], list[CaseEntry], str]:
    """(train, val, source) for ``--val-manifest``; ``staging`` receives a rewritten manifest when needed."""
    if val_manifest.is_dir():
        return (entries, read_manifest(val_manifest, label_map=label_map),
                f"separate validation dataset {val_manifest.resolve()}")
    if not val_manifest.is_file():
        raise InputError("validation manifest not found (give a dataset folder or a CSV file)", val_manifest)
    columns, rows = _read_csv_rows(val_manifest)
    if "case" not in columns:
        raise InputError(f"validation CSV needs a 'case' column (it has {', '.join(columns) or 'none'})",
                         val_manifest)
    if "image" not in columns:  # a list of training cases to hold out
        names = [r["case"] for r in rows if r.get("case")]
        known = {e.case for e in entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"validation CSV names cases that are not in the training manifest: "
                             f"{', '.join(unknown[:5])}", val_manifest)
        held = set(names)
        return ([e for e in entries if e.case not in held], [e for e in entries if e.case in held],
                f"{len(held)} training-manifest cases listed in {val_manifest.resolve()}")
    # A separate cohort given as a CSV of any name: paths relative to the CSV's folder, as for manifest.csv.
    fixed = []
    for line, row in enumerate(rows, start=2):
        new = dict(row)
        for column in ("image", "tumor", "liver"):
            value = row.get(column, "")
            if value:
                path = Path(value) if Path(value).is_absolute() else val_manifest.parent / value
                if not path.exists():
                    raise InputError(f"line {line} (case {row.get('case', '?')}): {column} file not found: {path}",
                                     val_manifest)
                new[column] = str(path.resolve())
        fixed.append(new)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(fixed)
    write_text_atomic(staging / MANIFEST, buffer.getvalue())
    return entries, read_manifest(staging), f"separate validation cohort {val_manifest.resolve()}"


def make_split(dataset_dir: str | Path, training_dir: str | Path, *, val_manifest: str | Path | None = None,
               val_fraction: float | None = None, seed: int = 0, label_map=None) -> Split:
    """Decide the split and write both manifests under ``training_dir`` (see module docstring); ``label_map``
    reads multi-label masks (nnU-Net/MSD folders, ``--label``)."""
    training_dir = Path(training_dir)
    entries = read_manifest(dataset_dir, label_map=label_map)
    if val_manifest is not None:
        train, val, source = _val_from_manifest(Path(val_manifest), entries, training_dir / VAL_SET,
                                                label_map)
    else:
        fraction = float(val_fraction or 0.0)
        n_val = int(round(fraction * len(entries)))
        if fraction > 0 and len(entries) >= 2:
            n_val = min(max(n_val, 1), len(entries) - 1)
        else:
            n_val = 0
        order = np.random.default_rng([int(seed), 0x5B117]).permutation(len(entries))
        held = {entries[i].case for i in order[:n_val]}
        train = [e for e in entries if e.case not in held]
        val = [e for e in entries if e.case in held]
        source = (f"{n_val} of {len(entries)} cases of the training manifest held out (fraction {fraction:g}, "
                  f"seed {seed})" if n_val else "none (no validation cases)")
    if not train:
        raise InputError("no training cases left after holding out the validation cases", Path(dataset_dir))
    write_text_atomic(training_dir / TRAIN_SET / MANIFEST, _manifest_text(train))
    if val:
        write_text_atomic(training_dir / VAL_SET / MANIFEST, _manifest_text(val))
    write_text_atomic(training_dir / "split.txt", source + "\n")
    return Split(train, val, source)


def read_split(training_dir: str | Path) -> Split | None:
    """The split a previous run wrote, or None when there is none."""
    training_dir = Path(training_dir)
    if not (training_dir / TRAIN_SET / MANIFEST).is_file():
        return None
    train = read_manifest(training_dir / TRAIN_SET)
    val = read_manifest(training_dir / VAL_SET) if (training_dir / VAL_SET / MANIFEST).is_file() else []
    source_file = training_dir / "split.txt"
    source = source_file.read_text(encoding="utf-8").strip() if source_file.is_file() else "as written before"
    return Split(train, val, source)
