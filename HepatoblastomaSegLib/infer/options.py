"""The segmentation options, defined once.

:class:`PredictorOptions` is what a user chooses for ``hbseg segment`` (and an ``hbseg serve`` request, the Slicer
module, the batch script, the benchmarks). Each field carries its command-line flag and help text, so the parser
(:func:`add_arguments`), the parsed namespace (:meth:`PredictorOptions.from_namespace`), the command line a program
builds for a child process (:meth:`PredictorOptions.to_cli_args`) and the cohort resume key
(:data:`RESULT_OPTIONS`: the fields that change a result) all come from the one definition here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..errors import ConfigError


def _option(default: Any, help: str, *, affects_result: bool, **argparse_kwargs: Any) -> Any:
    """A field with its ``hbseg segment`` flag's argparse settings (flag = ``--`` + the name with dashes)."""
    return dataclasses.field(default=default, metadata={"help": help, "affects_result": affects_result,
                                                         "argparse": argparse_kwargs})


@dataclasses.dataclass
class PredictorOptions:
    """What a user chooses (the ``hbseg segment`` options); ``Predictor.from_options`` turns it into a predictor."""

    model: str | None = _option(
        None, "model bundle folder or bundled model name (default: the bundled demo model of the modality: ct-demo "
              "or mri-demo)", affects_result=True)
    liver_model: str | None = _option(
        None, "liver model bundle: MRI for the Nyul mask (default: mri-liver-demo when bundled, else the body "
              "outline, with a warning); CT for the liver anchor and the review flag (default: ct-liver-demo with "
              "the bundled CT models and with --liver-anchor; none for your own CT model)", affects_result=True)
    modality: str | None = _option(
        None, "modality of the image (default: the model's; with no model, guessed from intensities)",
        affects_result=True, choices=("ct", "mri"))
    device: str = _option(
        "auto", "where the network runs; auto = CUDA when available (default: %(default)s)", affects_result=False,
        choices=("auto", "cpu", "cuda"))
    tta: bool = _option(
        True, "average the softmax over all 8 axis flips, as the paper's nnU-Net does: about 8x the network time, "
              "smoother masks and better-calibrated entropy (default: on)", affects_result=True,
        action=argparse.BooleanOptionalAction)
    overlap: float = _option(
        0.5, "sliding-window overlap, 0..0.9 (default: %(default)s, nnU-Net's; MONAI's default is 0.25)",
        affects_result=True, type=float)
    batch_size: int | None = _option(
        None, "windows per sliding-window step (default: 4 on a GPU, 1 with TTA there since a window's flips run "
              "together, as many as fit --gpu-memory-gb; 2 on the CPU)", affects_result=False, type=int)
    compile: bool = _option(
        False, "compile the network with torch.compile, for long cohorts on a GPU: the first case pays the "
               "compilation (tens of seconds), later windows run faster (the README's measured figures say by how "
               "much). If compilation fails, the network runs uncompiled and each summary says so (default: off)",
        affects_result=False, action="store_true")
    keep_largest: bool = _option(
        False, "keep only the largest connected tumour component (off by default)", affects_result=True,
        action="store_true")
    min_component_ml: float = _option(
        0.0, "drop tumour components smaller than this many mL (default: keep all)", affects_result=True, type=float)
    gpu_memory_gb: float | None = _option(
        None, "plan the network calls for a GPU of this many GB (default: the card's own memory). Under 20 GB, "
              "fewer patches go through the network at once (less memory, a little slower; the README gives the "
              "measured peaks). Use 8 on a GPU shared with Slicer's rendering or other jobs", affects_result=False,
        type=float, metavar="GB")
    crop_to_body: bool = _option(
        True, "CT: run the network on the patient's trunk only (the box of what lies above -500 HU and is thicker "
              "than 10 mm, so not the table, plus 10 mm, at least one patch wide); outside it the mask is 0 and the "
              "entropy 0. Far fewer windows on a CT with air around the child; the window grid changes with it, "
              "and so can the mask slightly (the README gives the measured agreement). MRI is never cropped "
              "(default: on)", affects_result=True, action=argparse.BooleanOptionalAction)
    short_scan_padding: str = _option(
        "mirror", "what fills the network's window beyond a scan with fewer slices than the window holds: mirror = "
                  "the scan's end slices mirrored, zero = nnU-Net's zeros (a slab of uniform tissue next to the "
                  "scan's end; the README shows what it did to tumours there). In-plane padding is zero either way. "
                  "Applies to the tumour network and the CT liver anchor's (default: %(default)s)", affects_result=True,
        choices=("mirror", "zero"))
    #: Drop tumour components that do not lie in the liver mask; None = on for CT, off for MRI.
    liver_anchor: bool | None = _option(
        None, "drop tumour components that do not lie in the liver mask (hepatoblastoma arises in the liver; a "
              "tumour bulging out of the liver is kept whole). The summary reports what was dropped, and the run "
              "writes it beside the result (default: on for CT, off for MRI)", affects_result=True,
        action=argparse.BooleanOptionalAction)
    liver_anchor_min_fraction_inside: float = _option(
        0.2, "with the liver anchor: keep a tumour component when at least this fraction of its volume lies inside "
             "the liver mask, 0..1. A neighbouring organ pressed against the liver touches it but lies almost "
             "wholly outside it; a tumour bulging out of the liver keeps most of itself inside a liver mask that "
             "includes tumour. 0 keeps every component that overlaps or touches the liver (default: %(default)s)",
        affects_result=True, type=float, metavar="FRACTION")

    def validate(self) -> PredictorOptions:
        """Refuse values no run can use (a :class:`~..errors.ConfigError` naming the flag); returns ``self``."""
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            raise ConfigError(f"--gpu-memory-gb must be positive, got {self.gpu_memory_gb}")
        if not 0.0 <= self.liver_anchor_min_fraction_inside <= 1.0:
            raise ConfigError("--liver-anchor-min-fraction-inside must be in [0, 1], got "
                              f"{self.liver_anchor_min_fraction_inside}")
        if self.min_component_ml < 0:
            raise ConfigError(f"--min-component-ml must be at least 0, got {self.min_component_ml}")
        modes = _choices("short_scan_padding")  # the engine's PAD_MODES (not imported here: it imports torch)
        if self.short_scan_padding not in modes:
            raise ConfigError(f"--short-scan-padding must be one of {', '.join(modes)}, got "
                              f"{self.short_scan_padding!r}")
        return self

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> PredictorOptions:
        """The options of a namespace parsed with :func:`add_arguments`, checked."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}).validate()

    def to_cli_args(self) -> list[str]:
        """The ``hbseg segment`` arguments that reproduce these options (defaults left out)."""
        args: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = flag_of(f.name)
            action = f.metadata["argparse"].get("action")
            if action is argparse.BooleanOptionalAction:
                args.append(flag if value else "--no-" + flag[2:])
            elif action == "store_true":
                args.append(flag)  # differs from the default False, so True
            else:
                args += [flag, str(value)]
        return args


def _choices(name: str) -> tuple:
    return next(f for f in dataclasses.fields(PredictorOptions) if f.name == name).metadata["argparse"]["choices"]


def flag_of(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every :class:`PredictorOptions` field to ``parser`` as ``--flag`` (dest = the field's name)."""
    for f in dataclasses.fields(PredictorOptions):
        parser.add_argument(flag_of(f.name), dest=f.name, default=f.default, help=f.metadata["help"],
                            **f.metadata["argparse"])


#: The options that change a case's result; a cohort rerun with any of them changed recomputes the case.
RESULT_OPTIONS = tuple(f.name for f in dataclasses.fields(PredictorOptions) if f.metadata["affects_result"])
