"""Cohort tables (the paper's Tables 2-5 and the entropy summary) as CSV, Markdown and a self-contained HTML page.

Files written into the report folder (every write atomic):

- ``per_case.csv``: case, rater, dice_vs_Rc, pv_ml, tv_ml, vpe_pct, pv_tv, hd95_mm, surface_dice, flags
  (``rater`` names a rater or a model; flags are ``;``-separated, see :mod:`.metrics`);
- ``pairwise_dice.csv``: case, a, b, dice, flags (every pair, every case);
- ``agreement.csv``: a, b, n, mean, ci_low, ci_high, sd, n_undefined, grade (+ boot_ci_low, boot_ci_high);
- ``agreement_matrix.csv``: the matrix with cells like ``0.86 (0.80, 0.91)`` (Tables 2/3);
- ``vpe.csv``: rater, threshold_pct, count, percent, n (Table 4);
- ``pvtv.csv``: rater, n_gt1, pct_gt1, n_le1, pct_le1, median, p_value, tendency, method, ... (Table 5);
- ``entropy.csv``: model, region, median, q1, q3, n, n_empty_core; ``entropy_per_case.csv``;
- ``model_comparison.csv``: paired Wilcoxon of per-case Dice between models, against each reference;
- ``surface.csv``: HD95 and surface Dice medians per rater/model;
- ``summary.json``, ``report.md`` (+ ``figures/*.png``), ``report.html`` (figures embedded as base64 PNG).

Numbers in CSV files are written with full precision ("nan" when undefined); the Markdown/HTML tables round as the
paper prints them.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import itertools
import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from ..io import write_bytes_atomic, write_text_atomic
from ..io.tables import neutralise_formula
from . import statistics as st
from .cohort import CONSENSUS, CohortResult

PER_CASE_COLUMNS = ("case", "rater", "dice_vs_Rc", "pv_ml", "tv_ml", "vpe_pct", "pv_tv", "hd95_mm", "surface_dice",
                    "flags")
ENTROPY_REGIONS = (("core", "core_mean"), ("boundary", "boundary_mean"), ("mask", "mask_mean"), ("image", "mean"))


@dataclasses.dataclass
class Tables:
    agreement: list[dict]
    matrix: list[list[str]]          # header row first
    vpe: list[dict]
    pvtv: list[dict]
    entropy: list[dict]
    model_comparison: list[dict]
    surface: list[dict]


def agreement_table(result: CohortResult, *, bootstrap_resamples: int = 0, seed: int = 0) -> list[dict]:
    rows = []
    for a, b in itertools.combinations(result.labels, 2):
        values = result.pair_values(a, b)
        ci = st.mean_ci_normal(values)
        row = {"a": a, "b": b, "n": ci.n, "mean": ci.mean, "ci_low": ci.ci_low, "ci_high": ci.ci_high,
               "sd": ci.sd, "n_undefined": ci.n_undefined, "grade": st.agreement_grade(ci.mean)}
        if bootstrap_resamples > 0:
            row["boot_ci_low"], row["boot_ci_high"] = st.bootstrap_ci(values, n_resamples=bootstrap_resamples,
                                                                      seed=seed)
        rows.append(row)
    return rows


def agreement_matrix(labels: list[str], agreement_rows: list[dict]) -> list[list[str]]:
    cell = {}
    for r in agreement_rows:
        text = st.format_estimate_ci(r["mean"], r["ci_low"], r["ci_high"])
        cell[(r["a"], r["b"])] = cell[(r["b"], r["a"])] = text
    return [["", *labels]] + [[a, *("1" if a == b else cell[(a, b)] for b in labels)] for a in labels]


def vpe_table(result: CohortResult, thresholds_pct=st.VPE_THRESHOLDS_PCT) -> list[dict]:
    return [{"rater": name, **row} for name in result.members
            for row in st.vpe_threshold_counts(result.member_values(name, "vpe_pct"), thresholds_pct)]


def pvtv_table(result: CohortResult) -> list[dict]:
    return [{"rater": name, **st.pvtv_summary(result.member_values(name, "pv_ml"),
                                              result.member_values(name, "tv_ml"))} for name in result.members]


def entropy_table(result: CohortResult) -> list[dict]:
    rows = []
    for model in result.cohort.entropy:
        per_case = [c.entropy[model] for c in result.cases]
        n_empty = sum(bool(e["core_empty"]) for e in per_case)
        for region, key in ENTROPY_REGIONS:
            summary = st.median_iqr([e[key] for e in per_case])
            rows.append({"model": model, "region": region, "median": summary["median"], "q1": summary["q1"],
                         "q3": summary["q3"], "n": summary["n"], "n_empty_core": n_empty})
    return rows


def model_comparison_table(result: CohortResult) -> list[dict]:
    rows = []
    references = [CONSENSUS, *(s.name for s in result.cohort.raters)]
    for model_a, model_b in itertools.combinations(result.models, 2):
        for ref in references:
            test = st.paired_wilcoxon(result.pair_values(ref, model_a), result.pair_values(ref, model_b))
            rows.append({"reference": ref, "model_a": model_a, "model_b": model_b, "n": test["n"],
                         "mean_a": test["mean_x"], "mean_b": test["mean_y"],
                         "median_difference": test["median_difference"], "statistic": test["statistic"],
                         "p_value": test["p_value"], "method": test["method"]})
    return rows


def surface_table(result: CohortResult) -> list[dict]:
    rows = []
    for name in result.members:
        hd, nsd = (st.median_iqr(result.member_values(name, f)) for f in ("hd95_mm", "surface_dice"))
        rows.append({"rater": name, "n": hd["n"], "hd95_median_mm": hd["median"], "hd95_q1_mm": hd["q1"],
                     "hd95_q3_mm": hd["q3"], "surface_dice_median": nsd["median"], "surface_dice_q1": nsd["q1"],
                     "surface_dice_q3": nsd["q3"]})
    return rows


def build_tables(result: CohortResult, *, bootstrap_resamples: int = 0, seed: int = 0) -> Tables:
    agreement = agreement_table(result, bootstrap_resamples=bootstrap_resamples, seed=seed)
    return Tables(agreement, agreement_matrix(result.labels, agreement), vpe_table(result), pvtv_table(result),
                  entropy_table(result), model_comparison_table(result), surface_table(result))


# ----------------------------------------------------------------------------------------------------------- CSV
def _csv_value(value) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else repr(float(value))
    return neutralise_formula(str(value))  # a case id like =1+SUM(9) must not run in a spreadsheet


def csv_text(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c, "")) for c in columns])
    return buffer.getvalue()


def _matrix_csv(matrix: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(matrix)
    return buffer.getvalue()


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "HepatoblastomaSeg": __version__}
    for package in ("numpy", "scipy", "SimpleITK", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# ------------------------------------------------------------------------------------------------ text tables
def _f(value: float, digits: int = 2) -> str:
    return "NA" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _count_pct(count: int, percent: float) -> str:
    return f"{count} ({_f(percent)})"


def _markdown_table(rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])), *(line(r) for r in rows[1:])])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text_tables(result: CohortResult, tables: Tables) -> list[tuple[str, list[list[str]], str]]:
    """(title, rows with a header row, note) in the paper's layouts."""
    members = result.members
    n = len(result.cases)
    out = [(f"Agreement (Dice, mean with 95 % CI; paper Tables 2/3), n = {n}", tables.matrix,
            "Normal-approximation CI: mean \u00b1 1.96 SD/\u221an (SD with ddof 1). Rater-vs-Rc agreement is "
            "inflated: Rc contains that rater's own vote.")]
    pairs = [["Pair", "n", "Dice (95 % CI)", "Grade"]]
    pairs += [[f"{r['a']}-{r['b']}", str(r["n"]), st.format_estimate_ci(r["mean"], r["ci_low"], r["ci_high"]),
               r["grade"]] for r in tables.agreement]
    out.append(("Agreement grades", pairs, "Graded on the mean rounded to 2 decimals: >= 0.91 excellent, "
                "0.80-0.90 good, 0.70-0.79 fair, <= 0.69 poor."))
    thresholds = sorted({r["threshold_pct"] for r in tables.vpe})
    vpe = [["Volume error", *members]]
    for t in thresholds:
        cells = [next(r for r in tables.vpe if r["rater"] == m and r["threshold_pct"] == t) for m in members]
        vpe.append([f"e < {t:g} %", *(_count_pct(c["count"], c["percent"]) for c in cells)])
    out.append(("Volume percentage error against Rc, n (%) (paper Table 4)", vpe,
                "e = |PV - TV| / TV x 100, TV the Rc volume; a case counts when e is strictly below the threshold."))
    pv = {r["rater"]: r for r in tables.pvtv}
    pvtv = [["", *members],
            ["PV/TV > 1, n (%)", *(_count_pct(pv[m]["n_gt1"], pv[m]["pct_gt1"]) for m in members)],
            ["PV/TV \u2264 1, n (%)", *(_count_pct(pv[m]["n_le1"], pv[m]["pct_le1"]) for m in members)],
            ["Median PV/TV", *(_f(pv[m]["median"]) for m in members)],
            ["P value", *(st.format_p_value(pv[m]["p_value"]) for m in members)],
            ["Tendency", *(pv[m]["tendency"] for m in members)],
            ["Wilcoxon method", *(pv[m]["method"] for m in members)]]
    out.append(("Under- and over-segmentation (paper Table 5)", pvtv,
                "Two-sided one-sample Wilcoxon signed-rank test of PV/TV - 1 (SciPy defaults; zero differences "
                "dropped). pvtv.csv also holds the P values of PV - TV and log(PV/TV) as sensitivity checks."))
    if tables.entropy:
        ent = [["Model", "Region", "Median (IQR)", "n", "empty cores"]]
        ent += [[r["model"], r["region"], f"{_f(r['median'], 3)} (IQR, {_f(r['q1'], 3)}\u2013{_f(r['q3'], 3)})",
                 str(r["n"]), str(r["n_empty_core"])] for r in tables.entropy]
        out.append(("Entropy (median across cases of the per-case mean)", ent,
                    f"Core: the {'model prediction' if result.options.entropy_mask == 'model' else 'consensus'} "
                    f"eroded slice by slice with a 2D disc of radius {result.options.entropy_radius_px} pixels; "
                    "boundary: mask minus core; cases with an empty core are left out of the core row."))
    if tables.model_comparison:
        cmp_rows = [["Reference", "Models", "n", "Mean Dice", "P value", "Method"]]
        cmp_rows += [[r["reference"], f"{r['model_a']} vs {r['model_b']}", str(r["n"]),
                      f"{_f(r['mean_a'])} vs {_f(r['mean_b'])}", st.format_p_value(r["p_value"]), r["method"]]
                     for r in tables.model_comparison]
        out.append(("Model comparison (paired Wilcoxon signed-rank test on per-case Dice)", cmp_rows, ""))
    surf = [["", "n", "HD95 mm, median (IQR)", f"Surface Dice @ {result.options.tolerance_mm:g} mm, median (IQR)"]]
    surf += [[r["rater"], str(r["n"]), f"{_f(r['hd95_median_mm'], 1)} ({_f(r['hd95_q1_mm'], 1)}\u2013"
              f"{_f(r['hd95_q3_mm'], 1)})", f"{_f(r['surface_dice_median'])} ({_f(r['surface_dice_q1'])}\u2013"
              f"{_f(r['surface_dice_q3'])})"] for r in tables.surface]
    out.append(("Surface distances against Rc (not in the paper)", surf,
                "HD95: max of the two directed 95th-percentile surface distances; surface Dice: share of both "
                "surfaces within the tolerance."))
    return out


