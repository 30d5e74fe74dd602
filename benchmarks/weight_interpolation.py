"""Blend a bundle with its own fine-tune (weight-space interpolation, WiSE-FT), for A/B tests of new demo models.

Run by hand (not a test), from the repository root::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/weight_interpolation.py \\
        --start ct-demo --end demo_models_work_ft/ct-demo-lr2e3-cont --alpha 0.5 \\
        --out demo_models_work_ft/ct-demo-wisecont-0.5

Writes a new bundle whose weights are ``(1 - alpha) * start + alpha * end``
(:func:`HepatoblastomaSegLib.train.blend.blend_bundles`, which says when that makes sense). Whether the blend is
better is measured, not assumed: run ``benchmarks/real_scans.py`` on it, then ``benchmarks/calibrate_review.py``
before relying on its review flag.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from HepatoblastomaSegLib.errors import HepatoblastomaSegError
from HepatoblastomaSegLib.train.blend import blend_bundles
from HepatoblastomaSegLib.train.report import DEMO_NOTE


def card(start: str, end: str, alpha: float, name: str, version: str) -> str:
    return "\n".join([
        f"# {name} {version}", "", f"**{DEMO_NOTE}**", "",
        f"Weights: a linear blend of two bundles of one network, {1 - alpha:g} x `{start}` + {alpha:g} x `{end}` "
        "(the second fine-tuned from the first). Their model cards say what each was trained on.", "",
        "## Limits", "",
        "An experiment for A/B tests, without review settings until `benchmarks/calibrate_review.py` writes them.",
        ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", required=True, help="bundle name or folder (alpha 0)")
    parser.add_argument("--end", required=True, help="a bundle fine-tuned from --start (alpha 1)")
    parser.add_argument("--alpha", type=float, required=True, help="weight of --end, 0-1")
    parser.add_argument("--out", required=True, type=Path, help="new bundle folder (must not exist)")
    parser.add_argument("--name", help="bundle name (default: --start's)")
    parser.add_argument("--version", default="0.0.1", help="bundle version (default 0.0.1)")
    args = parser.parse_args(argv)
    name = args.name or Path(args.start).name
    try:
        blend_bundles(args.start, args.end, args.alpha, args.out, name=args.name, version=args.version,
                      card_markdown=card(args.start, args.end, args.alpha, name, args.version))
    except HepatoblastomaSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
