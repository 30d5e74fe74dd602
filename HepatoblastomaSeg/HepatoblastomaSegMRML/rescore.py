"""The metrics table of a result, and its re-scoring after a reviewer edited the segment (no network run).

One row per scored pair. The first row describes the reviewer's mask alone (volume, largest diameter, entropy
inside it, in its core and on its boundary, and the model that made the first draft); each further row compares that
mask with a reference: the locked AI mask, then every reference segmentation the user picked (annotators or their
consensus), with Dice, the reference's volume and the volume error. Column names carry their unit; the unit and a
description are also column properties (kept in the ``.schema.tsv``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import slicer

from HepatoblastomaSegLib.errors import GeometryError, InputError

from . import metrics
from .nodes import (CASE_ATTRIBUTE, CHECKSUM_ATTRIBUTE, Column, add_table_node, fill_table, link, linked,
                    mask_checksum, stored_summary)
from .terminology import TUMOR_SEGMENT
from .volumes import find_segment, geometry_of_node, node_grid, node_name, segment_mask

METRICS_COLUMNS = (
    Column("case", "string", "", "input volume (case) the mask belongs to"),
    Column("mask", "string", "", "segmentation scored (node name)"),
    Column("reference", "string", "", "segmentation the mask is compared with; empty on the mask's own row"),
    Column("volume_ml", "double", "mL", "tumour volume: voxel count x voxel volume"),
    Column("largest_diameter_mm", "double", "mm", "largest 3D distance between two tumour voxel centres"),
    Column("mean_entropy_nats", "double", "nats", "mean softmax entropy inside the mask (max ln 2 = 0.693)"),
    Column("core_entropy_nats", "double", "nats", "mean entropy in the core (mask eroded by a 10-pixel axial disc)"),
    Column("boundary_entropy_nats", "double", "nats", "mean entropy in the boundary (mask minus core)"),
    Column("dice", "double", "", "Dice coefficient of the mask with the reference"),
    Column("reference_volume_ml", "double", "mL", "volume of the reference"),
    Column("volume_difference_ml", "double", "mL", "mask volume minus reference volume"),
    Column("volume_error_pct", "double", "%", "|mask volume - reference volume| / reference volume x 100"),
    Column("edited", "int", "", "1 when the mask differs from the AI mask"),
    Column("model_name", "string", "", "model that made the AI mask"),
    Column("model_version", "string", "", "version of that model"),
    Column("modality", "string", "", "CT or MR, as the model was told"),
    Column("device", "string", "", "device the network ran on"),
    Column("tta", "string", "", "test-time augmentation used"),
    Column("time_s", "double", "s", "wall-clock time of the segmentation"),
)

#: Name of the AI mask in the ``reference`` column.
AI_REFERENCE_NAME = "AI mask"


def total_seconds(summary: Mapping[str, Any]) -> float:
    """Total run time (s) from a summary's ``seconds`` (a number, or a dict by stage with an optional total)."""
    seconds = summary.get("seconds")
    if isinstance(seconds, Mapping):
        if "total" in seconds:
            return float(seconds["total"])
        values = [float(v) for v in seconds.values() if isinstance(v, (int, float))]
        return float(sum(values)) if values else math.nan
    if isinstance(seconds, (int, float)):
        return float(seconds)
    return math.nan


def model_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {"model_name": summary.get("model_name") or "", "model_version": summary.get("model_version") or "",
            "modality": summary.get("modality") or "", "device": summary.get("device") or "",
            "tta": "" if summary.get("tta") is None else str(summary.get("tta")), "time_s": total_seconds(summary)}


def reference_label(node, segment_id: str) -> str:
    segmentation = node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 1:
        return node.GetName()
    return f"{node.GetName()}: {segmentation.GetSegment(segment_id).GetName()}"


def _as_pairs(references: Sequence[Any]) -> list[tuple[Any, str | None]]:
    """``node`` or ``(node, segment)`` items -> ``(node, segment or None)``."""
    pairs = []
    for item in references:
        if isinstance(item, (tuple, list)):
            pairs.append((item[0], item[1]))
        else:
            pairs.append((item, None))
    return pairs


