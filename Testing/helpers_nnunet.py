"""Tiny nnU-Net v2 model folders built with the real ``nnunetv2`` package, and nnU-Net's own predictions on them.

The folder is what nnU-Net's training leaves (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_final.pth``): the
network is built by nnU-Net from the plans, its weights randomised (nnU-Net initialises biases to zero; random ones
check that they are carried over) and saved in nnU-Net's checkpoint layout with its own logger's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CT_PROPERTIES = {"max": 400.0, "mean": 90.0, "median": 95.0, "min": -200.0, "percentile_00_5": -60.0,
                 "percentile_99_5": 260.0, "std": 45.0}


def v2_plans(*, modality: str = "ct", patch=(16, 32, 32), spacing_zyx=(2.0, 1.6, 1.6), features=(4, 8, 16),
             strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3))) -> dict:
    """An nnU-Net v2 ``plans.json`` (format of nnU-Net >= 2.3) with one ``3d_fullres`` configuration."""
    n = len(features)
    scheme = "CTNormalization" if modality == "ct" else "ZScoreNormalization"
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": [40, 80, 80], "spacing": list(spacing_zyx),
        "normalization_schemes": [scheme], "use_mask_for_norm": [modality != "ct"],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": list(features),
                            "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in strides],
                            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
                            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True,
    }
    return {
        "dataset_name": "Dataset501_HBTiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing_zyx), "original_median_shape_after_transp": [40, 80, 80],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": CT_PROPERTIES if modality == "ct" else
                                                         {"mean": 300.0, "std": 80.0, "percentile_00_5": 20.0,
                                                          "percentile_99_5": 700.0}},
    }


def v2_dataset(modality: str = "ct") -> dict:
    return {"channel_names": {"0": "CT" if modality == "ct" else "T2"},
            "labels": {"background": 0, "liver": 1, "tumor": 2}, "numTraining": 0, "file_ending": ".nii.gz",
            "name": "HBTiny", "description": "tiny test model, random weights"}


def make_v2_folder(root: Path, *, modality: str = "ct", folds=(0,), mirror_axes=(0, 1, 2), seed: int = 0,
                   **plan_kw) -> Path:
    """``root/nnUNetTrainer__nnUNetPlans__3d_fullres`` with one checkpoint per fold, as nnU-Net v2 writes them."""
    from nnunetv2.training.logging.nnunet_logger import LocalLogger
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans, dataset = v2_plans(modality=modality, **plan_kw), v2_dataset(modality)
    folder = root / "Dataset501_HBTiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    for fold in folds:
        torch.manual_seed(seed + 97 * fold)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 3, allow_init=True, deep_supervision=True)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            for head in net.decoder.seg_layers:  # spatially varied logits, so every label occurs
                head.weight.mul_(8.0)
        logger = LocalLogger()
        for epoch in range(2):
            logger.log("mean_fg_dice", np.float64(0.1 * epoch), epoch)
            logger.log("train_losses", float(np.float32(1.0 - 0.1 * epoch)), epoch)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
        checkpoint = {
            "network_weights": net.state_dict(), "optimizer_state": optimizer.state_dict(),
            "grad_scaler_state": None, "logging": logger.get_checkpoint(), "_best_ema": np.float64(0.1),
            "current_epoch": 2,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": tuple(mirror_axes),
        }
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def nnunet_v2_predict(folder: Path, image_zyx: np.ndarray, spacing_zyx, *, folds=(0,), mirror: bool = True):
    """nnU-Net v2's own ``nnUNetPredictor`` on one image: (segmentation, softmax [C, z, y, x])."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    seg, probs = predictor.predict_single_npy_array(image_zyx[None].astype(np.float32),
                                                    {"spacing": [float(s) for s in spacing_zyx]}, None, None, True)
    return seg, probs


