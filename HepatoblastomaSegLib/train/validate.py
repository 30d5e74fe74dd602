"""Validation during training: whole cases, sliding window on the preprocessed grid, Dice against the cached label.

We validate on the preprocessed (target) grid rather than through :class:`~HepatoblastomaSegLib.infer.Predictor` on
the original images: the cache already holds the normalised images and resampled labels, so each validation skips
reading, N4, Nyul and resampling, and the Dice is the one the network controls. The windows run through inference's
engine (:class:`~HepatoblastomaSegLib.sliding_window.SlidingWindowEngine`: patch size, overlap 0.5, Gaussian weights
sigma = patch/8, softmax stitched in float32), without test-time flipping.
Images smaller than the patch are padded with 0 like at inference. Dice per foreground class
``2|P n R| / (|P| + |R|)``; NaN when prediction and reference are both empty (left out of the means).

With DDP the cases are shared out over the ranks (rank r takes every r-th case) and the results summed, so every
rank ends with the same figures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..preprocess import CaseEntry, PreprocessedCache, crop_padding, pad_to_size
from ..sliding_window import SlidingWindowEngine
from .distributed import DistInfo, all_reduce_sum


@dataclasses.dataclass
class ValidationResult:
    """Per-case Dice (rows: cases, columns: foreground classes 1..C-1) and the summary the run is steered by."""

    cases: list[str]
    dice: np.ndarray            # float64 [n_cases, C-1], NaN = undefined

    @property
    def per_case(self) -> np.ndarray:
        """Mean Dice over the foreground classes of each case (NaN when all undefined)."""
        if self.dice.size == 0:
            return np.zeros(0)
        with np.errstate(invalid="ignore"):
            counts = np.sum(~np.isnan(self.dice), axis=1)
            sums = np.nansum(self.dice, axis=1)
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    @property
    def mean_dice(self) -> float:
        """Mean over cases (each case weighted equally, as in the paper); NaN when no case has a defined Dice."""
        values = self.per_case[~np.isnan(self.per_case)]
        return float(values.mean()) if values.size else math.nan


def dice_per_class(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each foreground class between two label maps of the same shape (NaN when both lack the class)."""
    out = []
    for cls in range(1, num_classes):
        p, r = pred == cls, ref == cls
        both = int(torch.count_nonzero(p & r))
        total = int(torch.count_nonzero(p)) + int(torch.count_nonzero(r))
        out.append(2.0 * both / total if total else math.nan)
    return out


def predict_labels(network: torch.nn.Module, image: torch.Tensor, patch_size_zyx: Sequence[int], *,
                   device: torch.device, autocast_dtype: torch.dtype | None, overlap: float = 0.5,
                   batch_size: int = 2) -> torch.Tensor:
    """Argmax label map [z, y, x] (int64, on ``device``) of ``image`` [z, y, x] on the preprocessed grid."""
    patch = [int(v) for v in patch_size_zyx]
    data, pad = pad_to_size(image.to(device, torch.float32), patch)
    engine = SlidingWindowEngine(tuple(patch), overlap=overlap, windows_per_call=batch_size,
                                 autocast_dtype=autocast_dtype, sw_device=device, stitch_device=device)
    probs = engine.probabilities(network, data)
    return crop_padding(probs.argmax(dim=0), pad)


def validate(network: torch.nn.Module, cache: PreprocessedCache, entries: Sequence[CaseEntry], *,
             patch_size_zyx: Sequence[int], num_classes: int, device: torch.device,
             autocast_dtype: torch.dtype | None, dist_info: DistInfo | None = None, overlap: float = 0.5
             ) -> ValidationResult:
    """Dice of every validation case (see module docstring). ``network`` is the bare module (not the DDP wrapper)."""
    info = dist_info or DistInfo()
    n = len(entries)
    dice = torch.zeros((n, max(num_classes - 1, 1)), dtype=torch.float64)
    was_training = network.training
    network.eval()
    try:
        for index in range(info.rank, n, info.world_size):
            case = cache.load(entries[index], mmap=True)
            if case is None:
                raise RuntimeError(f"validation case {entries[index].case} is not in the cache")
            labels = predict_labels(network, torch.from_numpy(np.array(case.image, dtype=np.float32)),
                                    patch_size_zyx, device=device, autocast_dtype=autocast_dtype, overlap=overlap)
            ref = torch.from_numpy(np.array(case.label, dtype=np.uint8)).to(labels.device)
            dice[index] = torch.tensor(dice_per_class(labels, ref, num_classes), dtype=torch.float64)
    finally:
        network.train(was_training)
    dice = all_reduce_sum(info, dice)
    return ValidationResult([e.case for e in entries], dice.numpy())
