"""The report's figures as PNG bytes (matplotlib's Agg canvas; pyplot and its global state are never touched).

Each function takes a :class:`~.cohort.CohortResult` (and tables from :mod:`.report`) and returns PNG bytes, or None
when there is nothing to draw.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .cohort import CONSENSUS, CohortResult

DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _jitter(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.15, 0.15, n)


def _box_with_points(ax, data: list[np.ndarray], labels: list[str]) -> None:
    data = [d[~np.isnan(d)] for d in data]
    positions = np.arange(1, len(data) + 1)
    ax.boxplot([d if d.size else [np.nan] for d in data], positions=positions, widths=0.6, showfliers=False)
    for i, d in enumerate(data):
        ax.scatter(positions[i] + _jitter(d.size, i), d, s=8, alpha=0.6, color="tab:blue", zorder=3)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")


def dice_boxplot(result: CohortResult) -> bytes:
    """Per-case Dice for every pair among Rc, the raters and the models."""
    pairs = list(itertools.combinations(result.labels, 2))
    fig = Figure(figsize=(max(6.0, 0.55 * len(pairs) + 2), 4.2))
    ax = fig.add_subplot()
    _box_with_points(ax, [result.pair_values(a, b) for a, b in pairs], [f"{a}-{b}" for a, b in pairs])
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Dice per pair (n = {len(result.cases)} cases)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def vpe_bars(result: CohortResult, vpe_rows: list[dict]) -> bytes:
    """Share of cases whose volume error against Rc is below each tolerance, per rater and model."""
    members = result.members
    thresholds = sorted({r["threshold_pct"] for r in vpe_rows})
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    width = 0.8 / max(len(members), 1)
    x = np.arange(len(thresholds))
    for i, name in enumerate(members):
        percent = [next(r["percent"] for r in vpe_rows if r["rater"] == name and r["threshold_pct"] == t)
                   for t in thresholds]
        ax.bar(x + (i - (len(members) - 1) / 2) * width, percent, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([f"e < {t:g} %" for t in thresholds])
    ax.set_ylabel("cases (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Volume percentage error against Rc")
    ax.legend(ncol=min(len(members), 5), fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def pvtv_plot(result: CohortResult) -> bytes:
    """PV/TV per case for each rater and model; 1 is perfect volume agreement."""
    fig = Figure(figsize=(max(5.0, 1.1 * len(result.members) + 2), 4.0))
    ax = fig.add_subplot()
    _box_with_points(ax, [result.member_values(m, "pv_tv") for m in result.members], result.members)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("PV / TV")
    ax.set_title("Predicted over consensus volume (> 1: over-, < 1: under-segmentation)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def bland_altman(result: CohortResult) -> bytes:
    """Bland-Altman plot of volumes (mL) against Rc: difference PV - TV over the mean (PV + TV) / 2."""
    members = result.members
    cols = min(len(members), 3)
    rows = int(np.ceil(len(members) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    for i, name in enumerate(members, start=1):
        ax = fig.add_subplot(rows, cols, i)
        pv, tv = result.member_values(name, "pv_ml"), result.member_values(name, "tv_ml")
        keep = ~np.isnan(pv) & ~np.isnan(tv)
        mean, diff = (pv[keep] + tv[keep]) / 2, pv[keep] - tv[keep]
        ax.scatter(mean, diff, s=10, alpha=0.7)
        if diff.size:
            bias = float(np.mean(diff))
            ax.axhline(bias, color="tab:red", lw=1, label=f"bias {bias:.1f} mL")
            if diff.size > 1:
                loa = 1.96 * float(np.std(diff, ddof=1))
                ax.axhline(bias + loa, color="tab:red", lw=0.8, ls="--", label=f"\u00b11.96 SD ({loa:.1f} mL)")
                ax.axhline(bias - loa, color="tab:red", lw=0.8, ls="--")
            ax.legend(fontsize="x-small")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{name} vs {CONSENSUS}", fontsize="medium")
        ax.set_xlabel("mean volume (mL)")
        ax.set_ylabel("PV - TV (mL)")
    fig.tight_layout()
    return _png(fig)


def entropy_plot(result: CohortResult) -> bytes | None:
    """Per-case mean entropy in the core and the boundary, for each model with an entropy map."""
    models = [m for m in result.models if any(m in c.entropy for c in result.cases)]
    if not models:
        return None
    data, labels = [], []
    for model in models:
        for region in ("core", "boundary"):
            data.append(np.array([c.entropy[model][f"{region}_mean"] for c in result.cases], dtype=float))
            labels.append(f"{model}\n{region}")
    fig = Figure(figsize=(max(5.0, 1.3 * len(data) + 1), 4.0))
    ax = fig.add_subplot()
    _box_with_points(ax, data, labels)
    ax.set_ylabel("mean entropy per case")
    ax.set_title("Entropy in the tumour core and at its boundary")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