def ai_mask_array(ai_node, grid) -> np.ndarray:
    """The locked AI mask's voxels; :class:`InputError` naming the node when they no longer match the checksum
    recorded when it was made (someone edited the locked copy, so it cannot serve as the reference any more)."""
    segment_id = find_segment(ai_node, preferred_name=TUMOR_SEGMENT.name)
    mask = segment_mask(ai_node, segment_id, grid)
    recorded = ai_node.GetAttribute(CHECKSUM_ATTRIBUTE)
    if recorded and recorded != mask_checksum(mask):
        raise InputError(f"the locked AI mask {node_name(ai_node)} was edited after segmentation; it can no longer "
                         "be the reference for re-scoring (run the segmentation again or load its saved result)")
    return mask


def score_rows(scene, segmentation_node, segment_id: str | None = None, references: Sequence[Any] = (), *,
               case: str | None = None) -> list[dict[str, Any]]:
    """The table rows for the reviewer's segment (see the module docstring); reads everything from the nodes."""
    volume_node = linked(segmentation_node, "volume") or segmentation_node.GetNodeReference(
        segmentation_node.GetReferenceImageGeometryReferenceRole())
    if volume_node is None:
        raise InputError(f"segmentation {node_name(segmentation_node)} is not linked to its input volume")
    segment_id = find_segment(segmentation_node, segment_id, preferred_name=TUMOR_SEGMENT.name)
    grid = node_grid(volume_node)
    geometry = geometry_of_node(volume_node)
    mask = segment_mask(segmentation_node, segment_id, grid)
    entropy_node = linked(segmentation_node, "entropy")
    entropy = None
    if entropy_node is not None:
        problems = geometry.mismatches(geometry_of_node(entropy_node))
        if problems:
            raise GeometryError(f"entropy map {node_name(entropy_node)} is not on the grid of the input volume: "
                                + "; ".join(problems))
        entropy = slicer.util.arrayFromVolume(entropy_node)
    ai_node = linked(segmentation_node, "ai_mask")
    ai_mask = ai_mask_array(ai_node, grid) if ai_node is not None else None

    summary = stored_summary(segmentation_node)
    if case is None:
        case = segmentation_node.GetAttribute(CASE_ATTRIBUTE) or volume_node.GetName()
    common = {"case": case, "mask": segmentation_node.GetName(),
              **model_fields(summary),
              "edited": int(ai_mask is not None and not np.array_equal(mask, ai_mask))}
    rows = [{**common, "reference": "", **metrics.mask_measurements(mask, geometry, entropy)}]
    compared: list[tuple[str, np.ndarray]] = []
    if ai_mask is not None:
        compared.append((AI_REFERENCE_NAME, ai_mask))
    for node, segment in _as_pairs(references):
        ref_id = find_segment(node, segment, preferred_name=TUMOR_SEGMENT.name)
        compared.append((reference_label(node, ref_id), segment_mask(node, ref_id, grid)))
    for label, reference in compared:
        rows.append({**rows[0], "reference": label, **metrics.comparison(mask, reference, geometry)})
    return rows


def rescore(scene, result_or_node, references: Sequence[Any] = (), *, segment_id: str | None = None,
            case: str | None = None) -> Any:
    """Recompute the metrics table of a result after its segment was edited; return the table node.

    ``result_or_node``: a :class:`~.segment.SegmentationResult` or the reviewer's segmentation node. ``case``
    fills the case column (default: the case the result was made for, else the input volume's name).
    ``references``: segmentation nodes, or ``(node, segment name or ID)`` pairs, to compare with besides the AI
    mask (each must lie on the input volume's voxel lattice). The table node linked to the segmentation is
    rewritten in place (so open table views update); one is created when there is none.
    """
    node = getattr(result_or_node, "segmentation_node", result_or_node)
    rows = score_rows(scene, node, segment_id, references, case=case)
    table = linked(node, "metrics")
    if table is None:
        table = add_table_node(scene, f"{node.GetName()} metrics", METRICS_COLUMNS, rows, role="metrics")
        link(node, metrics=table)
        return table
    return fill_table(table, METRICS_COLUMNS, rows)
