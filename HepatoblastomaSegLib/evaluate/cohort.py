"""A cohort table (COHORT.csv) in, one small result per case out, streaming: one case's masks in memory at a time.

COHORT.csv has a ``case`` column and one column of mask paths per rater and per model, plus optional entropy-map
columns; relative paths are relative to the CSV's folder. Raters, models and entropy maps are named on the command
line as ``NAME`` (the column of that name) or ``NAME=COLUMN``.

Per case: the raters' masks are read (the first rater's grid is the reference grid), the consensus ``Rc`` is voted,
the models' masks are read, and then

- Dice between every pair among Rc, the raters and the models (the agreement matrix),
- each rater and model against Rc: volumes, volume error, PV/TV, HD95 and surface Dice (:mod:`.metrics`),
- each model with an entropy map: mean entropy overall, in the mask, its core and its boundary (:mod:`.regions`);
  the region mask is the model's own prediction (``entropy_mask="model"``, default) or the consensus.

Only these numbers are kept. Work happens on the bounding box of all masks of the case (plus a margin), so full-size
CT volumes cost little beyond reading them. With ``workers > 1`` cases are evaluated in threads (file decoding and
most numpy work release the GIL); memory then holds ``workers`` cases.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ConfigError, GeometryError, HepatoblastomaSegError, InputError
from ..io import Geometry, Volume, read_volume, require_same_geometry
from ..io.tables import read_csv_rows
from ..progress import NullProgress, Progress
from . import metrics
from .consensus import METHODS as CONSENSUS_METHODS
from .consensus import build_consensus
from .regions import DEFAULT_RADIUS_PX, entropy_core_boundary

CONSENSUS = "Rc"
CASE_COLUMN = "case"
FLAG_RESAMPLED = "resampled"


@dataclasses.dataclass(frozen=True)
class Source:
    """A named rater, model or entropy map and the CSV column that holds its paths."""

    name: str
    column: str


def parse_sources(text: str | Source | Sequence[str | Source] | None, what: str) -> list[Source]:
    """``"R1,R2"`` or ``["R1", "MPCT=pred_ct"]`` -> sources; ``NAME=COLUMN`` renames a column."""
    if text is None:
        return []
    sources: list[Source] = []
    for item in [text] if isinstance(text, str | Source) else list(text):
        if isinstance(item, Source):
            sources.append(item)
            continue
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            name, _, column = part.partition("=")
            name, column = name.strip(), (column.strip() or name.strip())
            if not name:
                raise ConfigError(f"empty {what} name in '{part}'")
            sources.append(Source(name, column))
    return sources


@dataclasses.dataclass(frozen=True)
class CaseEntry:
    """One row of the cohort table: resolved paths (None for an empty cell) by source name."""

    case: str
    line: int
    masks: dict[str, Path | None]
    entropy: dict[str, Path | None]


@dataclasses.dataclass
class Cohort:
    """The parsed cohort table (paths only; nothing read yet)."""

    csv_path: Path
    raters: list[Source]
    models: list[Source]
    entropy: dict[str, Source]
    cases: list[CaseEntry]

    @property
    def labels(self) -> list[str]:
        """Row/column order of the agreement matrix: Rc, the raters, the models."""
        return [CONSENSUS, *(s.name for s in self.raters), *(s.name for s in self.models)]

    @property
    def members(self) -> list[str]:
        """Everything scored against Rc: the raters, then the models."""
        return [s.name for s in (*self.raters, *self.models)]


def read_cohort(csv_path: str | Path, raters: Sequence[Source] | str, models: Sequence[Source] | str = (),
                entropy: Sequence[Source] | str | None = None) -> Cohort:
    """Parse COHORT.csv and check it: columns present, case ids unique and non-empty, at least 2 raters, names
    unique. Entropy sources are named by model (``MPCT=MPCT_entropy``). Files are not opened here."""
    csv_path = Path(csv_path)
    raters = parse_sources(raters, "rater")
    models = parse_sources(models, "model")
    entropy_list = parse_sources(entropy, "entropy")
    if len(raters) < 2:
        raise ConfigError(f"a consensus needs at least 2 raters, got {len(raters)} "
                          f"({', '.join(s.name for s in raters) or 'none'}); pass e.g. --raters R1,R2,R3")
    names = [s.name for s in (*raters, *models)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"rater/model names must be unique; repeated: {', '.join(repeated)}")
    if CONSENSUS in names:
        raise ConfigError(f"'{CONSENSUS}' is the consensus built from the raters; name no rater or model so")
    model_names = {s.name for s in models}
    for source in entropy_list:
        if source.name not in model_names:
            raise ConfigError(f"entropy map given for '{source.name}', which is not one of the models "
                              f"({', '.join(sorted(model_names)) or 'none'}); use --entropy MODEL=COLUMN")
    entropy_by_model = {s.name: s for s in entropy_list}

    header, rows = read_csv_rows(csv_path, "cohort table")
    needed = [CASE_COLUMN, *(s.column for s in (*raters, *models, *entropy_list))]
    missing = [c for c in dict.fromkeys(needed) if c not in header]
    if missing:
        raise InputError(f"column(s) {', '.join(repr(c) for c in missing)} not in the cohort table; it has "
                         f"{', '.join(repr(h) for h in header) or 'no header'}", csv_path)

    folder = csv_path.parent
    cases: list[CaseEntry] = []
    seen: dict[str, int] = {}
    duplicates: list[str] = []
    for line, row in rows:
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if not any(values.values()):
            continue  # blank line
        case = values.get(CASE_COLUMN, "")
        if not case:
            raise InputError(f"line {line}: empty case id", csv_path)
        if case in seen:
            duplicates.append(f"'{case}' (lines {seen[case]} and {line})")
        seen.setdefault(case, line)

        def resolve(column: str) -> Path | None:
            text = values.get(column, "")
            return None if not text else (Path(text) if Path(text).is_absolute() else folder / text)

        cases.append(CaseEntry(case, line, {s.name: resolve(s.column) for s in (*raters, *models)},
                               {m: resolve(s.column) for m, s in entropy_by_model.items()}))
    if duplicates:
        raise InputError(f"duplicate case ids: {', '.join(duplicates)}", csv_path)
    if not cases:
        raise InputError("the cohort table lists no cases", csv_path)
    return Cohort(csv_path, raters, models, entropy_by_model, cases)


@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
    """How cases are scored. ``empty_dice``: Dice when both masks are empty (NaN or 1.0). ``tolerance_mm``: surface
    Dice tolerance. ``surface``: compute HD95 and surface Dice. ``entropy_mask``: "model" or "Rc"."""

    consensus_method: str = "majority"
    min_votes: int | None = None
    staple_threshold: float = 0.5
    tolerance_mm: float = metrics.DEFAULT_TOLERANCE_MM
    hd_percentile: float = 95.0
    empty_dice: float = math.nan
    surface: bool = True
    entropy_radius_px: int = DEFAULT_RADIUS_PX
    entropy_mask: str = "model"
    skip_missing: bool = False
    resample_to_reference: bool = False
    workers: int = 1

    def __post_init__(self):
        if self.consensus_method not in CONSENSUS_METHODS:
            raise ConfigError(f"unknown consensus method '{self.consensus_method}'; use one of "
                              f"{', '.join(CONSENSUS_METHODS)}")
        if self.consensus_method == "staple" and self.min_votes is not None:
            raise ConfigError("--min-votes applies to the majority vote only, not to STAPLE")
        if self.entropy_mask not in ("model", CONSENSUS):
            raise ConfigError(f"entropy_mask must be 'model' or '{CONSENSUS}', got '{self.entropy_mask}'")
        if self.tolerance_mm < 0:
            raise ConfigError(f"the surface Dice tolerance must be >= 0 mm, got {self.tolerance_mm}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")


@dataclasses.dataclass
class CaseResult:
    """The numbers kept for one case (no arrays)."""

    case: str
    spacing_mm: tuple[float, float, float]
    rows: list[dict]                                   # one per rater/model, the columns of per_case.csv
    pair_dice: dict[tuple[str, str], tuple[float, bool]]  # (a, b) in label order -> (dice, both_empty)
    entropy: dict[str, dict]                           # model -> entropy_core_boundary() dict
    resampled: list[str]


@dataclasses.dataclass
class CohortResult:
    cohort: Cohort
    options: EvaluationOptions
    cases: list[CaseResult]
    skipped: list[tuple[str, str]]                     # (case, reason)
    elapsed_s: float = 0.0

    @property
    def labels(self) -> list[str]:
        return self.cohort.labels

    @property
    def members(self) -> list[str]:
        return self.cohort.members

    @property
    def models(self) -> list[str]:
        return [s.name for s in self.cohort.models]

    def pair_values(self, a: str, b: str) -> np.ndarray:
        """Per-case Dice of the pair (a, b) in case order (NaN where undefined)."""
        if not self.cases:
            return np.empty(0)
        key = (a, b) if (a, b) in self.cases[0].pair_dice else (b, a)
        return np.array([c.pair_dice[key][0] for c in self.cases], dtype=float)

    def member_values(self, name: str, field: str) -> np.ndarray:
        """Per-case values of one per_case.csv column for one rater or model."""
        return np.array([next(r[field] for r in c.rows if r["rater"] == name) for c in self.cases], dtype=float)


class _Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _with_context(exc: HepatoblastomaSegError, case: str, column: str, hint: str = "") -> HepatoblastomaSegError:
    problem = getattr(exc, "problem", str(exc))
    return type(exc)(f"case '{case}', column '{column}': {problem}{hint}", exc.path)


def _resample(volume: Volume, geometry: Geometry, nearest: bool) -> Volume:
    flt = sitk.ResampleImageFilter()
    flt.SetSize(geometry.size)
    flt.SetOutputSpacing(geometry.spacing_mm)
    flt.SetOutputOrigin(geometry.origin_mm)
    flt.SetOutputDirection(geometry.direction)
    flt.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    flt.SetDefaultPixelValue(0)
    image = volume.to_sitk()
    if not nearest:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(flt.Execute(image)), geometry, volume.path, dict(volume.metadata))


def _binary_array(volume: Volume) -> np.ndarray:
    """The mask as a boolean array, or InputError listing the values other than 0 and 1. A min/max test first:
    ``np.unique`` on a full CT grid costs 0.1 s a mask."""
    array = volume.array
    if array.dtype == np.bool_:
        return array
    low, high = array.min(initial=0), array.max(initial=0)
    if low >= 0 and high <= 1 and (np.issubdtype(array.dtype, np.integer) or not np.any((array != 0) & (array != 1))):
        return array.view(np.bool_) if array.dtype == np.uint8 else array != 0
    bad = np.unique(array[(array != 0) & (array != 1)])
    shown = ", ".join(f"{v:g}" for v in bad[:8].tolist()) + (", ..." if bad.size > 8 else "")
    raise InputError(f"mask must be binary (0/1) but holds the values {shown}", volume.path)


class _CaseReader:
    """Reads one case's files with the case and column in every message."""

    def __init__(self, cohort: Cohort, entry: CaseEntry, options: EvaluationOptions):
        self.cohort, self.entry, self.options = cohort, entry, options
        self.columns = {s.name: s.column for s in (*cohort.raters, *cohort.models)}
        self.columns.update({f"entropy:{m}": s.column for m, s in cohort.entropy.items()})
        self.resampled: list[str] = []

    def check_present(self) -> None:
        paths = {**self.entry.masks, **{f"entropy:{m}": p for m, p in self.entry.entropy.items()}}
        for name, path in paths.items():
            column = self.columns[name]
            hint = "" if self.options.skip_missing else " (--skip-missing leaves such cases out)"
            if path is None:
                message = f"case '{self.entry.case}', column '{column}': no path given{hint}"
                if self.options.skip_missing:
                    raise _Skip(f"column '{column}': no path given")
                raise InputError(message, self.cohort.csv_path)
            if not path.exists():
                if self.options.skip_missing:
                    raise _Skip(f"column '{column}': file not found: {path}")
                raise InputError(f"case '{self.entry.case}', column '{column}': file not found{hint}", path)

    def _read(self, name: str, path: Path) -> Volume:
        try:
            return read_volume(path)
        except HepatoblastomaSegError as exc:
            raise _with_context(exc, self.entry.case, self.columns[name]) from exc

    def _on_grid(self, name: str, volume: Volume, reference: Geometry | None, nearest: bool) -> Volume:
        if reference is None or volume.geometry.matches(reference):
            return volume
        if self.options.resample_to_reference:
            self.resampled.append(name)
            return _resample(volume, reference, nearest)
        try:
            require_same_geometry(reference, volume, what_a="reference grid (first rater's mask)")
        except GeometryError as exc:
            raise _with_context(exc, self.entry.case, self.columns[name],
                                "; --resample-to-reference resamples it (nearest neighbour)") from exc
        return volume

    def mask(self, name: str, reference: Geometry | None) -> tuple[np.ndarray, Geometry]:
        volume = self._read(name, self.entry.masks[name])
        try:
            array = _binary_array(volume)
        except InputError as exc:
            raise _with_context(exc, self.entry.case, self.columns[name]) from exc
        volume = self._on_grid(name, volume.with_array(array.view(np.uint8)), reference, nearest=True)
        return volume.array.view(np.bool_) if volume.array.dtype == np.uint8 else volume.array != 0, volume.geometry

    def entropy(self, model: str, reference: Geometry) -> np.ndarray:
        key = f"entropy:{model}"
        volume = self._on_grid(key, self._read(key, self.entry.entropy[model]), reference, nearest=False)
        return volume.array


