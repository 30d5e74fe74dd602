"""The training loss: generalised Dice (+ cross-entropy), with normalised deep-supervision weights.

The paper says "generalized Dice loss" (Sudre et al. 2017: class weights 1/V^2). nnU-Net v1.7.1's trainer variant
for it, ``nnUNetTrainerV2_Loss_CEGDL``, uses simple 1/V weights, leaves the background out, pools the batch
("batch dice") and adds cross-entropy 1:1. We follow that variant, built from MONAI's ``GeneralizedDiceLoss``
(``w_type="simple"``, ``include_background=False``, ``batch=True``, softmax on the logits, one-hot targets);
``use_ce=False`` drops the cross-entropy term (the paper's text taken literally). MONAI's defaults (squared
weights, background included, per sample) would be a different loss.

Deep supervision: DynUNet returns [B, 1 + H, C, z, y, x] in training mode, every head already upsampled to full
size, so all heads are compared with the full-resolution target (nnU-Net downsamples the target instead; same idea,
different interpolation). Weights 1, 1/2, 1/4, ... normalised to sum 1 (nnU-Net v1; MONAI's DeepSupervisionLoss does
not normalise). The loss is computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import GeneralizedDiceLoss


def deep_supervision_weights(outputs: int) -> list[float]:
    """[1, 1/2, 1/4, ...] for ``outputs`` outputs (full resolution first), normalised to sum 1."""
    raw = [0.5 ** i for i in range(int(outputs))]
    total = sum(raw)
    return [w / total for w in raw]


class SegmentationLoss(torch.nn.Module):
    """GDL (+ CE) on logits [B, C, z, y, x] or, with deep supervision, [B, 1 + H, C, z, y, x]; target int [B, 1, ...].

    ``forward`` returns the scalar loss; ``last_terms`` holds the full-resolution GDL and CE values of the latest call
    (detached 0-d tensors, so logging them does not wait for the device).
    """

    def __init__(self, *, use_ce: bool = True, gdl_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 1e-5):
        super().__init__()
        self.use_ce = bool(use_ce)
        self.gdl_weight = float(gdl_weight)
        self.ce_weight = float(ce_weight)
        self.gdl = GeneralizedDiceLoss(include_background=False, to_onehot_y=True, softmax=True, w_type="simple",
                                       batch=True, smooth_nr=smooth, smooth_dr=smooth, reduction="mean")
        self.last_terms: dict[str, torch.Tensor] = {}

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(GDL, CE or None) for one output [B, C, ...] against target [B, 1, ...]."""
        logits = logits.float()
        gdl = self.gdl(logits, target)
        ce = F.cross_entropy(logits, target[:, 0].long()) if self.use_ce else None
        return gdl, ce

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outputs = torch.unbind(output, dim=1) if output.dim() == target.dim() + 1 else (output,)
        total = output.new_zeros((), dtype=torch.float32)
        for i, (weight, logits) in enumerate(zip(deep_supervision_weights(len(outputs)), outputs)):
            gdl, ce = self.single(logits, target)
            term = self.gdl_weight * gdl + (self.ce_weight * ce if ce is not None else 0.0)
            total = total + weight * term
            if i == 0:
                self.last_terms = {"gdl": gdl.detach(), "ce": ce.detach() if ce is not None else torch.zeros_like(gdl)}
        return total

    def describe(self) -> str:
        ce = f" + {self.ce_weight:g} x cross-entropy" if self.use_ce else ""
        return (f"{self.gdl_weight:g} x generalised Dice (MONAI GeneralizedDiceLoss: 1/V weights, no background, "
                f"batch mode){ce}; deep-supervision weights 1, 1/2, 1/4, ... normalised")
