"""Cohort statistics over per-case values, with the paper's conventions.

- Mean with a 95 % CI by the normal approximation: mean +- z * SD / sqrt(n), SD with ddof = 1 and
  z = Phi^-1(0.975) = 1.95996 (identical to ``scipy.stats.norm.interval(0.95, loc=mean, scale=scipy.stats.sem(x))``).
  This formula reproduces every cell of the paper's Tables 2 and 3. Undefined values (NaN, e.g. Dice of two empty
  masks) are left out and counted as ``n_undefined``. A percentile bootstrap CI of the mean is optional.
- Agreement grades (paper): > 0.90 excellent, 0.80-0.89 good, 0.70-0.79 fair, < 0.70 poor. The paper's bands leave
  gaps (0.895, 0.90, 0.799...), so the grade is taken from the value rounded to 2 decimals, i.e. the number printed
  in the table: >= 0.91 excellent, 0.80-0.90 good (a printed "0.90" is not "> 0.9"), 0.70-0.79 fair, <= 0.69 poor.
- Volume-error thresholds: a case counts when e < threshold (strict), percent = count / n x 100 over the n cases
  with a defined e (non-empty consensus).
- PV/TV: counts of > 1 (over-segmentation) and <= 1 (under-segmentation), median, and the two-sided one-sample
  Wilcoxon signed-rank test of PV/TV - 1 with SciPy's defaults (zero_method "wilcox": zero differences dropped;
  no continuity correction; method "auto"). The method SciPy picked is recorded. "Tendency" names the side that
  holds more cases (not significance), "balanced" for a tie.
- Model comparison: two-sided paired Wilcoxon signed-rank test on per-case Dice (cases where both are defined).
- Medians with IQR: numpy's default (linear) quantiles.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

VPE_THRESHOLDS_PCT = (1.0, 5.0, 10.0, 15.0)
GRADES = ("excellent", "good", "fair", "poor")


def _finite(values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, int]:
    array = np.asarray(values, dtype=float).ravel()
    keep = ~np.isnan(array)
    return array[keep], int(array.size - keep.sum())


@dataclasses.dataclass(frozen=True)
class MeanCI:
    """A mean with its confidence interval over ``n`` defined values (``n_undefined`` NaNs left out)."""

    n: int
    n_undefined: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95


def mean_ci_normal(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> MeanCI:
    """Mean and normal-approximation CI, mean +- z * SD(ddof=1) / sqrt(n). NaN CI for n < 2."""
    x, n_nan = _finite(values)
    n = int(x.size)
    if n == 0:
        return MeanCI(0, n_nan, math.nan, math.nan, math.nan, math.nan, confidence)
    mean = float(np.mean(x))
    if n < 2:
        return MeanCI(n, n_nan, mean, math.nan, math.nan, math.nan, confidence)
    sd = float(np.std(x, ddof=1))
    half = float(stats.norm.ppf(0.5 + confidence / 2.0)) * sd / math.sqrt(n)
    return MeanCI(n, n_nan, mean, sd, mean - half, mean + half, confidence)


def bootstrap_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, *, n_resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaNs left out); ``(nan, nan)`` for fewer than 2 values."""
    x, _ = _finite(values)
    if x.size < 2 or n_resamples < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # Chunks bound the memory of the index matrix for large n.
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def format_estimate_ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    """A table cell in the paper's style, e.g. ``0.86 (0.80, 0.91)``; ``nan`` parts print as ``NA``."""
    def fmt(v: float) -> str:
        return "NA" if v is None or math.isnan(v) else f"{v:.{digits}f}"
    if math.isnan(low) and math.isnan(high):
        return fmt(mean)
    return f"{fmt(mean)} ({fmt(low)}, {fmt(high)})"


def agreement_grade(value: float) -> str:
    """The paper's agreement grade of a Dice value, graded on the value rounded to 2 decimals (module docstring).

    Returns "excellent", "good", "fair", "poor", or "" for NaN.
    """
    if value is None or math.isnan(value):
        return ""
    rounded = float(f"{value:.2f}")
    if rounded > 0.90:
        return "excellent"
    if rounded >= 0.80:
        return "good"
    if rounded >= 0.70:
        return "fair"
    return "poor"


def vpe_threshold_counts(errors_pct: Sequence[float] | np.ndarray,
                         thresholds_pct: Sequence[float] = VPE_THRESHOLDS_PCT) -> list[dict]:
    """For each threshold: ``{threshold_pct, count, percent, n, n_undefined}`` with count = #(e < threshold)."""
    e, n_nan = _finite(errors_pct)
    n = int(e.size)
    rows = []
    for threshold in thresholds_pct:
        count = int(np.count_nonzero(e < threshold))
        rows.append({"threshold_pct": float(threshold), "count": count,
                     "percent": 100.0 * count / n if n else math.nan, "n": n, "n_undefined": n_nan})
    return rows


