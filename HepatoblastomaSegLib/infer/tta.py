"""Mirroring test-time augmentation: the mean softmax over all 8 flips of the three spatial axes.

The flips and the softmax predictor live with the one sliding-window engine (:mod:`..sliding_window`), which the
liver models and training validation use too; this module keeps the names under ``infer`` where TTA is chosen.
"""

from __future__ import annotations

from ..sliding_window import ALL_FLIPS, NO_FLIPS, SPATIAL_AXES, SoftmaxPredictor

__all__ = ["ALL_FLIPS", "NO_FLIPS", "SPATIAL_AXES", "SoftmaxPredictor"]
