"""Segment a volume node and put the result in the scene: the same nodes whether the network ran in this process
(:func:`segment`, batch and tests) or in a background ``hbseg segment`` process (:func:`load_results`, the GUI).

A result is, in one subject-hierarchy folder per run, in the input volume's study:

- the reviewer's segmentation (one segment "Hepatoblastoma", fixed colour, standard terminology; reference geometry =
  the input volume), which links to the other nodes;
- the untouched AI mask, a separate locked segmentation (hidden), to score later edits against;
- the entropy map (float32, input grid, Inferno, window 0 .. ln 2 nats);
- the metrics table (:mod:`.rescore`);
- hidden, when the result has them: the liver mask the liver anchor and the review flag used, and what the anchor
  removed ("Removed by liver anchor").
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from HepatoblastomaSegLib.errors import GeometryError, InputError
from HepatoblastomaSegLib.infer import Prediction
from HepatoblastomaSegLib.infer.result import REVIEW_MASKS
from HepatoblastomaSegLib.infer.outputs import SUMMARY_NAME, is_finished
from HepatoblastomaSegLib.io import Volume, require_binary

from . import nodes, storage
from .rescore import METRICS_COLUMNS, rescore, score_rows
from .terminology import ANCHOR_REMOVED_SEGMENT, LIVER_SEGMENT, TUMOR_SEGMENT
from .volumes import (find_segment, geometry_of_node, node_grid, node_name, require_node_geometry, segment_mask,
                      volume_array_on_grid, volume_from_node)

#: What the predictor is to this module: an input volume in, a :class:`Prediction` on the same grid out.
Predict = Callable[[Volume], Prediction]

RUN_FOLDER_LABEL = "Hepatoblastoma run"
#: The result's review masks (:data:`~HepatoblastomaSegLib.infer.result.REVIEW_MASKS`): segment spec and node name
#: suffix of each.
REVIEW_MASK_SEGMENTS = {"liver": (LIVER_SEGMENT, "liver mask used"),
                        "anchor_removed": (ANCHOR_REMOVED_SEGMENT, "removed by liver anchor")}


@dataclasses.dataclass
class SegmentationResult:
    """The nodes of one run (see the module docstring). ``folder_item``: its subject hierarchy folder."""

    volume_node: Any
    segmentation_node: Any
    segment_id: str
    ai_node: Any
    ai_segment_id: str
    entropy_node: Any
    table_node: Any
    folder_item: int
    summary: dict[str, Any]

    @classmethod
    def from_segmentation_node(cls, segmentation_node) -> SegmentationResult:
        """Find a result again from its reviewer's segmentation node (e.g. after the scene was reloaded)."""
        ai_node = nodes.linked(segmentation_node, "ai_mask")
        volume_node = nodes.linked(segmentation_node, "volume")
        if ai_node is None or volume_node is None:
            raise InputError(f"segmentation {node_name(segmentation_node)} is not a HepatoblastomaSeg result")
        scene = segmentation_node.GetScene()
        return cls(volume_node, segmentation_node,
                   find_segment(segmentation_node, preferred_name=TUMOR_SEGMENT.name), ai_node,
                   find_segment(ai_node, preferred_name=TUMOR_SEGMENT.name), nodes.linked(segmentation_node, "entropy"),
                   nodes.linked(segmentation_node, "metrics"), nodes.folder_of(scene, segmentation_node),
                   nodes.stored_summary(segmentation_node))

    @property
    def result_nodes(self) -> list[Any]:
        """The nodes the run made (not the input volume)."""
        return [n for n in (self.segmentation_node, self.ai_node, self.entropy_node, self.table_node) if n]

    def show_entropy(self, opacity: float | None = None) -> int:
        """Show the entropy map over the input in every slice view (see :func:`nodes.show_entropy_overlay`)."""
        return nodes.show_entropy_overlay(self.volume_node.GetScene(), self.volume_node, self.entropy_node, opacity)


