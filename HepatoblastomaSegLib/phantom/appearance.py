"""Intensity of each tissue: a per-case mean plus an optional smooth texture (shared by CT and MRI).

A modality module (:mod:`.ct`, :mod:`.mri`) lists, per tissue, ``(mean, case_sd, texture_sd, texture_mm)``: the
mean is drawn once per case from N(mean, case_sd) (scanners and patients differ), and the texture is a smooth
random field of standard deviation ``texture_sd`` and correlation length about ``texture_mm`` (parenchymal
heterogeneity, tumour heterogeneity). Some tissues need more than that (stool with gas bubbles, fat suppression
failing at the edges of the field of view); the modality module supplies those as functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .fields import F32, Block, SmoothNoise

#: (mean, case-to-case SD, texture SD, texture correlation length in mm); SDs may be 0.
ToneSpec = tuple[float, float, float, float]


class Appearance:
    """Callable ``(tissue, block) -> value`` for :class:`~.render.Renderer`; values are floats or arrays."""

    def __init__(self, rng: np.random.Generator, table: Mapping[int, ToneSpec], lo_mm: Sequence[float],
                 hi_mm: Sequence[float], *, means: Mapping[int, float] | None = None,
                 special: Mapping[int, Callable[[Block, float], np.ndarray]] | None = None):
        self.means: dict[int, float] = {}
        self.textures: dict[int, tuple[SmoothNoise, float]] = {}
        for tissue, (mean, case_sd, texture_sd, texture_mm) in sorted(table.items()):
            self.means[int(tissue)] = float(mean + case_sd * rng.standard_normal())
            if texture_sd > 0:
                self.textures[int(tissue)] = (SmoothNoise(rng, lo_mm, hi_mm, texture_mm), float(texture_sd))
        for tissue, value in (means or {}).items():
            self.means[int(tissue)] = float(value)
        self.special = dict(special or {})

    def __call__(self, tissue: int, block: Block):
        tissue = int(tissue)
        mean = self.means[tissue]
        if tissue in self.special:
            return self.special[tissue](block, mean)
        if tissue in self.textures:
            noise, sd = self.textures[tissue]
            return block.cached(f"texture{tissue}", lambda: F32(mean) + F32(sd) * noise(*block.axes))
        return F32(mean)
