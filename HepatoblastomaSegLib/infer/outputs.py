"""A case's output folder: segmentation, entropy map and ``summary.json``, complete or absent.

Each file is written atomically, and ``summary.json`` is written last and lists the SHA256 of the others. A folder is
*finished* only when its summary exists and every file it lists has that checksum, so a run killed at any moment is
resumed by redoing exactly the unfinished cases.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..io import write_text_atomic, write_volume
from ..io.dicom_seg import write_dicom_seg_of_case, write_entropy_map_of_case
from ..io.segmentation_file import write_segmentation_nrrd
from ..terminology import HEPATOBLASTOMA
from .result import Prediction

SUMMARY_NAME = "summary.json"
OUTPUT_NAMES = {
    "nifti": {"segmentation": "segmentation.nii.gz", "entropy": "entropy.nii.gz"},
    "nrrd": {"segmentation": "segmentation.seg.nrrd", "entropy": "entropy.nrrd"},
    "dicom-seg": {"segmentation": "segmentation.dcm", "entropy": "entropy.nii.gz"},
}
#: ``--entropy-format``: the entropy map's file when it should differ from the one ``fmt`` implies.
ENTROPY_NAMES = {"nifti": "entropy.nii.gz", "nrrd": "entropy.nrrd", "dicom-pm": "entropy.dcm"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_prediction(prediction: Prediction, out_dir: str | Path, *, fmt: str = "nifti",
                     entropy_fmt: str | None = None) -> Path:
    """Write ``prediction`` into ``out_dir`` in ``fmt`` ("nifti", "nrrd" or "dicom-seg"; the entropy map in
    ``entropy_fmt`` when given: "nifti", "nrrd" or "dicom-pm"); return the summary's path."""
    if fmt not in OUTPUT_NAMES or (entropy_fmt is not None and entropy_fmt not in ENTROPY_NAMES):
        raise ValueError(f"format must be one of {sorted(OUTPUT_NAMES)} (entropy: {sorted(ENTROPY_NAMES)}), "
                         f"not {fmt!r} ({entropy_fmt!r})")
    out_dir = Path(out_dir)
    names = {**OUTPUT_NAMES[fmt], **({"entropy": ENTROPY_NAMES[entropy_fmt]} if entropy_fmt else {})}
    summary_path = out_dir / SUMMARY_NAME
    if summary_path.exists():
        summary_path.unlink()  # the folder stops counting as finished before any file in it changes
    mask = prediction.mask.with_array(prediction.mask.array.astype(np.uint8, copy=False))
    if fmt == "dicom-seg":
        write_dicom_seg_of_case(mask, out_dir / names["segmentation"], prediction.summary)
    elif fmt == "nrrd":
        write_segmentation_nrrd(mask, out_dir / names["segmentation"], [HEPATOBLASTOMA])
    else:
        write_volume(mask, out_dir / names["segmentation"])
    entropy = prediction.entropy.with_array(prediction.entropy.array.astype(np.float32, copy=False))
    if entropy_fmt == "dicom-pm":
        write_entropy_map_of_case(entropy, out_dir / names["entropy"], prediction.summary)
    else:
        write_volume(entropy, out_dir / names["entropy"])
    summary = dict(prediction.summary)
    summary["outputs"] = {key: {"file": name, "sha256": sha256_of(out_dir / name)} for key, name in names.items()}
    write_text_atomic(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary_path


def is_finished(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a summary whose listed outputs all exist with the recorded checksums."""
    summary_path = Path(out_dir) / SUMMARY_NAME
    try:
        outputs = json.loads(summary_path.read_text(encoding="utf-8"))["outputs"]
        return all(sha256_of(Path(out_dir) / item["file"]) == item["sha256"] for item in outputs.values())
    except (OSError, ValueError, KeyError, TypeError):
        return False