def _uncrop(crop: np.ndarray, box: tuple[slice, ...] | None, shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, dtype=bool)
    if box is not None:
        full[box] = crop
    return full


def evaluate_case(cohort: Cohort, entry: CaseEntry, options: EvaluationOptions = EvaluationOptions()) -> CaseResult:
    """Read and score one case (see module docstring). Raises a library error naming the case, column and file."""
    reader = _CaseReader(cohort, entry, options)
    reader.check_present()
    first, reference = reader.mask(cohort.raters[0].name, None)
    masks = {cohort.raters[0].name: first}
    for source in (*cohort.raters[1:], *cohort.models):
        masks[source.name] = reader.mask(source.name, reference)[0]
    spacing_zyx = reference.spacing_mm[::-1]
    # Every number below is computed on the box around all masks (the consensus lies inside the raters' union),
    # which on a full CT grid is a small part of it. The vote does not depend on the box; STAPLE does (its
    # specificities and prior count background voxels), so it sees the whole grid, as `hbseg consensus` does.
    box = metrics.bounding_box(list(masks.values()), margin=1)
    crops = {k: (m[box] if box is not None else m[:0, :0, :0]) for k, m in masks.items()}
    vote_on = masks if options.consensus_method == "staple" else crops
    rc = build_consensus([vote_on[s.name] for s in cohort.raters], method=options.consensus_method,
                         min_votes=options.min_votes, staple_threshold=options.staple_threshold).view(np.bool_)
    if vote_on is masks:
        rc = rc[box] if box is not None else rc[:0, :0, :0]
    crops = {CONSENSUS: rc, **crops}

    labels = cohort.labels
    pair_dice = {(a, b): metrics.dice(crops[a], crops[b], empty_value=options.empty_dice)
                 for a, b in itertools.combinations(labels, 2)}
    ref_surface = metrics.Surface(crops[CONSENSUS], spacing_zyx) if options.surface else None
    rows = []
    for name in cohort.members:
        m = metrics.compare_to_reference(crops[name], crops[CONSENSUS], spacing_zyx,
                                         tolerance_mm=options.tolerance_mm, empty_dice=options.empty_dice,
                                         surface=options.surface, reference_surface=ref_surface,
                                         hd_percentile=options.hd_percentile)
        flags = list(m.flags) + ([FLAG_RESAMPLED] if name in reader.resampled else [])
        rows.append({"case": entry.case, "rater": name, "dice_vs_Rc": m.dice, "pv_ml": m.pv_ml, "tv_ml": m.tv_ml,
                     "vpe_pct": m.vpe_pct, "pv_tv": m.pv_tv, "hd95_mm": m.hd95_mm, "surface_dice": m.surface_dice,
                     "flags": ";".join(flags)})
    entropy = {}
    for model in cohort.entropy:
        entropy_map = reader.entropy(model, reference)
        region = masks[model] if options.entropy_mask == "model" else _uncrop(crops[CONSENSUS], box, first.shape)
        entropy[model] = entropy_core_boundary(entropy_map, region, options.entropy_radius_px)
        del entropy_map
    return CaseResult(entry.case, reference.spacing_mm, rows, pair_dice, entropy, list(reader.resampled))


