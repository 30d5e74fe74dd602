"""The ``hbseg`` command: argument parsing and printing only; each subcommand calls into the library.

Each subcommand lives in its own module of this package, which defines ``register(subparsers)``; the parser it adds
sets ``func`` (called with the parsed arguments, returns the exit code). Library errors
(:class:`~HepatoblastomaSegLib.errors.HepatoblastomaSegError`) print as one line ``hbseg: error: <file>: <problem>``
and exit 2; ``--debug`` shows the traceback too.

Run as ``hbseg ...`` or ``python -m HepatoblastomaSegLib.cli ...`` (the form ``torchrun`` needs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
import traceback

from .. import __version__
from ..errors import HepatoblastomaSegError

#: Subcommand modules, in the order ``hbseg --help`` lists them (the pipeline's order).
SUBCOMMANDS = ("phantom", "plan", "train", "import", "segment", "serve", "consensus", "evaluate", "demo")

EPILOG = textwrap.dedent("""\
    typical use:
      hbseg phantom --modality ct --cases 3 -o phantoms/      synthetic cases with three annotators
      hbseg segment scan.nii.gz -o result/                     tumour mask, entropy map, summary
      hbseg evaluate cohort.csv --raters R1,R2,R3 -o report/   the paper's tables for a cohort
    'hbseg COMMAND --help' explains each command.""")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hbseg",
        description="Hepatoblastoma segmentation on CT and T2-weighted MRI (research software, not for clinical use).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # ITK prints header quirks (e.g. "unexpected scales in sform") straight to stderr; our own checks say what
    # matters in one line, so keep ITK quiet unless debugging.
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(bool(args.debug))
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except HepatoblastomaSegError as exc:
        if args.debug:
            traceback.print_exc()  # the traceback for the developer; the exit code stays that of a refusal
        print(f"hbseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hbseg: interrupted; finished outputs are kept, nothing half-written was left", file=sys.stderr)
        return 130
