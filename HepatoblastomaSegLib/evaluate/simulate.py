"""Simulated raters and models for tests and benchmarks of the evaluation (not a phantom of the anatomy).

One case is a lobulated ellipsoidal "tumour"; each rater and model marks it with its own volume bias and its own
smooth boundary noise, so that they agree the way annotators do (Dice ~0.85-0.95 between raters) and a poor model
can be made to agree much less. An entropy map peaks (ln 2) on the model's boundary and is near zero elsewhere.
Arrays are [z, y, x]; everything outside the tumour's box is computed once, so full-size CT grids are cheap.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ..io import Geometry, Volume, write_text_atomic, write_volume


@dataclasses.dataclass(frozen=True)
class Reader:
    """How one rater or model marks the tumour: ``bias`` > 0 shrinks, < 0 grows (in units of the normalised
    radius), ``noise`` is the amplitude of its smooth boundary noise, ``shift_mm`` moves its whole mask."""

    name: str
    bias: float = 0.0
    noise: float = 0.04
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


# Tuned to land near the paper's CT agreement: raters 0.88-0.89 with each other and ~0.94 with Rc, MPCT ~0.86
# and MACT ~0.58 with Rc (12 cases of the default shape).
DEFAULT_RATERS = (Reader("R1", 0.02, 0.2), Reader("R2", -0.02, 0.2), Reader("R3", 0.0, 0.24))
DEFAULT_MODELS = (Reader("MPCT", 0.05, 0.3), Reader("MACT", 0.2, 0.3, (0.0, 5.0, -5.0)))


def _linear_weights(n_out: int, n_nodes: int) -> np.ndarray:
    """(n_out, n_nodes) weights of linear interpolation from ``n_nodes`` evenly spread nodes to ``n_out`` points."""
    position = np.linspace(0.0, n_nodes - 1.0, n_out) if n_out > 1 else np.zeros(1)
    low = np.minimum(np.floor(position).astype(int), n_nodes - 2) if n_nodes > 1 else np.zeros(n_out, int)
    frac = position - low
    weights = np.zeros((n_out, n_nodes), dtype=np.float32)
    weights[np.arange(n_out), low] = 1.0 - frac
    if n_nodes > 1:
        weights[np.arange(n_out), low + 1] += frac
    return weights


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 5) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid interpolated linearly to ``shape`` (float32).

    Separable, one small matrix product per axis, so a full-size grid costs tens of milliseconds.
    """
    coarse = rng.uniform(-1.0, 1.0, size=tuple(min(cells, s) + 1 for s in shape)).astype(np.float32)
    wz, wy, wx = (_linear_weights(s, c) for s, c in zip(shape, coarse.shape))
    out = coarse @ wx.T                                   # (cz, cy, nx)
    out = np.einsum("ab,cbx->cax", wy, out)               # (cz, ny, nx)
    return np.tensordot(wz, out, axes=(1, 0))             # (nz, ny, nx)


def simulate_case(shape_zyx: tuple[int, int, int] = (40, 96, 96),
                  spacing_mm_zyx: tuple[float, float, float] = (2.5, 0.8, 0.8), *, seed: int = 0,
                  raters=DEFAULT_RATERS, models=DEFAULT_MODELS, radius_mm: float | None = None,
                  entropy: bool | Sequence[str] = True) -> dict[str, np.ndarray]:
    """Masks (uint8) by reader name and ``"<model>_entropy"`` float32 maps (nats) for every model (``entropy=True``)
    or for the named ones."""
    entropy_for = {m.name for m in models} if entropy is True else set(entropy or ())
    rng = np.random.default_rng(seed)
    shape = np.array(shape_zyx)
    spacing = np.array(spacing_mm_zyx, dtype=float)
    extent_mm = shape * spacing
    if radius_mm is None:
        radius_mm = float(rng.uniform(0.18, 0.3) * min(extent_mm[1:]))
    radii = radius_mm * rng.uniform(0.8, 1.2, 3)
    radii[0] = min(radii[0], 0.4 * extent_mm[0])
    centre = extent_mm / 2 + rng.uniform(-0.08, 0.08, 3) * extent_mm
    margin_mm = radii * 1.45 + 10.0
    lo = np.clip(np.floor((centre - margin_mm) / spacing).astype(int), 0, shape)
    hi = np.clip(np.ceil((centre + margin_mm) / spacing).astype(int), 0, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    axes = [(np.arange(a, b) * s).astype(np.float32) for a, b, s in zip(lo, hi, spacing)]
    lobes = 0.12 * _smooth_noise(rng, box_shape, 4)

    out: dict[str, np.ndarray] = {}
    for reader in (*raters, *models):
        grids = np.meshgrid(*[(ax - np.float32(c + d)) / np.float32(r) for ax, c, d, r in
                              zip(axes, centre, reader.shift_mm, radii)], indexing="ij", sparse=True)
        level = np.sqrt(grids[0] ** 2 + grids[1] ** 2 + grids[2] ** 2) - np.float32(1.0) + lobes
        level += np.float32(reader.bias) + np.float32(reader.noise) * _smooth_noise(rng, box_shape, 6)
        full = np.zeros(shape_zyx, dtype=np.uint8)
        full[box] = level < 0
        out[reader.name] = full
        if reader.name in entropy_for and reader in models:
            # Entropy ~ ln 2 on the decision boundary, falling off over a few mm, tiny noise elsewhere.
            width = 0.06
            ent = rng.random(shape_zyx, dtype=np.float32) * np.float32(4e-4)
            ent[box] += (math.log(2) * np.exp(-(level / width) ** 2)).astype(np.float32)
            out[f"{reader.name}_entropy"] = np.minimum(ent, np.float32(math.log(2)))
    return out


def write_simulated_cohort(folder: str | Path, n_cases: int, *, shape_zyx=(40, 96, 96),
                           spacing_mm_zyx=(2.5, 0.8, 0.8), seed: int = 0, raters=DEFAULT_RATERS,
                           models=DEFAULT_MODELS, entropy: bool | Sequence[str] = True,
                           suffix: str = ".nii.gz") -> Path:
    """Write ``n_cases`` simulated cases and ``folder/cohort.csv`` (paths relative to it); returns the CSV path.

    Columns: case, one per rater and model, and ``<model>_entropy`` per model with an entropy map (all models for
    ``entropy=True``, the named ones for a list of names).
    """
    folder = Path(folder)
    geometry = Geometry(tuple(shape_zyx[::-1]), tuple(spacing_mm_zyx[::-1]), (-150.0, -170.0, 40.0))
    entropy_for = [m.name for m in models] if entropy is True else list(entropy or ())
    names = [r.name for r in (*raters, *models)] + [f"{m}_entropy" for m in entropy_for]
    rows = []
    for i in range(n_cases):
        case = f"case{i:03d}"
        arrays = simulate_case(shape_zyx, spacing_mm_zyx, seed=seed * 100003 + i, raters=raters, models=models,
                               entropy=entropy)
        row = {"case": case}
        for name in names:
            relative = f"{case}/{name}{suffix}"
            write_volume(Volume(arrays[name], geometry), folder / relative)
            row[name] = relative
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", *names], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(folder / "cohort.csv", buffer.getvalue())
