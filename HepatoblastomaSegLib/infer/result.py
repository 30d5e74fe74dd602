"""What one prediction hands on: the tumour mask, the entropy map and a summary, all in the input's geometry.

This is the contract between the predictor and everything downstream (``hbseg segment`` files, the Slicer MRML
glue, the cohort runner), so it carries no torch objects.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..io import Volume

#: The masks a :class:`Prediction` may carry for its reviewer, and what each is.
REVIEW_MASKS = {"liver": "the liver mask the liver anchor and the review flag used",
                "anchor_removed": "what the liver anchor removed from the tumour mask"}

#: The largest possible entropy of a 2-class softmax, in nats (the unit of every entropy the library reports).
MAX_ENTROPY_2CLASS_NATS = math.log(2.0)


@dataclasses.dataclass
class Prediction:
    """One case's result.

    Attributes:
        mask: tumour mask, uint8 0/1, on exactly the input volume's grid.
        entropy: voxelwise Shannon entropy of the softmax in nats, float32, same grid; 0 (certain) .. ln 2.
        summary: JSON-ready dict. Keys: ``tumor_volume_ml``, ``largest_diameter_mm``, ``mean_entropy_nats``
            (inside the mask), ``image_mean_entropy_nats`` (whole image), ``core_entropy_nats``,
            ``boundary_entropy_nats`` (null in JSON when the region is empty),
            ``core_empty`` (bool), ``model_name``, ``model_version``, ``modality``, ``device``, ``tta``,
            ``seconds`` (dict stage -> seconds), ``peak_gpu_memory_gib`` (``allocated`` and ``reserved`` GiB
            on a GPU, null on the CPU), ``patches_per_network_call`` (windows x flips per network call, as
            planned), ``body_crop`` (CT: the box the network ran on, ``start_zyx``/``stop_zyx`` voxels and
            ``fraction_of_voxels``; null when it ran on the whole image), ``sliding_windows`` (windows per pass),
            ``warnings`` (list of str), ``input`` (path or name), ``liver_source`` / ``liver_volume_ml`` /
            ``tumor_outside_liver_ml`` (null without a liver mask), ``postprocessing.liver_anchor`` (``on``,
            ``min_fraction_inside``, ``applied``, ``components_dropped``, ``ml_dropped``), ``review`` (``needed``
            and ``reasons``, each a ``code`` and a plain-words ``message``: :mod:`.review`) and
            ``review_measurements`` (what it was judged on).
        review_masks: masks a reviewer needs beside the result (uint8 0/1, same grid), by key of
            :data:`REVIEW_MASKS`: ``"liver"``, the liver mask the liver anchor and the review flag used;
            ``"anchor_removed"``, what the liver anchor removed from the tumour mask (absent when nothing).
    """

    mask: Volume
    entropy: Volume
    summary: dict[str, Any]
    review_masks: dict[str, Volume] = dataclasses.field(default_factory=dict)