@dataclasses.dataclass(frozen=True)
class WilcoxonResult:
    """A Wilcoxon signed-rank test: ``n`` differences given (``n_zero`` of them zero, dropped by SciPy's default),
    the statistic min(W+, W-), the two-sided P value and the method SciPy used ("exact", "asymptotic" or
    "permutation")."""

    n: int
    n_zero: int
    statistic: float
    p_value: float
    method: str


def wilcoxon_signed_rank(differences: Sequence[float] | np.ndarray) -> WilcoxonResult:
    """Two-sided one-sample Wilcoxon signed-rank test of ``differences`` against 0, SciPy's defaults.

    NaNs are left out. Which method SciPy's "auto" picked (it depends on n, ties and zeros, and on the SciPy
    version) is found by re-running the test with each explicit method and keeping the one that agrees.
    """
    d, _ = _finite(differences)
    n, n_zero = int(d.size), int(np.count_nonzero(d == 0))
    if n - n_zero == 0:
        return WilcoxonResult(n, n_zero, math.nan, math.nan, "none (no nonzero differences)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.wilcoxon(d)
        p_value, statistic = float(result.pvalue), float(result.statistic)
        method = "permutation"
        for candidate in ("exact", "asymptotic"):
            try:
                p_candidate = float(stats.wilcoxon(d, method=candidate).pvalue)
            except ValueError:
                continue
            if p_candidate == p_value or math.isclose(p_candidate, p_value, rel_tol=1e-9, abs_tol=0.0):
                method = candidate
                break
    return WilcoxonResult(n, n_zero, statistic, p_value, method)


def tendency(n_gt1: int, n_le1: int) -> str:
    if n_gt1 > n_le1:
        return "Oversegmentation"
    if n_le1 > n_gt1:
        return "Undersegmentation"
    return "Balanced"


def pvtv_summary(pv_ml: Sequence[float] | np.ndarray, tv_ml: Sequence[float] | np.ndarray) -> dict:
    """Table 5 for one rater or model: PV/TV counts, median, the Wilcoxon test of PV/TV - 1, and as sensitivity
    checks the tests of PV - TV (mL) and log(PV/TV) (cases with PV > 0). Cases with TV = 0 are left out."""
    pv = np.asarray(pv_ml, dtype=float)
    tv = np.asarray(tv_ml, dtype=float)
    defined = (tv > 0) & ~np.isnan(pv) & ~np.isnan(tv)
    pv, tv = pv[defined], tv[defined]
    ratio = pv / tv
    n = int(ratio.size)
    n_gt1 = int(np.count_nonzero(ratio > 1))
    n_le1 = n - n_gt1
    main = wilcoxon_signed_rank(ratio - 1.0)
    positive = pv > 0
    return {
        "n": n, "n_undefined": int(defined.size - n),
        "n_gt1": n_gt1, "pct_gt1": 100.0 * n_gt1 / n if n else math.nan,
        "n_le1": n_le1, "pct_le1": 100.0 * n_le1 / n if n else math.nan,
        "median": float(np.median(ratio)) if n else math.nan,
        "p_value": main.p_value, "statistic": main.statistic, "method": main.method, "n_zero": main.n_zero,
        "tendency": tendency(n_gt1, n_le1) if n else "",
        "p_value_pv_minus_tv": wilcoxon_signed_rank(pv - tv).p_value,
        "p_value_log_ratio": wilcoxon_signed_rank(np.log(ratio[positive])).p_value,
    }


def paired_wilcoxon(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict:
    """Two-sided paired Wilcoxon signed-rank test of x - y over the pairs where both are defined.

    Returns ``{n, mean_x, mean_y, median_difference, statistic, p_value, method, n_zero}``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    keep = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[keep], y[keep]
    result = wilcoxon_signed_rank(x - y)
    n = int(x.size)
    return {"n": n, "mean_x": float(np.mean(x)) if n else math.nan, "mean_y": float(np.mean(y)) if n else math.nan,
            "median_difference": float(np.median(x - y)) if n else math.nan, "statistic": result.statistic,
            "p_value": result.p_value, "method": result.method, "n_zero": result.n_zero}


def median_iqr(values: Sequence[float] | np.ndarray) -> dict:
    """``{median, q1, q3, n, n_undefined}`` with numpy's linear quantiles; NaNs left out."""
    x, n_nan = _finite(values)
    if x.size == 0:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan, "n": 0, "n_undefined": n_nan}
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "n": int(x.size), "n_undefined": n_nan}


def format_p_value(p: float) -> str:
    """P values as the paper prints them: ".1066" (4 decimals, no leading zero) down to .001, then 3 significant
    digits in scientific notation ("4.97e-14")."""
    if p is None or math.isnan(p):
        return "NA"
    if p >= 0.001:
        text = f"{p:.4f}"
        return text[1:] if text.startswith("0.") else text
    return f"{p:.2e}"
