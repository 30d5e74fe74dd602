"""Tiny randomly initialised model bundles for tests (a real DynUNet and a real bundle on disk, untrained)."""

from __future__ import annotations

from pathlib import Path

import torch

from HepatoblastomaSegLib.bundle import save_bundle
from HepatoblastomaSegLib.network import build_network

from helpers_synthetic import make_plans

CARD = ("# tiny test model\n\nRandomly initialised, never trained. Intended use: software tests only. "
        "Validation: none. Limits: predicts noise.\n")


def tiny_bundle(folder: Path, *, name: str = "ct-tiny", modality: str = "ct", seed: int = 0) -> Path:
    """A width-0.25 DynUNet on a 8x32x32 patch plan, saved as a bundle in ``folder / name``."""
    plans = make_plans()
    if modality != "ct":
        plans = plans.replace(modality=modality)
    torch.manual_seed(seed)
    net = build_network(plans, width=0.25)
    return save_bundle(Path(folder) / name, net, plans, name=name, version="0.0.1", modality=modality,
                       card_markdown=CARD, width=0.25, labels={"tumor": (255, 0, 0)})


def tiny_liver_bundle(folder: Path, *, name: str = "ct-liver-tiny", seed: int = 1) -> Path:
    """A tiny CT liver bundle (labels background/liver, planned on the liver), saved in ``folder / name``."""
    plans = make_plans(labels={"background": 0, "liver": 1}).replace(label_source="liver")
    torch.manual_seed(seed)
    net = build_network(plans, width=0.25)
    return save_bundle(Path(folder) / name, net, plans, name=name, version="0.0.1", modality="ct",
                       card_markdown=CARD, width=0.25, labels={"liver": (221, 130, 101)})
