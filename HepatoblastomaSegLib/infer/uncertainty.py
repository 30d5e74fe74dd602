"""Voxelwise uncertainty: the Shannon entropy of the softmax, in nats.

The paper reports entropy without a log base; nats (natural log) are used throughout the library, so the 2-class
maximum is ln 2 = 0.693. Entropy is computed on the final probabilities (after mirroring TTA averaged the
*probabilities*, nnU-Net v1 semantics) and on the original image grid, because that is the grid the radiologist sees.
"""

from __future__ import annotations

import numpy as np
import torch


def entropy_nats(probabilities: torch.Tensor | np.ndarray, channel_dim: int = 0) -> torch.Tensor | np.ndarray:
    """H = -sum_c p_c ln p_c over ``channel_dim``; p = 0 contributes 0. float32, same type as the input.

    Shapes: probabilities [C, z, y, x] (or any shape with the classes on ``channel_dim``) -> [z, y, x].
    """
    if isinstance(probabilities, np.ndarray):
        return entropy_nats(torch.from_numpy(probabilities), channel_dim).numpy()
    p = probabilities.float()
    # xlogy gives 0 * log 0 = 0 exactly, where p * log(p) would give NaN.
    h = -torch.special.xlogy(p, p).sum(dim=channel_dim)
    return h.clamp_(min=0.0)
