"""A consensus mask ("Rc") from several raters' binary masks of one case.

Majority vote (the paper's Rc, default): a voxel is foreground when more than half of the N raters marked it, i.e.
at least ``N // 2 + 1`` votes (2 of 3, 3 of 4, 3 of 5). For an even N a tie (N/2 votes) therefore goes to the
background; ``min_votes=K`` sets another threshold (K of N, 1 <= K <= N; K = N/2 with even N gives ties to the
foreground). With the default this equals SimpleITK's ``LabelVoting`` with label 0 for undecided voxels.

STAPLE (``method="staple"``, SimpleITK's ``STAPLEImageFilter``) is a different estimator: an EM algorithm that weights
each rater by an estimated sensitivity and specificity and returns a per-voxel probability of being foreground,
which is thresholded (``staple_threshold``, default 0.5). A consistently generous rater counts for less, so
STAPLE and the vote can differ, and STAPLE is not what the paper used. Arrays are [z, y, x].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import ConfigError, InputError
from ..io import Volume, require_binary, require_same_geometry

METHODS = ("majority", "staple")


def default_min_votes(n_raters: int) -> int:
    """Votes needed under a strict majority: more than half of ``n_raters``."""
    return n_raters // 2 + 1


def _check_masks(masks: Sequence[np.ndarray]) -> None:
    if len(masks) < 2:
        raise ConfigError(f"a consensus needs at least 2 masks, got {len(masks)}")
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) != 1:
        raise InputError(f"masks differ in shape: {sorted(shapes)}")


def majority_vote(masks: Sequence[np.ndarray], min_votes: int | None = None) -> np.ndarray:
    """Voxelwise vote of N binary masks (same shape). Returns a uint8 0/1 array.

    A voxel is 1 when at least ``min_votes`` masks are nonzero there; default :func:`default_min_votes` (strict
    majority, even-N ties to background).
    """
    _check_masks(masks)
    n = len(masks)
    k = default_min_votes(n) if min_votes is None else int(min_votes)
    if not 1 <= k <= n:
        raise ConfigError(f"min_votes must lie between 1 and the number of masks ({n}), got {k}")
    votes = np.zeros(masks[0].shape, dtype=np.uint8 if n < 256 else np.uint16)
    for mask in masks:
        votes += mask.astype(bool, copy=False)
    return (votes >= k).astype(np.uint8)


def staple(masks: Sequence[np.ndarray], threshold: float = 0.5, *, max_iterations: int = 100
           ) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
    """STAPLE estimate of the true mask (SimpleITK). Returns ``(mask uint8, probability float32, sensitivities,
    specificities)``; the mask is ``probability >= threshold``. Only the voxel grid shape matters here."""
    _check_masks(masks)
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"the STAPLE threshold must lie in (0, 1], got {threshold}")
    images = [sitk.GetImageFromArray(np.ascontiguousarray(m.astype(np.uint8))) for m in masks]
    flt = sitk.STAPLEImageFilter()
    flt.SetForegroundValue(1.0)
    flt.SetMaximumIterations(int(max_iterations))
    probability = sitk.GetArrayFromImage(flt.Execute(images)).astype(np.float32)
    mask = (probability >= threshold).astype(np.uint8)
    return mask, probability, list(flt.GetSensitivity()), list(flt.GetSpecificity())


def build_consensus(masks: Sequence[np.ndarray], *, method: str = "majority", min_votes: int | None = None,
              staple_threshold: float = 0.5) -> np.ndarray:
    """The consensus of ``masks`` by ``method`` ("majority" or "staple"); uint8 0/1 array."""
    if method == "majority":
        return majority_vote(masks, min_votes)
    if method == "staple":
        if min_votes is not None:
            raise ConfigError("min_votes applies to the majority vote only, not to STAPLE")
        return staple(masks, staple_threshold)[0]
    raise ConfigError(f"unknown consensus method '{method}'; use one of {', '.join(METHODS)}")


def consensus_volume(volumes: Sequence[Volume], *, method: str = "majority", min_votes: int | None = None,
                     staple_threshold: float = 0.5) -> Volume:
    """Consensus of mask volumes that must share one voxel grid (:class:`GeometryError` naming the file otherwise)
    and hold only 0 and 1 (:class:`InputError`). The result carries the first volume's geometry."""
    if len(volumes) < 2:
        raise ConfigError(f"a consensus needs at least 2 masks, got {len(volumes)}")
    for volume in volumes:
        require_binary(volume, what="rater mask")
    for volume in volumes[1:]:
        require_same_geometry(volumes[0], volume, what_a="first mask", what_b="mask")
    array = build_consensus([v.array for v in volumes], method=method, min_votes=min_votes,
                            staple_threshold=staple_threshold)
    n_raters = len(volumes)
    rule = (f"STAPLE >= {staple_threshold}" if method == "staple"
            else f">= {default_min_votes(n_raters) if min_votes is None else min_votes} of {n_raters} votes")
    return Volume(array, volumes[0].geometry, None, {"consensus": rule,
                                                     "sources": [v.name for v in volumes]})