def add_prediction(scene, volume_node, prediction: Prediction, *, name: str | None = None,
                   case: str | None = None) -> SegmentationResult:
    """Turn a :class:`Prediction` on ``volume_node``'s grid into the result nodes (module docstring).

    ``name`` prefixes the node names (default: the volume's name); ``case`` fills the table's case column.
    :class:`GeometryError` naming the volume when the mask or the entropy map is on another grid.
    """
    require_node_geometry(prediction.mask, volume_node, what="predicted mask")
    require_node_geometry(prediction.entropy, volume_node, what="entropy map")
    require_binary(prediction.mask, what="predicted mask")
    base = name or volume_node.GetName()
    summary = {k: v for k, v in prediction.summary.items() if k != "outputs"}
    mask = np.asarray(prediction.mask.array, dtype=np.uint8)
    segmentation, segment_id = nodes.add_segmentation_node(scene, volume_node, mask, f"{base} hepatoblastoma")
    ai_node, ai_segment_id = nodes.add_segmentation_node(scene, volume_node, mask, f"{base} hepatoblastoma AI (locked)",
                                                         role="ai_mask", locked=True)
    entropy = nodes.add_entropy_node(scene, volume_node, prediction.entropy.array, f"{base} entropy")
    table = nodes.add_table_node(scene, f"{base} metrics", METRICS_COLUMNS, [], role="metrics")
    if case is not None:
        segmentation.SetAttribute(nodes.CASE_ATTRIBUTE, case)
    nodes.store_summary(segmentation, summary)
    nodes.store_summary(ai_node, summary)
    review = {key: _add_review_mask(scene, volume_node, prediction.review_masks.get(key), key, base)
              for key in REVIEW_MASK_SEGMENTS}
    nodes.link(segmentation, ai_mask=ai_node, entropy=entropy, metrics=table, volume=volume_node, **review)
    folder = nodes.create_run_folder(scene, volume_node, RUN_FOLDER_LABEL)
    nodes.move_to_folder(scene, folder, [n for n in (segmentation, ai_node, entropy, table, *review.values())
                                         if n is not None])
    # The first table comes from the nodes, by the same code as every re-score, so the two can never disagree.
    rescore(scene, segmentation, case=case)
    return SegmentationResult(volume_node, segmentation, segment_id, ai_node, ai_segment_id, entropy, table, folder,
                              summary)


def _add_review_mask(scene, volume_node, mask: Volume | None, key: str, base: str):
    """A review mask of the result (:data:`REVIEW_MASK_SEGMENTS`) as its own hidden segmentation node; None when the
    result has none. The review flag's reasons refer to them: the liver mask that ``outside_liver`` is measured
    against, the tumour the anchor removed (Segment Editor's logical operators take it back)."""
    if mask is None or not np.any(mask.array):
        return None
    spec, suffix = REVIEW_MASK_SEGMENTS[key]
    require_node_geometry(mask, volume_node, what=REVIEW_MASKS[key])
    node, _ = nodes.add_segmentation_node(scene, volume_node, np.asarray(mask.array, dtype=np.uint8),
                                          f"{base} {suffix}", spec=spec, role=key)
    node.GetDisplayNode().SetVisibility(False)
    return node


def review_masks_hint(segmentation_node) -> str:
    """One line naming the result's hidden review masks (the liver mask used, what the anchor removed) so that the
    module can point to them beside the review reasons; ``""`` when the result has none."""
    names = [node.GetName() for key in REVIEW_MASK_SEGMENTS
             if (node := nodes.linked(segmentation_node, key)) is not None] if segmentation_node else []
    if not names:
        return ""
    return "Hidden in this run's folder, to show with its eye icon: " + "; ".join(f"'{n}'" for n in names) + "."