def _evaluate_or_skip(cohort: Cohort, entry: CaseEntry, options: EvaluationOptions) -> CaseResult | str:
    try:
        return evaluate_case(cohort, entry, options)
    except _Skip as skip:
        return skip.reason


def iter_case_results(cohort: Cohort, options: EvaluationOptions = EvaluationOptions()
                      ) -> Iterator[tuple[CaseEntry, CaseResult | str]]:
    """Yield ``(entry, result or skip reason)`` in cohort order, evaluating up to ``options.workers`` at a time."""
    if options.workers == 1:
        for entry in cohort.cases:
            yield entry, _evaluate_or_skip(cohort, entry, options)
        return
    executor = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="hbseg-evaluate")
    try:
        # Submit a bounded window ahead so that a long cohort never queues all cases' futures at once.
        pending: list = []
        entries = iter(cohort.cases)
        for entry in itertools.islice(entries, 2 * options.workers):
            pending.append((entry, executor.submit(_evaluate_or_skip, cohort, entry, options)))
        while pending:
            entry, future = pending.pop(0)
            result = future.result()
            following = next(entries, None)
            if following is not None:
                pending.append((following, executor.submit(_evaluate_or_skip, cohort, following, options)))
            yield entry, result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def evaluate_cohort(cohort: Cohort, options: EvaluationOptions = EvaluationOptions(),
                    progress: Progress | None = None) -> CohortResult:
    """Score every case of ``cohort``; cases with missing files are skipped (and listed) with ``skip_missing``."""
    progress = progress or NullProgress()
    start = time.monotonic()
    results: list[CaseResult] = []
    skipped: list[tuple[str, str]] = []
    n = len(cohort.cases)
    progress("evaluate", 0.0, f"0/{n} cases")
    for i, (entry, result) in enumerate(iter_case_results(cohort, options), start=1):
        if isinstance(result, str):
            skipped.append((entry.case, result))
            progress.log(f"skipped case '{entry.case}': {result}")
        else:
            results.append(result)
        progress("evaluate", i / n, f"{i}/{n} cases")
    if not results:
        raise InputError(f"no case could be evaluated ({len(skipped)} skipped for missing files)", cohort.csv_path)
    return CohortResult(cohort, options, results, skipped, time.monotonic() - start)
