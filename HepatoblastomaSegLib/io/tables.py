"""CSV tables people write by hand (manifests, cohort tables): read them once, the same forgiving way everywhere."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import InputError


def read_csv_rows(path: str | Path, what: str = "table") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, row), ...]) of a CSV file.

    Tolerates a UTF-8 byte-order mark (spreadsheets write one) and spaces around column names; errors name the
    file and say what it is (``what``: "manifest", "cohort table", ...).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"this is a folder, not a {what} CSV file", path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the {what} ({exc})", path) from exc
    return header, rows


#: First characters that make a spreadsheet read a cell as a formula (CSV injection; OWASP's list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value):
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'`` so that it shows as text.

    Numbers pass unchanged (a negative number is not a formula); so does text that does not start with one of
    :data:`FORMULA_PREFIXES`, e.g. ``=1+SUM(9)`` becomes ``'=1+SUM(9)``.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value