def segment(scene, volume_node, predict: Predict, *, name: str | None = None, case: str | None = None,
            modality: str | None = None) -> SegmentationResult:
    """Run ``predict`` on the voxels of ``volume_node`` in this process and add the result to ``scene``.

    ``predict`` gets a :class:`Volume` (LPS geometry, ``metadata["modality"]`` when given) and returns a
    :class:`Prediction`; bind a progress callback into it (``functools.partial``) if you want one. When the summary
    has no run time, the measured wall-clock time is recorded.
    """
    volume = volume_from_node(volume_node)
    if modality:
        volume.metadata["modality"] = modality
    start = time.perf_counter()
    prediction = predict(volume)
    elapsed_s = time.perf_counter() - start
    if not isinstance(prediction, Prediction):
        raise TypeError(f"the predictor returned {type(prediction).__name__}, not a Prediction")
    summary = dict(prediction.summary)
    summary.setdefault("seconds", {"total": elapsed_s})
    if modality:
        summary.setdefault("modality", modality)
    return add_prediction(scene, volume_node, dataclasses.replace(prediction, summary=summary), name=name, case=case)


def load_results(scene, volume_node, output_folder: str | Path, *, name: str | None = None,
                 case: str | None = None) -> SegmentationResult:
    """Load the files of an ``hbseg segment`` run on ``volume_node`` (``segmentation.seg.nrrd`` or
    ``segmentation.nii.gz``, ``entropy.nrrd``/``.nii.gz``, ``summary.json``) through storage nodes and make the
    same nodes as :func:`segment`. The files may store the grid with its axes reversed (3D Slicer reads a
    left-handed image with its k axis reversed); their voxels are mapped back exactly, without interpolation.

    :class:`InputError` naming the folder when the run did not finish (no summary, or a file whose checksum differs
    from the one in the summary); :class:`GeometryError` naming the file when an output is not on the volume's grid.
    """
    folder = Path(output_folder)
    summary_path = folder / SUMMARY_NAME
    if not summary_path.is_file():
        raise InputError(f"no {SUMMARY_NAME}: not an 'hbseg segment' output folder, or the run did not finish", folder)
    if not is_finished(folder):
        raise InputError(f"the outputs listed in {SUMMARY_NAME} are missing or changed (checksum mismatch); "
                         "run the segmentation again", folder)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    outputs = summary.get("outputs", {})
    try:
        mask_path = folder / outputs["segmentation"]["file"]
        entropy_path = folder / outputs["entropy"]["file"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{SUMMARY_NAME} does not list the segmentation and entropy files", summary_path) from exc

    grid = node_grid(volume_node)
    mask_node, mask_segment = storage.load_mask(scene, mask_path, volume_node, name="__hbseg_mask__")
    try:
        mask = segment_mask(mask_node, mask_segment, grid)
    finally:
        storage.remove_node(scene, mask_node)
    entropy_node = storage.load_volume(scene, entropy_path, name="__hbseg_entropy__")
    try:
        entropy = volume_array_on_grid(entropy_node, grid, what="entropy map").astype(np.float32, copy=False)
    except GeometryError as exc:
        raise GeometryError(exc.problem, entropy_path) from exc
    finally:
        storage.remove_node(scene, entropy_node)
    geometry = geometry_of_node(volume_node)
    review_masks = {}
    for key in REVIEW_MASK_SEGMENTS:
        if isinstance(outputs.get(key), dict):
            path = folder / outputs[key]["file"]
            node, segment_id = storage.load_mask(scene, path, volume_node, name=f"__hbseg_{key}__")
            try:
                review_masks[key] = Volume(segment_mask(node, segment_id, grid).astype(np.uint8), geometry, path)
            finally:
                storage.remove_node(scene, node)
    prediction = Prediction(Volume(mask, geometry, mask_path), Volume(entropy, geometry, entropy_path), summary,
                            review_masks=review_masks)
    return add_prediction(scene, volume_node, prediction, name=name, case=case)


def metrics_rows(result: SegmentationResult, references=(), *, case: str | None = None) -> list[dict[str, Any]]:
    """The rows :func:`rescore` would write, without touching the table (for reports)."""
    return score_rows(result.volume_node.GetScene(), result.segmentation_node, result.segment_id, references,
                      case=case)
