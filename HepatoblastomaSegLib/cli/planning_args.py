"""The planning options ``hbseg plan`` and ``hbseg train`` share, defined once."""

from __future__ import annotations

import argparse

from ..errors import ConfigError


def add_planning_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--gpu-memory-gb``, ``--z-spacing-rule`` and ``--target-spacing-mm``."""
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0, metavar="GB",
                        help="training GPU memory budget in GB that the patch size is fitted to (default 8, "
                             "nnU-Net's default plans)")
    parser.add_argument("--z-spacing-rule", choices=("median", "percentile10"), default="median",
                        help="target spacing of the coarse (slice) axis: the median, as the paper says (default), "
                             "or nnU-Net's 10th percentile for strongly anisotropic data")
    parser.add_argument("--target-spacing-mm", metavar="X,Y,Z",
                        help="use this target spacing (mm, x,y,z) instead of a rule's, e.g. a coarse grid for a "
                             "fast liver model; patch and network are planned for it as usual")


def _three(text: str, kind: type, flag: str, what: str) -> tuple:
    """Three positive numbers from "a,b,c" (or "axbxc"), else a ConfigError naming ``flag``."""
    try:
        values = tuple(kind(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ConfigError(f"{flag} must be {what} (got {text!r})")
    return values


def parse_target_spacing(text: str | None) -> tuple[float, float, float] | None:
    """``--target-spacing-mm`` as three positive numbers (x, y, z), or None when not given."""
    return None if text is None else _three(text, float, "--target-spacing-mm", "three positive numbers x,y,z in mm")


def parse_patch_size(text: str | None) -> tuple[int, int, int] | None:
    """``--patch-size`` as three positive integers (z, y, x), or None when not given."""
    return None if text is None else _three(text, int, "--patch-size", "three positive integers z,y,x")
