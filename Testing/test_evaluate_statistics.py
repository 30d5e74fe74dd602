"""Cohort statistics: the CI formula against the paper's printed cells, Wilcoxon tests against SciPy and the paper's
P value, threshold counts, grades."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from HepatoblastomaSegLib.evaluate import statistics as st

# Cells printed in the paper's Tables 2 (CT, n = 48) and 3 (MRI, n = 73), upper triangles.
PAPER_CELLS = [(48, c) for c in (
    "0.94 (0.93, 0.96)", "0.95 (0.94, 0.96)", "0.94 (0.92, 0.95)", "0.86 (0.80, 0.91)", "0.55 (0.46, 0.65)",
    "0.89 (0.87, 0.91)", "0.88 (0.85, 0.90)", "0.83 (0.78, 0.89)", "0.55 (0.46, 0.64)", "0.88 (0.86, 0.90)",
    "0.85 (0.79, 0.90)", "0.84 (0.79, 0.89)", "0.54 (0.45, 0.65)", "0.58 (0.48, 0.67)")] + [(73, c) for c in (
    "0.94 (0.92, 0.95)", "0.95 (0.94, 0.96)", "0.86 (0.80, 0.91)", "0.90 (0.88, 0.91)", "0.88 (0.86, 0.90)",
    "0.83 (0.78, 0.87)", "0.85 (0.79, 0.90)", "0.84 (0.79, 0.89)")]


def parse_cell(cell: str) -> tuple[float, float, float]:
    mean, rest = cell.split(" (")
    low, high = rest.rstrip(")").split(", ")
    return float(mean), float(low), float(high)


def two_point_sample(n: int, mean: float, sd: float) -> np.ndarray:
    """n values with exactly this mean and SD (ddof 1): half at mean + d, half at mean - d (one at the mean if odd)."""
    half = n // 2
    d = sd * math.sqrt((n - 1) / (2 * half))
    return np.array([mean + d] * half + [mean - d] * half + [mean] * (n % 2))


def test_ci_is_the_normal_approximation():
    rng = np.random.default_rng(0)
    for n in (5, 48, 73):
        x = rng.beta(8, 2, n)
        ci = st.mean_ci_normal(x)
        low, high = stats.norm.interval(0.95, loc=np.mean(x), scale=stats.sem(x))
        assert (ci.ci_low, ci.ci_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
        assert ci.ci_high - ci.mean == pytest.approx(1.959964 * np.std(x, ddof=1) / math.sqrt(n), rel=1e-6)
        assert ci.n == n and ci.n_undefined == 0
    ci = st.mean_ci_normal([0.8, float("nan"), 0.9, 0.7])
    assert ci.n == 3 and ci.n_undefined == 1 and ci.mean == pytest.approx(0.8)
    assert math.isnan(st.mean_ci_normal([0.5]).ci_low)


# Symmetric about its mean only at the exact rounding boundary (mean 0.545, bounds 0.445/0.645; see tables.json):
# no float reproduces all three printed digits, so its bounds are compared within 0.01.
BOUNDARY_CELLS = {"0.54 (0.45, 0.65)"}


@pytest.mark.parametrize("n,cell", PAPER_CELLS)
def test_ci_formula_reproduces_every_printed_paper_cell(n, cell):
    mean_p, low_p, high_p = parse_cell(cell)
    tolerance = 0.01 + 1e-9 if cell in BOUNDARY_CELLS else 0.0

    def fits(mean, half):
        text = st.format_estimate_ci(mean, mean - half, mean + half)
        m, lo, hi = parse_cell(text)
        return m == mean_p and abs(lo - low_p) <= tolerance and abs(hi - high_p) <= tolerance

    found = next(((m, h) for m in np.arange(mean_p - 0.0049, mean_p + 0.005, 0.0005)
                  for h in np.arange(0.001, 0.12, 0.0005) if fits(m, h)), None)
    assert found, f"no mean/half-width rounds to {cell}"
    mean, half = found
    sd = half * math.sqrt(n) / stats.norm.ppf(0.975)
    assert sd <= math.sqrt(mean * (1 - mean)), "the implied per-case SD must be possible for values in [0, 1]"
    x = two_point_sample(n, mean, sd)
    ci = st.mean_ci_normal(x)
    text = st.format_estimate_ci(ci.mean, ci.ci_low, ci.ci_high)
    if cell in BOUNDARY_CELLS:
        assert text != cell and fits(ci.mean, ci.ci_high - ci.mean)
    else:
        assert text == cell


def test_paper_wilcoxon_anchor_47_negative_one_positive_at_rank_4():
    d = -np.arange(1, 49) / 1000.0
    d[3] = -d[3]                                   # the 4th smallest |d| is the one positive difference
    result = st.wilcoxon_signed_rank(d)
    assert result.method == "exact" and result.statistic == 4.0 and result.n == 48
    assert result.p_value == pytest.approx(2 * 7 / 2 ** 48, rel=1e-9)
    assert f"{result.p_value:.2e}" == "4.97e-14"
    assert st.format_p_value(result.p_value) == "4.97e-14"
    # the same numbers as Table 5's MACT column: PV/TV - 1 = d
    summary = st.pvtv_summary(100.0 * (1.0 + d), np.full(48, 100.0))
    assert (summary["n_gt1"], summary["n_le1"], summary["tendency"]) == (1, 47, "Undersegmentation")
    assert summary["p_value"] == pytest.approx(4.9738e-14, rel=1e-4)
    assert summary["pct_gt1"] == pytest.approx(2.0833, abs=1e-4)


def test_wilcoxon_records_the_method_scipy_used():
    rng = np.random.default_rng(4)
    big = rng.normal(0.02, 0.1, 73)               # n > 50: normal approximation (the paper's MRI cohort)
    result = st.wilcoxon_signed_rank(big)
    assert result.method == "asymptotic"
    assert result.p_value == pytest.approx(stats.wilcoxon(big, method="asymptotic").pvalue, rel=1e-12)
    assert result.p_value == pytest.approx(stats.wilcoxon(big).pvalue, rel=1e-12)
    small = rng.normal(0.02, 0.1, 30)
    assert st.wilcoxon_signed_rank(small).method == "exact"
    with_zero = np.append(small, [0.0])           # a zero difference is dropped; "auto" no longer uses "exact"
    result = st.wilcoxon_signed_rank(with_zero)
    assert result.n_zero == 1 and result.method != "exact"
    assert result.p_value == pytest.approx(stats.wilcoxon(with_zero).pvalue, rel=1e-12)
    none = st.wilcoxon_signed_rank([0.0, 0.0, float("nan")])
    assert math.isnan(none.p_value) and none.n == 2


def test_pvtv_summary_counts_and_sensitivity_checks():
    tv = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 0.0])
    pv = np.array([9.0, 20.0, 33.0, 38.0, 45.0, 66.0, 5.0])
    s = st.pvtv_summary(pv, tv)
    assert s["n"] == 6 and s["n_undefined"] == 1              # TV = 0 is left out
    assert (s["n_gt1"], s["n_le1"]) == (2, 4)                  # PV/TV == 1 counts as <= 1
    assert s["median"] == pytest.approx(np.median(pv[:6] / tv[:6]))
    assert s["n_zero"] == 1 and s["tendency"] == "Undersegmentation"
    assert s["p_value"] == pytest.approx(stats.wilcoxon(pv[:6] / tv[:6] - 1).pvalue)
    assert s["p_value_pv_minus_tv"] == pytest.approx(stats.wilcoxon(pv[:6] - tv[:6]).pvalue)
    assert st.tendency(3, 3) == "Balanced"


def test_paired_wilcoxon_matches_scipy():
    rng = np.random.default_rng(7)
    a = rng.uniform(0.7, 0.95, 48)
    b = a - rng.uniform(0.1, 0.5, 48)
    b[5] = np.nan
    result = st.paired_wilcoxon(a, b)
    keep = ~np.isnan(b)
    assert result["n"] == 47
    assert result["p_value"] == pytest.approx(stats.wilcoxon(a[keep], b[keep]).pvalue, rel=1e-12)
    assert result["mean_x"] > result["mean_y"]


def test_vpe_thresholds_are_strict():
    errors = [0.5, 1.0, 4.99, 5.0, 9.0, 14.999, 15.0, 30.0, float("nan")]
    rows = st.vpe_threshold_counts(errors)
    assert [r["count"] for r in rows] == [1, 3, 5, 6]
    assert all(r["n"] == 8 and r["n_undefined"] == 1 for r in rows)
    assert rows[1]["percent"] == pytest.approx(37.5)
    assert f"{100 * 7 / 48:.2f}" == "14.58"        # Table 4's R1 at e < 1 %


def test_agreement_grades_on_the_printed_value():
    cases = {0.95: "excellent", 0.9051: "excellent", 0.904: "good", 0.8951: "good", 0.8949: "good", 0.80: "good",
             0.7951: "good", 0.7949: "fair", 0.70: "fair", 0.6951: "fair", 0.6949: "poor", 0.55: "poor"}
    for value, grade in cases.items():
        assert st.agreement_grade(value) == grade, value
    assert st.agreement_grade(float("nan")) == ""


def test_bootstrap_ci_agrees_with_scipy():
    rng = np.random.default_rng(11)
    x = rng.beta(6, 2, 48)
    low, high = st.bootstrap_ci(x, n_resamples=4000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=2).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.01) and high == pytest.approx(ref.high, abs=0.01)
    assert low < np.mean(x) < high
    assert st.bootstrap_ci(x, n_resamples=500, seed=3) == st.bootstrap_ci(x, n_resamples=500, seed=3)


def test_median_iqr_and_p_value_format():
    x = [0.1, 0.2, 0.4, float("nan"), 0.3, 0.9]
    s = st.median_iqr(x)
    assert (s["median"], s["q1"], s["q3"], s["n"]) == (0.3, 0.2, 0.4, 5)
    assert st.format_p_value(0.1066) == ".1066" and st.format_p_value(0.0021) == ".0021"
    assert st.format_p_value(float("nan")) == "NA"
    assert st.format_estimate_ci(0.86, 0.8, 0.91) == "0.86 (0.80, 0.91)"
