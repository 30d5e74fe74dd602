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


#: Resolution of the stored entropy map (nats). Float arithmetic leaves noise in the low mantissa bits of nearly every
#: voxel, which gzip cannot compress: on a full-size CT the map stayed 54 MB of 62 and took 2.8 s to write. Rounded
#: to 2^-16 nats (1.5e-5, 0.002 % of ln 2; far below what any display or reported figure resolves) it is 15 MB and
#: 1.7 s, and exactly 0 where the model is certain.
ENTROPY_STEP_NATS = 2.0 ** -16


def round_to_step(entropy: torch.Tensor, step_nats: float = ENTROPY_STEP_NATS) -> torch.Tensor:
    """``entropy`` rounded to a multiple of ``step_nats`` (a power of two, so exact in float32), in place."""
    return entropy.mul_(1.0 / step_nats).round_().mul_(step_nats)
