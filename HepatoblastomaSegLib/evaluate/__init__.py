"""Evaluation: consensus of raters, per-case metrics, cohort statistics and the paper's tables as a report.

Last stage of the pipeline; reads masks and entropy maps from disk and never imports the network, training or
inference modules (nor torch), so it runs wherever numpy, SciPy and SimpleITK do.

- :mod:`.consensus`: majority vote (the paper's Rc) and STAPLE.
- :mod:`.metrics`: Dice, volumes, volume error, PV/TV, HD95, surface Dice for one pair of masks.
- :mod:`.regions`: tumour core/boundary and the entropy in each (shared with inference).
- :mod:`.statistics`: CIs, grades, threshold counts, Wilcoxon tests, medians.
- :mod:`.cohort`: COHORT.csv in, per-case results out, one case at a time.
- :mod:`.report`: CSV tables, report.md and report.html (:mod:`.figures` draws the plots).
"""

from .consensus import build_consensus, consensus_volume, majority_vote, staple
from .metrics import (
    PairMetrics,
    Surface,
    compare_to_reference,
    dice,
    hausdorff_mm,
    surface_dice,
    surface_distances_mm,
    volume_ml,
    volume_percentage_error,
    volume_ratio,
)
from .regions import core_and_boundary, disc_footprint, entropy_core_boundary
from .statistics import (
    agreement_grade,
    bootstrap_ci,
    format_estimate_ci,
    mean_ci_normal,
    median_iqr,
    paired_wilcoxon,
    pvtv_summary,
    vpe_threshold_counts,
    wilcoxon_signed_rank,
)

__all__ = [
    "PairMetrics", "Surface", "agreement_grade", "bootstrap_ci", "build_consensus", "compare_to_reference",
    "consensus_volume", "core_and_boundary", "dice", "disc_footprint", "entropy_core_boundary", "format_estimate_ci",
    "hausdorff_mm", "majority_vote", "mean_ci_normal", "median_iqr", "paired_wilcoxon", "pvtv_summary", "staple",
    "surface_dice", "surface_distances_mm", "volume_ml", "volume_percentage_error", "volume_ratio",
    "vpe_threshold_counts", "wilcoxon_signed_rank",
]
