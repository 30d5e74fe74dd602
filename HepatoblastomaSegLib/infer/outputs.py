"""A case's output folder: segmentation, entropy map and ``summary.json``, complete or absent; and the masks a
reviewer needs beside them (:data:`~.result.REVIEW_MASKS`): the liver mask the anchor and the review flag used
(``liver_mask.nii.gz`` / ``.nrrd``) and what the CT liver anchor removed (``anchor_removed.nii.gz`` / ``.nrrd``),
each written only when there is one.

Each file is written atomically, and ``summary.json`` is written last and lists the SHA256 of the others. A folder is
*finished* only when its summary exists and every file it lists has that checksum, so a run killed at any moment is
resumed by redoing exactly the unfinished cases. The summary may also record a *resume key* (the input's SHA256
and the options that shape the result): a cohort rerun then recomputes a case whose image or options changed, and
says why (:func:`why_recompute`).

Writing holds a lock on the folder (:func:`~..io.atomic.folder_lock`), so two runs given the same folder cannot mix
their files, and first removes what a killed writer left there. :func:`check_output_folder` refuses, before any
work, an output folder that is a file or whose outputs would replace the input.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import require_same_geometry, write_text_atomic, write_volume
from ..io.atomic import folder_lock, remove_stale_partials
from ..io.dicom_seg import write_dicom_seg_of_case, write_entropy_map_of_case
from ..io.segmentation_file import write_segmentation_nrrd
from ..terminology import HEPATOBLASTOMA
from .result import REVIEW_MASKS, Prediction

SUMMARY_NAME = "summary.json"
OUTPUT_NAMES = {
    "nifti": {"segmentation": "segmentation.nii.gz", "entropy": "entropy.nii.gz"},
    "nrrd": {"segmentation": "segmentation.seg.nrrd", "entropy": "entropy.nrrd"},
    "dicom-seg": {"segmentation": "segmentation.dcm", "entropy": "entropy.nii.gz"},
}
#: The review masks' files, per key of :data:`~.result.REVIEW_MASKS` and ``fmt`` (a DICOM SEG run writes NIfTI).
REVIEW_MASK_NAMES = {key: {"nifti": f"{stem}.nii.gz", "nrrd": f"{stem}.nrrd", "dicom-seg": f"{stem}.nii.gz"}
                     for key, stem in (("liver", "liver_mask"), ("anchor_removed", "anchor_removed"))}
#: ``--entropy-format``: the entropy map's file when it should differ from the one ``fmt`` implies.
ENTROPY_NAMES = {"nifti": "entropy.nii.gz", "nrrd": "entropy.nrrd", "dicom-pm": "entropy.dcm"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def output_paths(out_dir: str | Path, fmt: str = "nifti") -> list[Path]:
    """Every file :func:`write_prediction` may write into ``out_dir`` in ``fmt``."""
    if fmt not in OUTPUT_NAMES:
        raise ValueError(f"format must be one of {sorted(OUTPUT_NAMES)}, not {fmt!r}")
    review = [names[fmt] for names in REVIEW_MASK_NAMES.values()]
    return [Path(out_dir) / name for name in (*OUTPUT_NAMES[fmt].values(), *review, SUMMARY_NAME)]


def check_output_folder(out_dir: str | Path, fmt: str = "nifti", inputs: tuple[str | Path, ...] = ()) -> None:
    """Refuse, before any work, an output folder that is an existing file, or whose outputs would overwrite one
    of ``inputs`` (e.g. ``-o`` the input's own folder with the input named ``segmentation.nii.gz``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("the output must be a folder, but this is an existing file; choose a folder (it is created "
                         "when missing)", out_dir)
    output_paths(out_dir, fmt)  # checks fmt
    # Every format's names: writing one format removes the other's earlier outputs.
    for target in {path for each in OUTPUT_NAMES for path in output_paths(out_dir, each)}:
        for source in inputs:
            if _same_file(target, Path(source)):
                raise InputError(f"writing the output {target.name} here would overwrite the input {source}; "
                                 "choose another output folder", out_dir)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def write_prediction(prediction: Prediction, out_dir: str | Path, *, fmt: str = "nifti",
                     entropy_fmt: str | None = None, resume_key: dict | None = None) -> Path:
    """Write ``prediction`` into ``out_dir`` in ``fmt`` ("nifti", "nrrd" or "dicom-seg"; the entropy map in
    ``entropy_fmt`` when given: "nifti", "nrrd" or "dicom-pm"); return the summary's path.

    ``resume_key`` (see :func:`resume_key`) is recorded in the summary for :func:`why_recompute`. The folder is
    locked while writing; another writer of the same folder waits.
    """
    source = prediction.summary.get("input")
    check_output_folder(out_dir, fmt, (source,) if isinstance(source, str) and source else ())
    with folder_lock(out_dir):
        remove_stale_partials(out_dir)
        return _write_prediction(prediction, Path(out_dir), fmt, entropy_fmt, resume_key)


