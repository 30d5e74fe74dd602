"""Weight blending: a bundle whose weights are ``(1 - alpha) * start + alpha * end`` of two bundles of one network.

Fine-tuning a model on wider data (here: the full-variety phantoms) often costs some of what it did well before (the
contrast-enhanced demo phantoms). A fine-tuned network and the one it started from usually lie in one basin of the
loss, so the straight line between their weights holds networks that keep much of both (weight-space ensembling,
"WiSE-FT": Wortsman et al., Robust fine-tuning of zero-shot models, CVPR 2022). Two networks trained from different
random starts do not share a basin, and their blend is useless; :func:`blend_bundles` cannot tell the difference, so
it is for a bundle and its own fine-tune, and the blend must be evaluated like any new model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..bundle import load_bundle, save_bundle
from ..errors import ConfigError


def blend_state_dicts(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
                      ) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * end`` per floating-point tensor, computed in float32; other tensors (counters)
    are taken from ``start``. The two must hold the same names and shapes."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"the blend weight alpha must lie in [0, 1] (got {alpha:g})")
    if start.keys() != end.keys():
        differ = sorted(start.keys() ^ end.keys())
        raise ConfigError(f"the two models hold different parameters ({len(differ)}, e.g. {differ[0]})")
    out = {}
    for key, a in start.items():
        b = end[key]
        if a.shape != b.shape:
            raise ConfigError(f"parameter {key} has shape {tuple(a.shape)} in one model and {tuple(b.shape)} in the "
                              "other")
        out[key] = torch.lerp(a.float(), b.float(), alpha) if a.is_floating_point() else a.clone()
    return out


def blend_bundles(start: str | Path, end: str | Path, alpha: float, out: str | Path, *, version: str,
                  card_markdown: str, name: str | None = None) -> Path:
    """Write a new bundle at ``out`` (which must not exist) blending ``start`` and its fine-tune ``end``.

    Both must be the same network (plans, width, modality, labels); the new bundle takes their plans and labels,
    ``start``'s name unless ``name`` is given, and stores float16 weights when ``start`` does. It has no review
    settings: calibrate them (``benchmarks/calibrate_review.py``) before relying on its flag.
    """
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; a blend is written to a new folder")
    a, b = load_bundle(start), load_bundle(end)
    if (a.plans, a.width, a.modality) != (b.plans, b.width, b.modality):
        raise ConfigError(f"{a.path} and {b.path} are not the same network (plans, width or modality differ)")
    if [(lab.value, lab.name) for lab in a.labels] != [(lab.value, lab.name) for lab in b.labels]:
        raise ConfigError(f"{a.path} and {b.path} have different labels")
    return save_bundle(out, blend_state_dicts(a.state_dict(), b.state_dict(), alpha), a.plans, name=name or a.name,
                       version=version, modality=a.modality, labels=a.labels, width=a.width,
                       fp16=a.weights_dtype == "float16", card_markdown=card_markdown)
