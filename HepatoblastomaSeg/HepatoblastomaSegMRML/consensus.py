"""A consensus segmentation of several annotators' segmentations, and how well they agree.

The consensus is the library's majority vote (a voxel is in when more than half of the N annotators marked it, or
``min_votes`` of them); the agreement table has one row per pair of annotators (Dice, both volumes) followed by one
row per annotator against the consensus.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from HepatoblastomaSegLib.errors import ConfigError

from . import metrics, nodes
from .rescore import reference_label
from .terminology import TUMOR_SEGMENT
from .volumes import find_segment, geometry_of_grid, node_grid, segment_mask, segmentation_grid

AGREEMENT_COLUMNS = (
    nodes.Column("annotator_a", "string", "", "first segmentation of the pair"),
    nodes.Column("annotator_b", "string", "", "second segmentation of the pair (or the consensus)"),
    nodes.Column("dice", "double", "", "Dice coefficient of the pair"),
    nodes.Column("volume_a_ml", "double", "mL", "volume of the first segmentation"),
    nodes.Column("volume_b_ml", "double", "mL", "volume of the second segmentation"),
)

CONSENSUS_FOLDER_LABEL = "Hepatoblastoma consensus"


@dataclasses.dataclass
class ConsensusResult:
    segmentation_node: Any
    segment_id: str
    table_node: Any
    folder_item: int
    labels: list[str]


def consensus(scene, annotations: Sequence[Any], *, volume_node=None, name: str = "Consensus",
              min_votes: int | None = None) -> ConsensusResult:
    """Majority-vote consensus of ``annotations`` (segmentation nodes, or ``(node, segment name or ID)`` pairs;
    each node's only segment, or its "Hepatoblastoma" segment, when no segment is named).

    The voxel grid is ``volume_node``'s, else the reference geometry of the first annotation; every annotation must
    lie on that voxel lattice. Adds a segmentation node (one "Hepatoblastoma" segment) and an agreement table in a
    new folder of the volume's (or first annotation's) study.
    """
    pairs = [(item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None) for item in annotations]
    if len(pairs) < 2:
        raise ConfigError(f"a consensus needs at least 2 segmentations, got {len(pairs)}")
    if volume_node is None:
        first = pairs[0][0]
        volume_node = first.GetNodeReference(first.GetReferenceImageGeometryReferenceRole())
    grid = node_grid(volume_node) if volume_node is not None else segmentation_grid(pairs[0][0])
    geometry = geometry_of_grid(grid)
    labels, masks = [], []
    for node, segment in pairs:
        segment_id = find_segment(node, segment, preferred_name=TUMOR_SEGMENT.name)
        labels.append(reference_label(node, segment_id))
        masks.append(segment_mask(node, segment_id, grid))
    vote = metrics.majority_vote(masks, min_votes)

    n = len(masks)
    rule = f">= {min_votes if min_votes is not None else n // 2 + 1} of {n} votes"
    seg_node, segment_id = nodes.add_segmentation_node(scene, volume_node, vote, name, role="consensus", grid=grid)
    seg_node.SetAttribute("HepatoblastomaSeg.ConsensusRule", rule)
    seg_node.SetAttribute("HepatoblastomaSeg.ConsensusSources", "|".join(labels))

    volumes = [metrics.volume_ml(m, geometry) for m in masks]
    rows = [{"annotator_a": labels[a], "annotator_b": labels[b], "dice": metrics.dice(masks[a], masks[b]),
             "volume_a_ml": volumes[a], "volume_b_ml": volumes[b]}
            for a, b in itertools.combinations(range(n), 2)]
    consensus_ml = metrics.volume_ml(vote, geometry)
    rows += [{"annotator_a": labels[a], "annotator_b": seg_node.GetName(), "dice": metrics.dice(masks[a], vote),
              "volume_a_ml": volumes[a], "volume_b_ml": consensus_ml} for a in range(n)]
    table = nodes.add_table_node(scene, f"{name} agreement", AGREEMENT_COLUMNS, rows, role="agreement")

    folder = nodes.create_run_folder(scene, volume_node if volume_node is not None else pairs[0][0],
                                     CONSENSUS_FOLDER_LABEL)
    nodes.move_to_folder(scene, folder, [seg_node, table])
    return ConsensusResult(seg_node, segment_id, table, folder, labels)
