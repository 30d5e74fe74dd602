"""Mirroring test-time augmentation: the mean softmax over all 8 flips of the three spatial axes.

Probabilities (not logits) are averaged, as nnU-Net v1.7.1 (the paper's version) does; averaging logits (v2) gives
systematically lower entropy, which would shift every uncertainty figure. Accumulation is float32 whatever the
autocast dtype of the network.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import torch

SPATIAL_AXES = (2, 3, 4)  # of a [B, C, z, y, x] tensor

#: The identity and the 7 non-empty combinations of the spatial axes.
ALL_FLIPS: tuple[tuple[int, ...], ...] = ((),) + tuple(c for r in (1, 2, 3) for c in combinations(SPATIAL_AXES, r))


class SoftmaxPredictor:
    """Callable for MONAI's sliding window: a [B, 1, z, y, x] patch batch -> [B, C, z, y, x] float32 probabilities.

    Args:
        network: returns logits [B, C, z, y, x] (a deep-supervision network must be in eval mode).
        flips: the flip sets to average over; ``ALL_FLIPS`` for 8-flip TTA, ``((),)`` for none.
        autocast_dtype: run the network under ``torch.autocast`` with this dtype (None: full precision).
        on_batch: called once per window batch (before flips), for progress counting.
        max_forward_batch: patches per network call. The flipped copies of a window batch go through the network
            together up to this many (a GPU runs 8 windows in one call far faster than in 8 calls); None = one flip
            per call. The result does not depend on it beyond float rounding.
        pad_windows_to: a smaller window batch (the last one of an image) is padded with empty windows to this many,
            whose outputs are dropped, so that every network call has the same shape: a compiled network
            (``torch.compile(dynamic=False)``) would otherwise compile again for the odd batch. The windows kept do
            not depend on it (every layer works per patch).
    """

    def __init__(self, network: torch.nn.Module, flips: tuple[tuple[int, ...], ...] = ALL_FLIPS,
                 autocast_dtype: torch.dtype | None = None, on_batch: Callable[[], None] | None = None,
                 max_forward_batch: int | None = None, pad_windows_to: int | None = None):
        self.network = network
        self.flips = flips
        self.autocast_dtype = autocast_dtype
        self.on_batch = on_batch
        self.max_forward_batch = max_forward_batch
        self.pad_windows_to = pad_windows_to

    def _logits(self, patch: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.network(patch)
        with torch.autocast(device_type=patch.device.type, dtype=self.autocast_dtype):
            return self.network(patch)

    def __call__(self, patch: torch.Tensor) -> torch.Tensor:
        if self.on_batch is not None:
            self.on_batch()
        windows = patch.shape[0]
        if self.pad_windows_to is not None and windows < self.pad_windows_to:
            patch = torch.cat([patch, patch.new_zeros((self.pad_windows_to - windows, *patch.shape[1:]))])
        batch = patch.shape[0]
        flips_per_call = max(1, (self.max_forward_batch or batch) // batch)
        total = None
        for start in range(0, len(self.flips), flips_per_call):
            group = self.flips[start:start + flips_per_call]
            x = torch.cat([torch.flip(patch, axes) if axes else patch for axes in group])
            p = torch.softmax(self._logits(x).float(), dim=1)
            for i, axes in enumerate(group):
                part = p[i * batch:(i + 1) * batch]
                part = torch.flip(part, axes) if axes else part
                total = part.clone() if total is None else total.add_(part)
        return total[:windows].div_(len(self.flips))
