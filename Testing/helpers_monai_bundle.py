"""Tiny MONAI bundles in the model-zoo layout, and MONAI's own way of running them, for the import tests.

:func:`make_monai_bundle` writes ``configs/inference.json`` (laid out like the zoo's 3D segmentation bundles, e.g.
``spleen_ct_segmentation``: ``$`` expressions for the device, data list and evaluator, ``network_def``,
``preprocessing``, ``inferer``, ``postprocessing`` with ``Invertd`` and ``SaveImaged``), ``configs/metadata.json``
and randomly initialised weights as ``models/model.pt`` (a state dict, as the zoo ships them).
:func:`monai_reference` runs that config with MONAI's own :class:`monai.bundle.ConfigParser` (fine here: the test
wrote the config), the way the zoo's ``SupervisedEvaluator`` does per image: load, preprocess, infer, postprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16],
        "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
SEGRESNET = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_filters": 8,
             "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}


def inference_config(network_def: dict, *, pixdim=(3.0, 3.0, 5.0), roi=(32, 32, 16), crop: bool = True,
                     intensity: dict | None = None, invert_then_argmax: bool = True, sigmoid: bool = False,
                     activation: bool = True, keep_largest: bool = False) -> dict:
    """An ``inference.json`` of the zoo's 3D segmentation layout (``@``/``%``/``$`` as the zoo writes them).
    ``activation=False, keep_largest=True, invert_then_argmax=False`` is the layout of ``prostate_mri_anatomy``:
    argmax of the logits, the largest component of each label, then Invertd."""
    intensity = intensity or {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -100, "a_max": 250,
                              "b_min": 0.0, "b_max": 1.0, "clip": True}
    preprocessing = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
        intensity,
    ]
    if crop:
        preprocessing.append({"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 2})
    preprocessing.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
              "meta_key_postfix": "meta_dict", "nearest_interp": not invert_then_argmax, "to_tensor": True}
    argmax = {"_target_": "AsDiscreted", "keys": "pred", **({"threshold": 0.5} if sigmoid else {"argmax": True})}
    largest = [{"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1, 2]}
               ] if keep_largest else []
    post = [{"_target_": "Activationsd", "keys": "pred", **({"sigmoid": True} if sigmoid else {"softmax": True})}
            ] if activation else []
    post += [invert, argmax, *largest] if invert_then_argmax else [argmax, *largest, invert]
    post += [
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False,
         "squeeze_end_dims": True}]
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task03_Liver",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "pixdim": list(pixdim),
        "roi": list(roi),
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "%roi", "sw_batch_size": 2, "overlap": 0.5,
                    "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
        "run": ["$@evaluator.run()"],
    }


def metadata(labels: dict[int, str], modality: str = "CT") -> dict:
    return {"version": "0.1.0", "name": "Tiny liver and tumour segmentation",
            "description": "randomly initialised, for tests", "monai_version": "1.6.1",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": modality,
                                     "num_channels": 1, "spatial_shape": [32, 32, 16]}},
                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(labels),
                                     "channel_def": {str(k): v for k, v in labels.items()}}}}}


def make_monai_bundle(folder: Path, *, network_def: dict | None = None, config: dict | None = None,
                      labels: dict[int, str] | None = None, seed: int = 0, weights: str = "state_dict") -> Path:
    """A MONAI bundle folder: configs/inference.json, configs/metadata.json, models/model.pt (random weights)."""
    from monai.bundle import ConfigParser

    network_def = network_def or UNET
    config = config or inference_config(network_def)
    labels = labels or {0: "background", 1: "liver", 2: "tumour"}
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata(labels), indent=2))
    torch.manual_seed(seed)
    parser = ConfigParser({"network_def": network_def})
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # batch-norm statistics that are not the identity, so eval mode matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    state = net.state_dict()
    torch.save({"model": state} if weights == "wrapped" else state, folder / "models" / "model.pt")
    return folder


def write_ct(path: Path, *, seed: int = 0, shape_zyx=(20, 48, 40), spacing_xyz=(2.0, 2.2, 4.0),
             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)) -> Path:
    """A small CT-like image (HU): air around a body, a brighter 'liver' blob; LPS, ``direction`` as SimpleITK's."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:shape_zyx[0], :shape_zyx[1], :shape_zyx[2]]
    body = ((y - shape_zyx[1] / 2) / (0.4 * shape_zyx[1])) ** 2 + ((x - shape_zyx[2] / 2) / (0.42 * shape_zyx[2])) ** 2
    array = np.where(body < 1, 40.0, -1000.0)
    liver = ((z - 10) / 6) ** 2 + ((y - 20) / 9) ** 2 + ((x - 18) / 8) ** 2 < 1
    array[liver] = 120.0
    array += rng.normal(0, 15, shape_zyx)
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((-40.0, 12.5, -30.0))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def monai_reference(bundle_folder: Path, image_path: Path, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's own result for one image: (softmax probabilities [C, z, y, x] on the image's grid after the config's
    ``Invertd``, the label map [z, y, x] the config's postprocessing ends with), via ``ConfigParser``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(next(p for p in (bundle_folder / "configs").glob("inference.*")))  # .json or .yaml
    parser.update({"bundle_root": str(bundle_folder), "output_dir": str(workdir),
                   "device": "$torch.device('cpu')"})
    preprocessing = parser.get_parsed_content("preprocessing")
    network = parser.get_parsed_content("network_def")
    checkpoint = torch.load(bundle_folder / "models" / "model.pt", weights_only=True)
    network.load_state_dict(checkpoint.get("model", checkpoint))
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    data = preprocessing({"image": str(image_path)})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    # the probabilities: the postprocessing up to (not including) its AsDiscreted, when that comes after Invertd
    names = [type(t).__name__ for t in post.transforms]
    probs = None
    if names.index("Invertd") < names.index("AsDiscreted"):
        from monai.transforms import Compose

        upto = Compose(post.transforms[:names.index("AsDiscreted")])
        probs = np.asarray(upto(dict(data))["pred"].detach().numpy()).transpose(0, 3, 2, 1)
    labels = np.asarray(post(data)["pred"].detach().numpy())[0].transpose(2, 1, 0)
    return probs, labels.round().astype(np.int64)