def _write_prediction(prediction: Prediction, out_dir: Path, fmt: str, entropy_fmt: str | None,
                      resume_key: dict | None) -> Path:
    if fmt not in OUTPUT_NAMES or (entropy_fmt is not None and entropy_fmt not in ENTROPY_NAMES):
        raise ValueError(f"format must be one of {sorted(OUTPUT_NAMES)} (entropy: {sorted(ENTROPY_NAMES)}), "
                         f"not {fmt!r} ({entropy_fmt!r})")
    names = {**OUTPUT_NAMES[fmt], **({"entropy": ENTROPY_NAMES[entropy_fmt]} if entropy_fmt else {})}
    review_masks = {key: mask for key, mask in prediction.review_masks.items()
                    if key in REVIEW_MASK_NAMES and np.any(mask.array)}
    for key, review_mask in review_masks.items():  # refused before any file changes
        require_same_geometry(prediction.mask, review_mask, what_b=REVIEW_MASKS[key])
    names.update({key: REVIEW_MASK_NAMES[key][fmt] for key in review_masks})
    summary_path = out_dir / SUMMARY_NAME
    if summary_path.exists():
        summary_path.unlink()  # the folder stops counting as finished before any file in it changes
    # An earlier run's outputs in another format, or review masks this run has not, would not match the summary.
    stale = ({name for each in OUTPUT_NAMES.values() for name in each.values()} | set(ENTROPY_NAMES.values())
             | {name for each in REVIEW_MASK_NAMES.values() for name in each.values()})
    for name in stale - set(names.values()):
        (out_dir / name).unlink(missing_ok=True)
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
    for key, review_mask in review_masks.items():
        write_volume(review_mask.with_array(review_mask.array.astype(np.uint8, copy=False)), out_dir / names[key])
    summary = dict(prediction.summary)
    summary["outputs"] = {key: {"file": name, "sha256": sha256_of(out_dir / name)} for key, name in names.items()}
    if resume_key is not None:
        summary["resume_key"] = resume_key
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


def input_sha256(path: str | Path) -> str:
    """SHA256 of an input image file, or of a DICOM folder's files (relative names and contents, in name order)."""
    path = Path(path)
    if not path.is_dir():
        return sha256_of(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode("utf-8", "surrogateescape") + b"\0")
        digest.update(bytes.fromhex(sha256_of(file)))
    return digest.hexdigest()


def resume_key(input_checksum: str, options: dict) -> dict:
    """What a result depends on: the input (:func:`input_sha256` of a file or folder) and the options that shape the
    result (JSON-ready)."""
    return {"input_sha256": input_checksum, "options": dict(sorted(options.items()))}


def why_recompute(out_dir: str | Path, key: dict) -> str | None:
    """None when ``out_dir`` holds a finished result of exactly ``key``; otherwise why it must be computed (again)."""
    summary_path = Path(out_dir) / SUMMARY_NAME
    if not summary_path.exists():
        return "no earlier result"
    if not is_finished(out_dir):
        return "the earlier result is incomplete or its files changed"
    try:
        earlier = json.loads(summary_path.read_text(encoding="utf-8")).get("resume_key")
    except (OSError, ValueError):
        return "the earlier result is unreadable"
    if not isinstance(earlier, dict):
        return "the earlier result does not record which input and options it came from"
    if earlier.get("input_sha256") != key["input_sha256"]:
        return "the image changed since the earlier result"
    old, new = earlier.get("options") or {}, key["options"]
    changed = [f"{name} {old.get(name)!r} -> {new.get(name)!r}" for name in sorted(set(old) | set(new))
               if old.get(name) != new.get(name)]
    if changed:
        return "the options changed (" + "; ".join(changed) + ")"
    return None