def phantom_image(modality: str, *, seed: int = 0, slices: int = 24, inplane: int = 64):
    """A small anisotropic phantom (4 mm slices, about 1.3 mm in-plane): the central ``inplane``^2 of ``slices``
    slices. The MRI gets a zero background outside a circle (a scanner's field of view), so nnU-Net's crop to the
    nonzero region and its masked z-score matter."""
    from HepatoblastomaSegLib.phantom import generate_case

    case = generate_case(modality, seed, 0, "small")
    image = case.image
    z0 = max(0, (image.array.shape[0] - slices) // 2)
    y0, x0 = [(n - inplane) // 2 for n in image.array.shape[1:]]
    array = image.array[z0:z0 + slices, y0:y0 + inplane, x0:x0 + inplane].astype(np.float32)
    if modality == "mri":
        yy, xx = np.mgrid[:inplane, :inplane]
        outside = (yy - inplane / 2 + 0.5) ** 2 + (xx - inplane / 2 + 0.5) ** 2 > (0.42 * inplane) ** 2
        array[:, outside] = 0
        array[:2] = 0  # and two empty slices at one end
    return array, tuple(float(s) for s in image.spacing_mm[::-1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


# ------------------------------------------------------------------------------------------------ nnU-Net v1
def v1_plans(plans_file: Path, *, modality: str = "ct", patch=(8, 16, 16), spacing_zyx=(10.0, 4.0, 4.0),
             base_features: int = 4) -> dict:
    """nnU-Net 1.7.1 plans (as ExperimentPlanner3D_v21 writes them) with one 3D stage."""
    from collections import OrderedDict

    props = OrderedDict({0: OrderedDict(mean=90.0, sd=45.0, median=95.0, mn=-200.0, mx=400.0,
                                        percentile_00_5=-60.0, percentile_99_5=260.0)})
    stage = {"batch_size": 2, "num_pool_per_axis": [1, 2, 2], "patch_size": np.array(patch),
             "median_patient_size_in_voxels": np.array([20, 40, 40]), "current_spacing": np.array(spacing_zyx),
             "original_spacing": np.array(spacing_zyx), "do_dummy_2D_data_aug": False,
             "pool_op_kernel_sizes": [[1, 2, 2], [2, 2, 2]], "conv_kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]]}
    return {"num_stages": 1, "num_modalities": 1, "modalities": {0: "CT" if modality == "ct" else "T2"},
            "normalization_schemes": OrderedDict({0: "CT" if modality == "ct" else "nonCT"}),
            "dataset_properties": {"intensityproperties": props}, "list_of_npz_files": [],
            "original_spacings": [np.array(spacing_zyx)], "original_sizes": [np.array([20, 40, 40])],
            "preprocessed_data_folder": str(plans_file.parent), "num_classes": 2, "all_classes": [1, 2],
            "base_num_features": base_features, "use_mask_for_norm": OrderedDict({0: modality != "ct"}),
            "keep_only_largest_region": None, "min_region_size_per_class": None, "min_size_per_class": None,
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "data_identifier": "nnUNetData_plans_v2.1", "plans_per_stage": {0: stage},
            "preprocessor_name": "GenericPreprocessor", "conv_per_stage": 2}


def make_v1_folder(root: Path, *, modality: str = "ct", folds=(0,), seed: int = 0, **plan_kw) -> Path:
    """``root/3d_fullres/Task501_HBTiny/nnUNetTrainerV2__nnUNetPlansv2.1`` written by nnU-Net 1.7.1's own
    ``nnUNetTrainerV2.save_checkpoint`` (``.model`` + ``.model.pkl``), weights randomised."""
    import pickle

    from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2

    folder = root / "3d_fullres" / "Task501_HBTiny" / "nnUNetTrainerV2__nnUNetPlansv2.1"
    folder.mkdir(parents=True)
    plans_file = folder / "plans.pkl"
    plans = v1_plans(plans_file, modality=modality, **plan_kw)
    plans_file.write_bytes(pickle.dumps(plans))
    for fold in folds:
        torch.manual_seed(seed + 97 * fold)
        trainer = nnUNetTrainerV2(str(plans_file), fold, str(folder), str(root), True, 0, True, False, False)
        trainer.initialize(False)
        with torch.no_grad():
            for p in trainer.network.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            for head in trainer.network.seg_outputs:
                head.weight.mul_(8.0)
        trainer.save_checkpoint(str(folder / f"fold_{fold}" / "model_final_checkpoint.model"))
    return folder


def nnunet_v1_predict(folder: Path, image_zyx: np.ndarray, spacing_zyx, tmp: Path, *, folds=(0,),
                      mirror: bool = True):
    """nnU-Net 1.7.1's own ``predict_cases`` on one image written as NIfTI: (segmentation, softmax [C, z, y, x]
    on the full grid; background 1 outside nnU-Net's crop box)."""
    import pickle

    import SimpleITK as sitk
    from nnunet.inference.predict import predict_cases

    tmp.mkdir(parents=True, exist_ok=True)
    itk = sitk.GetImageFromArray(image_zyx.astype(np.float32))
    itk.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(itk, str(tmp / "case_0000.nii.gz"))
    out = tmp / "case.nii.gz"
    predict_cases(str(folder), [[str(tmp / "case_0000.nii.gz")]], [str(out)], list(folds), save_npz=True,
                  num_threads_preprocessing=1, num_threads_nifti_save=1, do_tta=mirror, mixed_precision=False,
                  overwrite_existing=True, all_in_gpu=False, step_size=0.5,
                  checkpoint_name="model_final_checkpoint", disable_postprocessing=True)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    softmax = np.load(tmp / "case.npz")["softmax"].astype(np.float32)
    properties = pickle.loads((tmp / "case.pkl").read_bytes())
    full = np.zeros((softmax.shape[0], *image_zyx.shape), dtype=np.float32)
    full[0] = 1
    box = tuple(slice(int(a), int(b)) for a, b in properties["crop_bbox"])
    full[(slice(None), *box)] = softmax
    return seg, full