FIGURES = (("dice_per_pair", "Dice per pair"), ("vpe_tolerance", "Cases within each volume-error tolerance"),
           ("pv_tv", "PV/TV distribution"), ("bland_altman", "Bland-Altman plots of volumes"),
           ("entropy", "Entropy: core vs boundary"))


def _figures(result: CohortResult, tables: Tables) -> dict[str, bytes]:
    from . import figures   # matplotlib only when figures are wanted

    made = {"dice_per_pair": figures.dice_boxplot(result), "vpe_tolerance": figures.vpe_bars(result, tables.vpe),
            "pv_tv": figures.pvtv_plot(result), "bland_altman": figures.bland_altman(result),
            "entropy": figures.entropy_plot(result)}
    return {k: v for k, v in made.items() if v is not None}


def _context_lines(result: CohortResult, versions: dict[str, str]) -> list[str]:
    o = result.options
    rule = (f"STAPLE probability >= {o.staple_threshold}" if o.consensus_method == "staple" else
            f"majority vote, >= {o.min_votes or len(result.cohort.raters) // 2 + 1} of "
            f"{len(result.cohort.raters)} raters")
    lines = [f"Cohort: {result.cohort.csv_path.name}, {len(result.cases)} cases evaluated"
             + (f", {len(result.skipped)} skipped" if result.skipped else ""),
             f"Raters: {', '.join(s.name for s in result.cohort.raters)}; consensus {CONSENSUS}: {rule}",
             f"Models: {', '.join(result.models) or 'none'}",
             "Software: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return lines


def write_report(result: CohortResult, out_dir: str | Path, *, bootstrap_resamples: int = 0, seed: int = 0,
                 figures: bool = True) -> dict[str, Path]:
    """Write every table, report.md and report.html into ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    tables = build_tables(result, bootstrap_resamples=bootstrap_resamples, seed=seed)
    versions = software_versions()
    written: dict[str, Path] = {}

    def text(name: str, content: str) -> None:
        written[name] = write_text_atomic(out / name, content)

    text("per_case.csv", csv_text([r for c in result.cases for r in c.rows], PER_CASE_COLUMNS))
    pair_rows = [{"case": c.case, "a": a, "b": b, "dice": value, "flags": "both_empty" if empty else ""}
                 for c in result.cases for (a, b), (value, empty) in c.pair_dice.items()]
    text("pairwise_dice.csv", csv_text(pair_rows, ["case", "a", "b", "dice", "flags"]))
    agreement_cols = ["a", "b", "n", "mean", "ci_low", "ci_high", "sd", "n_undefined", "grade"]
    if bootstrap_resamples > 0:
        agreement_cols += ["boot_ci_low", "boot_ci_high"]
    text("agreement.csv", csv_text(tables.agreement, agreement_cols))
    text("agreement_matrix.csv", _matrix_csv(tables.matrix))
    text("vpe.csv", csv_text(tables.vpe, ["rater", "threshold_pct", "count", "percent", "n", "n_undefined"]))
    text("pvtv.csv", csv_text(tables.pvtv, ["rater", "n_gt1", "pct_gt1", "n_le1", "pct_le1", "median", "p_value",
                                            "tendency", "method", "statistic", "n", "n_zero", "n_undefined",
                                            "p_value_pv_minus_tv", "p_value_log_ratio"]))
    text("entropy.csv", csv_text(tables.entropy, ["model", "region", "median", "q1", "q3", "n", "n_empty_core"]))
    entropy_cols = ["mean", "mask_mean", "core_mean", "boundary_mean", "core_empty", "mask_empty", "n_mask",
                    "n_core", "n_boundary", "radius_px"]
    entropy_rows = [{"case": c.case, "model": m, **e} for c in result.cases for m, e in c.entropy.items()]
    text("entropy_per_case.csv", csv_text(entropy_rows, ["case", "model", *entropy_cols]))
    text("model_comparison.csv", csv_text(tables.model_comparison, ["reference", "model_a", "model_b", "n", "mean_a",
                                                                    "mean_b", "median_difference", "statistic",
                                                                    "p_value", "method"]))
    text("surface.csv", csv_text(tables.surface))

    summary = {"n_cases": len(result.cases), "skipped": [{"case": c, "reason": r} for c, r in result.skipped],
               "labels": result.labels, "options": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                    for k, v in dataclasses.asdict(result.options).items()},
               "elapsed_s": round(result.elapsed_s, 3), "software": versions}
    text("summary.json", json.dumps(summary, indent=2) + "\n")

    sections = _text_tables(result, tables)
    pngs = _figures(result, tables) if figures else {}
    context = _context_lines(result, versions)
    md = ["# Segmentation agreement report", "", *(f"- {line}" for line in context), ""]
    for title, rows, note in sections:
        md += [f"## {title}", "", _markdown_table(rows), ""] + ([note, ""] if note else [])
    if result.skipped:
        md += ["## Skipped cases", "", *(f"- {c}: {r}" for c, r in result.skipped), ""]
    md += ["## Flags in per_case.csv", "",
           "both_empty: Dice of two empty masks (undefined, left out of means); empty_reference: Rc is empty, so "
           "volume error and PV/TV are undefined; empty_mask: this mask is empty; surface_undefined: HD95 and "
           "surface Dice need two non-empty masks; resampled: the mask was resampled onto the reference grid.", ""]
    if pngs:
        md += ["## Figures", ""]
        for key, title in FIGURES:
            if key in pngs:
                written[f"figures/{key}.png"] = write_bytes_atomic(out / "figures" / f"{key}.png", pngs[key])
                md += [f"### {title}", "", f"![{title}](figures/{key}.png)", ""]
    text("report.md", "\n".join(md))

    body = ["<h1>Segmentation agreement report</h1>",
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in context) + "</ul>"]
    for title, rows, note in sections:
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(rows)] + ([f"<p>{html.escape(note)}</p>"] if note
                                                                           else [])
    if result.skipped:
        body += ["<h2>Skipped cases</h2><ul>" + "".join(f"<li>{html.escape(c)}: {html.escape(r)}</li>"
                                                        for c, r in result.skipped) + "</ul>"]
    for key, title in FIGURES:
        if key in pngs:
            data = base64.b64encode(pngs[key]).decode("ascii")
            body += [f"<h2>{html.escape(title)}</h2>",
                     f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">']
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:center}th{background:#eee}img{max-width:100%}p{color:#444;font-size:90%}")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Segmentation agreement report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    text("report.html", page)
    return written
