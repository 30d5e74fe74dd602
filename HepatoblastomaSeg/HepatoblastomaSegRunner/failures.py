"""Why a background segmentation failed, in words a user can act on: the cause and the next step.

:func:`explain_failure` reads the error the process reported (the library's one-line message, or the last error
line on stderr) and the log, and recognises the failures people meet: an image of the other modality, a missing
package, a GPU that is absent or ran out of memory, broken model files, an implausible image header, a process
killed by the system. Anything else keeps the library's own message (which names the file and the problem) and
points to the process log.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Failure:
    """``cause``: what went wrong; ``next_step``: what to do; ``detail``: the raw message it was read from."""

    cause: str
    next_step: str
    detail: str = ""

    def text(self) -> str:
        return f"{self.cause}\n\nNext step: {self.next_step}"


_RULES: list[tuple[re.Pattern, str, str]] = [
    (re.compile(r"does not look like a CT", re.I),
     "This looks like an MRI, but the CT model is selected (a CT in Hounsfield units has air near -1000 HU; this "
     "image has none).",
     "Set Modality to T2 MRI and choose an MRI model. If the image really is a CT, check that it is in Hounsfield "
     "units (a CT saved without its rescale intercept looks like this)."),
    (re.compile(r"looks like a CT, not an MRI", re.I),
     "This looks like a CT (it has air below -500 HU), but the MRI model is selected.",
     "Set Modality to CT and choose a CT model."),
    (re.compile(r"is an? (CT|MRI) model; it cannot segment an? (CT|MRI) image", re.I),
     "The selected model is for {0}, but Modality says {1}.",
     "Choose a model of the image's modality, or correct Modality."),
    (re.compile(r"No module named '?([A-Za-z0-9_.]+)'?"),
     "A Python package is missing in 3D Slicer's Python: {0}.",
     "Click Segment tumor again and accept the installation (torch comes from the PyTorch extension: install it "
     "from the Extensions Manager and restart 3D Slicer)."),
    (re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.I),
     "The GPU ran out of memory.",
     "Choose Device: CPU (slower), or turn test-time augmentation off, or close other programs that use the GPU."),
    (re.compile(r"--device cuda was asked for, but torch sees no CUDA GPU|no CUDA GPU", re.I),
     "Device GPU was chosen, but torch sees no CUDA GPU.",
     "Choose Device: Auto or CPU, or install a CUDA build of torch in the PyTorch Utils module."),
    (re.compile(r"corrupt or was replaced|checksum|not a readable safetensors", re.I),
     "The model's files are damaged or were changed after it was installed (checksum mismatch).",
     "Import the model folder again (Model > Import model folder...), or reinstall the extension for a bundled "
     "model."),
    (re.compile(r"model bundle .*not found|missing file (bundle|plans|model)", re.I),
     "The selected model could not be found or is incomplete.",
     "Choose another model, or import the model folder again."),
    (re.compile(r"needs HepatoblastomaSeg >=|newer than this library", re.I),
     "The model needs a newer version of this extension.",
     "Update HepatoblastomaSeg in the Extensions Manager, then restart 3D Slicer."),
    (re.compile(r"implausible voxel spacing", re.I),
     "The image's voxel spacing is implausible (a broken header, or not an abdominal scan).",
     "Check the spacing in Volumes > Volume Information, and fix the file's header."),
    (re.compile(r"holds no voxels|components per voxel|not a single-channel", re.I),
     "The input is not a single-channel 3D scalar volume.",
     "Choose a grayscale CT or T2 MRI volume (for colour or vector images, extract one channel first)."),
    (re.compile(r"No space left on device", re.I),
     "The disk is full (the run writes its input and outputs to the temporary folder).",
     "Free some disk space, or change the temporary folder in Application Settings > General."),
]


def explain_failure(error_message: str, log_lines: Sequence[str] = (), *, returncode: int | None = None) -> Failure:
    """The :class:`Failure` behind ``error_message`` (what the process reported; the log is searched too)."""
    message = (error_message or "").strip()
    if message.startswith("hbseg: error: "):
        message = message[len("hbseg: error: "):]
    if returncode is not None and returncode < 0:  # killed by a signal: whatever it printed last is not the cause
        return Failure(f"The segmentation process was stopped by the system (signal {-returncode}); the usual "
                       "reason is that the computer ran out of memory.",
                       "Close other programs, choose Device: GPU if you have one, or turn test-time augmentation "
                       "off, then try again.", message)
    haystacks = [message, "\n".join(log_lines)]
    for pattern, cause, next_step in _RULES:
        for text in haystacks:
            match = pattern.search(text)
            if match:
                return Failure(cause.format(*match.groups()), next_step, message or match.group(0))
    return Failure(message or "The segmentation process failed without saying why.",
                   "Open the process log (Show log) for the details; include it and the Diagnostics text in a "
                   "bug report.", message)
