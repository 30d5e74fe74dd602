"""Export the current (AI or edited) tumour segment as a DICOM Segmentation of the volume's source series.

The volume must have been loaded from DICOM: Slicer's DICOM loader records the source instances in the volume node's
``DICOM.instanceUIDs`` attribute, and the DICOM database (``slicer.dicomDatabase``) gives each instance's file. The
SEG is written by the library (:func:`HepatoblastomaSegLib.io.dicom_seg.write_dicom_seg`, highdicom), in the source
study with the segment's coded terminology; its algorithm type is AUTOMATIC while the mask is the model's, and
SEMIAUTOMATIC once a reviewer edited it (the algorithm identification still names the model of the first draft).
In the application, :func:`add_to_dicom_database` then indexes the file, so it shows in the DICOM browser under the
patient and study of the image (and can be sent to a PACS from there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from HepatoblastomaSegLib import __version__
from HepatoblastomaSegLib.errors import InputError
from HepatoblastomaSegLib.io import Volume
from HepatoblastomaSegLib.io.dicom_seg import AlgorithmInfo, write_dicom_seg

from .nodes import CHECKSUM_ATTRIBUTE, linked, mask_checksum, stored_summary
from .terminology import TUMOR_SEGMENT
from .volumes import find_segment, geometry_of_node, node_grid, node_name, segment_mask

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def source_files(volume_node, database: Any = None) -> list[Path]:
    """The DICOM files the volume was loaded from, looked up in ``database`` (default: ``slicer.dicomDatabase``)."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise InputError("this volume was not loaded from Slicer's DICOM database, so a DICOM SEG has no source "
                         "instances to reference; load the series through the DICOM module, or save the "
                         "segmentation as .seg.nrrd", node_name(volume_node))
    if database is None:
        import slicer

        database = slicer.dicomDatabase
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, f in zip(uids, files) if not f or not Path(f).is_file()]
    if missing:
        raise InputError(f"{len(missing)} of the {len(uids)} source instance(s) are no longer in the DICOM database "
                         f"(first: {missing[0]})", node_name(volume_node))
    return [Path(f) for f in files]


def export_dicom_seg(segmentation_node, volume_node, path: str | Path, *, segment_id: str | None = None,
                     files: Sequence[str | Path] | None = None, database: Any = None) -> Path:
    """Write the tumour segment of ``segmentation_node`` on ``volume_node``'s grid as a DICOM SEG at ``path``.

    ``files`` are the source series' files (default: looked up from the volume node, see :func:`source_files`).
    """
    files = list(files) if files is not None else source_files(volume_node, database)
    segment_id = segment_id or find_segment(segmentation_node, preferred_name=TUMOR_SEGMENT.name)
    grid = node_grid(volume_node)
    mask = segment_mask(segmentation_node, segment_id, grid)
    summary = stored_summary(segmentation_node) or _summary_of_linked_ai(segmentation_node)
    algorithm = AlgorithmInfo(str(summary.get("model_name", "unknown")), str(summary.get("model_version", "unknown")),
                              __version__)
    ai_checksum = _ai_checksum(segmentation_node)
    edited = ai_checksum is None or mask_checksum(mask) != ai_checksum
    return write_dicom_seg(Volume(mask.astype("uint8", copy=False), geometry_of_node(volume_node)), path, files,
                           None, algorithm, spec=TUMOR_SEGMENT,
                           algorithm_type="SEMIAUTOMATIC" if edited else "AUTOMATIC")


def add_to_dicom_database(path: str | Path, database: Any = None) -> None:
    """Index the written SEG's folder in Slicer's DICOM database (application only: Slicer's own DICOMLib, which
    skips files that are not DICOM), so the SEG appears under its study."""
    from DICOMLib import DICOMUtils

    DICOMUtils.importDicom(str(Path(path).parent), database)


def _summary_of_linked_ai(segmentation_node) -> dict:
    ai = linked(segmentation_node, "ai_mask")
    return stored_summary(ai) if ai is not None else {}


def _ai_checksum(segmentation_node) -> str | None:
    """The checksum of the model's own mask: on the reviewer's node's locked AI copy, or on the node itself."""
    ai = linked(segmentation_node, "ai_mask")
    for node in (ai, segmentation_node):
        if node is not None and node.GetAttribute(CHECKSUM_ATTRIBUTE):
            return node.GetAttribute(CHECKSUM_ATTRIBUTE)
    return None
