"""Padding an image that is smaller than the patch (it is padded, never rejected), and the crop that undoes it.

Symmetric constant padding as nnU-Net does (``pad_nd_image``: half before, the rest after, value 0, which after the
z-score is the foreground mean). Works on numpy arrays and torch tensors with any leading axes ([..., z, y, x]).

>>> import numpy as np
>>> padded, pad = pad_to_size(np.ones((3, 10, 10)), (8, 8, 16))
>>> padded.shape, crop_padding(padded, pad).shape
((8, 10, 16), (3, 10, 10))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Padding:
    """Voxels added before and after along (z, y, x)."""

    before_zyx: tuple[int, int, int]
    after_zyx: tuple[int, int, int]

    @property
    def is_empty(self) -> bool:
        return not any(self.before_zyx) and not any(self.after_zyx)


def padding_for(shape_zyx: Sequence[int], min_size_zyx: Sequence[int]) -> Padding:
    """The symmetric padding that brings ``shape_zyx`` up to at least ``min_size_zyx``."""
    missing = [max(0, int(m) - int(s)) for s, m in zip(shape_zyx, min_size_zyx)]
    before = tuple(d // 2 for d in missing)
    after = tuple(d - b for d, b in zip(missing, before))
    return Padding(before, after)


def pad_to_size(data: np.ndarray | torch.Tensor, min_size_zyx: Sequence[int], value: float = 0.0
                ) -> tuple[np.ndarray | torch.Tensor, Padding]:
    """Pad the last three axes of ``data`` up to ``min_size_zyx`` (axes already large enough are left alone)."""
    pad = padding_for(tuple(data.shape[-3:]), min_size_zyx)
    if pad.is_empty:
        return data, pad
    if isinstance(data, torch.Tensor):
        # F.pad lists the last axis first: (x_before, x_after, y_before, y_after, z_before, z_after).
        spec = []
        for b, a in zip(reversed(pad.before_zyx), reversed(pad.after_zyx)):
            spec += [b, a]
        return F.pad(data, spec, mode="constant", value=value), pad
    widths = [(0, 0)] * (data.ndim - 3) + list(zip(pad.before_zyx, pad.after_zyx))
    return np.pad(data, widths, mode="constant", constant_values=value), pad


def crop_padding(data: np.ndarray | torch.Tensor, pad: Padding) -> np.ndarray | torch.Tensor:
    """Undo :func:`pad_to_size` on ``data`` [..., z, y, x] (e.g. the probabilities predicted on the padded image)."""
    if pad.is_empty:
        return data
    slices = tuple(slice(b, data.shape[i - 3] - a) for i, (b, a) in enumerate(zip(pad.before_zyx, pad.after_zyx)))
    return data[(Ellipsis, *slices)]
