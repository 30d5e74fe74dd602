"""MRML glue of the HepatoblastomaSeg module: library outputs <-> MRML nodes, re-scoring, consensus, saving.

Imports only ``slicer`` (MRML classes and logics), ``vtk``, ``numpy`` and ``HepatoblastomaSegLib``, never Qt, and
takes the scene as a parameter, so the same code runs inside 3D Slicer and headless on the ``slicer-core`` wheel
(where the tests run it). Files are read and written through storage nodes.

Typical use::

    result = segment(scene, volume_node, predict)             # or load_results(scene, volume_node, folder)
    ...                                                        # the reviewer edits result.segmentation_node
    rescore(scene, result, references=[annotator_node])        # table updated, no network run
    save_results(result, "out/")                               # CASE.seg.nrrd, CASE_entropy.nrrd, CASE_metrics.tsv
"""

from .consensus import AGREEMENT_COLUMNS, ConsensusResult, consensus
from .environment import (
    INFERNO_COLOR_NODE_ID,
    Environment,
    application_environment,
    headless_environment,
    in_application,
)
from .nodes import DEFAULT_ENTROPY_OPACITY, show_entropy_overlay, table_rows
from .rescore import AI_REFERENCE_NAME, METRICS_COLUMNS, rescore
from .segment import (Predict, SegmentationResult, add_prediction, load_results, metrics_rows, review_masks_hint,
                      segment)
from .storage import (
    load_mask,
    load_segmentation,
    load_table,
    load_volume,
    remove_node,
    result_paths,
    save_node,
    save_results,
)
from .terminology import CONTEXT_NAME, TERMINOLOGY_FILE, TUMOR_SEGMENT, load_terminology, terminology_entry
from .volumes import geometry_of_node, segment_mask, set_segment_mask, volume_from_node

__all__ = [
    "AGREEMENT_COLUMNS", "AI_REFERENCE_NAME", "CONTEXT_NAME", "ConsensusResult", "DEFAULT_ENTROPY_OPACITY",
    "Environment", "INFERNO_COLOR_NODE_ID", "METRICS_COLUMNS", "Predict", "SegmentationResult", "TERMINOLOGY_FILE",
    "TUMOR_SEGMENT", "add_prediction", "application_environment", "consensus", "geometry_of_node",
    "headless_environment", "in_application", "load_mask", "load_results", "load_segmentation", "load_table",
    "load_terminology", "load_volume", "metrics_rows", "remove_node", "rescore", "result_paths", "review_masks_hint",
    "save_node", "save_results", "segment", "segment_mask", "set_segment_mask", "show_entropy_overlay", "table_rows",
    "terminology_entry", "volume_from_node",
]
