"""Test helpers: phantom datasets written in the Medical Segmentation Decathlon's and nnU-Net v1/v2's folder layouts.

Labels as in MSD ``Task03_Liver``: 0 background, 1 liver, 2 tumour (the phantom's liver mask includes the tumour).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from HepatoblastomaSegLib.phantom import write_dataset
from HepatoblastomaSegLib.preprocess import read_manifest

LAYOUTS = ("msd", "v1", "v2")


def write_nnunet_folder(phantom_dir: Path, folder: Path, layout: str, *, label_names=("liver", "cancer")) -> Path:
    """Write ``phantom_dir``'s cases into ``folder`` in ``layout`` ("msd", "v1" or "v2"); returns ``folder``."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for entry in read_manifest(phantom_dir):
        image = sitk.ReadImage(str(entry.image))
        tumor = sitk.GetArrayFromImage(sitk.ReadImage(str(entry.tumor)))
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(entry.liver)))
        labels = np.where(tumor > 0, 2, np.where(liver > 0, 1, 0)).astype(np.uint8)
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(image)
        suffix = "" if layout == "msd" else "_0000"
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{entry.case}{suffix}.nii.gz"))
        sitk.WriteImage(label_image, str(folder / "labelsTr" / f"{entry.case}.nii.gz"))
        training.append({"image": f"./imagesTr/{entry.case}.nii.gz", "label": f"./labelsTr/{entry.case}.nii.gz"})
    modality = "CT" if "ct" in str(read_manifest(phantom_dir)[0].case) else "MRI"
    if layout == "v2":
        dataset = {"channel_names": {"0": modality}, "labels": {"background": 0, label_names[0]: 1,
                                                                label_names[1]: 2},
                   "numTraining": len(training), "file_ending": ".nii.gz"}
    else:
        dataset = {"name": folder.name, "tensorImageSize": "3D", "modality": {"0": modality},
                   "labels": {"0": "background", "1": label_names[0], "2": label_names[1]},
                   "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return folder


def phantom_nnunet_folder(tmp: Path, layout: str, *, modality: str = "ct", n_cases: int = 3, **kw) -> Path:
    """Small phantoms (seed 18) in ``layout``, named as that layout names its folders."""
    phantoms = tmp / "phantoms"
    if not (phantoms / "manifest.csv").is_file():
        write_dataset(phantoms, modality, n_cases, seed=18, size="small")
    name = {"msd": "Task03_Liver", "v1": "Task503_Liver", "v2": "Dataset503_Liver"}[layout]
    return write_nnunet_folder(phantoms, tmp / name, layout, **kw)
